"""A recurring payment's invoices: each paid one becomes a payment of its own (a charge).

A recurring payment (Checkout in subscription mode) stands for the subscription; the
money comes in as the subscription's invoices, one per billing period. Each paid invoice
is recorded as a *charge*: a payment row of kind ``recurring_charge`` with
``parent_payment_id`` the recurring payment, the invoice's amount and currency, status
``succeeded``, and the invoice as its provider object (``provider_object`` ``invoice``,
``provider_ref`` ``in_…``, ``provider_intent_id`` the PaymentIntent that paid it). It has
its own history (created → succeeded) and outbox events (``payment.created``,
``payment.succeeded``; its ``status_callback_url``, inherited, is called as for any
payment), and — like any succeeded payment with a ``uisp_client_id`` (inherited) — it
closes the UISP loop: each month's charge records one UISP payment. The recurring
payment itself does not (``store.transition``), or the first month would count twice.

One charge per invoice, whatever replays: the unique index on ``(provider,
provider_ref)`` refuses a second row for an invoice, and the insert runs under the
recurring payment's row lock. The parent's history gets ``invoice_paid`` (with the
charge's id) once per invoice, and ``invoice_payment_failed`` once per failed attempt.

Callers pass an invoice they have just re-fetched from the provider (never an event's
copy): ``daemon.payments.stripe_process``.
"""

from __future__ import annotations

from typing import Any

from daemon.payments import store
from daemon.payments.store import Change, Payment
from daemon.payments.stripe_provider import StripeInvoice
from daemon.platform import outbox
from daemon.platform.db import Conn

KIND = "recurring_charge"


def _detail(invoice: StripeInvoice) -> dict[str, Any]:
    return {
        "invoice": invoice.id,
        "amount": invoice.amount_paid if invoice.paid else invoice.amount_due,
        "currency": invoice.currency,
        "subscription": invoice.subscription_id,
        "billing_reason": invoice.billing_reason,
        "payment_intent": invoice.intent_id,
        "charge": invoice.charge_id,
        "period_start": invoice.period_start,
        "period_end": invoice.period_end,
    }


async def record_paid(
    tx: Conn, parent: Payment, invoice: StripeInvoice, actor: str
) -> tuple[Payment | None, list[Change]]:
    """The charge for a paid ``invoice`` of the locked recurring ``parent``, made once.

    Returns the new charge and its changes (to publish once committed), or ``(None, [])``
    when the invoice already has its charge.
    """
    assert invoice.paid and parent.kind == "recurring"
    obs = invoice.as_payment()
    row = await tx.fetchrow(
        'INSERT INTO payments (id, amount, currency, method, kind, "interval", capture_method,'
        " description, customer, metadata, status_callback_url, uisp_client_id, created_by,"
        " provider, provider_object, provider_ref, provider_status, provider_intent_id,"
        " provider_subscription_id, parent_payment_id, expires_at)"
        " SELECT $1, $2, $3, p.method, $4, NULL, 'automatic', p.description, p.customer,"
        " p.metadata, p.status_callback_url, p.uisp_client_id, p.created_by, p.provider,"
        " 'invoice', $5, $6, $7, $8, p.id, now() FROM payments p WHERE p.id = $9"
        " ON CONFLICT (provider, provider_ref) WHERE provider_ref IS NOT NULL DO NOTHING"
        " RETURNING id",
        store.new_payment_id(),
        obs.amount,
        obs.currency or parent.currency,
        KIND,
        invoice.id,
        invoice.status,
        invoice.intent_id,
        invoice.subscription_id,
        parent.id,
    )
    if row is None:
        return None, []
    charge = await store.get(tx, row["id"])
    assert charge is not None
    detail = _detail(invoice)
    await store.add_event(tx, charge.id, "transition", None, "created", actor, detail)
    await outbox.emit(tx, "payment.created", charge.announced(), subject=f"payment:{charge.id}")
    paid, change = await store.transition(
        tx, charge, "succeeded", actor, {"provider_status": invoice.status,
                                         "provider_ref": invoice.id},
        amount_captured=obs.amount_captured,
    )  # fmt: skip
    await store.add_event(tx, parent.id, "invoice_paid", None, None, actor,
                          {**detail, "payment_id": paid.id})  # fmt: skip
    return paid, [change]


async def record_failed(tx: Conn, parent: Payment, invoice: StripeInvoice, actor: str) -> bool:
    """A failed payment attempt of ``invoice``, in the locked ``parent``'s history once per
    attempt; False if that attempt was recorded already."""
    seen: bool = await tx.fetchval(
        "SELECT EXISTS (SELECT 1 FROM payment_events WHERE payment_id = $1"
        " AND kind = 'invoice_payment_failed' AND detail->>'invoice' = $2"
        " AND (detail->>'attempt_count')::int = $3)",
        parent.id,
        invoice.id,
        invoice.attempt_count,
    )
    if seen:
        return False
    detail = {**_detail(invoice), "status": invoice.status, "attempt_count": invoice.attempt_count}
    await store.add_event(tx, parent.id, "invoice_payment_failed", None, None, actor, detail)
    return True


async def charge_of(tx: Conn, invoice_id: str) -> str | None:
    found: str | None = await tx.fetchval(
        "SELECT id FROM payments WHERE provider = 'stripe' AND provider_object = 'invoice'"
        " AND provider_ref = $1",
        invoice_id,
    )
    return found
