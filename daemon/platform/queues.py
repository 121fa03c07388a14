"""PGMQ operations over the asyncpg bridge.

Queue names are lowercase on purpose: PGMQ 1.13.0 never notifies for mixed-case names.
``read`` bumps ``read_ct``, which is our attempt counter; archive/set_vt are keyed by
``msg_id`` only, so a handler that works longer than the visibility timeout must extend it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from daemon.platform.db import Executor

UISP_EVENTS = "uisp_events"  # webhook uuid -> decide what to do
RECONNECT = "reconnect"  # reconnect task id -> OLT activate/deactivate
SMS = "sms"  # sms id -> provider
ALL = (UISP_EVENTS, RECONNECT, SMS)


def notify_channel(queue: str) -> str:
    """The channel pgmq.enable_notify_insert notifies (quote it in LISTEN)."""
    return f"pgmq.q_{queue}.INSERT"


@dataclass(frozen=True)
class Message:
    msg_id: int
    read_ct: int
    enqueued_at: dt.datetime
    vt: dt.datetime
    message: dict[str, Any]


async def send(db: Executor, queue: str, message: dict[str, Any], delay_seconds: int = 0) -> int:
    msg_id: int = await db.fetchval(
        "SELECT * FROM pgmq.send($1::text, $2::jsonb, $3::integer)", queue, message, delay_seconds
    )
    return msg_id


async def read(db: Executor, queue: str, vt_seconds: int, qty: int) -> list[Message]:
    rows = await db.fetch(
        "SELECT msg_id, read_ct, enqueued_at, vt, message"
        " FROM pgmq.read($1::text, $2::integer, $3::integer)",
        queue,
        vt_seconds,
        qty,
    )
    return [
        Message(r["msg_id"], r["read_ct"], r["enqueued_at"], r["vt"], r["message"]) for r in rows
    ]


async def archive(db: Executor, queue: str, msg_id: int) -> bool:
    ok: bool = await db.fetchval("SELECT pgmq.archive($1::text, $2::bigint)", queue, msg_id)
    return ok


async def set_vt(db: Executor, queue: str, msg_id: int, seconds: float) -> None:
    """Make the message visible again ``seconds`` from now (retry backoff, or extend work)."""
    await db.execute(
        "SELECT msg_id FROM pgmq.set_vt($1::text, $2::bigint,"
        " clock_timestamp() + make_interval(secs => $3::float8))",
        queue,
        msg_id,
        float(seconds),
    )


async def seconds_until_next_visible(db: Executor, queue: str) -> float | None:
    """Seconds until the earliest invisible message becomes readable; None if the queue is empty.

    This is what turns retry backoff and visibility timeouts into trio deadlines instead of a
    polling loop. 0 means something is readable now.
    """
    value = await db.fetchval(
        "SELECT extract(epoch FROM min(vt) - clock_timestamp())::float8"
        f" FROM pgmq.q_{_ident(queue)}"
    )
    if value is None:
        return None
    return max(0.0, float(value))


# Which invisible messages were being worked on when the daemon stopped, judged by the
# state of the row they carry; a message delayed on purpose (retry backoff) stays delayed.
_IN_FLIGHT = {
    UISP_EVENTS: "SELECT 1 FROM uisp_webhooks w"
    " WHERE w.uuid = (q.message->>'uuid')::uuid AND w.processed_at IS NULL",
    RECONNECT: "SELECT 1 FROM reconnect_tasks t"
    " WHERE t.id = (q.message->>'task_id')::bigint AND t.state = 'running'",
    SMS: "SELECT 1 FROM sms_messages s"
    " WHERE s.id = (q.message->>'sms_id')::bigint AND s.state = 'sending'",
}


async def release_in_flight(db: Executor, queue: str) -> int:
    """Make the messages that were in flight at the last stop visible now.

    Only safe because one daemon at a time holds the instance lock (see the listener): at
    start-up nothing can still be working on them, so a crash costs no visibility-timeout
    wait. UISP events are always released (their only delay is a UISP outage backoff).
    """
    status = await db.execute(
        f"UPDATE pgmq.q_{_ident(queue)} q SET vt = clock_timestamp()"
        f" WHERE q.vt > clock_timestamp() AND EXISTS ({_IN_FLIGHT[queue]})"
    )
    return int(status.split()[-1])


@dataclass(frozen=True)
class QueueStats:
    queue: str
    depth: int
    oldest_age_seconds: float | None
    total_messages: int


async def stats(db: Executor, queue: str) -> QueueStats:
    row = await db.fetchrow(
        "SELECT queue_length, oldest_msg_age_sec, total_messages FROM pgmq.metrics($1::text)", queue
    )
    assert row is not None
    age = row["oldest_msg_age_sec"]
    return QueueStats(
        queue,
        int(row["queue_length"]),
        None if age is None else float(age),
        int(row["total_messages"]),
    )


def _ident(queue: str) -> str:
    if queue not in ALL:
        raise ValueError(f"unknown queue {queue!r}")
    return queue
