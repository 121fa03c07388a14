"""The event outbox: ``emit(tx, type, data)`` inside the transaction that made the change.

An event exists exactly when the change it describes committed (same transaction), so a
partner is never told about a change that rolled back and never misses one that
committed. ``EVENT_TYPES`` is the one list of what can be announced; the outbound
webhook dispatcher (``daemon.webhooks``) fans events out to endpoints and the OpenAPI
document lists them. Capabilities call ``emit``; nothing here knows about payments or
networks.

Each inserted event is also put, as ``{"event_id"}``, on the ``QUEUE`` PGMQ queue in the
same transaction — by a trigger on ``events`` (migration 016), so the SQL entry point's
events get it too: that is what makes the fan-out durable (a crash before it ran leaves
the message) and prompt (the listener wakes its consumer on the insert), without anyone
polling the events table.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from daemon.platform.db import Conn

# The fan-out queue: {"event_id": ...} per emitted event, or {"nudge": why} when webhook
# deliveries became due without a new event (an operator's retry). Declared in
# daemon.wiring.QUEUES, handled by daemon.webhooks.fanout; the name is also in migration
# 016's trigger.
QUEUE = "event_fanout"

# type -> what it means. Adding an event type is one line here.
EVENT_TYPES: dict[str, str] = {
    "payment.created": "A payment was accepted and stored.",
    "payment.pending": "The provider holds the payment; the customer has to act (pay, confirm).",
    "payment.succeeded": "The payment is paid (captured).",
    "payment.failed": "The provider declined or failed the payment.",
    "payment.canceled": "The payment was cancelled before it was paid.",
    "payment.expired": "The payment stayed pending past its time to live and was cancelled.",
    "payment.refunded": "Refunds now cover the whole captured amount.",
    "refund.created": "A refund was requested.",
    "refund.succeeded": "A refund went through.",
    "refund.failed": "A refund failed at the provider.",
    "reconnection.succeeded": "A customer's ONU was activated on the OLT.",
    "reconnection.failed": "A customer's ONU could not be activated; retries are exhausted.",
    "disconnection.succeeded": "A customer's ONU was deactivated on the OLT.",
    "disconnection.failed": "A customer's ONU could not be deactivated; retries are exhausted.",
    "sms.sent": "An SMS to a customer was accepted by the provider.",
    "sms.failed": "An SMS to a customer could not be sent.",
    "endpoint.disabled": "A webhook endpoint was disabled (410 Gone, or failing too long);"
    " only for endpoints subscribed to it by name.",
    "webhook.test": "A test event, sent on request to one endpoint.",
}


class UnknownEventType(ValueError):
    """``emit`` was given a type not in ``EVENT_TYPES`` (a programming error)."""


@dataclass(frozen=True)
class Event:
    id: str
    seq: int
    type: str
    occurred_at: datetime
    subject: str | None
    data: dict[str, Any]

    def payload(self) -> dict[str, Any]:
        """The body partners receive: ``{"id", "type", "timestamp", "data"}``."""
        return {
            "id": self.id,
            "type": self.type,
            "timestamp": self.occurred_at.isoformat().replace("+00:00", "Z"),
            "data": self.data,
        }


def new_event_id() -> str:
    return "evt_" + secrets.token_hex(16)


async def emit(
    tx: Conn, type: str, data: Mapping[str, Any], *, subject: str | None = None
) -> Event:
    """Record one event in ``tx`` (the caller's transaction); returns it.

    ``data`` must be JSON-serialisable and must not hold secrets: it is sent to partners.
    """
    if type not in EVENT_TYPES:
        raise UnknownEventType(f"unknown event type {type!r}; declare it in EVENT_TYPES")
    row = await tx.fetchrow(
        "INSERT INTO events (id, type, subject, data) VALUES ($1, $2, $3, $4::jsonb)"
        " RETURNING id, seq, type, occurred_at, subject, data",
        new_event_id(),
        type,
        subject,
        dict(data),
    )
    assert row is not None  # the trigger has queued it for the fan-out
    return _event(row)


def _event(row: Any) -> Event:
    return Event(
        row["id"], row["seq"], row["type"], row["occurred_at"], row["subject"], dict(row["data"])
    )


async def get(db: Any, event_id: str) -> Event | None:
    row = await db.fetchrow(
        "SELECT id, seq, type, occurred_at, subject, data FROM events WHERE id = $1", event_id
    )
    return None if row is None else _event(row)
