"""The payments service layer: the one code path behind HTTP (and gRPC, and SQL, later).

Faces parse their transport into these calls and render ``Outcome`` / rows back; all the
rules live here: validation, the state checks, idempotency (``daemon.payments.idempotency``),
and waiting for the processor (``wait``). No provider is ever called from here: a POST
stores its intent and queues it, in one transaction, and the payment processor
(``daemon.payments.processor``) talks to the provider.

Every change locks the payment row first (``store.lock``), so concurrent requests on one
payment — two refunds, a cancel racing the processor — are serialised by PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import trio

from daemon.payments import callbacks, currency, idempotency, states, store
from daemon.payments.errors import PaymentsError
from daemon.payments.idempotency import Outcome
from daemon.payments.store import Change, Payment, PaymentEvent, Refund
from daemon.platform import queues
from daemon.platform.config import PaymentsConfig
from daemon.platform.db import Conn, Database
from daemon.platform.events import EventBus, TooManySubscribers
from daemon.platform.metrics import Metrics

# Stripe's own limit for most currencies is 8 digits; this only stops absurd values.
MAX_AMOUNT = 10**12
MAX_METADATA_KEYS = 50
MAX_WAIT_SECONDS = 30.0
METHODS = ("intent", "hosted_checkout", "payment_link")
KINDS = ("one_time", "recurring")
INTERVALS = ("day", "week", "month", "year")
CAPTURE_METHODS = ("automatic", "manual")


@dataclass(frozen=True)
class Caller:
    """Who asks: ``scope`` keys idempotency (an API key's id, "admin"), ``actor`` the history."""

    scope: str
    actor: str


@dataclass(frozen=True)
class CreateParams:
    amount: int
    currency: str
    method: str = "intent"
    kind: str = "one_time"
    interval: str | None = None
    capture_method: str = "automatic"
    description: str | None = None
    customer: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    status_callback_url: str | None = None
    uisp_client_id: int | None = None


@dataclass(frozen=True)
class Page:
    payments: list[Payment]
    next_cursor: str | None


def _bad(kind: str, detail: str, field_name: str) -> PaymentsError:
    return PaymentsError(kind, detail, field=field_name)


def check_amount(amount: Any, field_name: str = "amount") -> int:
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise _bad("invalid-amount", f"{field_name} must be an integer (minor units)", field_name)
    if amount <= 0:
        raise _bad("invalid-amount", f"{field_name} must be positive, got {amount}", field_name)
    if amount > MAX_AMOUNT:
        raise _bad("invalid-amount", f"{field_name} must be at most {MAX_AMOUNT}", field_name)
    return amount


def validate(params: CreateParams) -> store.NewPayment:
    """``params`` checked and normalized; ``PaymentsError`` naming the field otherwise."""
    amount = check_amount(params.amount)
    try:
        code = currency.normalize(params.currency)
    except currency.UnknownCurrency as exc:
        raise _bad("invalid-currency", str(exc), "currency") from None
    if params.method not in METHODS:
        raise _bad("invalid-request", f"method must be one of {', '.join(METHODS)}", "method")
    if params.kind not in KINDS:
        raise _bad("invalid-request", f"kind must be one of {', '.join(KINDS)}", "kind")
    if params.capture_method not in CAPTURE_METHODS:
        raise _bad(
            "invalid-request", "capture_method must be automatic or manual", "capture_method"
        )
    if params.kind == "recurring":
        if params.interval not in INTERVALS:
            raise _bad(
                "invalid-request",
                f"a recurring payment needs interval: one of {', '.join(INTERVALS)}",
                "interval",
            )
        if params.method == "intent":
            raise _bad(
                "invalid-request",
                "a recurring payment needs method hosted_checkout or payment_link",
                "method",
            )
        if params.capture_method == "manual":
            raise _bad(
                "invalid-request",
                "a recurring payment cannot be captured manually",
                "capture_method",
            )
    elif params.interval is not None:
        raise _bad("invalid-request", "interval is only for kind recurring", "interval")
    if len(params.metadata) > MAX_METADATA_KEYS:
        raise _bad(
            "invalid-request", f"metadata holds at most {MAX_METADATA_KEYS} keys", "metadata"
        )
    for key, value in params.metadata.items():
        if not isinstance(value, str) or not 1 <= len(key) <= 40 or len(value) > 500:
            raise _bad(
                "invalid-request",
                "metadata keys are 1-40 characters, values strings of at most 500",
                "metadata",
            )
    url = params.status_callback_url
    if url is not None:
        try:
            callbacks.check(url)
        except callbacks.InvalidCallbackUrl as exc:
            raise _bad("invalid-request", str(exc), "status_callback_url") from None
    if params.uisp_client_id is not None and not 0 < params.uisp_client_id < 2**63:
        raise _bad("invalid-request", "uisp_client_id must be a positive integer", "uisp_client_id")
    if params.description is not None and len(params.description) > 1000:
        raise _bad("invalid-request", "description is at most 1000 characters", "description")
    if params.customer is not None and not 1 <= len(params.customer) <= 200:
        raise _bad("invalid-request", "customer is 1-200 characters", "customer")
    return store.NewPayment(
        amount=amount,
        currency=code,
        method=params.method,
        kind=params.kind,
        interval=params.interval,
        capture_method=params.capture_method,
        description=params.description,
        customer=params.customer,
        metadata=dict(params.metadata),
        status_callback_url=url,
        uisp_client_id=params.uisp_client_id,
    )


def has_answer(payment: Payment) -> bool:
    """What ``Prefer: wait`` on create waits for: something to pay with, or an end."""
    return payment.final or payment.client_secret is not None or payment.hosted_url is not None


class PaymentService:
    def __init__(
        self, db: Database, cfg: PaymentsConfig, events: EventBus, metrics: Metrics | None = None
    ) -> None:
        self.db = db
        self.cfg = cfg
        self.events = events
        self.metrics = metrics
        self._idem = idempotency.Settings(cfg.idempotency_ttl_seconds, cfg.idempotency_lock_seconds)

    # Reads

    async def get(self, payment_id: str) -> Payment:
        payment = await store.get(self.db, payment_id)
        if payment is None:
            raise PaymentsError("payment-not-found", f"no payment {payment_id!r}")
        return payment

    async def get_refund(self, refund_id: str) -> Refund:
        refund = await store.get_refund(self.db, refund_id)
        if refund is None:
            raise PaymentsError("refund-not-found", f"no refund {refund_id!r}")
        return refund

    async def history(self, payment_id: str) -> list[PaymentEvent]:
        await self.get(payment_id)
        return await store.events(self.db, payment_id)

    async def refunds(self, payment_id: str) -> list[Refund]:
        await self.get(payment_id)
        return await store.refunds_of(self.db, payment_id)

    async def list_payments(
        self,
        *,
        status: str | None = None,
        customer: str | None = None,
        created_gte: dt.datetime | None = None,
        created_lt: dt.datetime | None = None,
        cursor: str | None = None,
        limit: int = 50,
        parent: str | None = None,
    ) -> Page:
        before: int | None = None
        if cursor is not None:
            if not cursor.isdigit() or len(cursor) > 19:
                raise _bad(
                    "invalid-request", "cursor is a next_cursor from an earlier page", "cursor"
                )
            before = int(cursor)
        if status is not None and status not in states.PAYMENT_TRANSITIONS:
            raise _bad("invalid-request", f"unknown status {status!r}", "status")
        rows = await store.list_page(
            self.db,
            status=status,
            customer=customer,
            parent=parent,
            created_gte=created_gte,
            created_lt=created_lt,
            before_seq=before,
            limit=limit + 1,
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(rows, str(rows[-1].seq) if more and rows else None)

    # Writes: each one transaction (plus the idempotency claim), answered as an Outcome.

    def _enabled(self) -> str:
        if self.cfg.provider == "none":
            raise PaymentsError(
                "payments-disabled", 'payments.provider is "none": set it to stripe or mock'
            )
        return self.cfg.provider

    async def create(self, caller: Caller, params: CreateParams, key: str | None) -> Outcome:
        new = validate(params)  # invalid input is refused before the key is claimed
        provider = self._enabled()
        fingerprinted = asdict(new)
        inserted: list[bool] = []  # work ran (not an idempotent replay)
        ttl = self.cfg.pending_ttl_seconds

        if key is not None:
            # The hot path (bench/payments_create.py): the claim, then one statement for
            # the row, its history, queue message, outbox event and the stored answer.
            # The answer is the row, known before it is written (store.fresh); its
            # created_at is the claim's time, the moment this request took the key.
            def prepare(locked_at: dt.datetime) -> tuple[str, tuple[Any, ...], Outcome]:
                fresh = store.fresh(
                    new,
                    store.new_payment_id(),
                    created_by=caller.actor,
                    provider=provider,
                    at=locked_at,
                    expires_at=locked_at + dt.timedelta(seconds=ttl),
                )
                body = fresh.public()
                inserted.append(True)
                sql, args = store.insert_answered(
                    fresh, scope=caller.scope, key=key, locked_at=locked_at, status=201,
                    body=body,
                )  # fmt: skip
                return sql, args, Outcome(201, body, fresh.id)

            outcome = await idempotency.run_answered(
                self.db, caller.scope, key, "payments.create", fingerprinted, prepare, self._idem
            )
            self._count_created(inserted, outcome, provider)
            return outcome

        async def work(tx: Conn) -> Outcome:
            payment = await store.insert(
                tx,
                new,
                created_by=caller.actor,
                provider=provider,
                ttl_seconds=ttl,
            )
            inserted.append(True)
            return Outcome(201, payment.public(), payment.id)

        outcome = await idempotency.run(
            self.db, caller.scope, key, "payments.create", fingerprinted, work, self._idem
        )
        self._count_created(inserted, outcome, provider)
        return outcome

    def _count_created(self, inserted: list[bool], outcome: Outcome, provider: str) -> None:
        if inserted and outcome.status == 201 and self.metrics is not None:  # committed
            self.metrics.payments_created.labels(provider).inc()

    async def cancel(self, caller: Caller, payment_id: str, key: str | None) -> Outcome:
        changes: list[Change] = []

        async def work(tx: Conn) -> Outcome:
            payment = await self._lock(tx, payment_id)
            if payment.final:
                raise PaymentsError(
                    "invalid-state",
                    f"payment {payment.id} is {payment.status}: only a payment that is not"
                    " final can be cancelled",
                    status_now=payment.status,
                )
            if payment.status == "created" and payment.create_attempted_at is None:
                # The provider has never heard of it: cancelled here and now.
                moved, change = await store.transition(
                    tx, payment, "canceled", caller.actor, {"reason": "cancelled before the"
                    " provider was asked"}, cancel_requested_at=dt.datetime.now(dt.UTC),
                )  # fmt: skip
                changes.append(change)
                return Outcome(200, moved.public(), moved.id)
            if payment.cancel_requested_at is None:
                payment = await store.update(
                    tx, payment.id, cancel_requested_at=dt.datetime.now(dt.UTC)
                )
                await store.add_event(tx, payment.id, "cancel_requested", None, None, caller.actor)
                await queues.send(tx, store.QUEUE, {"payment_id": payment.id})
            return Outcome(202, payment.public(), payment.id)

        outcome = await idempotency.run(
            self.db,
            caller.scope,
            key,
            "payments.cancel",
            {"payment_id": payment_id},
            work,
            self._idem,
        )
        self._publish(changes)
        return outcome

    async def capture(
        self, caller: Caller, payment_id: str, amount: int | None, key: str | None
    ) -> Outcome:
        if amount is not None:
            check_amount(amount)

        async def work(tx: Conn) -> Outcome:
            payment = await self._lock(tx, payment_id)
            if payment.capture_method != "manual":
                raise PaymentsError(
                    "invalid-state",
                    f"payment {payment.id} is captured automatically (capture_method automatic)",
                    status_now=payment.status,
                )
            if payment.capture_requested_at is not None:
                asked_before = payment.capture_amount or payment.amount  # None: all of it
                if (amount or payment.amount) == asked_before:  # the same capture again
                    return Outcome(202, payment.public(), payment.id)
                # Another amount would be answered 202 and never captured: Stripe
                # captures once.
                raise PaymentsError(
                    "invalid-state",
                    f"payment {payment.id} already has a capture of {asked_before} requested"
                    f" (it is {payment.status}): a payment is captured once",
                    status_now=payment.status,
                )
            if payment.status != "requires_capture":
                raise PaymentsError(
                    "invalid-state",
                    f"payment {payment.id} is {payment.status}: only a requires_capture"
                    " payment can be captured",
                    status_now=payment.status,
                )
            if amount is not None and amount > payment.amount:
                raise PaymentsError(
                    "amount-exceeds-capturable",
                    f"amount {amount} exceeds the authorized {payment.amount}",
                    field="amount",
                    capturable=payment.amount,
                )
            payment = await store.update(
                tx,
                payment.id,
                capture_requested_at=dt.datetime.now(dt.UTC),
                capture_amount=amount,
            )
            await store.add_event(
                tx, payment.id, "capture_requested", None, None, caller.actor, {"amount": amount}
            )
            await queues.send(tx, store.QUEUE, {"payment_id": payment.id})
            return Outcome(202, payment.public(), payment.id)

        params = {"payment_id": payment_id, "amount": amount}
        return await idempotency.run(
            self.db, caller.scope, key, "payments.capture", params, work, self._idem
        )

    async def refund(
        self,
        caller: Caller,
        payment_id: str,
        amount: int | None,
        reason: str | None,
        key: str | None,
    ) -> Outcome:
        if amount is not None:
            check_amount(amount)
        if reason is not None and len(reason) > 500:
            raise _bad("invalid-request", "reason is at most 500 characters", "reason")

        async def work(tx: Conn) -> Outcome:
            # The payment's row lock serialises refunds: the sum never exceeds what was
            # captured, however many arrive at once (the CHECK constraint backs this up).
            payment = await self._lock(tx, payment_id)
            if payment.status != "succeeded":
                raise PaymentsError(
                    "invalid-state",
                    f"payment {payment.id} is {payment.status}: only a succeeded payment can be"
                    " refunded",
                    status_now=payment.status,
                )
            left = payment.amount_captured - payment.amount_refunded
            wanted = left if amount is None else amount
            if wanted <= 0 or wanted > left:
                raise PaymentsError(
                    "amount-exceeds-refundable",
                    f"a refund of {wanted} exceeds the {left} left to refund on {payment.id}",
                    field="amount",
                    refundable=left,
                )
            refund = await store.insert_refund(tx, payment, wanted, reason, caller.actor)
            return Outcome(201, refund.public(), refund.id)

        params = {"payment_id": payment_id, "amount": amount, "reason": reason}
        return await idempotency.run(
            self.db, caller.scope, key, "payments.refund", params, work, self._idem
        )

    async def _lock(self, tx: Conn, payment_id: str) -> Payment:
        payment = await store.lock(tx, payment_id)
        if payment is None:
            raise PaymentsError("payment-not-found", f"no payment {payment_id!r}")
        return payment

    def _publish(self, changes: list[Change]) -> None:
        for change in changes:
            change.publish(self.events, self.metrics)

    # Waiting for the processor (Prefer: wait)

    async def wait(
        self, payment_id: str, until: Callable[[Payment], bool], seconds: float
    ) -> tuple[Payment, bool]:
        """The payment once ``until(payment)`` holds or ``seconds`` passed; and whether
        it was waited for (False: the bus had no room for one more subscriber).

        Woken by the processor's events on the in-process bus, never by polling: the
        subscription starts before the first read, so no change can slip between them.
        """
        seconds = max(0.0, min(seconds, MAX_WAIT_SECONDS))
        try:
            with self.events.subscribe() as sub:
                payment = await self.get(payment_id)
                with trio.move_on_after(seconds):
                    while not until(payment):
                        event = await sub.receive()
                        if event.kind == "dropped" or event.data.get("payment_id") == payment_id:
                            payment = await self.get(payment_id)
                return payment, True
        except TooManySubscribers:
            return await self.get(payment_id), False

    async def wait_refund(self, refund_id: str, seconds: float) -> Refund:
        seconds = max(0.0, min(seconds, MAX_WAIT_SECONDS))
        try:
            with self.events.subscribe() as sub:
                refund = await self.get_refund(refund_id)
                with trio.move_on_after(seconds):
                    while refund.status == "pending":
                        event = await sub.receive()
                        if event.kind == "dropped" or event.data.get("refund_id") == refund_id:
                            refund = await self.get_refund(refund_id)
                return refund
        except TooManySubscribers:
            return await self.get_refund(refund_id)


def parse_wait(prefer: str | None) -> float | None:
    """``Prefer: wait=N`` (RFC 7240) → N seconds capped at 30; None when absent or bad."""
    if not prefer:
        return None
    for part in prefer.replace(";", ",").split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "wait":
            try:
                seconds = float(value.strip().strip('"'))
            except ValueError:
                return None
            if not math.isfinite(seconds) or seconds < 0:
                return None
            return min(seconds, MAX_WAIT_SECONDS)
    return None
