"""The Stripe event store: rows in ``stripe_events`` and the ``stripe_events`` queue.

Owns the queue's name and every statement on the table. An event is stored and queued in
one statement (``store``): a Stripe event id seen before only counts one more delivery,
so Stripe's redeliveries and duplicates are processed once. States: ``queued`` (a
message is on the queue), ``processed`` (its object was re-read from Stripe and applied,
or there was nothing to apply: ``outcome`` says which), ``failed`` (gave up; ``outcome``
says why). A failed event that Stripe delivers again is queued again.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

from daemon.platform.db import Conn, Executor

QUEUE = "stripe_events"  # {"event_id": "evt_…"}: re-fetch the event's object, apply it

State = Literal["queued", "processed", "failed"]
Stored = Literal["queued", "requeued", "duplicate"]


@dataclass(frozen=True)
class StripeEvent:
    event_id: str
    type: str
    object_type: str | None
    object_id: str | None
    livemode: bool
    stripe_created: dt.datetime
    received_at: dt.datetime
    deliveries: int
    state: str
    attempts: int
    processed_at: dt.datetime | None
    outcome: str | None


_COLUMNS = ", ".join(StripeEvent.__dataclass_fields__)


def _event(row: Any) -> StripeEvent:
    return StripeEvent(**{name: row[name] for name in StripeEvent.__dataclass_fields__})


# One statement, its own transaction: a new event id is stored and queued; a known one
# counts a delivery, and is queued again only if it had failed.
STORE_SQL = f"""
WITH prior AS (
    SELECT state FROM stripe_events WHERE event_id = $1
), stored AS (
    INSERT INTO stripe_events
        (event_id, type, object_type, object_id, livemode, stripe_created, body)
    VALUES ($1, $2, $3, $4, $5, to_timestamp($6), $7::jsonb)
    ON CONFLICT (event_id) DO UPDATE SET
        deliveries = stripe_events.deliveries + 1,
        state = CASE WHEN stripe_events.state = 'failed' THEN 'queued'
                     ELSE stripe_events.state END,
        attempts = CASE WHEN stripe_events.state = 'failed' THEN 0
                        ELSE stripe_events.attempts END
    RETURNING (xmax = 0) AS inserted
), outcome AS (
    SELECT CASE WHEN s.inserted THEN 'queued'
                WHEN (SELECT state FROM prior) = 'failed' THEN 'requeued'
                ELSE 'duplicate' END AS outcome
    FROM stored s
)
SELECT o.outcome,
       CASE WHEN o.outcome <> 'duplicate'
            THEN (SELECT pgmq.send('{QUEUE}', jsonb_build_object('event_id', $1::text)))
       END
FROM outcome o
"""


async def store(db: Executor, event: dict[str, Any]) -> Stored:
    """Record one verified event body; ``queued``, ``requeued`` (had failed) or ``duplicate``."""
    obj = (event.get("data") or {}).get("object") or {}
    outcome: Stored = await db.fetchval(
        STORE_SQL,
        event["id"],
        event["type"],
        obj.get("object"),
        obj.get("id"),
        bool(event.get("livemode", False)),
        float(event["created"]),
        event,
    )
    return outcome


async def get(db: Executor, event_id: str) -> StripeEvent | None:
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM stripe_events WHERE event_id = $1", event_id)
    return None if row is None else _event(row)


async def body(db: Executor, event_id: str) -> dict[str, Any] | None:
    value: dict[str, Any] | None = await db.fetchval(
        "SELECT body FROM stripe_events WHERE event_id = $1", event_id
    )
    return value


async def count_attempt(tx: Conn, event_id: str) -> int:
    attempts: int = await tx.fetchval(
        "UPDATE stripe_events SET attempts = attempts + 1 WHERE event_id = $1 RETURNING attempts",
        event_id,
    )
    return attempts


async def record_outcome(tx: Conn, event_id: str, state: State, outcome: str) -> None:
    await tx.execute(
        "UPDATE stripe_events SET state = $2, processed_at = now(), outcome = $3"
        " WHERE event_id = $1",
        event_id,
        state,
        outcome,
    )


async def fail_unfinished(tx: Conn, event_id: str, reason: str) -> None:
    """A poison message: the event is marked failed (Stripe's redelivery re-queues it)."""
    await tx.execute(
        "UPDATE stripe_events SET state = 'failed', processed_at = now(), outcome = $2"
        " WHERE event_id = $1 AND state = 'queued'",
        event_id,
        f"error: {reason}",
    )


async def mark_queued(tx: Conn, event_id: str) -> None:
    """Back to queued (a dead-letter replay; the caller sends the message)."""
    await tx.execute(
        "UPDATE stripe_events SET state = 'queued', attempts = 0, processed_at = NULL"
        " WHERE event_id = $1",
        event_id,
    )


async def count(db: Executor) -> int:
    n: int = await db.fetchval("SELECT count(*) FROM stripe_events")
    return n
