"""The ``stripe_events`` queue's handler: what a stored Stripe event means for our rows.

Consumes ``{"event_id"}`` messages (``daemon.payments.stripe_webhook`` produces them).
Events arrive in any order, twice, or late, and their snapshot of the object may be
stale, so an event is only a hint about *which* object changed: the handler finds our
payment (or refund) for it and re-fetches the object from Stripe before anything changes
(``Refresh``: the same re-fetch-and-apply as reconciliation). Whatever order events come
in, the final state is Stripe's current one.

- ``payment_intent.*`` (succeeded, payment_failed, canceled, processing, requires_action,
  amount_capturable_updated): the payment with that intent (its ref or intent id, else
  ``metadata.paymentd_payment_id``) is re-fetched and applied;
- ``checkout.session.*`` (completed, expired, async_payment_*): the payment with that
  session (or its payment link, or ``client_reference_id``): re-fetched and applied;
- ``refund.*``, ``charge.refund.updated``: the refund (``metadata.paymentd_refund_id`` or
  its ref): the refund is re-fetched and applied;
- ``charge.refunded``: the payment of the charge's intent: its pending refunds are
  re-fetched and applied;
- ``invoice.paid`` / ``invoice.payment_succeeded`` / ``invoice.payment_failed``: the
  recurring payment of the invoice's subscription: the invoice is re-fetched; a paid one
  becomes a payment of its own, once (a ``recurring_charge`` child of the recurring
  payment, ``daemon.payments.recurring``; ``invoice_paid`` in the parent's history), a
  failed attempt is noted in the parent's history (``invoice_payment_failed``).

Anything else is recorded ``processed`` with an outcome saying it was ignored. Stripe
unreachable: the event is retried (1 s doubling to 5 min, a fresh queue message each time,
for about three days) — an event is never dropped because Stripe was down for a while.
An object that is not ours is ignored (another integration on the same Stripe account).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from daemon.payments import recurring, refresh, store, stripe_events
from daemon.payments.processor import ProcessorDeps
from daemon.payments.provider import ProviderRejected, ProviderUnavailable
from daemon.payments.stripe_provider import PAYMENT_ID_KEY, REFUND_ID_KEY, StripeProvider
from daemon.platform import queues
from daemon.platform.consumer import Lease
from daemon.platform.db import Conn, Database
from daemon.platform.queues import Message

log = logging.getLogger(__name__)

QUEUE = stripe_events.QUEUE
ACTOR = "stripe_event"
RETRY_MAX_SECONDS = 300.0
# Stripe unreachable: retried (1 s doubling to 5 min) about three days, then the event is
# marked failed (reconciliation still re-fetches its payment; a replay re-queues it).
GIVE_UP_AFTER_ATTEMPTS = 9 + 3 * 24 * 12


@dataclass(frozen=True)
class StripeEventDeps:
    db: Database
    provider: StripeProvider | None  # None: payments.provider is not "stripe"
    processor: ProcessorDeps  # the payments core's, for re-fetch and apply

    async def refresh_payment(self, payment_id: str, actor: str) -> str:
        return await refresh.refresh_payment(self.processor, payment_id, actor)

    async def refresh_refund(self, refund_id: str, actor: str) -> str:
        return await refresh.refresh_refund(self.processor, refund_id, actor)


async def handle(deps: StripeEventDeps, msg: Message, lease: Lease) -> None:
    event_id = str(msg.message.get("event_id", ""))
    row = await stripe_events.get(deps.db, event_id)
    if row is None or row.state != "queued":
        await queues.archive(deps.db, QUEUE, msg.msg_id)  # done already, or unknown
        return
    body = await stripe_events.body(deps.db, event_id)
    assert body is not None
    try:
        if deps.provider is None:
            raise ProviderRejected("payments.provider is not stripe", code="not_configured")
        outcome = await apply(deps, deps.provider, body)
        state: stripe_events.State = "processed"
    except ProviderUnavailable as exc:
        async with deps.db.transaction() as tx:
            attempts = await stripe_events.count_attempt(tx, event_id)
            if attempts < GIVE_UP_AFTER_ATTEMPTS:
                delay = min(RETRY_MAX_SECONDS, 2.0 ** (attempts - 1))
                # A fresh delayed copy: waiting out an outage never counts towards the
                # consumer's poison threshold.
                await queues.requeue(tx, QUEUE, msg, delay)
        if attempts < GIVE_UP_AFTER_ATTEMPTS:
            log.warning("Stripe event %s: %s; again in %g s", event_id, exc.message, delay)
            return
        outcome, state = f"failed: Stripe unreachable ({attempts} tries): {exc.message}", "failed"
    except ProviderRejected as exc:
        outcome, state = f"failed: {exc.message}", "failed"
    async with deps.db.transaction() as tx:
        await stripe_events.record_outcome(tx, event_id, state, outcome)
        await queues.archive(tx, QUEUE, msg.msg_id)
    log.info("Stripe event %s %s: %s", event_id, row.type, outcome)


async def apply(deps: StripeEventDeps, provider: StripeProvider, event: dict[str, Any]) -> str:
    """What ``event`` changes; the outcome recorded on its row."""
    kind = str(event["type"])
    obj: dict[str, Any] = event["data"]["object"]
    if kind.startswith("payment_intent."):
        payment = await _payment_for(deps.db, obj["id"], obj.get("metadata"))
        return await _refresh(deps, payment, obj["id"])
    if kind.startswith("checkout.session."):
        payment = await _payment_for_session(deps.db, obj)
        return await _refresh(deps, payment, obj["id"])
    if kind.startswith("refund.") or kind == "charge.refund.updated":
        return await _refund_event(deps, obj)
    if kind == "charge.refunded":
        payment = await _payment_for(deps.db, obj.get("payment_intent"), obj.get("metadata"))
        if payment is None:
            return f"ignored: no payment for charge {obj.get('id')}"
        outcomes = [
            await deps.refresh_refund(r, ACTOR) for r in await _pending_refunds(deps.db, payment.id)
        ]
        return "; ".join(outcomes) or "no pending refund"
    if kind in ("invoice.paid", "invoice.payment_succeeded", "invoice.payment_failed"):
        return await _invoice_event(deps, provider, obj["id"], kind)
    return f"ignored: {kind}"


async def _refresh(deps: StripeEventDeps, payment: store.Payment | None, object_id: str) -> str:
    if payment is None:
        return f"ignored: no payment for {object_id}"
    return await deps.refresh_payment(payment.id, ACTOR)


async def _payment_for(
    db: Database, object_id: str | None, metadata: dict[str, Any] | None
) -> store.Payment | None:
    if object_id:
        found = await store.find_by_ref(db, "stripe", object_id)
        if found is not None:
            return found
    payment_id = (metadata or {}).get(PAYMENT_ID_KEY)
    if isinstance(payment_id, str):
        found = await store.get(db, payment_id)
        if found is not None and found.provider == "stripe":
            return found
    return None


async def _payment_for_session(db: Database, session: dict[str, Any]) -> store.Payment | None:
    for ref in (session.get("id"), session.get("payment_link"), session.get("payment_intent")):
        if isinstance(ref, str):
            found = await store.find_by_ref(db, "stripe", ref)
            if found is not None:
                return found
    meta = dict(session.get("metadata") or {})
    if isinstance(session.get("client_reference_id"), str):
        meta.setdefault(PAYMENT_ID_KEY, session["client_reference_id"])
    return await _payment_for(db, None, meta)


async def _refund_event(deps: StripeEventDeps, refund: dict[str, Any]) -> str:
    refund_id = (refund.get("metadata") or {}).get(REFUND_ID_KEY)
    if not isinstance(refund_id, str):
        refund_id = await deps.db.fetchval(
            "SELECT id FROM refunds WHERE provider_ref = $1", refund.get("id")
        )
    if not isinstance(refund_id, str) or await store.get_refund(deps.db, refund_id) is None:
        return f"ignored: no refund for {refund.get('id')}"
    return await deps.refresh_refund(refund_id, ACTOR)


async def _pending_refunds(db: Database, payment_id: str) -> list[str]:
    rows = await db.fetch(
        "SELECT id FROM refunds WHERE payment_id = $1 AND status = 'pending' ORDER BY seq",
        payment_id,
    )
    return [r["id"] for r in rows]


async def _invoice_event(
    deps: StripeEventDeps, provider: StripeProvider, invoice_id: str, kind: str
) -> str:
    """An invoice of a recurring payment changed: re-fetched, then a paid one becomes a
    charge (``daemon.payments.recurring``), a failed attempt is noted on the parent.

    What is recorded follows the re-fetched invoice, not the event's type: a
    ``payment_failed`` that arrives after a retry paid it records the charge.
    """
    invoice = await provider.retrieve_invoice(invoice_id)
    payment = None
    if invoice.subscription_id:
        payment_id = await deps.db.fetchval(
            "SELECT id FROM payments WHERE provider = 'stripe' AND provider_subscription_id = $1"
            " AND kind = 'recurring'",
            invoice.subscription_id,
        )
        payment = await store.get(deps.db, payment_id) if payment_id else None
    if payment is None and invoice.payment_id:
        payment = await store.get(deps.db, invoice.payment_id)
    if payment is None or payment.kind != "recurring":
        return f"ignored: no recurring payment for invoice {invoice_id}"
    failed_attempt = kind == "invoice.payment_failed" and invoice.status in (
        "open",
        "uncollectible",
    )
    if not invoice.paid and not failed_attempt:
        return f"invoice {invoice_id} is {invoice.status}: nothing to record"
    changes: list[store.Change] = []
    async with deps.db.transaction() as tx:
        locked = await store.lock(tx, payment.id)
        assert locked is not None
        if not invoice.paid:
            noted = await recurring.record_failed(tx, locked, invoice, ACTOR)
            attempt = f"attempt {invoice.attempt_count} of invoice {invoice_id}"
            return f"{attempt} failed: noted on {payment.id}" if noted else f"{attempt} known"
        if invoice.amount_paid <= 0:  # a fully discounted period: no money, no charge
            await store.add_event(tx, payment.id, "invoice_paid", None, None, ACTOR,
                                  {"invoice": invoice_id, "amount": 0})  # fmt: skip
            return f"invoice {invoice_id} paid nothing: noted on {payment.id}"
        charge, changes = await recurring.record_paid(tx, locked, invoice, ACTOR)
    for change in changes:
        change.publish(deps.processor.events, deps.processor.metrics)
    if charge is None:
        return f"invoice {invoice_id} already recorded"
    return f"invoice {invoice_id} recorded as {charge.id} of {payment.id}"


async def on_poison(tx: Conn, msg: Message, reason: str) -> None:
    await stripe_events.fail_unfinished(tx, str(msg.message.get("event_id", "")), reason)


async def on_replay(tx: Conn, message: dict[str, Any]) -> None:
    await stripe_events.mark_queued(tx, str(message.get("event_id", "")))


__all__ = ["QUEUE", "StripeEventDeps", "apply", "handle", "on_poison", "on_replay"]
