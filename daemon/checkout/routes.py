"""The hosted checkout's HTTP face (registered when a payment provider is configured).

Routes (all open: the signed token, or the publishable key + Origin, is the credential):

- ``POST /checkout-links`` ``{"publishable_key", "payment_id"}`` from a merchant page:
  the payment's checkout link for embedding in that page's origin, if the key allows
  that ``Origin`` (CORS answered for that origin only). Documented in ``/openapi.json``.
- ``GET /checkout/<token>``: the page (amount, description, then the mock's pay/decline
  form or the hand-off to Stripe Checkout). Frameable only by the link's origin (CSP
  ``frame-ancestors``; ``'none'`` for a link without one). Expired → 410, forged → 403,
  as a short HTML page.
- ``GET /checkout/<token>/events``: that payment's status as SSE (``stream.py``).
- ``POST /checkout/<token>/pay|decline``: the mock provider's customer (mock only), with
  a CSRF token bound to the link and a same-origin check.
- ``GET /paymentd.js`` (the SDK), ``GET /checkout/static/<file>`` (the page's JS, CSS).

Nothing here takes the admin token or an API key, and no route accepts a secret in its
URL; the token carries only a payment id, an expiry, an origin and a signature.
"""

from __future__ import annotations

import datetime as dt
import logging
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import jinja2
import trio
from pydantic import BaseModel, ConfigDict, Field
from quart import Blueprint, Response, request
from quart_schema import hide

from daemon.checkout import keys, links
from daemon.checkout.signer import Signer
from daemon.checkout.stream import StatusStream, StreamSlots, view
from daemon.payments import mock_provider, store
from daemon.payments.store import Payment
from daemon.platform.deps import Deps
from daemon.platform.http import schema
from daemon.platform.http.problem import PROBLEM_TYPE, Problem, json_response

log = logging.getLogger(__name__)

_STATIC_TYPES = {
    "checkout.js": "text/javascript; charset=utf-8",
    "checkout.css": "text/css; charset=utf-8",
    "paymentd.js": "text/javascript; charset=utf-8",
}
_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("daemon.checkout", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
STATUS_TEXT = {
    "created": "Preparing the payment…",
    "pending": "Waiting for your payment",
    "requires_action": "Waiting for your payment (an extra step is needed)",
    "processing": "Processing…",
    "unknown": "Processing…",
    "requires_capture": "Paid: authorized",
    "succeeded": "Paid",
    "failed": "Declined",
    "canceled": "Cancelled",
    "expired": "Expired",
}


class LinkRequest(BaseModel):
    """What the SDK sends: its publishable key and the payment the merchant's server made."""

    model_config = ConfigDict(extra="forbid")

    publishable_key: str = Field(pattern=r"^pk_[0-9a-f]{24}$")
    payment_id: str = Field(pattern=r"^pay_[0-9a-f]{24}$")


class LinkOut(BaseModel):
    path: str = Field(description="the checkout page, on this daemon's origin")
    url: str = Field(description="path on payments.public_base_url")
    expires_at: str


def _static(name: str) -> bytes:
    return resources.files("daemon.checkout").joinpath("static", name).read_bytes()


def _frame_ancestors(link: links.Link) -> str:
    return link.origin if link.embedded else "'none'"


def _page_headers(response: Response, link: links.Link | None) -> Response:
    ancestors = "'none'" if link is None else _frame_ancestors(link)
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
        f" img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors {ancestors}"
    )
    if ancestors == "'none'":
        response.headers["X-Frame-Options"] = "DENY"  # for browsers without CSP level 2
    # The URL holds the token: never let it leave in a Referer (to Stripe, say).
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _html(status: int, template: str, link: links.Link | None = None, **ctx: Any) -> Response:
    body = _ENV.get_template(template).render(**ctx)
    response = Response(body, status=status, mimetype="text/html")
    return _page_headers(response, link)


def _refused_page(exc: links.LinkRefused) -> Response:
    return _html(exc.status, "checkout_error.html", title="Link not valid", detail=exc.detail)


def blueprint(deps: Deps, shutdown: trio.Event) -> Blueprint:
    bp = Blueprint("checkout", __name__)
    signer = Signer(deps)
    static = {name: _static(name) for name in _STATIC_TYPES}
    slots = StreamSlots(max(1, deps.events.max_subscribers // 2))

    async def verified(token: str) -> tuple[links.Link, Payment]:
        link = links.verify(signer.keys(), token)
        payment = await store.get(deps.db, link.payment_id)
        if payment is None:
            raise links.LinkRefused(404, "this payment does not exist (any more)")
        return link, payment

    def cors(response: Response, origin: str) -> Response:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
        return response

    @bp.route("/checkout-links", methods=["OPTIONS"], provide_automatic_options=False)
    @hide
    async def preflight() -> Response:
        # The CORS preflight of the SDK's JSON POST. Allowed origins are checked on the
        # POST itself (a preflight carries no key), so this grants nothing by itself.
        origin = request.headers.get("Origin", "")
        response = Response("", status=204)
        if links.is_origin(origin):
            cors(response, origin)
            response.headers["Access-Control-Allow-Methods"] = "POST"
            response.headers["Access-Control-Allow-Headers"] = "Content-Type"
            response.headers["Access-Control-Max-Age"] = "600"
        return response

    @bp.route("/checkout-links", methods=["POST"], provide_automatic_options=False)
    @schema.declare(
        request=LinkRequest,
        responses={
            200: LinkOut, 400: schema.ProblemDocument, 401: schema.ProblemDocument,
            403: schema.ProblemDocument, 404: schema.ProblemDocument,
            415: schema.ProblemDocument, 503: schema.ProblemDocument,
        },
    )  # fmt: skip
    async def create_link() -> Response:
        """A payment's checkout link for the SDK on a merchant page: only when the
        publishable key lists the page's ``Origin`` (sent by the browser)."""
        origin = request.headers.get("Origin", "")
        schema.require_json_type()
        raw = await request.get_data(cache=False, as_text=False)
        try:
            document = schema.parse_json(bytes(raw) if isinstance(raw, bytes) else raw.encode())
        except schema.BadBody as exc:
            raise exc.problem() from None
        body = schema.load(LinkRequest, document)
        key = await keys.get(deps.db, body.publishable_key)
        if key is None or key.revoked:
            raise Problem(401, "the publishable key is not valid (unknown or revoked)")
        if not key.allows(origin):
            raise Problem(
                403,
                "this page's origin is not allowed for the publishable key"
                " (add it with 'paymentd apikey publishable create --origin')",
            )
        payment = await store.get(deps.db, body.payment_id)
        if payment is None:
            raise Problem(404, f"no payment {body.payment_id!r}")
        expires = signer.embed_expiry(payment.expires_at)
        path = signer.path(body.payment_id, expires, origin)
        base = deps.config.payments.public_base_url.rstrip("/")
        at = dt.datetime.fromtimestamp(expires, dt.UTC).isoformat().replace("+00:00", "Z")
        response = json_response({"path": path, "url": base + path, "expires_at": at})
        response.headers["Cache-Control"] = "no-store"
        return cors(response, origin)

    @bp.after_request
    async def _cors_on_refusals(response: Response) -> Response:
        # A refused link request is still readable by the page that asked (the SDK reports
        # it to onFailure), but only by an origin that sent a well-formed Origin.
        origin = request.headers.get("Origin", "")
        if (
            request.path == "/checkout-links"
            and response.status_code >= 400
            and response.headers.get("Content-Type") == PROBLEM_TYPE
            and links.is_origin(origin)
        ):
            cors(response, origin)
        return response

    @bp.get("/checkout/<token>")
    @hide
    async def page(token: str) -> Response:
        try:
            link, payment = await verified(token)
        except links.LinkRefused as exc:
            return _refused_page(exc)
        state = view(payment)
        mock = payment.provider == "mock"
        return _html(
            200,
            "checkout.html",
            link,
            state=state,
            status_text=STATUS_TEXT.get(payment.status, payment.status),
            events_url=f"/checkout/{token}/events",
            pay_url=f"/checkout/{token}/pay",
            decline_url=f"/checkout/{token}/decline",
            csrf=signer.csrf(token) if mock else "",
            mock=mock,
            # Framed, Stripe's page (which refuses frames) opens in a new tab while this
            # page keeps waiting for the outcome; on its own, in the same window.
            stripe_target="_blank" if link.embedded else "_top",
            parent_origin=link.origin,
        )

    @bp.get("/checkout/<token>/events")
    @hide
    async def events(token: str) -> Response:
        try:
            _link, payment = await verified(token)
        except links.LinkRefused as exc:
            raise Problem(exc.status, exc.detail) from None
        refusal = slots.refusal(payment.id)
        if refusal is not None or deps.events.full:
            # EventSource gives up on a non-200: the page tells the customer to reload.
            raise Problem(503, refusal or "too many event streams are open; try again later")
        stream = StatusStream(deps.db, deps.events, payment.id, shutdown, slots)
        response = Response(stream, mimetype="text/event-stream")
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Accel-Buffering"] = "no"
        response.timeout = None
        return response

    @bp.post("/checkout/<token>/<choice>")
    @hide
    async def choose(token: str, choice: str) -> Response:
        if choice not in ("pay", "decline"):
            raise Problem(404, "not found")
        try:
            _link, payment = await verified(token)
        except links.LinkRefused as exc:
            raise Problem(exc.status, exc.detail) from None
        # CSRF: the form's token is bound to this link, and the request must come from
        # this page (a browser says so in Sec-Fetch-Site and Origin).
        site = request.headers.get("Sec-Fetch-Site")
        origin = request.headers.get("Origin")
        if (site is not None and site != "same-origin") or (
            origin is not None and urlsplit(origin).netloc != request.host
        ):
            raise Problem(403, "this form can only be sent from the checkout page itself")
        form = await request.form
        if not signer.csrf_ok(token, str(form.get("csrf", ""))):
            raise Problem(403, "the form's CSRF token is missing or wrong: reload the page")
        if payment.provider != "mock" or payment.provider_ref is None:
            raise Problem(409, "this payment is not paid on this page")
        status = await mock_provider.choose(deps.db, payment.provider_ref, choice)
        if status is None:
            raise Problem(409, f"this payment is {payment.status}: it is not open any more")
        if "application/json" in request.headers.get("Accept", ""):
            return json_response({"provider_status": status})
        return Response("", status=303, headers={"Location": f"/checkout/{token}"})

    @bp.get("/paymentd.js")
    @hide
    async def sdk() -> Response:
        return _asset(static, "paymentd.js")

    @bp.get("/checkout/static/<name>")
    @hide
    async def asset(name: str) -> Response:
        if name not in static or name == "paymentd.js":
            raise Problem(404, "not found")
        return _asset(static, name)

    return bp


def _asset(static: dict[str, bytes], name: str) -> Response:
    response = Response(static[name], content_type=_STATIC_TYPES[name])
    response.headers["Cache-Control"] = "public, max-age=300"
    response.headers["X-Content-Type-Options"] = "nosniff"
    # Merchant pages on other origins load the SDK with a <script> tag.
    response.headers["Cross-Origin-Resource-Policy"] = "cross-origin"
    return response
