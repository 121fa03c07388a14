"""The UISP webhook store: rows in ``uisp_webhooks`` and the ``uisp_events`` queue.

Owns the queue's name and every statement on the table (intake's one-statement store,
outcomes, redelivery and replay); callers get typed rows.

States: ``queued`` (stored, a message is on the queue), ``processed`` (decided: tasks
created, or ignored/rejected with a reason), ``failed`` (could not be decided — UISP
unreachable past the retry window, a permanent API error, a poison message). A failed
webhook is queued again when UISP delivers it again or an operator replays it; a replay
may re-run any stored webhook.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from daemon.platform import queues
from daemon.platform.db import Conn, Executor

QUEUE = "uisp_events"  # {"uuid": "..."}: decide what a stored webhook means

State = Literal["queued", "processed", "failed"]


@dataclass(frozen=True)
class Webhook:
    uuid: uuid.UUID
    event_name: str
    entity: str
    entity_id: int | None
    change_type: str
    received_at: dt.datetime
    queued_at: dt.datetime
    deliveries: int
    state: str
    attempts: int
    replays: int
    processed_at: dt.datetime | None
    outcome: str | None
    last_error: str | None


_COLUMNS = ", ".join(Webhook.__dataclass_fields__)


def _webhook(row: Any) -> Webhook:
    return Webhook(**{name: row[name] for name in Webhook.__dataclass_fields__})


# Intake in one statement (its own transaction): a new uuid is stored and queued; a known
# uuid counts one more delivery, and if it had failed it is queued again (UISP resending
# an event we could not process is the best news we can get about it).
STORE_SQL = f"""
WITH prior AS (
    SELECT state FROM uisp_webhooks WHERE uuid = $1
), stored AS (
    INSERT INTO uisp_webhooks (uuid, event_name, entity, entity_id, change_type, body)
    VALUES ($1, $2, $3, $4, $5, $6::jsonb)
    ON CONFLICT (uuid) DO UPDATE SET
        deliveries = uisp_webhooks.deliveries + 1,
        state = CASE WHEN uisp_webhooks.state = 'failed' THEN 'queued'
                     ELSE uisp_webhooks.state END,
        queued_at = CASE WHEN uisp_webhooks.state = 'failed' THEN now()
                         ELSE uisp_webhooks.queued_at END,
        attempts = CASE WHEN uisp_webhooks.state = 'failed' THEN 0
                        ELSE uisp_webhooks.attempts END
    RETURNING (xmax = 0) AS inserted
), outcome AS (
    SELECT CASE WHEN s.inserted THEN 'queued'
                WHEN (SELECT state FROM prior) = 'failed' THEN 'requeued'
                ELSE 'duplicate' END AS outcome
    FROM stored s
)
SELECT o.outcome,
       CASE WHEN o.outcome <> 'duplicate'
            THEN (SELECT pgmq.send('{QUEUE}', jsonb_build_object('uuid', $1::text)))
       END
FROM outcome o
"""


async def store(
    db: Executor,
    webhook_uuid: uuid.UUID,
    event_name: str,
    entity: str,
    entity_id: int | None,
    change_type: str,
    body: dict[str, Any],
) -> str:
    """Record a delivery; returns ``queued`` (new), ``requeued`` (had failed) or ``duplicate``."""
    outcome: str = await db.fetchval(
        STORE_SQL, webhook_uuid, event_name, entity, entity_id, change_type, body
    )
    return outcome


async def get(db: Executor, webhook_uuid: str | uuid.UUID) -> Webhook | None:
    row = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM uisp_webhooks WHERE uuid = $1::uuid", str(webhook_uuid)
    )
    return None if row is None else _webhook(row)


async def count_attempt(tx: Conn, webhook_uuid: uuid.UUID, error: str) -> int:
    attempts: int = await tx.fetchval(
        "UPDATE uisp_webhooks SET attempts = attempts + 1, last_error = $2"
        " WHERE uuid = $1 RETURNING attempts",
        webhook_uuid,
        error,
    )
    return attempts


async def record_outcome(tx: Conn, webhook: Webhook, state: State, outcome: str) -> bool:
    """Record the decision on the webhook as it was read; False if it was replayed meanwhile.

    Conditional on the replay count the handler read, so a replay that arrived while it
    was deciding stays queued for its own message instead of being swallowed.
    """
    status = await tx.execute(
        "UPDATE uisp_webhooks SET state = $2, processed_at = now(), outcome = $3,"
        " last_error = CASE WHEN $2 = 'failed' THEN $3 ELSE last_error END"
        " WHERE uuid = $1::uuid AND replays = $4",
        str(webhook.uuid),
        state,
        outcome,
        webhook.replays,
    )
    return status.endswith(" 1")


async def fail_unfinished(tx: Conn, webhook_uuid: str, reason: str) -> None:
    await tx.execute(
        "UPDATE uisp_webhooks SET state = 'failed', processed_at = now(), outcome = $2,"
        " last_error = $2 WHERE uuid = $1::uuid AND state = 'queued'",
        webhook_uuid,
        f"error: {reason}",
    )


async def mark_queued(tx: Conn, webhook_uuid: str) -> None:
    """Back to queued (no message sent: the caller sends one)."""
    await tx.execute(
        "UPDATE uisp_webhooks SET state = 'queued', queued_at = now(), attempts = 0,"
        " processed_at = NULL WHERE uuid = $1::uuid",
        webhook_uuid,
    )


class WebhookNotFound(LookupError):
    pass


async def requeue(tx: Conn, webhook_uuid: str, *, replay: bool) -> Webhook:
    """Queue a stored webhook again (an operator replay, or a dead-letter replay)."""
    row = await tx.fetchrow(
        "UPDATE uisp_webhooks SET state = 'queued', queued_at = now(), attempts = 0,"
        " processed_at = NULL, replays = replays + $2::int WHERE uuid = $1::uuid"
        f" RETURNING {_COLUMNS}",
        webhook_uuid,
        1 if replay else 0,
    )
    if row is None:
        raise WebhookNotFound(webhook_uuid)
    await queues.send(tx, QUEUE, {"uuid": str(webhook_uuid)})
    return _webhook(row)


async def list_recent(
    db: Executor,
    *,
    state: str | None = None,
    limit: int = 50,
    before: dt.datetime | None = None,
) -> list[Webhook]:
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM uisp_webhooks"
        " WHERE ($1::text IS NULL OR state = $1) AND ($2::timestamptz IS NULL OR received_at < $2)"
        " ORDER BY received_at DESC LIMIT $3",
        state,
        before,
        limit,
    )
    return [_webhook(r) for r in rows]
