"""The payment processor: the ``payments`` queue handler, and the one place that calls a
payment provider.

Consumes ``{"payment_id"}`` (drive the payment: create at the provider, cancel, capture,
or re-fetch with ``"sync": true``) and ``{"refund_id"}`` (run the refund), produced with
the row's change in the same transaction by the service, the mock's hosted page and the
Stripe webhook. Produces the rows' transitions (history + outbox, same transaction) and
``payment.*`` / ``refund.*`` events on the in-process bus once committed.

``drive`` looks at the row and does the next thing it needs, until nothing is left:

- ``created``: commit ``create_attempted_at``, then ``provider.create`` with
  ``create_key(payment_id)``. A crash anywhere in between is harmless: the redelivered
  message creates again with the same key and the provider answers the first object.
  A timeout → ``unknown``; reconcile later asks again (same key again).
- ``unknown`` (or ``sync``/reconcile): re-fetch (``retrieve``) and record what it says.
- cancel requested: ``provider.cancel``; capture requested: ``provider.capture``.

Nothing here trusts an event's copy of the state: it always re-fetches or uses the answer
of its own call. ``apply`` (the same for every source) checks the state machine, so a
late or repeated observation cannot move a payment backwards out of a final state.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from daemon.payments import provider as prov
from daemon.payments import states, store, uisp_loop
from daemon.payments.provider import (
    PaymentProvider,
    ProviderDeclined,
    ProviderError,
    ProviderPayment,
    ProviderRejected,
    ProviderUnavailable,
)
from daemon.payments.store import Change, Payment
from daemon.platform import queues
from daemon.platform.backoff import backoff
from daemon.platform.config import PaymentsConfig, UispConfig
from daemon.platform.consumer import Lease
from daemon.platform.db import Conn, Database
from daemon.platform.events import EventBus
from daemon.platform.metrics import Metrics
from daemon.platform.queues import Message
from daemon.uisp.client import UispClient

log = logging.getLogger(__name__)

QUEUE = store.QUEUE
T = TypeVar("T")
# One drive never loops more than this (create, then cancel, then re-fetch …).
MAX_STEPS = 5


@dataclass
class ProcessorDeps:
    db: Database
    provider: PaymentProvider | None  # None: payments.provider = "none"
    cfg: PaymentsConfig
    events: EventBus
    uisp: UispClient | None = None  # for payments.uisp_mode "record" / "reconnect"
    uisp_config: UispConfig | None = None  # "reconnect": where the ONU location is
    metrics: Metrics | None = None  # final states counted once committed


@dataclass
class Run:
    """One drive: who acts (history) and what to publish once committed."""

    deps: ProcessorDeps
    actor: str
    changes: list[Change] = field(default_factory=list)

    def publish(self) -> None:
        for change in self.changes:
            change.publish(self.deps.events, self.deps.metrics)
        self.changes.clear()


async def handle(deps: ProcessorDeps, msg: Message, lease: Lease | None = None) -> None:
    """One ``payments`` message; idempotent under redelivery (the row says what is left)."""
    body = msg.message
    if "refund_id" in body:
        await run_refund(deps, str(body["refund_id"]), actor="processor")
    elif body.get("uisp"):
        await uisp_loop.close(deps.db, deps.uisp, deps.cfg, deps.uisp_config, deps.events,
                              str(body.get("payment_id", "")))  # fmt: skip
    else:
        await drive(deps, str(body.get("payment_id", "")), actor="processor",
                    refresh=bool(body.get("sync")))  # fmt: skip
    await queues.archive(deps.db, QUEUE, msg.msg_id)


async def call_provider(deps: ProcessorDeps, fn: Callable[[], Awaitable[T]]) -> T:
    """A provider call, bounded: no answer in time is ``ProviderUnavailable``."""
    try:
        with trio.fail_after(deps.cfg.provider_timeout_seconds):
            return await fn()
    except trio.TooSlowError:
        raise ProviderUnavailable(
            f"no answer from the provider within {deps.cfg.provider_timeout_seconds:g} s",
            code="timeout",
        ) from None


def provider_for(deps: ProcessorDeps, payment: Payment) -> PaymentProvider | None:
    provider = deps.provider
    if provider is None or provider.name != payment.provider:
        return None
    return provider


async def drive(
    deps: ProcessorDeps, payment_id: str, *, actor: str, refresh: bool = False
) -> Payment | None:
    """Take the payment as far as it can go now; returns it as left (None if unknown)."""
    run = Run(deps, actor)
    payment: Payment | None = None
    try:
        for _ in range(MAX_STEPS):
            payment, step = await _next_step(run, payment_id, refresh)
            refresh = False
            if step is None or payment is None:
                break
            try:
                await step(payment)
            except _Stop:
                break
    finally:
        run.publish()
    return payment


Step = Callable[[Payment], Awaitable[None]]


async def _next_step(
    run: Run, payment_id: str, refresh: bool
) -> tuple[Payment | None, Step | None]:
    """Under the row lock: what the payment needs next (committing any mark first)."""
    deps = run.deps
    async with deps.db.transaction() as tx:
        payment = await store.lock(tx, payment_id)
        if payment is None:
            log.warning("payments: no payment %r (message ignored)", payment_id)
            return None, None
        if payment.final:
            return payment, None
        if (
            payment.status == "created"
            and payment.cancel_requested_at is not None
            and (payment.create_attempted_at is None)
        ):
            moved, change = await store.transition(tx, payment, "canceled", run.actor)
            run.changes.append(change)
            return moved, None
        provider = provider_for(deps, payment)
        if provider is None:
            await store.add_event(
                tx, payment.id, "no_provider", None, None, run.actor,
                {"configured": deps.cfg.provider, "payment_provider": payment.provider},
            )  # fmt: skip
            return payment, None
        if payment.status == "created" or (payment.status == "unknown" and payment.ref is None):
            payment = await store.update(
                tx, payment.id, create_attempted_at=payment.create_attempted_at or _now()
            )
            return payment, lambda p: _create(run, provider, p)
        if refresh or payment.status == "unknown":
            return payment, lambda p: _retrieve(run, provider, p)
        if payment.cancel_requested_at is not None:
            return payment, lambda p: _cancel(run, provider, p)
        if payment.capture_requested_at is not None and payment.status == "requires_capture":
            return payment, lambda p: _capture(run, provider, p)
        return payment, None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def create_request(deps: ProcessorDeps, payment: Payment) -> prov.CreateRequest:
    base = deps.cfg.public_base_url.rstrip("/")
    return prov.CreateRequest(
        payment_id=payment.id,
        amount=payment.amount,
        currency=payment.currency,
        method=payment.method,  # type: ignore[arg-type]
        kind=payment.kind,  # type: ignore[arg-type]
        capture_method=payment.capture_method,  # type: ignore[arg-type]
        idempotency_key=prov.create_key(payment.id),
        interval=payment.interval,  # type: ignore[arg-type]
        description=payment.description,
        customer=payment.customer,
        metadata={**payment.metadata, "paymentd_payment_id": payment.id},
        success_url=deps.cfg.success_url or f"{base}/pay/done",
        cancel_url=deps.cfg.cancel_url or f"{base}/pay/canceled",
    )


async def _create(run: Run, provider: PaymentProvider, payment: Payment) -> None:
    req = create_request(run.deps, payment)
    try:
        obs = await call_provider(run.deps, lambda: provider.create(req))
    except ProviderDeclined as exc:
        await _fail(run, payment, "declined", exc)
    except ProviderRejected as exc:
        await _fail(run, payment, "rejected", exc)
    except ProviderUnavailable as exc:
        await _unknown(run, payment, exc)
    else:
        await record(run, payment.id, obs)


async def _retrieve(run: Run, provider: PaymentProvider, payment: Payment) -> None:
    ref = payment.ref
    assert ref is not None
    try:
        obs = await call_provider(run.deps, lambda: provider.retrieve(ref))
    except ProviderError as exc:
        await _note(run, payment, "retrieve_failed", exc)
        raise _Stop from None
    await record(run, payment.id, obs)


async def _cancel(run: Run, provider: PaymentProvider, payment: Payment) -> None:
    ref = payment.ref
    assert ref is not None
    key = prov.cancel_key(payment.id)
    try:
        obs = await call_provider(run.deps, lambda: provider.cancel(ref, idempotency_key=key))
    except ProviderRejected as exc:
        # Usually: it was paid (or failed) meanwhile. Whatever it is, record the truth.
        await _note(run, payment, "cancel_refused", exc)
        obs = await call_provider(run.deps, lambda: provider.retrieve(ref))
        await record(run, payment.id, obs, cancel_done=True)
        return
    except ProviderError as exc:
        await _note(run, payment, "cancel_failed", exc)
        raise _Stop from None
    await record(run, payment.id, obs, cancel_done=True)


async def _capture(run: Run, provider: PaymentProvider, payment: Payment) -> None:
    ref = payment.ref
    assert ref is not None
    key = prov.capture_key(payment.id)
    amount = payment.capture_amount
    try:
        obs = await call_provider(
            run.deps, lambda: provider.capture(ref, amount=amount, idempotency_key=key)
        )
    except ProviderRejected as exc:
        await _note(run, payment, "capture_refused", exc)
        async with run.deps.db.transaction() as tx:
            await store.update(tx, payment.id, capture_requested_at=None, capture_amount=None)
        obs = await call_provider(run.deps, lambda: provider.retrieve(ref))
        await record(run, payment.id, obs)
        return
    except ProviderError as exc:
        await _note(run, payment, "capture_failed", exc)
        raise _Stop from None
    await record(run, payment.id, obs)


class _Stop(Exception):
    """Nothing more to do now; the next message or reconcile tries again."""


async def record(
    run: Run, payment_id: str, obs: ProviderPayment, *, cancel_done: bool = False
) -> Payment | None:
    async with run.deps.db.transaction() as tx:
        payment = await store.lock(tx, payment_id)
        if payment is None:
            return None
        moved, changes = await apply(tx, payment, obs, run.actor)
        if cancel_done and not moved.final:
            # The provider would not cancel it and it is still open (processing): stop
            # asking; reconcile records where it ends.
            moved = await store.update(tx, moved.id, cancel_requested_at=None)
    run.changes.extend(changes)
    return moved


async def apply(
    tx: Conn, payment: Payment, obs: ProviderPayment, actor: str, *, expiring: bool = False
) -> tuple[Payment, list[Change]]:
    """Record a provider's answer on a locked payment (any source: our own call, a
    re-fetch after a webhook, reconcile). Moves it only where the state machine allows;
    anything else is noted in the history, never applied."""
    target: str = states.FROM_PROVIDER[obs.status]
    if expiring and target == "canceled":
        target = "expired"
    values = store.observed_values(obs)
    if payment.final:
        if target != payment.status:
            detail = {"provider_status": obs.provider_status, "ours": payment.status}
            await store.add_event(tx, payment.id, "provider_disagrees", None, None, actor, detail)
            log.warning("payment %s is %s but the provider says %s", payment.id,
                        payment.status, obs.provider_status)  # fmt: skip
        return payment, []
    if (obs.currency and obs.currency != payment.currency) or (
        obs.amount and obs.amount != payment.amount
    ):
        # Not the payment we asked for (an object changed at the provider, a mix-up):
        # recording it could mark 10 USD paid for our 10 EUR and reconnect the customer.
        # It stays where it is, in the history for an operator; reconcile asks again.
        mismatch: dict[str, Any] = {
            "provider_status": obs.provider_status,
            "provider_ref": obs.ref.id,
            "amount": obs.amount,
            "currency": obs.currency,
        }
        await store.add_event(tx, payment.id, "provider_mismatch", None, None, actor, mismatch)
        log.error(
            "payment %s is %s %s but the provider's %s is %s %s",
            payment.id, payment.amount, payment.currency, obs.ref.id, obs.amount, obs.currency,
        )  # fmt: skip
        return payment, []
    if target == payment.status:
        if any(getattr(payment, k) != v for k, v in values.items()):
            payment = await store.update(tx, payment.id, **values)
        return payment, []
    if not states.can_move(payment.status, target):
        detail = {"provider_status": obs.provider_status, "would_be": target}
        await store.add_event(tx, payment.id, "observation_ignored", None, None, actor, detail)
        return payment, []
    detail = {"provider_status": obs.provider_status, "provider_ref": obs.ref.id}
    if obs.failure_code:
        detail["failure_code"] = obs.failure_code
    moved, change = await store.transition(tx, payment, target, actor, detail, **values)
    return moved, [change]


async def _fail(run: Run, payment: Payment, why: str, exc: ProviderError) -> None:
    async with run.deps.db.transaction() as tx:
        locked = await store.lock(tx, payment.id)
        if locked is None or locked.final:
            return
        _, change = await store.transition(
            tx, locked, "failed", run.actor, {"reason": why, "error": exc.message},
            failure_code=exc.code or why, failure_message=exc.message,
        )  # fmt: skip
    run.changes.append(change)
    raise _Stop


async def _unknown(run: Run, payment: Payment, exc: ProviderError) -> None:
    async with run.deps.db.transaction() as tx:
        locked = await store.lock(tx, payment.id)
        if locked is None or locked.final:
            return
        if locked.status == "unknown":
            await _note_in(tx, run, locked, "provider_unavailable", exc)
        else:
            _, change = await store.transition(
                tx, locked, "unknown", run.actor, {"error": exc.message, "code": exc.code}
            )
            run.changes.append(change)
    raise _Stop


async def _note(run: Run, payment: Payment, kind: str, exc: ProviderError) -> None:
    async with run.deps.db.transaction() as tx:
        await _note_in(tx, run, payment, kind, exc)


async def _note_in(tx: Conn, run: Run, payment: Payment, kind: str, exc: ProviderError) -> None:
    detail: dict[str, Any] = {"error": exc.message, "kind": type(exc).__name__}
    if exc.code:
        detail["code"] = exc.code
    await store.add_event(tx, payment.id, kind, None, None, run.actor, detail)
    log.warning("payment %s: %s: %s", payment.id, kind, exc.message)


# Refunds


async def run_refund(deps: ProcessorDeps, refund_id: str, *, actor: str) -> store.Refund | None:
    """Take a pending refund one step on at the provider and record where it ends.

    Once the provider has answered with its refund id (``provider_ref``), the refund is
    only re-fetched (``retrieve_refund``): a create repeated with the same idempotency
    key answers the *first* response (Stripe's rule), so a refund that was pending then
    would look pending forever. Without an id the create is sent (again) with the same
    key: ``attempted_at`` unset means it never left us; set, the first try may have
    reached the provider (a timeout, a crash) and the repeat answers its refund. That
    repeat is safe only while the provider still holds the key
    (``provider.IDEMPOTENCY_KEY_RETENTION``); past it the refund is left pending for an
    operator instead of risking a second refund.
    """
    async with deps.db.transaction() as tx:
        refund = await store.lock_refund(tx, refund_id)
        if refund is None or refund.status != "pending":
            return refund
        payment = await store.get(tx, refund.payment_id)
        assert payment is not None
        provider = provider_for(deps, payment)
        ref = payment.ref
        if provider is None or ref is None:
            return refund
        known = refund.provider_ref
        if known is None:
            if (
                refund.attempted_at is not None
                and _now() - refund.attempted_at > prov.IDEMPOTENCY_KEY_RETENTION
            ):
                await store.touch_refund(tx, refund.id)
                log.warning("refund %s: attempted long ago, no provider id: ask an operator",
                            refund.id)  # fmt: skip
                return refund
            await store.mark_refund_attempted(tx, refund.id)
    try:
        if known is not None:
            answer = await call_provider(deps, lambda: provider.retrieve_refund(known))
        else:
            req = prov.RefundRequest(
                refund_id=refund.id,
                payment=ref,
                amount=refund.amount,
                currency=refund.currency,
                idempotency_key=prov.refund_key(refund.id),
                reason=refund.reason,
            )
            answer = await call_provider(deps, lambda: provider.refund(req))
    except (ProviderDeclined, ProviderRejected) as exc:
        if known is None:
            return await _finish_refund(deps, refund.id, "failed", actor, failure=exc.message)
        # The provider does not know the refund it gave us: never fail it (that would
        # free its amount for another refund); keep it pending and say so.
        return await _refund_note(deps, refund, "refund_retrieve_refused", actor, exc)
    except ProviderUnavailable as exc:
        # Still pending: the next reconcile asks again (same key, or the same id).
        return await _refund_note(deps, refund, "refund_unavailable", actor, exc)
    if answer.status == "pending":
        async with deps.db.transaction() as tx:
            return await store.refund_seen_pending(tx, refund.id, answer.id, answer.provider_status)
    return await _finish_refund(
        deps, refund.id, answer.status, actor, ref=answer.id,
        provider_status=answer.provider_status, failure=answer.failure_reason,
    )  # fmt: skip


async def _refund_note(
    deps: ProcessorDeps, refund: store.Refund, kind: str, actor: str, exc: ProviderError
) -> store.Refund:
    async with deps.db.transaction() as tx:
        await store.add_event(
            tx, refund.payment_id, kind, None, None, actor, {"error": exc.message},
            refund_id=refund.id,
        )  # fmt: skip
        await store.touch_refund(tx, refund.id)
    return refund


async def _finish_refund(
    deps: ProcessorDeps,
    refund_id: str,
    status: str,
    actor: str,
    *,
    ref: str | None = None,
    provider_status: str | None = None,
    failure: str | None = None,
) -> store.Refund | None:
    async with deps.db.transaction() as tx:
        # The payment first, then the refund: the order every path takes (the Stripe
        # refresh too), so two of them finishing one refund cannot deadlock.
        seen = await store.get_refund(tx, refund_id)
        if seen is None:
            return None
        await store.lock(tx, seen.payment_id)  # the payment's amounts change too
        refund = await store.lock_refund(tx, refund_id)
        if refund is None or refund.status != "pending":
            return refund
        done, changes = await store.transition_refund(
            tx, refund, status, actor, provider_ref=ref, provider_status=provider_status,
            failure_reason=failure,
        )  # fmt: skip
    for change in changes:
        change.publish(deps.events, deps.metrics)
    return done


def reconcile_delay(cfg: PaymentsConfig, attempts: int) -> float:
    """Seconds until the next re-fetch after ``attempts`` of them: doubling, capped."""
    return backoff(cfg.reconcile_after_seconds, attempts, cap=cfg.reconcile_backoff_max_seconds)


async def on_poison(tx: Conn, msg: Message, reason: str) -> None:
    """A message that keeps crashing its handler: a payment we were driving is now of
    unknown state (reconcile re-fetches it); a refund stays pending for reconcile."""
    payment_id = msg.message.get("payment_id")
    if not payment_id:
        return
    payment = await store.lock(tx, str(payment_id))
    if payment is not None and not payment.final and payment.status != "unknown":
        await store.transition(tx, payment, "unknown", "processor", {"poison": reason})


async def on_replay(tx: Conn, message: dict[str, Any]) -> None:
    """Nothing to reset: ``drive`` reads what is left to do from the row."""
