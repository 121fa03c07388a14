"""Periodic jobs from database deadlines, and the retention job, on a real PostgreSQL."""

from __future__ import annotations

import itertools
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio

from daemon import wiring
from daemon.actors import scheduler as scheduler_actor
from daemon.platform import retention, scheduler
from daemon.platform.config import Config, DatabaseConfig, RetentionConfig
from daemon.platform.db import Database
from daemon.platform.deps import Deps
from daemon.platform.events import EventBus
from daemon.platform.health import Health
from daemon.platform.metrics import Metrics
from daemon.platform.scheduler import Job

ROOT = Path(__file__).resolve().parent.parent


async def test_a_job_runs_when_due_and_its_next_run_survives_a_restart(db: Database) -> None:
    runs: list[float] = []

    async def tick() -> str:
        runs.append(trio.current_time())
        return "ok"

    job = Job("tick", 0.5, tick)
    for _attempt in range(2):  # two "daemons" one after the other
        stop = trio.Event()
        deps = scheduler_actor.SchedulerDeps(db, [job], Metrics(), EventBus(), stop)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(scheduler_actor.run, deps))
                target = len(runs) + 2
                while len(runs) < target:  # noqa: ASYNC110 - waits for the job's side effect
                    await trio.sleep(0.02)
                stop.set()
    [state] = await scheduler.states(db)
    assert state.runs >= 4 and state.last_outcome == "ok" and state.lease_until is None
    # Spaced by the interval, not run back to back: the deadline came from the database.
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    assert min(gaps[:1] + gaps[2:]) >= 0.4


async def test_a_job_never_runs_twice_at_once(db: Database) -> None:
    release = trio.Event()
    running = 0
    peak = 0

    async def slow() -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        return "done"

    job = Job("slow", 3600, slow)
    await scheduler.register(db, [job])
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(scheduler.run_once, db, [job], "slow")
            while running == 0:  # noqa: ASYNC110
                await trio.sleep(0.01)
            with pytest.raises(scheduler.JobBusy):
                await scheduler.run_once(db, [job], "slow")
            assert await scheduler.run_due(db, job) is None  # leased, and not due anyway
            release.set()
    assert peak == 1


async def test_retention_deletes_old_rows_in_batches_and_keeps_queued_work(db: Database) -> None:
    for age_days, state in [(100, "processed"), (100, "queued"), (10, "failed")]:
        await db.execute(
            "INSERT INTO uisp_webhooks (uuid, event_name, entity, change_type, body, state,"
            " received_at) VALUES (gen_random_uuid(), 'service.suspend', 'service', 'suspend',"
            " '{}', $1, now() - make_interval(days => $2))",
            state,
            age_days,
        )
    task_id = await db.fetchval(
        "INSERT INTO reconnect_tasks (dedupe_key, action, service_id, olt_name, onu)"
        " VALUES ('k', 'activate', 1, 'x', '0/0/0:1') RETURNING id"
    )
    for age in (200, 95, 91, 5):
        await db.execute(
            "INSERT INTO task_events (task_id, kind, at) VALUES ($1, 'x',"
            " now() - make_interval(days => $2))",
            task_id,
            age,
        )
    metrics = Metrics()
    pruned = await retention.prune(
        db, wiring.retention_targets(), keep_days=90, batch_size=2, metrics=metrics
    )
    assert pruned["uisp_webhooks"] == 1  # the old queued one is still waiting to run
    assert pruned["task_events"] == 3  # two batches of at most 2
    assert await db.fetchval("SELECT count(*) FROM task_events") == 1
    assert metrics.retention_pruned.labels("task_events")._value.get() == 3


async def test_the_retention_job_is_declared_and_runs_once_from_the_cli(
    db: Database, db_url: str, tmp_path: Path
) -> None:
    cfg = Config().replace(database=DatabaseConfig(url=db_url), retention=RetentionConfig())
    jobs = wiring.jobs(Deps(cfg, db, Metrics(), EventBus(), Health()))
    assert "retention" in [j.name for j in jobs]
    config = tmp_path / "config.toml"
    config.write_text(f'[database]\nurl = "{db_url}"\n')
    out = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [sys.executable, "-m", "daemon.cli", "jobs", "run", "retention", "-c", str(config)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("retention: pruned 0 row(s) older than 90 days")
    [state] = await scheduler.states(db)
    assert state.name == "retention" and state.runs == 1
    bad = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [sys.executable, "-m", "daemon.cli", "jobs", "run", "nope", "-c", str(config)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    )
    assert bad.returncode == 2 and "unknown job 'nope'" in bad.stderr
    assert "Traceback" not in bad.stderr


async def test_a_run_whose_lease_lapsed_never_touches_the_new_holders_lease(db: Database) -> None:
    async def noop() -> str:
        return "ok"

    job = Job("j", 3600, noop)
    await scheduler.register(db, [job])
    first = await scheduler._claim(db, "j", due_only=False)
    await db.execute("UPDATE scheduled_jobs SET lease_until = now() - interval '1 second'")
    second = await scheduler._claim(db, "j", due_only=False)
    assert first is not None and second is not None and first != second
    await scheduler._finish(db, job, first, "late", None)  # the first run ends, late
    [state] = await scheduler.states(db)
    assert state.lease_until is not None and state.runs == 0  # still the second's
    await scheduler._finish(db, job, second, "ok", None)
    [state] = await scheduler.states(db)
    assert state.lease_until is None and state.runs == 1 and state.last_outcome == "ok"


async def test_an_interrupted_run_keeps_its_due_time(db: Database) -> None:
    started = trio.Event()

    async def forever() -> str:
        started.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    job = Job("slow", 3600, forever)
    await scheduler.register(db, [job])
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(scheduler.run_due, db, job)
            await started.wait()
            nursery.cancel_scope.cancel()  # a shutdown
    [state] = await scheduler.states(db)
    assert state.lease_until is None and state.runs == 0
    assert await scheduler.seconds_until_due(db, ["slow"]) == 0  # due now, not in an hour
