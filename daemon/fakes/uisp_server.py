"""A fake UISP CRM: the REST API of reference/uisp.md over real HTTP, plus UISP's webhooks.

State lives in memory (clients, services, invoices, payments, webhook events). Like UISP,
``record_payment`` pays the client's invoices oldest first, recomputes balances, cancels
suspensions caused only by invoices that are now paid, and POSTs ``payment.add`` then
``service.edit`` + ``service.suspend_cancel`` to ``webhook_url``. Every webhook is kept so
``GET /webhook-events/{uuid}`` confirms it. API calls that change services (suspend,
cancel-suspend) fire their webhooks in the background, as UISP's queue does.

Tests inject failures with ``fail_next`` and read ``requests`` to see what was asked.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import itertools
import logging
import ssl
import uuid as uuid_mod
from typing import Any

import httpx
import hypercorn
import hypercorn.trio
import trio
from quart import Response, jsonify, request
from quart_trio import QuartTrio

from daemon.uisp.client import SERVICE_ACTIVE, SERVICE_SUSPENDED

__all__ = ["API_PREFIX", "FakeUisp", "demo_state", "serve"]

API_PREFIX = "/crm/api/v1.0"
log = logging.getLogger(__name__)
Entity = dict[str, Any]
_UNPAID = (1, 2)  # invoice status: 1 unpaid, 2 partially paid (3 paid, 4 void)


def _now(days: int = 0) -> str:
    """A timestamp in UISP's format, ``days`` from now."""
    moment = dt.datetime.now(dt.UTC) + dt.timedelta(days=days)
    return moment.strftime("%Y-%m-%dT%H:%M:%S%z")


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Building one per delivery costs ~0.1 s (CA bundle load); webhooks may go to https.
    return ssl.create_default_context()


def _money(x: float) -> float:
    return round(float(x), 2)


class FakeUisp:
    """One CRM's state and its HTTP app (``.app``); seed it, then ``serve`` it."""

    def __init__(
        self,
        app_key: str = "fake-app-key",
        *,
        webhook_url: str | None = None,
        olt_attribute: str = "oltName",
        onu_attribute: str = "onuPort",
    ) -> None:
        self.app_key = app_key
        self.read_only_keys: set[str] = set()  # accepted for GET, 403 for writes
        self.webhook_url = webhook_url
        self.olt_attribute, self.onu_attribute = olt_attribute, onu_attribute
        self.clients: dict[int, Entity] = {}
        self.services: dict[int, Entity] = {}
        self.invoices: dict[int, Entity] = {}
        self.payments: dict[int, Entity] = {}
        self.webhook_events: dict[str, Entity] = {}
        # service id -> ids of the unpaid invoices that caused its suspension
        self.suspended_by: dict[int, set[int]] = {}
        self.requests: list[tuple[str, str]] = []
        self.deliveries: list[Entity] = []  # {"body", "status"} or {"body", "error"}
        self._failures: list[int] = []
        self._ids = {k: itertools.count(1) for k in ("client", "service", "invoice", "payment")}
        self._delivered = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.app = self._build_app()

    # ---- seeding -------------------------------------------------------------------------

    def add_client(
        self, first_name: str, last_name: str, phone: str | None = None, **fields: Any
    ) -> Entity:
        cid = next(self._ids["client"])
        contacts = []
        if phone is not None:
            contacts.append(
                {"id": cid, "clientId": cid, "name": f"{first_name} {last_name}", "phone": phone,
                 "email": None, "isBilling": True, "isContact": True}
            )  # fmt: skip
        client: Entity = {
            "id": cid, "clientType": 1, "firstName": first_name, "lastName": last_name,
            "companyName": None, "isActive": True, "accountBalance": 0.0,
            "accountOutstanding": 0.0, "accountCredit": 0.0, "hasOverdueInvoice": False,
            "hasSuspendedService": False, "currencyCode": "EUR", "contacts": contacts, **fields,
        }  # fmt: skip
        self.clients[cid] = client
        return client

    def add_service(
        self,
        client_id: int,
        name: str = "Internet",
        *,
        olt: str | None = None,
        onu: str | None = None,
        price: float = 30.0,
        status: int = SERVICE_ACTIVE,
    ) -> Entity:
        sid = next(self._ids["service"])
        attributes = [
            {"id": sid * 10 + n, "serviceId": sid, "customAttributeId": n, "name": key,
             "key": key, "value": value, "clientZoneVisible": False}
            for n, (key, value) in enumerate(
                ((self.olt_attribute, olt), (self.onu_attribute, onu)), start=1
            )
            if value is not None
        ]  # fmt: skip
        self.services[sid] = {
            "id": sid, "clientId": client_id, "name": name, "status": status, "price": price,
            "suspensionReasonId": None, "attributes": attributes,
        }  # fmt: skip
        self._recompute(client_id)
        return self.services[sid]

    def add_invoice(self, client_id: int, total: float, *, due_in_days: int = 14) -> Entity:
        iid = next(self._ids["invoice"])
        self.invoices[iid] = {
            "id": iid, "clientId": client_id, "number": f"{iid:06d}", "total": _money(total),
            "amountPaid": 0.0, "amountToPay": _money(total), "status": 1,
            "currencyCode": self.clients[client_id]["currencyCode"], "createdDate": _now(),
            "dueDate": _now(due_in_days),
        }  # fmt: skip
        self._recompute(client_id)
        return self.invoices[iid]

    def suspend_for_invoices(self, service_id: int, invoice_ids: list[int]) -> None:
        """Suspend a service the way UISP's overdue job does (no webhook: seeding only)."""
        service = self.services[service_id]
        service["status"], service["suspensionReasonId"] = SERVICE_SUSPENDED, None
        self.suspended_by[service_id] = set(invoice_ids)
        self._recompute(service["clientId"])

    def _overdue(self, invoice: Entity) -> bool:
        due = dt.datetime.strptime(invoice["dueDate"], "%Y-%m-%dT%H:%M:%S%z")
        return invoice["status"] in _UNPAID and due < dt.datetime.now(dt.UTC)

    def _recompute(self, client_id: int) -> None:
        client = self.clients[client_id]
        unpaid = [i for i in self.invoices.values() if i["clientId"] == client_id]
        unpaid = [i for i in unpaid if i["status"] in _UNPAID]
        client["accountOutstanding"] = _money(sum(i["amountToPay"] for i in unpaid))
        client["accountBalance"] = _money(client["accountCredit"] - client["accountOutstanding"])
        client["hasOverdueInvoice"] = any(self._overdue(i) for i in unpaid)
        client["hasSuspendedService"] = any(
            s["clientId"] == client_id and s["status"] == SERVICE_SUSPENDED
            for s in self.services.values()
        )

    # ---- UISP behaviour ------------------------------------------------------------------

    async def record_payment(
        self,
        client_id: int,
        amount: float,
        currency: str = "EUR",
        *,
        method_id: str = "cash",
        note: str | None = None,
        provider_payment_id: str | None = None,
    ) -> Entity:
        """A payment arrives in UISP; webhooks are delivered before this returns."""
        remaining, covers, paid = _money(amount), [], set()
        for inv in sorted(self.invoices.values(), key=lambda i: (i["dueDate"], i["id"])):
            if inv["clientId"] != client_id or inv["status"] not in _UNPAID or remaining <= 0:
                continue
            part = min(remaining, inv["amountToPay"])
            inv["amountToPay"] = _money(inv["amountToPay"] - part)
            inv["amountPaid"] = _money(inv["amountPaid"] + part)
            inv["status"] = 3 if inv["amountToPay"] <= 0 else 2
            remaining = _money(remaining - part)
            covers.append({"invoiceId": inv["id"], "amount": _money(part)})
            if inv["status"] == 3:
                paid.add(inv["id"])
        client = self.clients[client_id]
        client["accountCredit"] = _money(client["accountCredit"] + remaining)
        pid = next(self._ids["payment"])
        payment: Entity = {
            "id": pid, "clientId": client_id, "amount": _money(amount), "currencyCode": currency,
            "methodId": method_id, "createdDate": _now(), "note": note,
            "paymentCovers": covers, "creditAmount": remaining,
            "providerPaymentId": provider_payment_id,
        }  # fmt: skip
        self.payments[pid] = payment
        events = [self.build_webhook("payment.add", "payment", pid, "insert", payment)]
        for sid, causes in list(self.suspended_by.items()):
            causes -= paid
            if not causes and self.services[sid]["clientId"] == client_id:
                events += self._set_suspended(sid, False)
        self._recompute(client_id)
        for body in events:
            await self._deliver(body)
        return payment

    def _set_suspended(
        self, service_id: int, suspend: bool, reason: int | None = None
    ) -> list[Entity]:
        """Change a service's status; return UISP's two webhooks for it (edit + the verb)."""
        service = self.services[service_id]
        before = copy.deepcopy(service)
        service["status"] = SERVICE_SUSPENDED if suspend else SERVICE_ACTIVE
        service["suspensionReasonId"] = reason
        if not suspend:
            self.suspended_by.pop(service_id, None)
        self._recompute(service["clientId"])
        name, change = ("suspend", "suspend") if suspend else ("suspend_cancel", "unsuspend")
        return [
            self.build_webhook("service.edit", "service", service_id, "edit", service, before),
            self.build_webhook(f"service.{name}", "service", service_id, change, service, before),
        ]

    def build_webhook(
        self,
        event_name: str,
        entity: str,
        entity_id: int | None,
        change_type: str,
        entity_body: Entity | None,
        entity_before: Entity | None = None,
    ) -> Entity:
        """A webhook body in UISP's shape, recorded so GET /webhook-events/{uuid} finds it."""
        body: Entity = {
            "uuid": str(uuid_mod.uuid4()), "changeType": change_type, "entity": entity,
            "entityId": entity_id, "eventName": event_name,
            "extraData": {"entity": copy.deepcopy(entity_body),
                          "entityBeforeEdit": copy.deepcopy(entity_before)},
        }  # fmt: skip
        self.webhook_events[body["uuid"]] = body
        return body

    async def send_webhook(
        self,
        event_name: str,
        entity: str,
        entity_id: int | None,
        change_type: str,
        entity_body: Entity | None,
        entity_before: Entity | None = None,
    ) -> Entity:
        body = self.build_webhook(
            event_name, entity, entity_id, change_type, entity_body, entity_before
        )
        await self._deliver(body)
        return body

    async def _deliver(self, body: Entity) -> None:
        """One POST, 10 s timeout, redirects followed, no retries: what UISP does."""
        if not self.webhook_url:
            return
        record: Entity = {"body": body}
        try:
            async with httpx.AsyncClient(
                timeout=10.0, follow_redirects=True, verify=_ssl_context()
            ) as http:
                resp = await http.post(self.webhook_url, json=body)
            record["status"] = resp.status_code
        except httpx.HTTPError as exc:
            record["error"] = repr(exc)
            log.warning("fake UISP: webhook %s not delivered: %r", body["eventName"], exc)
        self.deliveries.append(record)
        self._delivered.set()
        self._delivered = trio.Event()

    def _deliver_later(self, bodies: list[Entity]) -> None:
        async def deliver_all() -> None:
            for body in bodies:
                await self._deliver(body)

        if self._nursery is not None:
            self._nursery.start_soon(deliver_all)

    async def wait_deliveries(self, count: int, seconds: float = 30.0) -> list[Entity]:
        """Wait until ``count`` webhook deliveries were attempted; return them.

        Bounded like ``SmsSink.wait_messages``: ``TimeoutError`` after ``seconds``.
        """
        with trio.move_on_after(seconds):
            while len(self.deliveries) < count:
                await self._delivered.wait()
            return self.deliveries[:count]
        raise TimeoutError(
            f"fake UISP: {len(self.deliveries)} of {count} webhook deliveries after {seconds:g} s"
        )

    def fail_next(self, n: int = 1, status: int = 503) -> None:
        """The next ``n`` API requests (past the key check) answer ``status``."""
        self._failures += [status] * n

    # ---- HTTP ----------------------------------------------------------------------------

    def _build_app(self) -> Any:
        app = QuartTrio(__name__)
        p = API_PREFIX

        def error(code: int, message: str) -> tuple[Response, int]:
            return jsonify({"code": code, "message": message}), code

        @app.before_request
        async def gate() -> tuple[Response, int] | None:
            if not request.path.startswith(p):
                return None
            self.requests.append((request.method, request.path.removeprefix(p)))
            key = request.headers.get("X-Auth-App-Key", "")
            if key != self.app_key and key not in self.read_only_keys:
                return error(401, "Unauthorized.")
            if request.method != "GET" and key in self.read_only_keys:
                return error(403, "Forbidden: the app key is read-only.")
            if self._failures:
                return error(self._failures.pop(0), "Injected failure.")
            return None

        async def found(table: dict[Any, Entity], key: Any) -> Any:
            if key not in table:
                return error(404, "Entity not found.")
            return jsonify(table[key])

        for rule, table in (
            ("/clients/<int:key>", self.clients),
            ("/clients/services/<int:key>", self.services),
            ("/payments/<int:key>", self.payments),
            ("/webhook-events/<key>", self.webhook_events),
        ):
            view = functools.partial(found, table)
            app.add_url_rule(p + rule, rule, view, methods=["GET"])

        @app.get(f"{p}/clients/services")
        async def list_services() -> Any:
            cid = request.args.get("clientId", type=int)
            statuses = request.args.getlist("statuses[]", type=int)
            found = [
                s for s in sorted(self.services.values(), key=lambda s: s["id"])
                if cid in (None, s["clientId"]) and (not statuses or s["status"] in statuses)
            ]  # fmt: skip
            # UISP pages with limit/offset and answers a bare array (no total, no links);
            # without a limit it answers everything.
            offset = request.args.get("offset", 0, type=int)
            limit = request.args.get("limit", type=int)
            if offset < 0 or (limit is not None and limit < 1):
                return error(400, "Invalid limit or offset.")
            return jsonify(found[offset:] if limit is None else found[offset : offset + limit])

        @app.patch(f'{p}/clients/services/<int:sid>/<any("suspend", "cancel-suspend"):verb>')
        async def suspend_or_cancel(sid: int, verb: str) -> Any:
            if sid not in self.services:
                return error(404, "Entity not found.")
            suspend = verb == "suspend"
            if (self.services[sid]["status"] == SERVICE_SUSPENDED) == suspend:
                return error(422, f"Service is {'already' if suspend else 'not'} suspended.")
            body = await request.get_json(force=True, silent=True) or {}
            reason = body.get("suspensionReasonId") if suspend else None
            self._deliver_later(self._set_suspended(sid, suspend, reason))
            return jsonify(self.services[sid])

        @app.post(f"{p}/payments")
        async def create_payment() -> Any:
            # UISP's POST /payments (a payment made elsewhere, e.g. by card in paymentd).
            body = await request.get_json(force=True, silent=True) or {}
            cid = body.get("clientId")
            if cid not in self.clients:
                return error(422, "Validation failed: clientId.")
            payment = await self.record_payment(
                cid, float(body.get("amount", 0)), str(body.get("currencyCode", "EUR")),
                method_id=str(body.get("methodId", "cash")), note=body.get("note"),
                provider_payment_id=body.get("providerPaymentId"),
            )  # fmt: skip
            return jsonify(payment), 201

        @app.get(f"{p}/payments")
        async def list_payments() -> Any:
            cid = request.args.get("clientId", type=int)
            found = [x for x in self.payments.values() if cid in (None, x["clientId"])]
            offset = request.args.get("offset", 0, type=int)
            limit = request.args.get("limit", type=int)
            if offset < 0 or (limit is not None and limit < 1):
                return error(400, "Invalid limit or offset.")
            return jsonify(found[offset:] if limit is None else found[offset : offset + limit])

        @app.get(f"{p}/invoices")
        async def list_invoices() -> Any:
            cid = request.args.get("clientId", type=int)
            overdue = request.args.get("overdue") == "1"
            return jsonify([
                i for i in self.invoices.values()
                if (cid is None or i["clientId"] == cid) and (not overdue or self._overdue(i))
            ])  # fmt: skip

        # Demo controls, outside the API prefix and without auth: "a customer pays".
        @app.post("/_fake/clients/<int:cid>/payments")
        async def pay(cid: int) -> Any:
            if cid not in self.clients:
                return error(404, "Entity not found.")
            body = await request.get_json(force=True, silent=True) or {}
            payment = await self.record_payment(
                cid, float(body.get("amount", 0)), str(body.get("currency", "EUR"))
            )
            return jsonify(payment)

        @app.get("/_fake/state")
        async def state() -> Any:
            return jsonify({
                "clients": list(self.clients.values()), "services": list(self.services.values()),
                "invoices": list(self.invoices.values()), "payments": list(self.payments.values()),
                "deliveries": self.deliveries,
            })  # fmt: skip

        return app


async def serve(
    fake: FakeUisp,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``fake`` until cancelled; report the API base URL (``.../crm/api/v1.0``)."""
    config = hypercorn.Config()
    config.bind = [f"{host}:{port}"]
    config.errorlog = log
    async with trio.open_nursery() as nursery:
        fake._nursery = nursery
        try:
            binds: list[str] = await nursery.start(hypercorn.trio.serve, fake.app, config)
            task_status.started(binds[0] + API_PREFIX)
            await trio.sleep_forever()
        finally:
            fake._nursery = None


def demo_state(fake: FakeUisp) -> list[Entity]:
    """Seed three clients (ids 1-3, services 1-3) that the OLT simulator also knows:

    1. Ana: suspended for non-payment (30 EUR overdue), ONU ``olt-huawei-1`` ``0/1/0:1``;
    2. Bruno: active and paid up, ONU ``olt-huawei-1`` ``0/1/0:2``;
    3. Carla: suspended for non-payment (25 EUR overdue), ONU ``olt-zte-1`` ``1/2/1:5``.
    """
    ana = fake.add_client("Ana", "García", "+34 600 111 222")
    s1 = fake.add_service(ana["id"], "Fibra 300", olt="olt-huawei-1", onu="0/1/0:1")
    fake.suspend_for_invoices(s1["id"], [fake.add_invoice(ana["id"], 30.0, due_in_days=-10)["id"]])
    bruno = fake.add_client("Bruno", "Díaz", "+34 600 333 444")
    fake.add_service(bruno["id"], "Fibra 100", olt="olt-huawei-1", onu="0/1/0:2")
    carla = fake.add_client("Carla", "Romero", "600555666")
    s3 = fake.add_service(carla["id"], "Fibra 600", olt="olt-zte-1", onu="1/2/1:5", price=25.0)
    fake.suspend_for_invoices(s3["id"], [fake.add_invoice(carla["id"], 25.0, due_in_days=-5)["id"]])
    return [ana, bruno, carla]
