"""The payment store: every statement on ``payments``, ``refunds`` and ``payment_events``.

Owns the ``payments`` queue's name (its producers: the service and the mock's hosted page).
Every state change goes through ``transition`` / ``transition_refund``: the state machine
is checked (``daemon.payments.states``), the row updated, the change appended to the
history and announced in the outbox, all in the caller's transaction. Callers publish to
the in-process event bus after their commit (``Change.publish``).
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass, field, fields
from typing import Any

from daemon.payments import callbacks, currency, states
from daemon.payments.provider import ProviderPayment, ProviderRef
from daemon.platform import outbox, queues
from daemon.platform.db import Conn, Executor
from daemon.platform.events import EventBus
from daemon.platform.metrics import Metrics

QUEUE = "payments"  # {"payment_id"}: drive the payment; {"refund_id"}: run the refund


def new_payment_id() -> str:
    return "pay_" + secrets.token_hex(12)


def new_refund_id() -> str:
    return "rf_" + secrets.token_hex(12)


@dataclass(frozen=True)
class Payment:
    id: str
    seq: int
    status: str
    amount: int
    currency: str
    amount_captured: int
    amount_refunded: int
    method: str
    kind: str
    interval: str | None
    capture_method: str
    description: str | None
    customer: str | None
    metadata: dict[str, str]
    status_callback_url: str | None
    uisp_client_id: int | None
    created_by: str
    provider: str
    provider_object: str | None
    provider_ref: str | None
    provider_status: str | None
    provider_intent_id: str | None
    provider_subscription_id: str | None
    client_secret: str | None = field(repr=False)  # lets a browser pay: never in a log
    hosted_url: str | None
    failure_code: str | None
    failure_message: str | None
    create_attempted_at: dt.datetime | None
    cancel_requested_at: dt.datetime | None
    capture_requested_at: dt.datetime | None
    capture_amount: int | None
    created_at: dt.datetime
    updated_at: dt.datetime
    expires_at: dt.datetime
    reconcile_at: dt.datetime | None
    reconcile_attempts: int
    finished_at: dt.datetime | None
    uisp_payment_id: int | None
    uisp_recorded_at: dt.datetime | None
    uisp_error: str | None
    # A recurring payment's charge (kind "recurring_charge"): the recurring payment.
    parent_payment_id: str | None

    @property
    def final(self) -> bool:
        return states.is_final(self.status)

    @property
    def ref(self) -> ProviderRef | None:
        if self.provider_ref is None or self.provider_object is None:
            return None
        return ProviderRef(self.provider_object, self.provider_ref)  # type: ignore[arg-type]

    def public(self) -> dict[str, Any]:
        """The API's representation (HTTP, gRPC, SQL): no internal bookkeeping."""
        exp = currency.EXPONENTS[self.currency]
        return {
            "id": self.id,
            "status": self.status,
            "amount": self.amount,
            "currency": self.currency,
            "currency_exponent": exp,
            "amount_display": currency.format_amount(self.amount, self.currency),
            "amount_captured": self.amount_captured,
            "amount_refunded": self.amount_refunded,
            "amount_refundable": self.amount_captured - self.amount_refunded,
            "method": self.method,
            "kind": self.kind,
            "interval": self.interval,
            "parent_payment_id": self.parent_payment_id,
            "capture_method": self.capture_method,
            "description": self.description,
            "customer": self.customer,
            "metadata": self.metadata,
            "status_callback_url": self.status_callback_url,
            "uisp_client_id": self.uisp_client_id,
            "uisp_payment_id": self.uisp_payment_id,
            "provider": self.provider,
            "provider_ref": self.provider_ref,
            "client_secret": self.client_secret,
            "hosted_url": self.hosted_url,
            "failure_code": self.failure_code,
            "failure_message": self.failure_message,
            "cancel_requested": self.cancel_requested_at is not None,
            "capture_requested": self.capture_requested_at is not None,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "expires_at": _iso(self.expires_at),
            "finished_at": _iso(self.finished_at),
        }

    def announced(self) -> dict[str, Any]:
        """What the outbox tells partners: no client secret, no callback URL. A recurring
        charge also names its recurring payment (``parent_payment_id``); other payments
        carry exactly what the SQL entry point's ``payment.created`` carries."""
        extra = (
            {} if self.parent_payment_id is None else {"parent_payment_id": self.parent_payment_id}
        )
        return extra | {
            "id": self.id,
            "status": self.status,
            "amount": self.amount,
            "currency": self.currency,
            "amount_captured": self.amount_captured,
            "amount_refunded": self.amount_refunded,
            "method": self.method,
            "kind": self.kind,
            "customer": self.customer,
            "metadata": self.metadata,
            "uisp_client_id": self.uisp_client_id,
            "provider": self.provider,
            "provider_ref": self.provider_ref,
            "failure_code": self.failure_code,
        }


@dataclass(frozen=True)
class Refund:
    id: str
    seq: int
    payment_id: str
    status: str
    amount: int
    currency: str
    reason: str | None
    created_by: str
    provider_ref: str | None
    provider_status: str | None
    failure_reason: str | None
    attempted_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime
    finished_at: dt.datetime | None

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "payment_id": self.payment_id,
            "status": self.status,
            "amount": self.amount,
            "currency": self.currency,
            "amount_display": currency.format_amount(self.amount, self.currency),
            "reason": self.reason,
            "provider_ref": self.provider_ref,
            "failure_reason": self.failure_reason,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "finished_at": _iso(self.finished_at),
        }


@dataclass(frozen=True)
class PaymentEvent:
    id: int
    payment_id: str
    refund_id: str | None
    at: dt.datetime
    kind: str
    from_status: str | None
    to_status: str | None
    actor: str
    detail: dict[str, Any]

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "refund_id": self.refund_id,
            "at": _iso(self.at),
            "kind": self.kind,
            "from_status": self.from_status,
            "to_status": self.to_status,
            "actor": self.actor,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Change:
    """A committed-with-the-caller change, for the in-process bus once committed."""

    payment_id: str
    status: str
    refund_id: str | None = None
    provider: str = ""  # for the metrics: the payment's provider

    def publish(self, bus: EventBus, metrics: Metrics | None = None) -> None:
        kind = f"refund.{self.status}" if self.refund_id else f"payment.{self.status}"
        bus.publish(kind, payment_id=self.payment_id, refund_id=self.refund_id, status=self.status)
        if metrics is None:
            return
        if self.refund_id is not None:
            if self.status in states.REFUND_TRANSITIONS and self.status != "pending":
                metrics.refunds_finished.labels(self.provider, self.status).inc()
        elif states.is_final(self.status):
            metrics.payments_finished.labels(self.provider, self.status).inc()


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


_PAYMENT_COLUMNS = ", ".join(
    f'"{f.name}"' if f.name == "interval" else f.name for f in fields(Payment)
)
_REFUND_COLUMNS = ", ".join(f.name for f in fields(Refund))
_EVENT_COLUMNS = ", ".join(f.name for f in fields(PaymentEvent))


def _payment(row: Any) -> Payment:
    data = dict(row)
    data["metadata"] = dict(data["metadata"])
    return Payment(**data)


def _refund(row: Any) -> Refund:
    return Refund(**dict(row))


@dataclass(frozen=True)
class NewPayment:
    amount: int
    currency: str
    method: str
    kind: str
    interval: str | None
    capture_method: str
    description: str | None
    customer: str | None
    metadata: dict[str, str]
    status_callback_url: str | None
    uisp_client_id: int | None


async def insert(
    tx: Conn, new: NewPayment, *, created_by: str, provider: str, ttl_seconds: float
) -> Payment:
    """Store a payment, queue it and announce it (``payment.created``), in ``tx``."""
    # One statement for the row, its first history entry and its queue message: the
    # create path's cost is mostly round trips through the bridge.
    row: Any = await tx.fetchrow(
        'WITH p AS (INSERT INTO payments (id, amount, currency, method, kind, "interval",'
        " capture_method, description, customer, metadata, status_callback_url,"
        " uisp_client_id, created_by, provider, expires_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11, $12, $13, $14,"
        " now() + make_interval(secs => $15))"
        f" RETURNING {_PAYMENT_COLUMNS}),"
        " h AS (INSERT INTO payment_events (payment_id, kind, to_status, actor)"
        " SELECT id, 'transition', 'created', $13 FROM p),"
        " q AS (SELECT pgmq.send($16::text, jsonb_build_object('payment_id', id)) AS msg_id"
        " FROM p)"
        " SELECT p.*, q.msg_id FROM p, q",
        new_payment_id(),
        new.amount,
        new.currency,
        new.method,
        new.kind,
        new.interval,
        new.capture_method,
        new.description,
        new.customer,
        dict(new.metadata),
        new.status_callback_url,
        new.uisp_client_id,
        created_by,
        provider,
        ttl_seconds,
        QUEUE,
    )
    data = dict(row)
    del data["msg_id"]
    payment = _payment(data)
    await outbox.emit(tx, "payment.created", payment.announced(), subject=f"payment:{payment.id}")
    return payment


def fresh(
    new: NewPayment,
    payment_id: str,
    *,
    created_by: str,
    provider: str,
    at: dt.datetime,
    expires_at: dt.datetime,
) -> Payment:
    """The row ``insert_answered`` writes for ``new``, known before it is written: every
    column it reads is set explicitly there (no default, no trigger), ``seq`` aside."""
    return Payment(
        id=payment_id, seq=0, status="created", amount=new.amount, currency=new.currency,
        amount_captured=0, amount_refunded=0, method=new.method, kind=new.kind,
        interval=new.interval, capture_method=new.capture_method,
        description=new.description, customer=new.customer, metadata=dict(new.metadata),
        status_callback_url=new.status_callback_url, uisp_client_id=new.uisp_client_id,
        created_by=created_by, provider=provider, provider_object=None, provider_ref=None,
        provider_status=None, provider_intent_id=None, provider_subscription_id=None,
        client_secret=None, hosted_url=None, failure_code=None, failure_message=None,
        create_attempted_at=None, cancel_requested_at=None, capture_requested_at=None,
        capture_amount=None, created_at=at, updated_at=at, expires_at=expires_at,
        reconcile_at=None, reconcile_attempts=0, finished_at=None, uisp_payment_id=None,
        uisp_recorded_at=None, uisp_error=None, parent_payment_id=None,
    )  # fmt: skip


# The create behind an Idempotency-Key in one statement, so in one transaction without a
# BEGIN/COMMIT round trip: the key's stored answer (f), and only if this request still
# holds the key (f matched) the row (p), its history (h), its queue message (q) and its
# outbox event (e; the events trigger queues its fan-out). Each round trip through the
# asyncio bridge costs ~150 us of the event loop's CPU (bench/payments_create.py).
INSERT_ANSWERED = (
    "WITH f AS (UPDATE idempotency_keys SET status = 'finished', response_status = $20,"
    " response_body = $21::jsonb, resource_id = $1, finished_at = now()"
    " WHERE scope = $17 AND key = $18 AND status = 'running' AND locked_at = $19"
    " RETURNING 1),"
    " p AS (INSERT INTO payments (id, status, amount, currency, amount_captured,"
    ' amount_refunded, method, kind, "interval", capture_method, description, customer,'
    " metadata, status_callback_url, uisp_client_id, created_by, provider, created_at,"
    " updated_at, expires_at, reconcile_attempts)"
    " SELECT $1, 'created', $2, $3, 0, 0, $4, $5, $6, $7, $8, $9, $10::jsonb, $11, $12,"
    " $13, $14, $15, $15, $16, 0 FROM f"
    f" RETURNING {_PAYMENT_COLUMNS}),"
    " h AS (INSERT INTO payment_events (payment_id, kind, to_status, actor)"
    " SELECT id, 'transition', 'created', $13 FROM p),"
    " e AS (INSERT INTO events (id, type, subject, data)"
    " SELECT $23, 'payment.created', 'payment:' || id, $24::jsonb FROM p),"
    " q AS (SELECT pgmq.send($22::text, jsonb_build_object('payment_id', id)) AS msg_id"
    " FROM p)"
    " SELECT p.seq, q.msg_id FROM p, q"
)


def insert_answered(
    payment: Payment,
    *,
    scope: str,
    key: str,
    locked_at: dt.datetime,
    status: int,
    body: dict[str, Any],
) -> tuple[str, tuple[Any, ...]]:
    """The statement (and its arguments) that stores ``payment`` (from ``fresh``) as
    ``insert`` does and finishes the Idempotency-Key ``(scope, key)`` claimed at
    ``locked_at`` with ``status`` and ``body``; it returns no row, and writes nothing,
    when the claim was lost to another request."""
    p = payment
    return INSERT_ANSWERED, (
        p.id, p.amount, p.currency, p.method, p.kind, p.interval, p.capture_method,
        p.description, p.customer, p.metadata, p.status_callback_url, p.uisp_client_id,
        p.created_by, p.provider, p.created_at, p.expires_at,
        scope, key, locked_at, status, body,
        QUEUE, outbox.new_event_id(), p.announced(),
    )  # fmt: skip


async def get(db: Executor, payment_id: str) -> Payment | None:
    row = await db.fetchrow(f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE id = $1", payment_id)
    return None if row is None else _payment(row)


async def lock(tx: Conn, payment_id: str) -> Payment | None:
    """The row, locked until ``tx`` ends: every change to a payment is made under this."""
    row = await tx.fetchrow(
        f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE id = $1 FOR UPDATE", payment_id
    )
    return None if row is None else _payment(row)


async def find_by_ref(db: Executor, provider: str, ref: str) -> Payment | None:
    """The payment behind a provider object (a session or its PaymentIntent)."""
    row = await db.fetchrow(
        f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE provider = $1"
        " AND (provider_ref = $2 OR provider_intent_id = $2) ORDER BY seq LIMIT 1",
        provider,
        ref,
    )
    return None if row is None else _payment(row)


async def list_page(
    db: Executor,
    *,
    status: str | None,
    customer: str | None,
    parent: str | None = None,
    created_gte: dt.datetime | None,
    created_lt: dt.datetime | None,
    before_seq: int | None,
    limit: int,
) -> list[Payment]:
    """Newest first; keyset pagination on ``seq`` (the cursor is the last row's)."""
    rows = await db.fetch(
        f"SELECT {_PAYMENT_COLUMNS} FROM payments"
        " WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR customer = $2)"
        " AND ($3::timestamptz IS NULL OR created_at >= $3)"
        " AND ($4::timestamptz IS NULL OR created_at < $4)"
        " AND ($5::bigint IS NULL OR seq < $5)"
        " AND ($7::text IS NULL OR parent_payment_id = $7)"
        " ORDER BY seq DESC LIMIT $6",
        status,
        customer,
        created_gte,
        created_lt,
        before_seq,
        limit,
        parent,
    )
    return [_payment(r) for r in rows]


async def add_event(
    tx: Conn,
    payment_id: str,
    kind: str,
    from_status: str | None,
    to_status: str | None,
    actor: str,
    detail: dict[str, Any] | None = None,
    *,
    refund_id: str | None = None,
) -> None:
    await tx.execute(
        "INSERT INTO payment_events (payment_id, refund_id, kind, from_status, to_status,"
        " actor, detail) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)",
        payment_id,
        refund_id,
        kind,
        from_status,
        to_status,
        actor,
        dict(detail or {}),
    )


async def events(db: Executor, payment_id: str) -> list[PaymentEvent]:
    rows = await db.fetch(
        f"SELECT {_EVENT_COLUMNS} FROM payment_events WHERE payment_id = $1 ORDER BY id",
        payment_id,
    )
    return [PaymentEvent(**{**dict(r), "detail": dict(r["detail"])}) for r in rows]


async def update(tx: Conn, payment_id: str, **values: Any) -> Payment:
    """Set columns of a locked payment (no state change; ``transition`` does those)."""
    if "status" in values:
        raise ValueError("status changes go through transition()")
    names = list(values)
    sets = ", ".join(f"{n} = ${i + 2}" for i, n in enumerate(names))
    row = await tx.fetchrow(
        f"UPDATE payments SET {sets}, updated_at = now() WHERE id = $1"
        f" RETURNING {_PAYMENT_COLUMNS}",
        payment_id,
        *[values[n] for n in names],
    )
    return _payment(row)


async def transition(
    tx: Conn,
    payment: Payment,
    to_status: str,
    actor: str,
    detail: dict[str, Any] | None = None,
    **values: Any,
) -> tuple[Payment, Change]:
    """Move a locked payment to ``to_status`` (checked), with history and outbox, in ``tx``.

    ``values`` are further columns set in the same statement (provider fields …).
    """
    states.check_payment(payment.status, to_status)
    values["status"] = to_status
    if states.is_final(to_status):
        values["finished_at"] = dt.datetime.now(dt.UTC)
    # Reconcile's threshold runs from updated_at again, its backoff from the start.
    values.setdefault("reconcile_at", None)
    values.setdefault("reconcile_attempts", 0)
    names = list(values)
    sets = ", ".join(
        f'"{n}" = ${i + 2}' if n == "interval" else f"{n} = ${i + 2}" for i, n in enumerate(names)
    )
    row = await tx.fetchrow(
        f"UPDATE payments SET {sets}, updated_at = now() WHERE id = $1"
        f" RETURNING {_PAYMENT_COLUMNS}",
        payment.id,
        *[values[n] for n in names],
    )
    moved = _payment(row)
    await add_event(tx, moved.id, "transition", payment.status, to_status, actor, detail)
    event_type = states.OUTBOX_EVENT.get(to_status)
    if event_type is not None and not (
        event_type == "payment.pending" and states.OUTBOX_EVENT.get(payment.status) == event_type
    ):
        event = await outbox.emit(tx, event_type, moved.announced(), subject=f"payment:{moved.id}")
        if moved.final:
            await _callback(tx, moved, event.id)
    if to_status == "succeeded" and moved.uisp_client_id is not None and moved.kind != "recurring":
        # Closing the loop to the network: the processor records it in UISP (if so
        # configured), whose unsuspend webhook then reconnects the customer. A recurring
        # payment's money is in its charges (one per paid invoice, the first one too):
        # each charge closes the loop, the subscription itself does not.
        await queues.send(tx, QUEUE, {"payment_id": moved.id, "uisp": True})
    return moved, Change(moved.id, to_status, provider=moved.provider)


async def _callback(tx: Conn, payment: Payment, event_id: str) -> None:
    """The payment's status_callback_url gets this event too (daemon.payments.callbacks)."""
    if payment.status_callback_url is None:
        return
    refused = await callbacks.deliver(tx, payment.id, payment.status_callback_url, event_id)
    if refused is not None:
        await add_event(tx, payment.id, "callback_refused", None, None, "store",
                        {"event_id": event_id, "reason": refused})  # fmt: skip


def observed_values(obs: ProviderPayment) -> dict[str, Any]:
    """The columns a provider's answer sets on our row."""
    values: dict[str, Any] = {
        "provider_object": obs.ref.kind,
        "provider_ref": obs.ref.id,
        "provider_status": obs.provider_status,
        "amount_captured": obs.amount_captured,
    }
    for name, value in (
        ("client_secret", obs.client_secret),
        ("hosted_url", obs.hosted_url),
        ("provider_intent_id", obs.intent_id),
        ("provider_subscription_id", obs.subscription_id),
        ("failure_code", obs.failure_code),
        ("failure_message", obs.failure_message),
    ):
        if value is not None:
            values[name] = value
    return values


# Refunds


async def insert_refund(
    tx: Conn, payment: Payment, amount: int, reason: str | None, created_by: str
) -> Refund:
    """Reserve ``amount`` of a locked payment's refundable amount and queue the refund."""
    row = await tx.fetchrow(
        "INSERT INTO refunds (id, payment_id, amount, currency, reason, created_by)"
        f" VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_REFUND_COLUMNS}",
        new_refund_id(),
        payment.id,
        amount,
        payment.currency,
        reason,
        created_by,
    )
    refund = _refund(row)
    # The CHECK (amount_refunded <= amount_captured) backs up the caller's own check.
    await tx.execute(
        "UPDATE payments SET amount_refunded = amount_refunded + $2, updated_at = now()"
        " WHERE id = $1",
        payment.id,
        amount,
    )
    await add_event(
        tx, payment.id, "refund_created", None, "pending", created_by,
        {"amount": amount}, refund_id=refund.id,
    )  # fmt: skip
    await outbox.emit(
        tx, "refund.created", _refund_announced(refund), subject=f"payment:{payment.id}"
    )
    await queues.send(tx, QUEUE, {"refund_id": refund.id})
    return refund


def _refund_announced(refund: Refund) -> dict[str, Any]:
    return {
        "id": refund.id,
        "payment_id": refund.payment_id,
        "status": refund.status,
        "amount": refund.amount,
        "currency": refund.currency,
        "failure_reason": refund.failure_reason,
    }


async def get_refund(db: Executor, refund_id: str) -> Refund | None:
    row = await db.fetchrow(f"SELECT {_REFUND_COLUMNS} FROM refunds WHERE id = $1", refund_id)
    return None if row is None else _refund(row)


async def refunds_of(db: Executor, payment_id: str) -> list[Refund]:
    """A payment's refunds, oldest first (the console's payment page)."""
    rows = await db.fetch(
        f"SELECT {_REFUND_COLUMNS} FROM refunds WHERE payment_id = $1 ORDER BY seq", payment_id
    )
    return [_refund(r) for r in rows]


async def lock_refund(tx: Conn, refund_id: str) -> Refund | None:
    row = await tx.fetchrow(
        f"SELECT {_REFUND_COLUMNS} FROM refunds WHERE id = $1 FOR UPDATE", refund_id
    )
    return None if row is None else _refund(row)


async def mark_refund_attempted(tx: Conn, refund_id: str) -> None:
    await tx.execute(
        "UPDATE refunds SET attempted_at = coalesce(attempted_at, now()), updated_at = now()"
        " WHERE id = $1",
        refund_id,
    )


async def touch_refund(tx: Conn, refund_id: str) -> None:
    """Asked about just now: reconcile's threshold runs from here again."""
    await tx.execute("UPDATE refunds SET updated_at = now() WHERE id = $1", refund_id)


async def refund_seen_pending(
    tx: Conn, refund_id: str, provider_ref: str, provider_status: str
) -> Refund | None:
    """The provider answered "pending": keep its refund id, so the next look is a
    re-fetch of that refund rather than a repeated create."""
    row = await tx.fetchrow(
        "UPDATE refunds SET provider_ref = $2, provider_status = $3, updated_at = now()"
        f" WHERE id = $1 AND status = 'pending' RETURNING {_REFUND_COLUMNS}",
        refund_id,
        provider_ref,
        provider_status,
    )
    return None if row is None else _refund(row)


async def transition_refund(
    tx: Conn,
    refund: Refund,
    to_status: str,
    actor: str,
    *,
    provider_ref: str | None = None,
    provider_status: str | None = None,
    failure_reason: str | None = None,
) -> tuple[Refund, list[Change]]:
    """Finish a locked refund (its payment locked too), with history and outbox, in ``tx``.

    A failed refund gives its reservation back; a refund that makes the payment fully
    refunded also announces ``payment.refunded``.
    """
    states.check_refund(refund.status, to_status)
    row = await tx.fetchrow(
        "UPDATE refunds SET status = $2, provider_ref = coalesce($3, provider_ref),"
        " provider_status = coalesce($4, provider_status), failure_reason = $5,"
        " updated_at = now(), finished_at = now() WHERE id = $1"
        f" RETURNING {_REFUND_COLUMNS}",
        refund.id,
        to_status,
        provider_ref,
        provider_status,
        failure_reason,
    )
    done = _refund(row)
    if to_status == "failed":
        await tx.execute(
            "UPDATE payments SET amount_refunded = amount_refunded - $2, updated_at = now()"
            " WHERE id = $1",
            refund.payment_id,
            refund.amount,
        )
    detail: dict[str, Any] = {"amount": refund.amount}
    if failure_reason:
        detail["failure_reason"] = failure_reason
    await add_event(
        tx, refund.payment_id, "refund_transition", refund.status, to_status, actor, detail,
        refund_id=refund.id,
    )  # fmt: skip
    subject = f"payment:{refund.payment_id}"
    await outbox.emit(tx, f"refund.{to_status}", _refund_announced(done), subject=subject)
    provider = await tx.fetchval("SELECT provider FROM payments WHERE id = $1", refund.payment_id)
    changes = [Change(refund.payment_id, to_status, refund.id, provider=provider or "")]
    if to_status == "succeeded":
        payment = await get(tx, refund.payment_id)
        assert payment is not None
        refunded = await tx.fetchval(
            "SELECT coalesce(sum(amount), 0) FROM refunds WHERE payment_id = $1"
            " AND status = 'succeeded'",
            refund.payment_id,
        )
        if refunded >= payment.amount_captured:
            event = await outbox.emit(tx, "payment.refunded", payment.announced(), subject=subject)
            await _callback(tx, payment, event.id)
    return done, changes


async def due_for_reconcile(db: Executor, *, after_seconds: float, limit: int) -> list[str]:
    """Payments in ``states.RECONCILABLE`` untouched past the threshold (or whose backoff
    is over), oldest first."""
    rows = await db.fetch(
        "SELECT id FROM payments WHERE status = ANY($1::text[])"
        " AND coalesce(reconcile_at, updated_at + make_interval(secs => $2)) <= now()"
        " ORDER BY coalesce(reconcile_at, updated_at) LIMIT $3",
        sorted(states.RECONCILABLE),
        after_seconds,
        limit,
    )
    return [r["id"] for r in rows]


async def pending_refunds_due(db: Executor, *, after_seconds: float, limit: int) -> list[str]:
    rows = await db.fetch(
        "SELECT id FROM refunds WHERE status = 'pending'"
        " AND updated_at <= now() - make_interval(secs => $1) ORDER BY updated_at LIMIT $2",
        after_seconds,
        limit,
    )
    return [r["id"] for r in rows]


async def due_for_expiry(db: Executor, *, limit: int) -> list[str]:
    rows = await db.fetch(
        "SELECT id FROM payments WHERE status = ANY($1::text[]) AND expires_at <= now()"
        " ORDER BY expires_at LIMIT $2",
        sorted(states.AWAITING_CUSTOMER),
        limit,
    )
    return [r["id"] for r in rows]
