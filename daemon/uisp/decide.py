"""What a UISP webhook means for the network, confirmed through the UISP API.

A webhook is never acted on alone (UISP webhooks carry no signature): the event is
confirmed with ``GET /webhook-events/{uuid}`` and the entity's *current* state is read back
before any ONU is touched. The result is a ``Decision``: the tasks to create (if any) and a
one-line outcome for the webhook log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from daemon.network import devices as olt_store
from daemon.network.olt.types import OnuRef
from daemon.platform.config import UispConfig
from daemon.platform.db import Executor
from daemon.platform.money import format_minor, minor_units
from daemon.uisp import client as uisp
from daemon.uisp.webhooks import Webhook


@dataclass(frozen=True)
class PlannedTask:
    action: str  # activate | deactivate
    service_id: int
    service_name: str | None
    client_id: int | None
    client_name: str | None
    phone: str | None
    olt_name: str
    onu: str
    # False: the task corrects the network only, and its activation sends no SMS (drift
    # fixes other than a lost webhook's); what a webhook plans always notifies.
    notify: bool = True


@dataclass
class Decision:
    outcome: str
    tasks: list[PlannedTask] = field(default_factory=list)


class DecisionError(Exception):
    """The event cannot be acted on, permanently (e.g. no ONU location): recorded, not retried."""


async def decide(
    webhook: Webhook, client: uisp.UispClient, cfg: UispConfig, db: Executor
) -> Decision:
    uuid = str(webhook.uuid)
    event = webhook.event_name
    entity_id = webhook.entity_id
    if cfg.verify_webhook_events:
        confirmed = await client.get_webhook_event(uuid)
        if confirmed is None:
            return Decision(f"rejected: UISP does not know webhook event {uuid}")
        # The uuid alone proves little: whoever has the URL token could pair a real uuid
        # with another entity. What UISP says the event was about must match.
        for field, ours in (("eventName", event), ("entityId", entity_id)):
            theirs = confirmed.get(field)
            if theirs is not None and str(theirs) != str(ours):
                return Decision(
                    f"rejected: webhook {uuid} says {field}={ours!r}, UISP says {theirs!r}"
                )
    if entity_id is None:
        return Decision(f"ignored: {event} without an entityId")

    if event == "service.suspend_cancel":
        service = await client.get_service(entity_id)
        if service.get("status") == uisp.SERVICE_SUSPENDED:
            return Decision(f"ignored: service {entity_id} is still suspended in UISP")
        task = await plan_task(db, client, cfg, service, "activate")
        return Decision(f"activate service {entity_id}", [task])

    if event == "service.suspend":
        service = await client.get_service(entity_id)
        if service.get("status") != uisp.SERVICE_SUSPENDED:
            return Decision(f"ignored: service {entity_id} is not suspended in UISP")
        task = await plan_task(db, client, cfg, service, "deactivate")
        return Decision(f"deactivate service {entity_id}", [task])

    if event == "payment.add":
        return await _payment(entity_id, client, cfg, db)

    return Decision(f"ignored: {event} is not an event paymentd acts on")


async def _payment(
    payment_id: int, client: uisp.UispClient, cfg: UispConfig, db: Executor
) -> Decision:
    payment = await client.get_payment(payment_id)
    client_id = payment.get("clientId")
    if client_id is None:
        return Decision(f"ignored: payment {payment_id} is not matched to a client")
    customer = await client.get_client(client_id)
    # Money is integer minor units, never float: UISP sends balances as JSON numbers.
    outstanding = minor_units(customer.get("accountOutstanding") or 0)
    if customer.get("hasOverdueInvoice") or outstanding > 0:
        currency = customer.get("currencyCode") or ""
        return Decision(
            f"ignored: client {client_id} still owes {format_minor(outstanding)}"
            f"{' ' + currency if currency else ''} after payment {payment_id}"
        )
    suspended = await client.get_client_services(client_id, statuses=[uisp.SERVICE_SUSPENDED])
    suspended = [s for s in suspended if s.get("status") == uisp.SERVICE_SUSPENDED]
    if not suspended:
        return Decision(f"ignored: client {client_id} has no suspended services")
    ids = [int(s["id"]) for s in suspended]
    if cfg.payment_action == "cancel_suspend":
        # UISP answers with service.suspend_cancel webhooks, which reactivate the ONUs; a
        # repeat after a crash gets 422 (already active) and is harmless.
        done = [sid for sid in ids if await client.cancel_suspend(sid)]
        return Decision(f"cancel-suspend requested in UISP for services {done or ids}")
    tasks = [await plan_task(db, client, cfg, s, "activate", customer) for s in suspended]
    return Decision(f"activate services {ids} of client {client_id}", tasks)


async def plan_task(
    db: Executor,
    client: uisp.UispClient,
    cfg: UispConfig,
    service: dict[str, Any],
    action: str,
    customer: dict[str, Any] | None = None,
) -> PlannedTask:
    """The task that brings ``service``'s ONU to ``action`` (location: override, else the
    service's attributes); ``DecisionError`` without a usable location."""
    service_id = int(service["id"])
    location = await olt_store.get_override(db, service_id)
    if location is None:
        location = uisp.service_onu(service, cfg.olt_attribute, cfg.onu_attribute)
    if location is None:
        raise DecisionError(
            f"service {service_id} has no ONU location: set the UISP custom attributes "
            f"{cfg.olt_attribute!r} and {cfg.onu_attribute!r}, or run "
            f"'paymentd onu set {service_id} OLT F/S/P:ONU'"
        )
    olt_name, onu_text = location
    try:
        onu = str(OnuRef.parse(onu_text))
    except ValueError as exc:
        raise DecisionError(f"service {service_id}: bad ONU location {onu_text!r}: {exc}") from None
    client_id = service.get("clientId")
    if customer is None and client_id is not None:
        customer = await client.get_client(int(client_id))
    return PlannedTask(
        action=action,
        service_id=service_id,
        service_name=service.get("name"),
        client_id=None if client_id is None else int(client_id),
        client_name=None if customer is None else uisp.client_name(customer),
        phone=None if customer is None else uisp.client_phone(customer),
        olt_name=olt_name,
        onu=onu,
    )


async def plan_for_service(
    db: Executor, client: uisp.UispClient, cfg: UispConfig, service_id: int, action: str
) -> tuple[PlannedTask, dict[str, Any]]:
    """The task a webhook about this service would plan, and the service as UISP has it
    now (``paymentd onu activate|deactivate``: the same ONU location and contact)."""
    service = await client.get_service(service_id)
    return await plan_task(db, client, cfg, service, action), service
