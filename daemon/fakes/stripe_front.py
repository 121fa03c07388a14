"""A front for localstripe: the parts of Stripe's API it lacks, over real HTTP.

localstripe (the fake Stripe server the tests run) has no idempotency, no Checkout
Sessions, no Payment Links and no Prices (docs/ARCHITECTURE.md, "Stripe", lists what it
lacks). This server sits between stripe-python and localstripe and

- records every request (method, path, ``Idempotency-Key``, form) in ``requests``;
- implements Stripe's idempotency on every POST, as Stripe documents it: the first
  answer for a key is replayed for a repeat with the same parameters (header
  ``Idempotent-Replayed: true``), a repeat with other parameters is a 400
  ``idempotency_error``, a repeat while the first is still running a 409
  ``idempotency_key_in_use``;
- serves ``/v1/prices``, ``/v1/checkout/sessions`` (create, retrieve, expire) and
  ``/v1/payment_links`` (create, retrieve, deactivate) from memory, and the invoices its
  own subscriptions produce;
- forwards everything else to localstripe unchanged.

``complete_session`` plays the customer paying on the hosted page: for ``mode=payment``
it creates and confirms a real PaymentIntent in localstripe with a test card, for
``mode=subscription`` it makes a subscription and its first invoice, paid by a real
PaymentIntent in localstripe; then it sends the events Stripe would
(``checkout.session.completed``, ``invoice.paid``), signed, to ``webhook_url``.
``charge_invoice`` bills the next period the same way (a declined card leaves the
invoice open and sends ``invoice.payment_failed``), ``retry_invoice`` pays an open one.
``stall`` makes answers hang until ``unstall`` (a provider timeout), ``fail_next``
answers the next request with a given Stripe error, ``lose_next_answer`` does the next
POST but never answers it; ``hold_next`` holds the next POST to a path — before Stripe
sees it (``forward=False``: when let go it is dropped, as if the caller crashed before
sending) or after Stripe did it (``forward=True``: done and kept for its key, the answer
held) — until the test lets it go, so a test can SIGKILL the caller meanwhile. With
``refunds_start_pending`` a refund's create answers ``pending`` (as Stripe does for
refunds that take days) — the answer a repeat of the key replays — while a re-fetch
shows localstripe's own (settled) state.
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import hypercorn
import hypercorn.trio
import stripe
import trio
from quart import Response, request
from quart_trio import QuartTrio

__all__ = ["Hold", "Recorded", "StripeFront", "serve"]

log = logging.getLogger(__name__)
Obj = dict[str, Any]
_FORWARDED_HEADERS = ("authorization", "content-type", "stripe-version", "idempotency-key")
# Parameters Stripe takes and localstripe answers 400 "Unexpected …" to: dropped on the way
# (they are in ``requests`` for tests to check). Path → top-level parameter names.
_LOCALSTRIPE_REFUSES = {
    "/v1/payment_intents": {"description"},
    "/v1/refunds": {"reason"},
}


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    idempotency_key: str | None
    form: Obj  # the nested parameters, as Stripe reads them


@dataclass
class _Idempotent:
    fingerprint: tuple[str, str, str]
    done: trio.Event = field(default_factory=trio.Event)
    status: int = 0
    body: bytes = b""
    content_type: str = "application/json"


@dataclass
class Hold:
    """One held POST (``StripeFront.hold_next``): ``arrived`` is set once it is held;
    ``release()`` lets it go (dropped, or answered, as ``forward`` says)."""

    path: str
    forward: bool
    arrived: trio.Event = field(default_factory=trio.Event)
    released: trio.Event = field(default_factory=trio.Event)
    idempotency_key: str | None = None

    def release(self) -> None:
        self.released.set()


def unflatten(pairs: list[tuple[str, str]]) -> Obj:
    """``a[b][0][c]=v`` form pairs → nested dicts and lists, as Stripe parses them."""
    root: Obj = {}
    for key, value in pairs:
        head, _, rest = key.partition("[")
        parts = [head] + ([p.rstrip("]") for p in ("[" + rest).split("[")[1:]] if rest else [])
        node: Any = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    result: Obj = _lists(root)
    return result


def _lists(node: Any) -> Any:
    if isinstance(node, dict):
        if node and all(k.isdigit() for k in node):
            return [_lists(node[k]) for k in sorted(node, key=int)]
        return {k: _lists(v) for k, v in node.items()}
    return node


def _error(status: int, type_: str, message: str, **extra: Any) -> Response:
    body = {"error": {"type": type_, "message": message, **extra}}
    return Response(json.dumps(body), status=status, mimetype="application/json")


def _json(obj: Obj, status: int = 200) -> Response:
    return Response(json.dumps(obj), status=status, mimetype="application/json")


class StripeFront:
    """The front's state and its HTTP app (``.app``); ``serve`` it."""

    def __init__(self, upstream: str, *, api_key: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.api_key = api_key  # for the calls the front itself makes to localstripe
        self.base_url = ""  # set by serve()
        self.webhook_url: str | None = None
        self.webhook_secret = ""
        self.requests: list[Recorded] = []
        self.prices: dict[str, Obj] = {}
        self.sessions: dict[str, Obj] = {}
        self.links: dict[str, Obj] = {}
        self.invoices: dict[str, Obj] = {}
        self.sent_events: list[Obj] = []
        self._stalled: trio.Event | None = None
        self._failures: list[tuple[int, Obj]] = []
        self._lose_next = False
        self._holds: list[Hold] = []
        self.refunds_start_pending = False
        self._idempotent: dict[tuple[str, str], _Idempotent] = {}
        self._ids = itertools.count(1)
        self._http = httpx.AsyncClient(timeout=30)
        self.app = self._build()

    def _id(self, prefix: str) -> str:
        return f"{prefix}_front{next(self._ids)}{secrets.token_hex(4)}"

    def stall(self) -> None:
        """Answer nothing from now until ``unstall`` (a provider that hangs: a timeout)."""
        self._stalled = trio.Event()

    def unstall(self) -> None:
        if self._stalled is not None:
            self._stalled.set()
            self._stalled = None

    def lose_next_answer(self) -> None:
        """The next idempotent POST is carried out (and its answer kept for the key) but
        never answered: the caller times out not knowing (a crash or a lost answer)."""
        self._lose_next = True

    def hold_next(self, path: str, *, forward: bool) -> Hold:
        """Hold the next POST to ``path`` (``/v1/payment_intents``) until ``release()``.

        ``forward=False``: Stripe never sees it (the caller died before its request left);
        once released it is dropped, nothing kept for its key. ``forward=True``: Stripe
        does it (and keeps the answer for its key), the answer is held (the caller died
        before hearing back)."""
        hold = Hold(path, forward)
        self._holds.append(hold)
        return hold

    def fail_next(self, status: int, error_type: str, message: str, **extra: Any) -> None:
        """The next request is answered with this Stripe error (and not recorded)."""
        self._failures.append((status, {"type": error_type, "message": message, **extra}))

    def created(self, path_prefix: str) -> list[Recorded]:
        """The POSTs whose path starts with ``path_prefix`` (``/v1/payment_intents``)."""
        return [r for r in self.requests if r.method == "POST" and r.path == path_prefix]

    # -- the app ----------------------------------------------------------------------

    def _build(self) -> QuartTrio:
        app = QuartTrio("fake_stripe_front", static_folder=None)

        @app.route("/<path:path>", methods=["GET", "POST", "DELETE"])
        async def any_route(path: str) -> Response:
            gate = self._stalled
            if gate is not None:
                await gate.wait()
            if self._failures:
                status, error = self._failures.pop(0)
                return _json({"error": error}, status)
            raw = await request.get_data(as_text=False)
            assert isinstance(raw, bytes)
            text = raw.decode()
            form = unflatten(parse_qsl(text, keep_blank_values=True))
            if request.method == "GET":
                form = unflatten(list(request.args.items(multi=True)))
            key = request.headers.get("Idempotency-Key")
            self.requests.append(Recorded(request.method, "/" + path, key, form))
            hold = self._take_hold(request.method, "/" + path, key)
            if hold is not None and not hold.forward:
                hold.arrived.set()
                await hold.released.wait()
                return _error(500, "api_error", "dropped before Stripe saw it (a test's hold)")
            if request.method != "POST" or not key:
                response = await self._route("/" + path, form, raw)
            else:
                response = await self._idempotent_call(key, "/" + path, text, form, raw)
            if hold is not None:  # done at Stripe (and kept for the key); the answer waits
                hold.arrived.set()
                await hold.released.wait()
            return response

        return app

    def _take_hold(self, method: str, path: str, key: str | None) -> Hold | None:
        for hold in self._holds:
            if method == "POST" and hold.path == path:
                self._holds.remove(hold)
                hold.idempotency_key = key
                return hold
        return None

    async def _idempotent_call(
        self, key: str, path: str, text: str, form: Obj, raw: bytes
    ) -> Response:
        scope = (request.headers.get("Authorization", ""), key)
        fingerprint = ("POST", path, text)
        entry = self._idempotent.get(scope)
        if entry is not None:
            if entry.fingerprint != fingerprint:
                return _error(
                    400,
                    "idempotency_error",
                    "Keys for idempotent requests can only be used with the same parameters"
                    " they were first used with.",
                )
            if not entry.done.is_set():
                return _error(409, "invalid_request_error", "in use", code="idempotency_key_in_use")
            replay = Response(entry.body, status=entry.status, content_type=entry.content_type)
            replay.headers["Idempotent-Replayed"] = "true"
            return replay
        entry = self._idempotent[scope] = _Idempotent(fingerprint)
        try:
            response = await self._route(path, form, raw)
            entry.status = response.status_code
            entry.body = await response.get_data(as_text=False)
            entry.content_type = response.content_type or "application/json"
        except BaseException:
            del self._idempotent[scope]  # nothing was kept: as if never sent
            raise
        finally:
            entry.done.set()
        if self._lose_next:
            self._lose_next = False
            await trio.sleep_forever()  # done and kept for the key; the answer is lost
        return response

    async def _route(self, path: str, form: Obj, raw: bytes) -> Response:
        parts = path.strip("/").split("/")
        method = request.method
        if parts[:2] == ["v1", "prices"]:
            return self._prices(method, parts[2:], form)
        if parts[:3] == ["v1", "checkout", "sessions"]:
            return self._sessions(method, parts[3:], form)
        if parts[:2] == ["v1", "payment_links"]:
            return self._links(method, parts[2:], form)
        if parts[:2] == ["v1", "invoices"] and len(parts) == 3 and parts[2] in self.invoices:
            return _json(self.invoices[parts[2]])
        return await self._forward(path, raw)

    async def _forward(self, path: str, raw: bytes) -> Response:
        refused = _LOCALSTRIPE_REFUSES.get(path)
        if refused and request.method == "POST":
            pairs = parse_qsl(raw.decode(), keep_blank_values=True)
            kept = [(k, v) for k, v in pairs if k.partition("[")[0] not in refused]
            raw = urlencode(kept).encode()
        headers = {k: v for k, v in request.headers.items() if k.lower() in _FORWARDED_HEADERS}
        answer = await self._http.request(
            request.method,
            self.upstream + path,
            params=list(request.args.items(multi=True)),
            content=raw or None,
            headers=headers,
        )
        content = answer.content
        if (
            self.refunds_start_pending
            and path == "/v1/refunds"
            and request.method == "POST"
            and answer.status_code == 200
        ):
            content = json.dumps({**answer.json(), "status": "pending"}).encode()
        return Response(
            content,
            status=answer.status_code,
            content_type=answer.headers.get("content-type", "application/json"),
        )

    # -- prices, checkout sessions, payment links --------------------------------------

    def _prices(self, method: str, rest: list[str], form: Obj) -> Response:
        if method == "POST" and not rest:
            price = self._price(form)
            return _json(price)
        if method == "GET" and len(rest) == 1 and rest[0] in self.prices:
            return _json(self.prices[rest[0]])
        return _error(404, "invalid_request_error", "No such price", code="resource_missing")

    def _price(self, form: Obj) -> Obj:
        price = {
            "id": self._id("price"),
            "object": "price",
            "currency": form["currency"],
            "unit_amount": int(form["unit_amount"]),
            "recurring": form.get("recurring"),
            "type": "recurring" if form.get("recurring") else "one_time",
            "product": form.get("product") or self._id("prod"),
            "product_data": form.get("product_data"),
        }
        self.prices[price["id"]] = price
        return price

    def _line_total(self, items: list[Obj]) -> tuple[int, str, Obj | None]:
        total, currency, recurring = 0, "", None
        for item in items:
            price = self.prices[item["price"]] if "price" in item else item["price_data"]
            total += int(price["unit_amount"]) * int(item.get("quantity", 1))
            currency = price["currency"]
            recurring = price.get("recurring") or recurring
        return total, currency, recurring

    def _sessions(self, method: str, rest: list[str], form: Obj) -> Response:
        if method == "POST" and not rest:
            if form.get("mode") not in ("payment", "subscription", "setup"):
                return _error(400, "invalid_request_error", "mode", param="mode")
            items = form.get("line_items") or []
            if not items:
                return _error(400, "invalid_request_error", "line_items", param="line_items")
            total, currency, recurring = self._line_total(items)
            if form["mode"] == "subscription" and not recurring:
                return _error(400, "invalid_request_error", "no recurring price")
            sid = self._id("cs_test")
            session: Obj = {
                "id": sid,
                "object": "checkout.session",
                "mode": form["mode"],
                "status": "open",
                "payment_status": "unpaid",
                "url": f"{self.base_url}/pay/{sid}",
                "amount_total": total,
                "currency": currency,
                "client_reference_id": form.get("client_reference_id"),
                "metadata": form.get("metadata") or {},
                "success_url": form.get("success_url"),
                "cancel_url": form.get("cancel_url"),
                "expires_at": int(form.get("expires_at") or time.time() + 86400),
                "payment_intent": None,
                "subscription": None,
                "invoice": None,
                "payment_link": form.get("payment_link"),
                "_payment_intent_data": form.get("payment_intent_data") or {},
                "_subscription_data": form.get("subscription_data") or {},
                "_recurring": recurring,
            }
            self.sessions[sid] = session
            return _json(_public(session))
        if method == "GET" and not rest:
            found = [
                _public(x)
                for x in self.sessions.values()
                if all(x.get(k) == form[k] for k in ("payment_link", "status") if k in form)
            ]
            return _json(_list("/v1/checkout/sessions", found))
        found_session = self.sessions.get(rest[0]) if rest else None
        if found_session is None:
            return _error(404, "invalid_request_error", "No such checkout.session")
        session = found_session
        if method == "GET" and len(rest) == 1:
            return _json(_public(session))
        if method == "POST" and rest[1:] == ["expire"]:
            if session["status"] != "open":
                return _error(400, "invalid_request_error", "session is not open")
            session["status"] = "expired"
            return _json(_public(session))
        return _error(404, "invalid_request_error", "Unrecognized request URL")

    def _links(self, method: str, rest: list[str], form: Obj) -> Response:
        if method == "POST" and not rest:
            items = form.get("line_items") or []
            if not items or any("price" not in i for i in items):
                # Payment Links take price ids only (no price_data).
                return _error(400, "invalid_request_error", "line_items[0][price] required")
            total, currency, _ = self._line_total(items)
            lid = self._id("plink")
            link: Obj = {
                "id": lid,
                "object": "payment_link",
                "active": True,
                "url": f"{self.base_url}/link/{lid}",
                "metadata": form.get("metadata") or {},
                "line_items": items,
                "amount_total": total,
                "currency": currency,
                "_payment_intent_data": form.get("payment_intent_data") or {},
            }
            self.links[lid] = link
            return _json(_public(link))
        found_link = self.links.get(rest[0]) if rest else None
        if found_link is None:
            return _error(404, "invalid_request_error", "No such payment_link")
        link = found_link
        if method == "GET" and len(rest) == 1:
            return _json(_public(link))
        if method == "GET" and rest[1:] == ["line_items"]:
            items = [
                {
                    "object": "item",
                    "amount_total": link["amount_total"],
                    "currency": link["currency"],
                    "price": self.prices[i["price"]],
                    "quantity": int(i.get("quantity", 1)),
                }
                for i in link["line_items"]
            ]
            return _json(_list(f"/v1/payment_links/{link['id']}/line_items", items))
        if method == "POST" and len(rest) == 1:
            if "active" in form:
                link["active"] = form["active"] == "true"
            return _json(_public(link))
        return _error(404, "invalid_request_error", "Unrecognized request URL")

    # -- the customer pays --------------------------------------------------------------

    async def complete_session(self, session_id: str) -> Obj:
        """The customer pays on the hosted page; Stripe's events follow (if a webhook is set)."""
        session = self.sessions[session_id]
        assert session["status"] == "open", session["status"]
        if session["mode"] == "payment":
            data = session["_payment_intent_data"]
            pi = await self._localstripe(
                "/v1/payment_intents",
                {
                    "amount": session["amount_total"],
                    "currency": session["currency"],
                    "payment_method": "pm_card_visa",
                    "confirm": "true",
                    "capture_method": data.get("capture_method", "automatic"),
                    **{f"metadata[{k}]": v for k, v in (data.get("metadata") or {}).items()},
                },
            )
            session.update(payment_intent=pi["id"], status="complete", payment_status="paid")
            await self.send_event("checkout.session.completed", _public(session))
        else:
            sub_id = self._id("sub")
            session.update(subscription=sub_id, status="complete", payment_status="paid")
            invoice = await self.charge_invoice(session, send=False)
            await self.send_event("checkout.session.completed", _public(session))
            await self.send_event("invoice.paid", invoice)
        return _public(session)

    def pay_invoice(self, session: Obj, *, intent: Obj | None = None) -> Obj:
        """One more paid invoice of a subscription session (each billing period); with
        ``intent``, the localstripe PaymentIntent that paid it."""
        invoice = self._invoice(session, "paid")
        if intent is not None:
            invoice["payments"]["data"].append(_invoice_payment(intent, "paid"))
        return invoice

    def _invoice(self, session: Obj, status: str) -> Obj:
        sub_meta = session["_subscription_data"].get("metadata") or {}
        now = int(time.time())
        invoice = {
            "id": self._id("in"),
            "object": "invoice",
            "status": status,
            "amount_paid": session["amount_total"] if status == "paid" else 0,
            "amount_due": session["amount_total"],
            "attempt_count": 1,
            "currency": session["currency"],
            "billing_reason": "subscription_cycle"
            if session.get("invoice")
            else "subscription_create",
            "parent": {
                "type": "subscription_details",
                "subscription_details": {
                    "subscription": session["subscription"],
                    "metadata": sub_meta,
                },
            },
            # Stripe: only with expand[]=payments; always here.
            "payments": {"object": "list", "has_more": False, "data": []},
            "lines": {"object": "list", "data": [{"period": {"start": now, "end": now + 1}}]},
            "created": now,
        }
        session["invoice"] = session.get("invoice") or invoice["id"]
        self.invoices[invoice["id"]] = invoice
        return invoice

    async def charge_invoice(
        self, session: Obj, *, card: str = "pm_card_visa", send: bool = True
    ) -> Obj:
        """The subscription bills a period: a real PaymentIntent charged in localstripe
        with ``card``; paid → ``invoice.paid``, declined → the invoice stays open and
        ``invoice.payment_failed`` (each sent if ``send`` and a webhook is set)."""
        form = {
            "amount": session["amount_total"],
            "currency": session["currency"],
            "payment_method": card,
            "confirm": "true",
        }
        r = await self._http.post(
            self.upstream + "/v1/payment_intents", data=form, auth=(self.api_key, "")
        )
        if r.status_code == 200 and r.json().get("status") == "succeeded":
            invoice = self.pay_invoice(session, intent=r.json())
            if send:
                await self.send_event("invoice.paid", invoice)
            return invoice
        error = r.json().get("error") or {}
        intent = error.get("payment_intent") or {"id": None}
        invoice = self._invoice(session, "open")
        invoice["payments"]["data"].append(_invoice_payment(intent, "open"))
        if send:
            await self.send_event("invoice.payment_failed", invoice)
        return invoice

    async def retry_invoice(self, invoice_id: str, *, card: str = "pm_card_visa") -> Obj:
        """Stripe's smart retry of an open invoice: paid now (``invoice.paid`` sent)."""
        invoice = self.invoices[invoice_id]
        form = {
            "amount": invoice["amount_due"],
            "currency": invoice["currency"],
            "payment_method": card,
            "confirm": "true",
        }
        intent = await self._localstripe("/v1/payment_intents", form)
        invoice.update(status="paid", amount_paid=invoice["amount_due"])
        invoice["attempt_count"] += 1
        invoice["payments"]["data"].append(_invoice_payment(intent, "paid"))
        await self.send_event("invoice.paid", invoice)
        return invoice

    async def _localstripe(self, path: str, form: dict[str, Any]) -> Obj:
        r = await self._http.post(self.upstream + path, data=form, auth=(self.api_key, ""))
        r.raise_for_status()
        result: Obj = r.json()
        return result

    async def send_event(self, type_: str, obj: Obj, *, secret: str | None = None) -> Obj:
        """Send one signed event to ``webhook_url`` (as Stripe does); returns the event."""
        event = {
            "id": self._id("evt"),
            "object": "event",
            "type": type_,
            "created": int(time.time()),
            "livemode": False,
            "api_version": stripe.api_version,
            "data": {"object": obj},
        }
        self.sent_events.append(event)
        if self.webhook_url:
            payload = json.dumps(event)
            header = stripe.WebhookSignature.generate_signature_header(
                payload, secret or self.webhook_secret
            )
            await self._http.post(
                self.webhook_url,
                content=payload,
                headers={"Stripe-Signature": header, "Content-Type": "application/json"},
            )
        return event

    async def aclose(self) -> None:
        await self._http.aclose()


def _invoice_payment(intent: Obj, status: str) -> Obj:
    return {
        "object": "invoice_payment",
        "status": status,
        "payment": {"type": "payment_intent", "payment_intent": intent.get("id")},
    }


def _list(url: str, data: list[Obj]) -> Obj:
    return {"object": "list", "url": url, "has_more": False, "data": data}


def _public(obj: Obj) -> Obj:
    """The object as the API shows it (without the front's private fields)."""
    return {k: v for k, v in obj.items() if not k.startswith("_")}


async def serve(
    front: StripeFront,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``front`` until cancelled; report its base URL (``payments.stripe_base_url``)."""
    config = hypercorn.Config()
    config.bind = [f"{host}:{port}"]
    config.errorlog = log
    try:
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(hypercorn.trio.serve, front.app, config)
            front.base_url = binds[0]
            task_status.started(binds[0])
            await trio.sleep_forever()
    finally:
        with trio.move_on_after(5, shield=True):
            await front.aclose()
