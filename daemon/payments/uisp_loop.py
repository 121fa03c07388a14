"""Closing the loop to the network: what a succeeded card payment with a
``uisp_client_id`` does (``payments.uisp_mode``; queued by ``store.transition`` in the
transaction that made it succeed, run by the processor).

- ``record``: the payment is posted to UISP's ``POST /payments``. UISP then does what it
  does for a payment at the office: settles the invoices, cancels the suspension and
  sends its webhooks, and paymentd's UISP intake reconnects the ONU and sends the SMS as
  for any other payment. UISP has no idempotency key, so the payment carries ours as
  ``providerPaymentId``: before posting, the client's payments are searched for it, so a
  crash between UISP's answer and our commit finds the first record instead of paying
  the invoice twice.
- ``reconnect``: the reconnection policy is fed directly, UISP is not told. The client's
  suspended services are planned exactly as a UISP ``payment.add`` webhook in
  ``reactivate_onu`` mode plans them (``decide.plan_task``: the ONU location, the
  contact) and queued through ``process.queue_planned`` with a dedupe key per service
  and payment, so a redelivery queues nothing twice; the reconnect worker's rules apply
  unchanged (one task at a time per service, newest wins, one SMS per reconnection:
  a later UISP ``suspend_cancel`` for the same service reconnects again without a second
  SMS). Unlike the webhook path the client's balance in UISP is not checked: the card
  payment is the evidence, and UISP still shows the debt. The service also stays
  suspended in UISP, so whoever keeps UISP's books must record the payment there too,
  or the next UISP suspension (and network drift with ``fix``) acts on UISP's view.
- ``off``: nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal
from typing import Any

from daemon.payments import currency, store
from daemon.platform.config import PaymentsConfig, UispConfig
from daemon.platform.db import Database
from daemon.platform.events import EventBus
from daemon.platform.money import format_minor
from daemon.uisp import client as uisp_api
from daemon.uisp.client import UispClient, UispError, UispTransientError
from daemon.uisp.decide import DecisionError, plan_task
from daemon.uisp.process import queue_planned

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
    if cfg.uisp_action != "record" or uisp is None:
        return "not configured"
    payment = await store.get(db, payment_id)
    if payment is None or payment.status != "succeeded" or payment.uisp_client_id is None:
        return "nothing to record"
    if payment.uisp_payment_id is not None:
        return "already recorded"
    try:
        found = await uisp.find_payment(payment.uisp_client_id, payment.id)
        recorded = found or await uisp.create_payment(uisp_body(cfg, payment))
    except UispTransientError:
        raise
    except UispError as exc:
        await _failed(db, payment.id, exc)
        return "failed"
    async with db.transaction() as tx:
        await store.update(
            tx, payment.id, uisp_payment_id=int(recorded["id"]),
            uisp_recorded_at=dt.datetime.now(dt.UTC), uisp_error=None,
        )  # fmt: skip
        detail = {"uisp_payment_id": int(recorded["id"]), "found": found is not None}
        await store.add_event(tx, payment.id, "uisp_recorded", None, None, "processor", detail)
    log.info("payment %s recorded in UISP as payment %s", payment.id, recorded["id"])
    return "recorded"


async def _failed(db: Database, payment_id: str, exc: Exception) -> None:
    """A permanent refusal (bad app key, unknown client, no ONU location): on the row and
    in the history, for an operator; the message is done."""
    async with db.transaction() as tx:
        await store.update(tx, payment_id, uisp_error=str(exc)[:500])
        await store.add_event(tx, payment_id, "uisp_failed", None, None, "processor",
                              {"error": str(exc)[:500]})  # fmt: skip
    log.warning("payment %s: UISP loop not closed: %s", payment_id, exc)


def dedupe_key(payment_id: str, service_id: int) -> str:
    return f"activate:service:{service_id}:payment:{payment_id}"


async def reconnect(
    db: Database,
    uisp: UispClient | None,
    uisp_cfg: UispConfig | None,
    events: EventBus | None,
    payment_id: str,
) -> str:
    """Queue the reconnection of a succeeded payment's client (``uisp_mode = "reconnect"``);
    returns what happened. ``UispTransientError`` propagates (the queue retries)."""
    if uisp is None or uisp_cfg is None:
        return "not configured"
    payment = await store.get(db, payment_id)
    if payment is None or payment.status != "succeeded" or payment.uisp_client_id is None:
        return "nothing to reconnect"
    client_id = payment.uisp_client_id
    try:
        services = await uisp.get_client_services(client_id, statuses=[uisp_api.SERVICE_SUSPENDED])
        suspended = [s for s in services if s.get("status") == uisp_api.SERVICE_SUSPENDED]
        customer = await uisp.get_client(client_id) if suspended else None
        planned = [await plan_task(db, uisp, uisp_cfg, s, "activate", customer) for s in suspended]
    except UispTransientError:
        raise
    except (UispError, DecisionError) as exc:
        await _failed(db, payment.id, exc)
        return "failed"
    ids = [t.service_id for t in planned]
    async with db.transaction() as tx:
        created = await queue_planned(tx, planned, lambda t: dedupe_key(payment.id, t.service_id))
        detail = {"client_id": client_id, "services": ids, "tasks": created}
        await store.add_event(tx, payment.id, "uisp_reconnect_queued", None, None, "processor",
                              detail)  # fmt: skip
    if events is not None:
        for task_id in created:
            events.publish("task.queued", task_id=task_id, payment=payment.id)
    if not planned:
        log.info("payment %s: client %s has no suspended service", payment.id, client_id)
        return "nothing suspended"
    log.info("payment %s: reconnection of services %s queued (tasks %s)", payment.id, ids,
             created)  # fmt: skip
    return "queued"


async def close(
    db: Database,
    uisp: UispClient | None,
    cfg: PaymentsConfig,
    uisp_cfg: UispConfig | None,
    events: EventBus | None,
    payment_id: str,
) -> str:
    """The processor's ``{"payment_id", "uisp": true}`` message, as ``uisp_mode`` says."""
    action = cfg.uisp_action
    if action == "record":
        return await record(db, uisp, cfg, payment_id)
    if action == "reconnect":
        return await reconnect(db, uisp, uisp_cfg, events, payment_id)
    return "not configured"
