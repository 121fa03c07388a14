"""Periodic jobs whose timing lives in the database (``scheduled_jobs``).

A ``Job`` is a name, an interval and an async function returning a one-line summary.
Its next run time is a row, computed by the database when a run ends (``now() +
interval``), so it survives a restart; a run holds a lease on the row (``lease_until``,
extended while it works), so a job never runs twice at once — not in one process, not in
two, not when an operator runs it from the CLI while the daemon is up.

The ``scheduler`` actor (``daemon.actors.scheduler``) sleeps until the earliest due time
(a trio deadline from the database, not a polling loop) and runs what is due; ``run_once``
is what ``paymentd jobs run NAME`` calls.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from daemon.platform.db import Database, DatabaseError

log = logging.getLogger(__name__)

LEASE_SECONDS = 60.0


@dataclass(frozen=True)
class Job:
    name: str
    interval_seconds: float
    run: Callable[[], Awaitable[str]]  # returns a one-line summary of what it did
    description: str = ""
    # When a job first appears (a new install, an upgrade that adds it), its first run is
    # this long after start-up rather than at once.
    first_run_delay_seconds: float = 0.0


@dataclass(frozen=True)
class JobState:
    name: str
    interval_seconds: float
    next_run_at: dt.datetime
    lease_until: dt.datetime | None
    last_started_at: dt.datetime | None
    last_finished_at: dt.datetime | None
    last_outcome: str | None
    last_error: str | None
    runs: int


class JobBusy(Exception):
    """The job is running right now (its lease is held)."""


class UnknownJob(LookupError):
    pass


class JobLeaseLost(Exception):
    """The run's lease lapsed (the database was unreachable too long); it was stopped."""


async def register(db: Database, jobs: Sequence[Job]) -> None:
    """Make sure every job has its row; a changed interval applies from the next run."""
    for job in jobs:
        await db.execute(
            "INSERT INTO scheduled_jobs (name, interval_seconds, next_run_at)"
            " VALUES ($1, $2, now() + make_interval(secs => $3::float8))"
            " ON CONFLICT (name) DO UPDATE SET interval_seconds = EXCLUDED.interval_seconds",
            job.name,
            float(job.interval_seconds),
            float(job.first_run_delay_seconds),
        )


async def seconds_until_due(db: Database, names: Sequence[str]) -> float | None:
    value = await db.fetchval(
        "SELECT extract(epoch FROM min(greatest(next_run_at, coalesce(lease_until, next_run_at)))"
        " - clock_timestamp())::float8 FROM scheduled_jobs WHERE name = ANY($1::text[])",
        list(names),
    )
    return None if value is None else max(0.0, float(value))


async def _claim(db: Database, name: str, *, due_only: bool) -> str | None:
    """Take the job's lease; the owner token that extends and ends it, or None if busy."""
    owner = secrets.token_hex(8)
    claimed = await db.fetchval(
        "UPDATE scheduled_jobs SET lease_until = clock_timestamp()"
        " + make_interval(secs => $2::float8), lease_owner = $4,"
        " last_started_at = clock_timestamp()"
        " WHERE name = $1 AND (NOT $3 OR next_run_at <= clock_timestamp())"
        " AND (lease_until IS NULL OR lease_until < clock_timestamp()) RETURNING name",
        name,
        LEASE_SECONDS,
        due_only,
        owner,
    )
    return None if claimed is None else owner


async def _finish(
    db: Database, job: Job, owner: str, outcome: str | None, error: str | None
) -> None:
    # Only the lease's owner records the run (one whose lease lapsed must not clear a
    # lease another process holds now).
    await db.execute(
        "UPDATE scheduled_jobs SET lease_until = NULL, lease_owner = NULL,"
        " last_finished_at = clock_timestamp(),"
        " next_run_at = clock_timestamp() + make_interval(secs => interval_seconds),"
        " runs = runs + 1, last_outcome = $2, last_error = $3"
        " WHERE name = $1 AND lease_owner = $4",
        job.name,
        outcome,
        error,
        owner,
    )


async def _release(db: Database, job: Job, owner: str) -> None:
    """An interrupted run gives the lease back and keeps its due time: it runs again soon."""
    await db.execute(
        "UPDATE scheduled_jobs SET lease_until = NULL, lease_owner = NULL"
        " WHERE name = $1 AND lease_owner = $2",
        job.name,
        owner,
    )


async def _keep_lease(db: Database, name: str, owner: str, lost: trio.CancelScope) -> None:
    interval = LEASE_SECONDS / 3
    expires = trio.current_time() + LEASE_SECONDS
    while True:
        await trio.sleep(interval)
        try:
            with trio.fail_after(interval):
                kept = await db.fetchval(
                    "UPDATE scheduled_jobs SET lease_until = clock_timestamp()"
                    " + make_interval(secs => $2::float8) WHERE name = $1 AND lease_owner = $3"
                    " RETURNING name",
                    name,
                    LEASE_SECONDS,
                    owner,
                )
        except (DatabaseError, trio.TooSlowError) as exc:
            if trio.current_time() + interval < expires:
                log.warning("job %s: lease not extended: %s", name, exc)
                continue
            kept = None
        if kept is None:
            # Lapsed (or about to), so another process may run it: this run stops.
            log.warning("job %s: lease lost; stopping this run", name)
            lost.cancel()
            return
        expires = trio.current_time() + LEASE_SECONDS


async def _run_claimed(db: Database, job: Job, owner: str) -> str:
    outcome: str | None = None
    error: Exception | None = None
    finished = False  # ran to an outcome (or an error): record it; otherwise release
    lost = trio.CancelScope()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_keep_lease, db, job.name, owner, lost)
            try:
                with lost:
                    outcome = await job.run()
                    finished = True
            except Exception as exc:  # kept out of the nursery's exception group
                error, finished = exc, True
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.move_on_after(10, shield=True):
            try:
                if finished:
                    text = None if error is None else f"{type(error).__name__}: {error}"
                    await _finish(db, job, owner, outcome, text)
                else:  # cancelled (shutdown) or the lease was lost: runs again soon
                    await _release(db, job, owner)
            except DatabaseError as exc:
                # The lease lapses by itself; the job runs again when it is due.
                log.warning("job %s: outcome not recorded: %s", job.name, exc)
    if error is not None:
        raise error
    if outcome is None:
        raise JobLeaseLost(f"job {job.name!r}: lease lost while running; not recorded")
    return outcome


async def run_due(db: Database, job: Job) -> str | None:
    """Run ``job`` if it is due and not running; its summary, or None if not claimed."""
    owner = await _claim(db, job.name, due_only=True)
    if owner is None:
        return None
    return await _run_claimed(db, job, owner)


async def run_once(db: Database, jobs: Sequence[Job], name: str) -> str:
    """Run a job now, whatever its schedule (``paymentd jobs run NAME``)."""
    by_name = {j.name: j for j in jobs}
    if name not in by_name:
        raise UnknownJob(f"unknown job {name!r} (known: {', '.join(sorted(by_name))})")
    await register(db, jobs)
    owner = await _claim(db, name, due_only=False)
    if owner is None:
        raise JobBusy(f"job {name!r} is running right now; try again when it has finished")
    return await _run_claimed(db, by_name[name], owner)


async def states(db: Database) -> list[JobState]:
    rows: list[Any] = await db.fetch(
        "SELECT name, interval_seconds, next_run_at, lease_until, last_started_at,"
        " last_finished_at, last_outcome, last_error, runs FROM scheduled_jobs ORDER BY name"
    )
    return [JobState(**{k: r[k] for k in JobState.__dataclass_fields__}) for r in rows]
