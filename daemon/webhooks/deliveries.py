"""Webhook deliveries and their attempts: every statement on ``webhook_deliveries`` and
``webhook_attempts``; callers get typed rows.

A delivery is one event for one target: an endpoint, or a one-off callback URL (a
payment's ``status_callback_url``). Its ``next_attempt_at`` is the durable timer the
dispatcher sleeps on. A dispatcher claims a due delivery by moving ``next_attempt_at`` to
the end of its lease (``leased_until``, the same instant): a crash mid-send makes it due
again when the lease ends, never earlier, and the outcome is written only while the lease
is still the one claimed (``finish``), so a late writer cannot overwrite a newer attempt.

Times the dispatcher compares (``now``) are passed in, so the schedule logic runs on an
injected clock in tests; changes made by people (retry, recover) use the database's clock.
Operator actions that make work due (``retry_now``, ``recover``) also ``nudge`` the
dispatcher through the outbox queue, which the listener already wakes consumers for.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

from daemon.platform import outbox, queues
from daemon.platform.db import Conn, Executor
from daemon.webhooks import endpoints
from daemon.webhooks.endpoints import MATCH_SQL, check_url

State = Literal["pending", "succeeded", "failed"]
STATES: tuple[str, ...] = ("pending", "succeeded", "failed")
MAX_RESPONSE_BODY = 64 * 1024

_COLUMNS = (
    "d.id, d.event_id, e.type AS event_type, d.endpoint_id, d.target_url,"
    " d.signing_endpoint_id, d.state, d.attempts, d.next_attempt_at, d.leased_until,"
    " d.last_attempt_at, d.last_status_code, d.last_error, d.created_at, d.updated_at,"
    " d.finished_at"
)
_FROM = "webhook_deliveries d JOIN events e ON e.id = d.event_id"
_ATTEMPT_COLUMNS = (
    "id, delivery_id, attempt, started_at, duration_ms, url, address, status_code, error,"
    " response_body, response_truncated"
)


class DeliveryNotFound(LookupError):
    pass


class EndpointDisabled(Exception):
    """Its endpoint is disabled: enable it first (a disabled endpoint is sent nothing)."""


@dataclass(frozen=True)
class Delivery:
    id: int
    event_id: str
    event_type: str
    endpoint_id: str | None
    target_url: str | None
    signing_endpoint_id: str | None
    state: str
    attempts: int
    next_attempt_at: dt.datetime | None
    leased_until: dt.datetime | None
    last_attempt_at: dt.datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    finished_at: dt.datetime | None


@dataclass(frozen=True)
class Attempt:
    id: int
    delivery_id: int
    attempt: int
    started_at: dt.datetime
    duration_ms: int
    url: str
    address: str | None
    status_code: int | None
    error: str | None
    response_body: str | None
    response_truncated: bool


@dataclass(frozen=True)
class DeliveryDetail:
    delivery: Delivery
    attempts: list[Attempt]


def _delivery(row: Any) -> Delivery:
    return Delivery(**dict(row))


def _attempt(row: Any) -> Attempt:
    return Attempt(**dict(row))


async def nudge(tx: Executor, why: str) -> None:
    """Wake the dispatcher (through the outbox queue) when work became due without a new
    event: it re-reads its timer."""
    await queues.send(tx, outbox.QUEUE, {"nudge": why})


async def list_deliveries(
    db: Executor,
    *,
    endpoint_id: str | None = None,
    state: str | None = None,
    event_type: str | None = None,
    event_id: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[Delivery]:
    """Newest first; ``before_id`` is the last id of the previous page."""
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM {_FROM}"
        " WHERE ($1::text IS NULL OR d.endpoint_id = $1)"
        " AND ($2::text IS NULL OR d.state = $2)"
        " AND ($3::text IS NULL OR e.type = $3)"
        " AND ($4::text IS NULL OR d.event_id = $4)"
        " AND ($5::timestamptz IS NULL OR d.created_at >= $5)"
        " AND ($6::timestamptz IS NULL OR d.created_at < $6)"
        " AND ($7::bigint IS NULL OR d.id < $7)"
        " ORDER BY d.id DESC LIMIT $8",
        endpoint_id,
        state,
        event_type,
        event_id,
        since,
        until,
        before_id,
        limit,
    )
    return [_delivery(r) for r in rows]


async def get(db: Executor, delivery_id: int) -> Delivery | None:
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM {_FROM} WHERE d.id = $1", delivery_id)
    return None if row is None else _delivery(row)


async def attempts(db: Executor, delivery_id: int) -> list[Attempt]:
    rows = await db.fetch(
        f"SELECT {_ATTEMPT_COLUMNS} FROM webhook_attempts WHERE delivery_id = $1 ORDER BY id",
        delivery_id,
    )
    return [_attempt(r) for r in rows]


async def get_detail(db: Executor, delivery_id: int) -> DeliveryDetail | None:
    delivery = await get(db, delivery_id)
    if delivery is None:
        return None
    return DeliveryDetail(delivery, await attempts(db, delivery_id))


async def retry_now(tx: Conn, delivery_id: int) -> Delivery:
    """Send again now, whatever its state (a succeeded one is sent once more: the operator
    asked). A delivery being sent right now is left to that attempt (its lease and its
    outcome stand); retry it again once it is recorded."""
    enabled = await tx.fetchval(
        "SELECT coalesce(p.enabled, true) FROM webhook_deliveries d"
        " LEFT JOIN webhook_endpoints p ON p.id = d.endpoint_id WHERE d.id = $1",
        delivery_id,
    )
    if enabled is None:
        raise DeliveryNotFound(delivery_id)
    if not enabled:
        raise EndpointDisabled(delivery_id)
    await tx.execute(
        "UPDATE webhook_deliveries SET state = 'pending', finished_at = NULL,"
        " next_attempt_at = CASE WHEN leased_until > now() THEN next_attempt_at ELSE now() END,"
        " updated_at = now() WHERE id = $1",
        delivery_id,
    )
    await nudge(tx, f"retry {delivery_id}")
    delivery = await get(tx, delivery_id)
    assert delivery is not None
    return delivery


async def recover(tx: Conn, endpoint_id: str, since: dt.datetime) -> int:
    """Send again every failed delivery of the endpoint created since ``since``; returns
    how many. ``EndpointDisabled`` if the endpoint is disabled (enable it first);
    ``LookupError`` if there is no such endpoint."""
    enabled = await tx.fetchval("SELECT enabled FROM webhook_endpoints WHERE id = $1", endpoint_id)
    if enabled is None:
        raise LookupError(endpoint_id)
    if not enabled:
        raise EndpointDisabled(endpoint_id)
    status = await tx.execute(
        "UPDATE webhook_deliveries SET state = 'pending', finished_at = NULL,"
        " next_attempt_at = now(), leased_until = NULL, updated_at = now()"
        " WHERE endpoint_id = $1 AND state = 'failed' AND created_at >= $2",
        endpoint_id,
        since,
    )
    count = int(status.split()[-1])
    if count:
        await nudge(tx, f"recover {endpoint_id}")
    return count


async def add_callback(
    tx: Conn, event_id: str, url: str, *, signing_endpoint_id: str | None = None
) -> int | None:
    """A delivery of ``event_id`` to a one-off callback URL (a payment's
    ``status_callback_url``), signed with ``signing_endpoint_id``'s secrets or the
    daemon-wide callback secrets. Idempotent per (event, url): None if it exists.

    Call in the transaction that emitted the event; the dispatcher is woken by the
    event's own outbox message.
    """
    check_url(url)
    delivery_id: int | None = await tx.fetchval(
        "INSERT INTO webhook_deliveries (event_id, target_url, signing_endpoint_id)"
        " VALUES ($1, $2, $3)"
        " ON CONFLICT (event_id, target_url) WHERE endpoint_id IS NULL DO NOTHING RETURNING id",
        event_id,
        url,
        signing_endpoint_id,
    )
    return delivery_id


# Sent only where asked (``send_test``), never fanned out by filters.
DIRECTED_TYPES = endpoints.DIRECTED_TYPES


async def send_test(tx: Conn, endpoint_id: str) -> tuple[outbox.Event, int]:
    """``POST …/endpoints/{id}/test``: a ``webhook.test`` event for this endpoint only.
    Returns the event and its delivery's id; the dispatcher is woken by the event's
    outbox message. ``LookupError``: no such endpoint; ``EndpointDisabled``: enable it
    first (a disabled endpoint is sent nothing)."""
    enabled = await tx.fetchval("SELECT enabled FROM webhook_endpoints WHERE id = $1", endpoint_id)
    if enabled is None:
        raise LookupError(endpoint_id)
    if not enabled:
        raise EndpointDisabled(endpoint_id)
    event = await outbox.emit(
        tx, "webhook.test", {"endpoint_id": endpoint_id}, subject=f"endpoint:{endpoint_id}"
    )
    delivery_id: int = await tx.fetchval(
        "INSERT INTO webhook_deliveries (event_id, endpoint_id) VALUES ($1, $2) RETURNING id",
        event.id,
        endpoint_id,
    )
    return event, delivery_id


async def fan_out(tx: Conn, event_id: str, event_type: str, now: dt.datetime) -> int:
    """One delivery of the event per enabled endpoint whose filters take its type, due at
    ``now``. Idempotent: a second call adds only what is missing. Returns how many.
    ``DIRECTED_TYPES`` are not fanned out (their deliveries are made by who emits them)."""
    if event_type in DIRECTED_TYPES:
        return 0
    status = await tx.execute(
        "INSERT INTO webhook_deliveries (event_id, endpoint_id, next_attempt_at)"
        f" SELECT $2, id, $3 FROM webhook_endpoints WHERE enabled AND {MATCH_SQL}"
        " ON CONFLICT (event_id, endpoint_id) WHERE endpoint_id IS NOT NULL DO NOTHING",
        event_type,
        event_id,
        now,
    )
    return int(status.split()[-1])


# --- the dispatcher's side ---------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    """A delivery held under a lease, with what sending it needs."""

    id: int
    attempt: int  # the number of the attempt about to be made (1 = first)
    event_id: str
    event_type: str
    occurred_at: dt.datetime
    data: dict[str, Any]
    endpoint_id: str | None
    url: str
    signing_endpoint_id: str | None  # whose secrets sign (an endpoint's own, for endpoints)
    legacy_signature: bool
    rate_limit_per_second: int | None
    leased_until: dt.datetime  # the lease: outcomes are written only while it is this

    @property
    def target(self) -> str:
        """What concurrency and rate limits count against."""
        return self.endpoint_id or self.url

    def payload(self) -> dict[str, Any]:
        return outbox.Event(
            self.event_id, 0, self.event_type, self.occurred_at, None, self.data
        ).payload()


# What a claim returns, from the CTE ``leased`` (the rows just leased).
_CLAIMED = (
    "SELECT l.id, l.attempts + 1 AS attempt, l.event_id, e.type AS event_type,"
    " e.occurred_at, e.data, l.endpoint_id, coalesce(p.url, l.target_url) AS url,"
    " CASE WHEN l.endpoint_id IS NULL THEN l.signing_endpoint_id ELSE l.endpoint_id END"
    "   AS signing_endpoint_id,"
    " coalesce(p.legacy_signature, false) AS legacy_signature, p.rate_limit_per_second,"
    " l.leased_until"
    " FROM leased l JOIN events e ON e.id = l.event_id"
    " LEFT JOIN webhook_endpoints p ON p.id = l.endpoint_id"
    " ORDER BY l.next_attempt_at, l.id"
)


def _claimed(row: Any) -> Claimed:
    return Claimed(**{**dict(row), "data": dict(row["data"])})


async def claim(
    db: Executor,
    now: dt.datetime,
    *,
    limit: int,
    lease_seconds: float,
    default_concurrency: int,
    held: dict[str, int],
    failing_share: int,
) -> list[Claimed]:
    """Lease up to ``limit`` due deliveries, none for a target already at its concurrency.

    ``held``: how many deliveries per target this dispatcher is sending right now (its
    leases; another instance's count through their ``leased_until``, which lies ahead).
    Oldest due first, so a backlog drains in order; a saturated target's backlog is
    skipped, never waited on.

    A failing endpoint (``failing_since`` set: its last attempt failed, a timeout
    included) is sent one delivery at a time, and all failing endpoints together hold at
    most ``failing_share`` leases (every instance's): dead endpoints' backlogs are the
    oldest due rows, and without the cap they would win every freed slot.
    """
    rows = await db.fetch(
        "WITH busy AS ("
        "  SELECT coalesce(endpoint_id, target_url) AS target, count(*) AS n"
        "  FROM webhook_deliveries"
        "  WHERE state = 'pending' AND leased_until IS NOT NULL AND leased_until > $1"
        "  GROUP BY 1"
        "), local AS ("
        "  SELECT key AS target, value::int AS n FROM jsonb_each_text($5::jsonb)"
        # Endpoints: per enabled endpoint, its oldest due deliveries up to its free slots,
        # each an index probe, so a dead endpoint's backlog costs nothing here.
        "), ep AS ("
        "  SELECT c.id, c.next_attempt_at, p.failing_since IS NOT NULL AS failing"
        "  FROM webhook_endpoints p"
        "  LEFT JOIN busy b ON b.target = p.id"
        "  LEFT JOIN local l ON l.target = p.id"
        "  CROSS JOIN LATERAL ("
        "   SELECT d.id, d.next_attempt_at FROM webhook_deliveries d"
        "   WHERE coalesce(d.endpoint_id, d.target_url) = p.id AND d.state = 'pending'"
        "    AND d.next_attempt_at <= $1"
        "   ORDER BY d.next_attempt_at, d.id"
        "   LIMIT greatest(CASE WHEN p.failing_since IS NULL"
        "                   THEN coalesce(p.max_concurrency, $4)"
        "                   ELSE least(coalesce(p.max_concurrency, $4), 1) END"
        "                  - greatest(coalesce(b.n, 0), coalesce(l.n, 0)), 0)"
        "  ) c"
        "  WHERE p.enabled"
        # Failing endpoints: what they hold now (any instance), and what they may add.
        "), failing_held AS ("
        "  SELECT coalesce(sum(greatest(coalesce(b.n, 0), coalesce(l.n, 0))), 0) AS n"
        "  FROM webhook_endpoints p"
        "  LEFT JOIN busy b ON b.target = p.id"
        "  LEFT JOIN local l ON l.target = p.id"
        "  WHERE p.enabled AND p.failing_since IS NOT NULL"
        "), ep_failing AS ("
        "  SELECT id, next_attempt_at FROM ep WHERE failing"
        "  ORDER BY next_attempt_at, id"
        "  LIMIT (SELECT greatest($6 - n, 0) FROM failing_held)"
        # Callbacks: each URL a target of its own (usually one delivery each).
        "), cb AS ("
        "  SELECT id, next_attempt_at FROM ("
        "   SELECT d.id, d.next_attempt_at,"
        "    row_number() OVER (PARTITION BY d.target_url ORDER BY d.next_attempt_at, d.id)"
        "      AS rn,"
        "    $4 - greatest(coalesce(b.n, 0), coalesce(l.n, 0)) AS free"
        "   FROM webhook_deliveries d"
        "   LEFT JOIN busy b ON b.target = d.target_url"
        "   LEFT JOIN local l ON l.target = d.target_url"
        "   WHERE d.endpoint_id IS NULL AND d.state = 'pending' AND d.next_attempt_at <= $1"
        "  ) x WHERE rn <= free"
        "), picked AS ("
        "  SELECT id FROM ("
        "   SELECT id, next_attempt_at FROM ep WHERE NOT failing"
        "   UNION ALL SELECT * FROM ep_failing UNION ALL SELECT * FROM cb"
        "  ) u"
        "  ORDER BY next_attempt_at, id LIMIT $2"
        "), leased AS ("
        "  UPDATE webhook_deliveries w"
        "  SET leased_until = $1 + make_interval(secs => $3::float8),"
        "      next_attempt_at = $1 + make_interval(secs => $3::float8), updated_at = now()"
        "  FROM picked WHERE w.id = picked.id AND w.state = 'pending'"
        # Re-checked on the locked row: another dispatcher may have claimed it meanwhile.
        "   AND w.next_attempt_at <= $1"
        "  RETURNING w.*"
        f") {_CLAIMED}",
        now,
        limit,
        float(lease_seconds),
        default_concurrency,
        held,
        failing_share,
    )
    return [_claimed(r) for r in rows]


async def succeed_and_take_next(
    db: Executor,
    c: Claimed,
    record: AttemptRecord,
    now: dt.datetime,
    *,
    take_next: bool,
    lease_seconds: float,
) -> tuple[bool, Claimed | None]:
    """The common case in one statement (one round trip, atomic): log a successful
    attempt, mark the delivery succeeded if the lease is still ours, end the endpoint's
    failure run, and lease the target's next due delivery (``take_next``). Returns
    (whether the lease was ours, the next delivery or None)."""
    row = await db.fetchrow(
        "WITH fin AS ("
        "  UPDATE webhook_deliveries SET state = 'succeeded', attempts = attempts + 1,"
        "   next_attempt_at = NULL, leased_until = NULL, last_attempt_at = $3,"
        "   last_status_code = $4, last_error = NULL, updated_at = now(), finished_at = now()"
        "  WHERE id = $1 AND leased_until = $2 AND state = 'pending' RETURNING id"
        "), att AS ("
        f"  INSERT INTO webhook_attempts ({_ATTEMPT_COLUMNS.removeprefix('id, ')})"
        "  SELECT $1, $5, $3, $6, $7, $8, $4, $16, $9, $10"
        # Deleted with its endpoint meanwhile: nothing to log it against.
        "  WHERE EXISTS (SELECT 1 FROM webhook_deliveries WHERE id = $1) RETURNING id"
        "), ep AS ("
        "  UPDATE webhook_endpoints SET failing_since = NULL"
        "  WHERE id = $11 AND failing_since IS NOT NULL AND EXISTS (SELECT 1 FROM fin)"
        "  RETURNING id"
        "), nxt AS ("
        "  SELECT id FROM webhook_deliveries"
        "  WHERE $12 AND EXISTS (SELECT 1 FROM fin)"
        "   AND coalesce(endpoint_id, target_url) = $13 AND state = 'pending'"
        "   AND next_attempt_at <= $14"
        "  ORDER BY next_attempt_at, id LIMIT 1 FOR UPDATE SKIP LOCKED"
        "), leased AS ("
        "  UPDATE webhook_deliveries w"
        "  SET leased_until = $14 + make_interval(secs => $15::float8),"
        "      next_attempt_at = $14 + make_interval(secs => $15::float8), updated_at = now()"
        "  FROM nxt WHERE w.id = nxt.id"
        "  RETURNING w.*"
        "), claimed AS ("
        f"  {_CLAIMED}"
        ")"
        # (att and ep run whether or not they are read: data-modifying CTEs always do.)
        " SELECT (SELECT count(*) FROM fin) AS finished, claimed.*"
        " FROM (SELECT 1) one LEFT JOIN claimed ON true",
        c.id,
        c.leased_until,
        record.started_at,
        record.status_code,
        c.attempt,
        record.duration_ms,
        record.url,
        record.address,
        record.response_body,
        record.response_truncated,
        c.endpoint_id,
        take_next,
        c.target,
        now,
        float(lease_seconds),
        record.error,  # a 2xx whose body was cut off says so
    )
    assert row is not None
    finished = bool(row["finished"])
    if row["id"] is None:
        return finished, None
    return finished, _claimed({k: row[k] for k in _CLAIMED_FIELDS})


_CLAIMED_FIELDS = (
    "id",
    "attempt",
    "event_id",
    "event_type",
    "occurred_at",
    "data",
    "endpoint_id",
    "url",
    "signing_endpoint_id",
    "legacy_signature",
    "rate_limit_per_second",
    "leased_until",
)


async def next_due(db: Executor, after: dt.datetime) -> dt.datetime | None:
    """The earliest ``next_attempt_at`` later than ``after`` among pending deliveries (a
    retry time or a lease's end): the dispatcher's timer."""
    when: dt.datetime | None = await db.fetchval(
        "SELECT min(next_attempt_at) FROM webhook_deliveries"
        " WHERE state = 'pending' AND next_attempt_at > $1",
        after,
    )
    return when


async def defer(db: Executor, c: Claimed, until: dt.datetime) -> bool:
    """Give a claimed delivery back unsent, due at ``until`` (a rate limit); no attempt."""
    status = await db.execute(
        "UPDATE webhook_deliveries SET next_attempt_at = $3, leased_until = NULL,"
        " updated_at = now() WHERE id = $1 AND leased_until = $2 AND state = 'pending'",
        c.id,
        c.leased_until,
        until,
    )
    return status == "UPDATE 1"


@dataclass(frozen=True)
class AttemptRecord:
    started_at: dt.datetime
    duration_ms: int
    url: str
    address: str | None
    status_code: int | None
    error: str | None
    response_body: str | None
    response_truncated: bool


async def finish(
    tx: Conn,
    c: Claimed,
    record: AttemptRecord,
    *,
    state: State,
    next_attempt_at: dt.datetime | None,
) -> bool:
    """Log the attempt and write the delivery's outcome, if the lease is still ours.

    The attempt is logged either way (it happened); False when the lease was lost (the
    delivery was retried by someone else or changed by an operator meanwhile).
    """
    # Deleted with its endpoint meanwhile: nothing to log it against (and no lease).
    await tx.execute(
        f"INSERT INTO webhook_attempts ({_ATTEMPT_COLUMNS.removeprefix('id, ')})"
        " SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10"
        " WHERE EXISTS (SELECT 1 FROM webhook_deliveries WHERE id = $1)",
        c.id,
        c.attempt,
        record.started_at,
        record.duration_ms,
        record.url,
        record.address,
        record.status_code,
        record.error,
        record.response_body,
        record.response_truncated,
    )
    status = await tx.execute(
        "UPDATE webhook_deliveries SET state = $3, attempts = attempts + 1,"
        " next_attempt_at = $4, leased_until = NULL, last_attempt_at = $5,"
        " last_status_code = $6, last_error = $7, updated_at = now(),"
        " finished_at = CASE WHEN $3 = 'pending' THEN NULL ELSE now() END"
        " WHERE id = $1 AND leased_until = $2 AND state = 'pending'",
        c.id,
        c.leased_until,
        state,
        next_attempt_at,
        record.started_at,
        record.status_code,
        record.error,
    )
    return status == "UPDATE 1"
