"""The reconnection task log: rows in ``reconnect_tasks`` plus their append-only events.

Owns the ``reconnect`` queue's name (its producer lives here) and every statement on the
two tables; callers get typed rows. Every state change happens in the caller's
transaction together with the queue operation that goes with it (enqueue, archive), so
the log and the queue never disagree.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from daemon.network import announce
from daemon.platform import queues
from daemon.platform.db import Conn, Database, Executor

QUEUE = "reconnect"  # {"task_id": n}: run the task on its OLT

Action = Literal["activate", "deactivate"]
State = Literal["queued", "running", "succeeded", "failed", "superseded"]
FINAL_STATES = ("succeeded", "failed", "superseded")


@dataclass(frozen=True)
class Task:
    id: int
    dedupe_key: str
    webhook_uuid: uuid.UUID | None
    action: str
    client_id: int | None
    client_name: str | None
    phone: str | None
    service_id: int
    service_name: str | None
    olt_name: str
    onu: str
    # False: an activation that only corrects the network (a drift fix) sends no SMS.
    notify: bool
    state: str
    attempts: int
    last_error: str | None
    olt_output: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    updated_at: dt.datetime


@dataclass(frozen=True)
class TaskEvent:
    at: dt.datetime
    kind: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class TaskSms:
    id: int
    phone: str
    state: str
    attempts: int
    last_error: str | None
    provider: str | None
    provider_ref: str | None
    created_at: dt.datetime
    sent_at: dt.datetime | None


@dataclass(frozen=True)
class TaskDetail:
    """A task with its history and SMS: what the admin API and the console show."""

    task: Task
    events: list[TaskEvent]
    sms: TaskSms | None

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self.task), "events": self.events, "sms": self.sms}


TASK_COLUMNS = ", ".join(f.name for f in fields(Task))


def _task(row: Any) -> Task:
    return Task(**{name: row[name] for name in Task.__dataclass_fields__})


class TaskNotFound(Exception):
    pass


class TaskNotRetryable(Exception):
    def __init__(self, state: str) -> None:
        super().__init__(f"task is {state}; only failed tasks can be retried")
        self.state = state


async def add_event(db: Executor, task_id: int, kind: str, **detail: Any) -> None:
    await db.execute(
        "INSERT INTO task_events (task_id, kind, detail) VALUES ($1, $2, $3::jsonb)",
        task_id,
        kind,
        detail,
    )


async def create(
    tx: Conn,
    *,
    dedupe_key: str,
    webhook_uuid: uuid.UUID | str | None,
    action: str,
    service_id: int,
    olt_name: str,
    onu: str,
    client_id: int | None = None,
    client_name: str | None = None,
    phone: str | None = None,
    service_name: str | None = None,
    notify: bool = True,
) -> int | None:
    """Create a task and queue it; None when a task with this dedupe key already exists.

    ``notify=False``: its activation sends no reconnection SMS (``network.reconnect``).
    Holds the service's lock until ``tx`` ends: a producer that checks "is there a newer
    task?" under that lock (drift's fix) sees this one or comes before it, never between.
    Callers creating tasks of several services lock them in service id order."""
    await lock_service(tx, service_id)
    task_id: int | None = await tx.fetchval(
        "INSERT INTO reconnect_tasks (dedupe_key, webhook_uuid, action, client_id, client_name,"
        " phone, service_id, olt_name, onu, service_name, notify)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        " ON CONFLICT (dedupe_key) DO NOTHING RETURNING id",
        dedupe_key,
        None if webhook_uuid is None else uuid.UUID(str(webhook_uuid)),
        action,
        client_id,
        client_name,
        phone,
        service_id,
        olt_name,
        onu,
        service_name,
        notify,
    )
    if task_id is None:
        return None
    quiet = {} if notify else {"notify": False}
    await add_event(tx, task_id, "queued", action=action, olt=olt_name, onu=onu, **quiet)
    await queues.send(tx, QUEUE, {"task_id": task_id})
    return task_id


async def hurry_waiting(db: Executor, olt_name: str) -> int:
    """Make the device's tasks that wait for a retry run now (its settings changed).

    Only messages nobody holds: deferred ones (never read since they were re-queued) and
    retries whose last read is seconds old; a task being handled is ``running``. A changed
    vt wakes nobody by itself, so the queue's insert channel is notified too.
    """
    hurried: int = await db.fetchval(
        f"""
        WITH hurried AS (
            UPDATE pgmq.q_{QUEUE} q SET vt = clock_timestamp() FROM reconnect_tasks t
            WHERE t.id = (q.message->>'task_id')::bigint AND t.olt_name = $1
              AND t.state = 'queued' AND q.vt > clock_timestamp()
              AND (q.read_ct = 0 OR q.last_read_at < clock_timestamp() - interval '5 seconds')
            RETURNING q.msg_id
        ), n AS (SELECT count(*) AS n FROM hurried)
        SELECT n, CASE WHEN n > 0 THEN pg_notify($2, '') END FROM n
        """,
        olt_name,
        queues.notify_channel(QUEUE),
    )
    return hurried


async def lock(tx: Conn, task_id: int) -> Task | None:
    """The task, locked ``FOR UPDATE`` for the rest of the caller's transaction."""
    row = await tx.fetchrow(
        f"SELECT {TASK_COLUMNS} FROM reconnect_tasks WHERE id = $1 FOR UPDATE", task_id
    )
    return None if row is None else _task(row)


# The two-integer advisory lock keyspace is separate from the daemon's one-bigint locks
# (migrations, instance); 1 names "a service's task outcomes".
_SERVICE_LOCK_CLASS = 1


async def lock_service(tx: Conn, service_id: int) -> None:
    """Serialise one service's task creations and outcome transactions (the one-SMS rule
    reads the service's previous success: two overlapping successes must not both see
    none; drift's fix checks for a newer task and creates its own as one step)."""
    await tx.execute(
        "SELECT pg_advisory_xact_lock($1, ($2::bigint % 2147483647)::int)",
        _SERVICE_LOCK_CLASS,
        service_id,
    )


async def newer_for_service(tx: Executor, task: Task) -> int | None:
    """The newest task for the same service created after ``task``, if any."""
    newer: int | None = await tx.fetchval(
        "SELECT max(id) FROM reconnect_tasks WHERE service_id = $1 AND id > $2",
        task.service_id,
        task.id,
    )
    return newer


async def previous_success(tx: Conn, task: Task) -> tuple[int, str] | None:
    """(id, action) of the service's last succeeded task before ``task``."""
    row = await tx.fetchrow(
        "SELECT id, action FROM reconnect_tasks WHERE service_id = $1 AND id < $2"
        " AND state = 'succeeded' ORDER BY id DESC LIMIT 1",
        task.service_id,
        task.id,
    )
    return None if row is None else (row["id"], row["action"])


async def mark_running(tx: Conn, task_id: int) -> int:
    """Count the attempt and mark the task running; returns the attempt number."""
    attempt: int = await tx.fetchval(
        "UPDATE reconnect_tasks SET state = 'running', attempts = attempts + 1,"
        " started_at = coalesce(started_at, now()), updated_at = now()"
        " WHERE id = $1 RETURNING attempts",
        task_id,
    )
    await add_event(tx, task_id, "running", attempt=attempt)
    return attempt


async def finish(
    tx: Conn,
    task_id: int,
    state: Literal["succeeded", "failed", "superseded"],
    *,
    error: str | None = None,
    output: str | None = None,
) -> None:
    """Record the task's final state; a success or failure is announced in the same ``tx``."""
    row = await tx.fetchrow(
        "UPDATE reconnect_tasks SET state = $2, last_error = $3,"
        " olt_output = coalesce($4, olt_output), finished_at = now(), updated_at = now()"
        " WHERE id = $1 RETURNING " + TASK_COLUMNS,
        task_id,
        state,
        error,
        output,
    )
    if row is not None:
        await announce.task_finished(tx, _task(row))


async def back_to_queued(tx: Conn, task_id: int, *, error: str, attempts: int) -> None:
    await tx.execute(
        "UPDATE reconnect_tasks SET state = 'queued', last_error = $2, attempts = $3,"
        " updated_at = now() WHERE id = $1",
        task_id,
        error,
        attempts,
    )


async def fail_unfinished(tx: Conn, task_id: int, error: str) -> bool:
    """Fail a task that is still queued/running (a dead-lettered message); True if it was."""
    row = await tx.fetchrow(
        "UPDATE reconnect_tasks SET state = 'failed', finished_at = now(), updated_at = now(),"
        " last_error = $2 WHERE id = $1 AND state IN ('queued', 'running')"
        " RETURNING " + TASK_COLUMNS,
        task_id,
        error,
    )
    if row is None:
        return False
    await announce.task_finished(tx, _task(row))
    return True


async def reset_for_retry(tx: Conn, task_id: int, *, by: str | None = None) -> Task:
    """Put a failed task back to queued with fresh attempts (no message sent here)."""
    row = await tx.fetchrow("SELECT state FROM reconnect_tasks WHERE id = $1 FOR UPDATE", task_id)
    if row is None:
        raise TaskNotFound(task_id)
    if row["state"] != "failed":
        raise TaskNotRetryable(row["state"])
    updated = await tx.fetchrow(
        "UPDATE reconnect_tasks SET state = 'queued', attempts = 0, last_error = NULL,"
        " finished_at = NULL, updated_at = now() WHERE id = $1 RETURNING " + TASK_COLUMNS,
        task_id,
    )
    await add_event(tx, task_id, "retry_requested", **({} if by is None else {"by": by}))
    return _task(updated)


async def retry(db: Database, task_id: int, *, by: str | None = None) -> Task:
    """Put a failed task back in the queue (admin action). Returns the updated task."""
    async with db.transaction() as tx:
        task = await reset_for_retry(tx, task_id, by=by)
        await queues.send(tx, QUEUE, {"task_id": task_id})
    return task


async def get(db: Executor, task_id: int) -> TaskDetail | None:
    row = await db.fetchrow(f"SELECT {TASK_COLUMNS} FROM reconnect_tasks WHERE id = $1", task_id)
    if row is None:
        return None
    events = await db.fetch(
        "SELECT at, kind, detail FROM task_events WHERE task_id = $1 ORDER BY id", task_id
    )
    sms = await db.fetchrow(
        "SELECT id, phone, state, attempts, last_error, provider, provider_ref, created_at,"
        " sent_at FROM sms_messages WHERE task_id = $1",
        task_id,
    )
    return TaskDetail(
        _task(row),
        [TaskEvent(e["at"], e["kind"], e["detail"]) for e in events],
        None if sms is None else TaskSms(**{k: sms[k] for k in TaskSms.__dataclass_fields__}),
    )


async def list_recent(
    db: Executor,
    *,
    state: str | None = None,
    limit: int = 50,
    before_id: int | None = None,
    service_id: int | None = None,
    olt_name: str | None = None,
    action: str | None = None,
) -> list[Task]:
    """Newest first; every filter is optional (``paymentd tasks list``, ``GET /api/v1/tasks``)."""
    rows = await db.fetch(
        f"SELECT {TASK_COLUMNS} FROM reconnect_tasks"
        " WHERE ($1::text IS NULL OR state = $1) AND ($2::bigint IS NULL OR id < $2)"
        " AND ($4::bigint IS NULL OR service_id = $4) AND ($5::text IS NULL OR olt_name = $5)"
        " AND ($6::text IS NULL OR action = $6)"
        " ORDER BY id DESC LIMIT $3",
        state,
        before_id,
        limit,
        service_id,
        olt_name,
        action,
    )
    return [_task(r) for r in rows]


# -- what drift reconciliation asks (daemon/network/drift.py) -------------------------


@dataclass(frozen=True)
class Applied:
    """The service's last succeeded task: what paymentd last did to which ONU."""

    task_id: int
    state: Literal["active", "deactivated"]
    olt_name: str
    onu: str


async def applied_states(db: Executor) -> dict[int, Applied]:
    """Per service, its last succeeded task (one indexed pass over the task log)."""
    rows = await db.fetch(
        "SELECT DISTINCT ON (service_id) service_id, id, action, olt_name, onu"
        " FROM reconnect_tasks WHERE state = 'succeeded' ORDER BY service_id, id DESC"
    )
    return {
        r["service_id"]: Applied(
            r["id"],
            "active" if r["action"] == "activate" else "deactivated",
            r["olt_name"],
            r["onu"],
        )
        for r in rows
    }


async def in_flight(db: Executor) -> set[int]:
    """Services with a task queued or running: already converging, not drift."""
    rows = await db.fetch(
        "SELECT DISTINCT service_id FROM reconnect_tasks WHERE state IN ('queued', 'running')"
    )
    return {r["service_id"] for r in rows}


async def newest_id(db: Executor, service_id: int | None = None) -> int:
    """The newest task's id (of one service, or of all); 0 when there is none."""
    newest: int = await db.fetchval(
        "SELECT coalesce(max(id), 0) FROM reconnect_tasks"
        " WHERE $1::bigint IS NULL OR service_id = $1",
        service_id,
    )
    return newest


async def services_with_tasks_after(db: Executor, task_id: int) -> set[int]:
    """Services with a task newer than ``task_id`` (created since a drift run began)."""
    rows = await db.fetch("SELECT DISTINCT service_id FROM reconnect_tasks WHERE id > $1", task_id)
    return {r["service_id"] for r in rows}


@dataclass(frozen=True)
class LoggedEvent:
    """One ``task_events`` row, for a live tail of the whole log (``paymentd tasks follow``)."""

    id: int
    task_id: int
    at: dt.datetime
    kind: str
    detail: dict[str, Any]


async def events_after(
    db: Executor, after_id: int, *, task_id: int | None = None, limit: int = 500
) -> list[LoggedEvent]:
    """History rows with an id above ``after_id``, oldest first."""
    rows = await db.fetch(
        "SELECT id, task_id, at, kind, detail FROM task_events"
        " WHERE id > $1 AND ($2::bigint IS NULL OR task_id = $2) ORDER BY id LIMIT $3",
        after_id,
        task_id,
        limit,
    )
    return [LoggedEvent(r["id"], r["task_id"], r["at"], r["kind"], r["detail"]) for r in rows]


async def last_event_id(db: Executor) -> int:
    """Where a tail that shows only what happens from now on starts."""
    last: int = await db.fetchval("SELECT coalesce(max(id), 0) FROM task_events")
    return last
