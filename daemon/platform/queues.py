"""PGMQ operations over the asyncpg bridge, and the shape of a queue declaration.

Queue names are lowercase on purpose: PGMQ 1.13.0 never notifies for mixed-case names.
``read`` bumps ``read_ct``, which counts deliveries; archive/set_vt are keyed by
``msg_id`` only, so a handler holds a short *lease* (the message's ``vt``) and extends it
while it works (``extend_lease``, conditional on the vt it last saw, so an extension can
never undo a retry delay the handler just set, nor steal a message another reader took).

Which queues exist is not decided here: each capability names its queue next to its
producer (``daemon.network.tasks.QUEUE`` …) and ``daemon.wiring.QUEUES`` declares them
once; migrations, the listener, wake-ups and the composition root take the names from
that list.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from daemon.platform.db import Conn, Executor

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,40}$")


def check_name(queue: str) -> str:
    """Queue names go into SQL identifiers (``pgmq.q_<name>``): lowercase words only."""
    if not _NAME.fullmatch(queue):
        raise ValueError(f"invalid queue name {queue!r}")
    return queue


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


# What a message that exhausted its deliveries means for its domain rows (e.g. the task
# it carried is marked failed), run in the transaction that dead-letters it.
PoisonHandler = Callable[[Conn, Message, str], Awaitable[None]]
# What replaying a dead-lettered message resets in its domain rows (e.g. the task goes
# back to queued), run in the transaction that sends the message again.
ReplayHandler = Callable[[Conn, dict[str, Any]], Awaitable[None]]


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
    """Make the message visible again ``seconds`` from now (a retry backoff)."""
    await db.execute(
        "SELECT msg_id FROM pgmq.set_vt($1::text, $2::bigint,"
        " clock_timestamp() + make_interval(secs => $3::float8))",
        queue,
        msg_id,
        float(seconds),
    )


async def requeue(db: Executor, queue: str, msg: Message, delay_seconds: float) -> int:
    """Replace ``msg`` by a fresh copy visible in ``delay_seconds`` (archive + send).

    For deliberate, open-ended retries (a UISP outage, an open circuit breaker): the new
    message starts with ``read_ct`` 0, so waiting out an outage never counts towards the
    poison threshold, which is meant for handlers that crash. Use inside the transaction
    that records why.
    """
    await archive(db, queue, msg.msg_id)
    return await send(db, queue, msg.message, max(0, round(delay_seconds)))


async def extend_lease(
    db: Executor, queue: str, msg_id: int, held_vt: dt.datetime, seconds: float
) -> dt.datetime | None:
    """Push the message's vt to ``seconds`` from now, if it still is ``held_vt``.

    Returns the new vt, or None when the lease is no longer ours to extend: the handler
    archived the message or set a retry delay (the vt changed), or the lease lapsed and
    another reader took it. Conditional on the vt, so a late extension never overwrites
    a retry delay written by the handler's own (committed) transaction.
    """
    new_vt: dt.datetime | None = await db.fetchval(
        f"UPDATE pgmq.q_{check_name(queue)} SET vt = clock_timestamp()"
        " + make_interval(secs => $3::float8) WHERE msg_id = $1 AND vt = $2 RETURNING vt",
        msg_id,
        held_vt,
        float(seconds),
    )
    return new_vt


async def seconds_until_next_visible(db: Executor, queue: str) -> float | None:
    """Seconds until the earliest invisible message becomes readable; None if the queue is empty.

    This is what turns retry backoff and lapsed leases into trio deadlines instead of a
    polling loop. 0 means something is readable now.
    """
    value = await db.fetchval(
        "SELECT extract(epoch FROM min(vt) - clock_timestamp())::float8"
        f" FROM pgmq.q_{check_name(queue)}"
    )
    if value is None:
        return None
    return max(0.0, float(value))


def readable_sql(names: Sequence[str]) -> str:
    """One statement answering, per queue, whether a message is readable right now."""
    checks = ", ".join(
        f"EXISTS (SELECT 1 FROM pgmq.q_{check_name(q)} WHERE vt <= clock_timestamp())"
        for q in names
    )
    return f"SELECT ARRAY[{checks}]::boolean[]"


async def rearm_notify(db: Executor, names: Sequence[str], throttle_ms: int) -> int:
    """Put back the notify-throttle rows a PostgreSQL crash emptied; returns how many.

    ``pgmq.notify_insert_throttle`` is UNLOGGED: after a crash restart it is empty and
    PGMQ's insert trigger, finding no row, never notifies again. This only inserts the
    missing rows (no DDL, unlike ``enable_notify_insert``), so it is cheap enough for the
    listener to run on every (re)connect.
    """
    status = await db.execute(
        "INSERT INTO pgmq.notify_insert_throttle (queue_name, throttle_interval_ms)"
        " SELECT q, $2::integer FROM unnest($1::text[]) AS q"
        " ON CONFLICT (queue_name) DO NOTHING",
        list(names),
        throttle_ms,
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


# --- dead letters ---------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetter:
    """A message that exhausted its deliveries: kept with its reason until replayed."""

    id: int
    queue: str
    msg_id: int
    message: dict[str, Any]
    deliveries: int
    reason: str
    failed_at: dt.datetime
    replayed_at: dt.datetime | None


_DEAD_COLUMNS = "id, queue, msg_id, message, deliveries, reason, failed_at, replayed_at"


def _dead(row: Any) -> DeadLetter:
    return DeadLetter(
        row["id"],
        row["queue"],
        row["msg_id"],
        row["message"],
        row["deliveries"],
        row["reason"],
        row["failed_at"],
        row["replayed_at"],
    )


async def dead_letter(tx: Conn, queue: str, msg: Message, reason: str) -> int:
    """Archive ``msg`` and record it as failed, in the caller's transaction."""
    await archive(tx, queue, msg.msg_id)
    dead_id: int = await tx.fetchval(
        "INSERT INTO failed_messages (queue, msg_id, message, deliveries, reason)"
        " VALUES ($1, $2, $3::jsonb, $4, $5) RETURNING id",
        queue,
        msg.msg_id,
        msg.message,
        msg.read_ct,
        reason,
    )
    return dead_id


async def list_dead(
    db: Executor,
    *,
    queue: str | None = None,
    include_replayed: bool = False,
    limit: int = 50,
    before_id: int | None = None,
) -> list[DeadLetter]:
    rows = await db.fetch(
        f"SELECT {_DEAD_COLUMNS} FROM failed_messages"
        " WHERE ($1::text IS NULL OR queue = $1) AND ($2 OR replayed_at IS NULL)"
        " AND ($3::bigint IS NULL OR id < $3) ORDER BY id DESC LIMIT $4",
        queue,
        include_replayed,
        before_id,
        limit,
    )
    return [_dead(r) for r in rows]


async def count_dead(db: Executor) -> dict[str, int]:
    """Dead letters not yet replayed, per queue (the ``paymentd_dead_letters`` gauge)."""
    rows = await db.fetch(
        "SELECT queue, count(*) AS n FROM failed_messages WHERE replayed_at IS NULL GROUP BY queue"
    )
    return {r["queue"]: int(r["n"]) for r in rows}


class DeadLetterNotFound(LookupError):
    pass


async def take_dead(tx: Conn, dead_id: int) -> DeadLetter:
    """Lock a not-yet-replayed dead letter for replay; ``DeadLetterNotFound`` otherwise."""
    row = await tx.fetchrow(
        f"SELECT {_DEAD_COLUMNS} FROM failed_messages WHERE id = $1 AND replayed_at IS NULL"
        " FOR UPDATE",
        dead_id,
    )
    if row is None:
        raise DeadLetterNotFound(dead_id)
    await tx.execute("UPDATE failed_messages SET replayed_at = now() WHERE id = $1", dead_id)
    return _dead(row)
