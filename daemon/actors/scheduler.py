"""The scheduler actor: runs periodic jobs when the database says they are due.

Consumes: the ``scheduled_jobs`` rows of the declared jobs (``daemon.wiring``).
Produces: whatever the jobs do (retention today; reconcile/expire with payments), with
``paymentd_job_runs{job,outcome}`` metrics and ``job.*`` live events.
Owns: nothing; a job's lease is a database row, so a job never runs twice at once.

Sleeps until the earliest due time computed by the database, or until ``stop``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from daemon.platform import scheduler
from daemon.platform.db import Database, DatabaseError
from daemon.platform.events import EventBus
from daemon.platform.metrics import Metrics
from daemon.platform.scheduler import Job

log = logging.getLogger(__name__)


@dataclass
class SchedulerDeps:
    db: Database
    jobs: Sequence[Job]
    metrics: Metrics
    events: EventBus
    stop: trio.Event


async def run(
    deps: SchedulerDeps, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    db, jobs = deps.db, list(deps.jobs)
    names = [j.name for j in jobs]
    await scheduler.register(db, jobs)
    deps.metrics.declared_jobs.update(names)  # their /metrics gauges (db_gauges)
    for name in names:  # exported as 0 from the start, for alert rules
        deps.metrics.job_runs.labels(name, "ok")
        deps.metrics.job_runs.labels(name, "error")
    task_status.started()
    while not deps.stop.is_set():
        try:
            wait = await scheduler.seconds_until_due(db, names)
            if wait == 0:
                for job in jobs:
                    await _run(deps, job)
                continue
        except DatabaseError as exc:
            log.debug("scheduler: database unavailable (%s); retrying in 5 s", exc)
            wait = 5.0
        with trio.move_on_after(math.inf if wait is None else max(wait, 0.05)):
            await deps.stop.wait()


async def _run(deps: SchedulerDeps, job: Job) -> None:
    try:
        summary = await scheduler.run_due(deps.db, job)
    except DatabaseError:
        raise
    except Exception as exc:
        log.exception("job %s failed", job.name)
        deps.metrics.job_runs.labels(job.name, "error").inc()
        deps.events.publish("job.failed", job=job.name, error=f"{type(exc).__name__}: {exc}")
        return
    if summary is None:
        return  # not due any more, or another process runs it
    deps.metrics.job_runs.labels(job.name, "ok").inc()
    deps.events.publish("job.finished", job=job.name, summary=summary)
    log.info("job %s: %s", job.name, summary)
