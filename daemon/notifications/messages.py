"""The SMS store: rows in ``sms_messages`` (one per reconnection at most) and the ``sms`` queue.

Owns the queue's name (its producer, ``queue_for_task``, lives here) and every statement on
the table; callers get typed rows.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from daemon.notifications import announce
from daemon.platform import queues
from daemon.platform.db import Conn

QUEUE = "sms"  # {"sms_id": n}: deliver it through the provider

FINAL_STATES = ("sent", "failed", "skipped")


@dataclass
class Sms:
    id: int
    task_id: int | None
    phone: str
    body: str
    state: str
    attempts: int
    last_error: str | None
    provider: str | None
    provider_ref: str | None
    updated_at: dt.datetime
    # The attempt marker (migration 009): when the latest attempt began, and whether its
    # outcome is still unknown (a crash mid-send, or a timeout after the request went out).
    created_at: dt.datetime | None = None
    attempt_started_at: dt.datetime | None = None
    unconfirmed: bool = False


_COLUMNS = ", ".join(Sms.__dataclass_fields__)


def _sms(row: Any) -> Sms:
    return Sms(**{name: row[name] for name in Sms.__dataclass_fields__})


async def queue_for_task(
    tx: Conn, task_id: int, phone: str, body: str, provider: str
) -> int | None:
    """Create the task's SMS and queue it; None when the task already has one."""
    sms_id: int | None = await tx.fetchval(
        "INSERT INTO sms_messages (task_id, phone, body, provider)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT (task_id) DO NOTHING RETURNING id",
        task_id,
        phone,
        body,
        provider,
    )
    if sms_id is not None:
        await queues.send(tx, QUEUE, {"sms_id": sms_id})
    return sms_id


async def lock(tx: Conn, sms_id: int, in_flight_seconds: float) -> tuple[Sms, bool] | None:
    """The SMS locked for update, and whether another send of it may still be running."""
    row = await tx.fetchrow(
        f"SELECT {_COLUMNS}, state = 'sending' AND updated_at > now()"
        " - make_interval(secs => $2::float8) AS in_flight"
        " FROM sms_messages WHERE id = $1 FOR UPDATE",
        sms_id,
        in_flight_seconds,
    )
    return None if row is None else (_sms(row), bool(row["in_flight"]))


async def mark_sending(tx: Conn, sms_id: int, provider: str) -> int:
    """The attempt marker, committed before the provider is called."""
    attempts: int = await tx.fetchval(
        "UPDATE sms_messages SET state = 'sending', attempts = attempts + 1,"
        " provider = $2, updated_at = now(), attempt_started_at = now(), unconfirmed = true"
        " WHERE id = $1 RETURNING attempts",
        sms_id,
        provider,
    )
    return attempts


async def back_to_queued(tx: Conn, sms_id: int, error: str, *, unconfirmed: bool = False) -> None:
    """Queued for another attempt; ``unconfirmed``: the last one may have been accepted."""
    await tx.execute(
        "UPDATE sms_messages SET state = 'queued', last_error = $2, updated_at = now(),"
        " unconfirmed = $3 WHERE id = $1",
        sms_id,
        error,
        unconfirmed,
    )


# The finished row and its task's ids, for the announcement (``announce.sms_finished``).
_FINISHED = (
    " RETURNING *), t AS (SELECT service_id, client_id FROM reconnect_tasks"
    " WHERE id = (SELECT task_id FROM s))"
    " SELECT s.*, t.service_id, t.client_id FROM s LEFT JOIN t ON true"
)


async def finish(
    tx: Conn,
    sms_id: int,
    state: str,
    error: str | None,
    provider: str,
    ref: str | None,
    *,
    unconfirmed: bool = False,
) -> None:
    """Record the final state; a sent or failed SMS is announced in the same ``tx``.
    ``unconfirmed``: given up, but the last attempt may have been accepted (a replay then
    looks it up first)."""
    row = await tx.fetchrow(
        "WITH s AS (UPDATE sms_messages SET state = $2, last_error = $3, provider = $4,"
        " provider_ref = coalesce($5, provider_ref), unconfirmed = $6,"
        " sent_at = CASE WHEN $2 = 'sent' THEN now() ELSE sent_at END, updated_at = now()"
        " WHERE id = $1" + _FINISHED,
        sms_id,
        state,
        error,
        provider,
        ref,
        unconfirmed,
    )
    if row is not None:
        await announce.sms_finished(tx, row)


# Serialises recording provider references, so that a reference found by a lookup is
# claimed by one row only (recovery.py). Arbitrary constant ("sms refs").
_REFS_LOCK = 0x736D73_72656673


async def lock_refs(tx: Conn) -> None:
    """Hold the reference lock until the transaction ends (before recording a reference)."""
    await tx.execute("SELECT pg_advisory_xact_lock($1)", _REFS_LOCK)


async def claimed_refs(tx: Conn, provider: str, refs: list[str]) -> set[str]:
    """Which of ``refs`` some SMS row already records as its provider's reference."""
    rows = await tx.fetch(
        "SELECT provider_ref FROM sms_messages WHERE provider = $1 AND provider_ref = ANY($2)",
        provider,
        refs,
    )
    return {r["provider_ref"] for r in rows}


async def fail_unfinished(tx: Conn, sms_id: int, error: str) -> None:
    row = await tx.fetchrow(
        "WITH s AS (UPDATE sms_messages SET state = 'failed', updated_at = now(),"
        " last_error = $2 WHERE id = $1 AND state IN ('queued', 'sending')" + _FINISHED,
        sms_id,
        error,
    )
    if row is not None:
        await announce.sms_finished(tx, row)


async def reset_for_replay(tx: Conn, sms_id: int) -> None:
    await tx.execute(
        "UPDATE sms_messages SET state = 'queued', attempts = 0, last_error = NULL,"
        " updated_at = now() WHERE id = $1 AND state = 'failed'",
        sms_id,
    )
