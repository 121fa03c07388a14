"""Closing the loop to the network: a succeeded card payment recorded in UISP.

With ``payments.uisp_record_payments``, a payment that succeeds with a ``uisp_client_id``
is posted to UISP's ``POST /payments`` (queued by ``store.transition`` in the transaction
that made it succeed). UISP then does what it does for a payment at the office: settles
the invoices, cancels the suspension and sends its webhooks, and paymentd's UISP intake
reconnects the ONU and sends the SMS as for any other payment.

UISP has no idempotency key, so the payment carries ours as ``providerPaymentId``: before
posting, the client's payments are searched for it, so a crash between UISP's answer and
our commit finds the first record instead of paying the invoice twice.
"""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal
from typing import Any

from daemon.payments import currency, store
from daemon.platform.config import PaymentsConfig
from daemon.platform.db import Database
from daemon.platform.money import format_minor
from daemon.uisp.client import UispClient, UispError, UispTransientError

log = logging.getLogger(__name__)
PROVIDER_NAME = "paymentd"


def uisp_body(cfg: PaymentsConfig, payment: store.Payment) -> dict[str, Any]:
    exp = currency.EXPONENTS[payment.currency]
    body: dict[str, Any] = {
        "clientId": payment.uisp_client_id,
        # UISP takes major units as a JSON number; 2-3 decimals survive a float exactly
        # enough for its own rounding (it stores two or three decimals too).
        "amount": float(Decimal(format_minor(payment.amount_captured, exp))),
        "currencyCode": payment.currency,
        "note": f"paymentd {payment.id} ({payment.provider} {payment.provider_ref})",
        "providerName": PROVIDER_NAME,
        "providerPaymentId": payment.id,
        "applyToInvoicesAutomatically": True,
    }
    if cfg.uisp_payment_method_id:
        body["methodId"] = cfg.uisp_payment_method_id
    return body


async def record(
    db: Database, uisp: UispClient | None, cfg: PaymentsConfig, payment_id: str
) -> str:
    """Record one succeeded payment in UISP; returns what happened. ``UispTransientError``
    propagates (the queue retries the message with backoff)."""
    if not cfg.uisp_record_payments or uisp is None:
        return "not configured"
    payment = await store.get(db, payment_id)
    if payment is None or payment.status != "succeeded" or payment.uisp_client_id is None:
        return "nothing to record"
    if payment.uisp_payment_id is not None:
        return "already recorded"
    try:
        mine = [
            p for p in await uisp.list_payments(payment.uisp_client_id)
            if p.get("providerPaymentId") == payment.id
        ]  # fmt: skip
        recorded = mine[0] if mine else await uisp.create_payment(uisp_body(cfg, payment))
    except UispTransientError:
        raise
    except UispError as exc:
        async with db.transaction() as tx:
            await store.update(tx, payment.id, uisp_error=str(exc)[:500])
            await store.add_event(tx, payment.id, "uisp_failed", None, None, "processor",
                                  {"error": str(exc)[:500]})  # fmt: skip
        log.warning("payment %s not recorded in UISP: %s", payment.id, exc)
        return "failed"
    async with db.transaction() as tx:
        await store.update(
            tx, payment.id, uisp_payment_id=int(recorded["id"]),
            uisp_recorded_at=dt.datetime.now(dt.UTC), uisp_error=None,
        )  # fmt: skip
        detail = {"uisp_payment_id": int(recorded["id"]), "found": bool(mine)}
        await store.add_event(tx, payment.id, "uisp_recorded", None, None, "processor", detail)
    log.info("payment %s recorded in UISP as payment %s", payment.id, recorded["id"])
    return "recorded"
