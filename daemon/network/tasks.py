"""The reconnection task log: rows in ``reconnect_tasks`` plus their append-only events.

Every state change happens in the caller's transaction together with the queue operation
that goes with it (enqueue, archive), so the log and the queues never disagree.
"""

from __future__ import annotations

import uuid
from typing import Any

from daemon.platform import queues
from daemon.platform.db import Conn, Database, Executor, Record

TASK_COLUMNS = (
    "id, dedupe_key, webhook_uuid, action, client_id, client_name, phone, service_id, "
    "service_name, "
    "olt_name, onu, state, attempts, last_error, olt_output, created_at, started_at, "
    "finished_at, updated_at"
)


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
) -> int | None:
    """Create a task and queue it; None when a task with this dedupe key already exists."""
    task_id: int | None = await tx.fetchval(
        "INSERT INTO reconnect_tasks (dedupe_key, webhook_uuid, action, client_id, client_name,"
        " phone, service_id, olt_name, onu, service_name)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
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
    )
    if task_id is None:
        return None
    await add_event(tx, task_id, "queued", action=action, olt=olt_name, onu=onu)
    await queues.send(tx, queues.RECONNECT, {"task_id": task_id})
    return task_id


async def retry(db: Database, task_id: int) -> Record:
    """Put a failed task back in the queue (admin action). Returns the updated row."""
    async with db.transaction() as tx:
        row = await tx.fetchrow(
            "SELECT state FROM reconnect_tasks WHERE id = $1 FOR UPDATE", task_id
        )
        if row is None:
            raise TaskNotFound(task_id)
        if row["state"] != "failed":
            raise TaskNotRetryable(row["state"])
        updated = await tx.fetchrow(
            "UPDATE reconnect_tasks SET state = 'queued', attempts = 0, last_error = NULL,"
            " finished_at = NULL, updated_at = now() WHERE id = $1 RETURNING " + TASK_COLUMNS,
            task_id,
        )
        await add_event(tx, task_id, "retry_requested")
        await queues.send(tx, queues.RECONNECT, {"task_id": task_id})
    assert updated is not None
    return updated


async def get(db: Executor, task_id: int) -> dict[str, Any] | None:
    row = await db.fetchrow(f"SELECT {TASK_COLUMNS} FROM reconnect_tasks WHERE id = $1", task_id)
    if row is None:
        return None
    task = dict(row)
    events = await db.fetch(
        "SELECT at, kind, detail FROM task_events WHERE task_id = $1 ORDER BY id", task_id
    )
    task["events"] = [dict(e) for e in events]
    sms = await db.fetchrow(
        "SELECT id, phone, state, attempts, last_error, provider, provider_ref, created_at,"
        " sent_at FROM sms_messages WHERE task_id = $1",
        task_id,
    )
    task["sms"] = None if sms is None else dict(sms)
    return task


async def list_recent(
    db: Executor, *, state: str | None = None, limit: int = 50, before_id: int | None = None
) -> list[dict[str, Any]]:
    rows = await db.fetch(
        f"SELECT {TASK_COLUMNS} FROM reconnect_tasks"
        " WHERE ($1::text IS NULL OR state = $1) AND ($2::bigint IS NULL OR id < $2)"
        " ORDER BY id DESC LIMIT $3",
        state,
        before_id,
        limit,
    )
    return [dict(r) for r in rows]
