"""The payments HTTP API (``/api/v1/payments``, ``/api/v1/refunds``): a thin face over
``daemon.payments.service``.

This module only translates: headers (``Idempotency-Key``, ``Prefer: wait=N``) and JSON
bodies in, ``Outcome`` / rows out, ``PaymentsError`` as ``application/problem+json`` with
its stable ``type`` (``urn:paymentd:problem:<kind>``). Scopes: ``payments:read`` for
GETs, ``payments:write`` for POSTs (the admin token holds both). Every shape is declared
here, so ``/openapi.json`` documents every route.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from quart import Blueprint, Response, request
from quart_schema import validate_querystring

from daemon.checkout.signer import Signer
from daemon.payments import currency as cur
from daemon.payments import service as svc
from daemon.payments import states
from daemon.payments.errors import KINDS, PaymentsError
from daemon.payments.idempotency import Outcome
from daemon.payments.service import Caller, PaymentService
from daemon.platform import auth
from daemon.platform.db import BIGINT_MAX
from daemon.platform.deps import Deps
from daemon.platform.http import schema
from daemon.platform.http.admin import AUTH_PROBLEMS, MAX_LIMIT
from daemon.platform.http.problem import PROBLEM_TYPE, json_response

PaymentStatus = Literal[
    "created", "pending", "requires_action", "processing", "requires_capture", "unknown",
    "succeeded", "failed", "canceled", "expired",
]  # fmt: skip


def _whole(value: Any) -> Any:
    """JSON Schema's integer: 1200 and 1200.0, never 12.5, "1200" or true."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a whole number")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be a whole number")
        return int(value)
    return value


# Constraints before the validator: after it pydantic no longer sees them as constraints
# (they would reach the schema as "gt", not "exclusiveMinimum").
Amount = Annotated[int, Field(gt=0, le=svc.MAX_AMOUNT), BeforeValidator(_whole)]


ClientId = Annotated[int, Field(gt=0, le=BIGINT_MAX), BeforeValidator(_whole)]


def _iso_only(value: Any) -> Any:
    # pydantic would read "0.5" as a Unix timestamp; the schema says date-time.
    if isinstance(value, str) and re.fullmatch(r"[0-9.eE+-]*", value):
        raise ValueError("must be an RFC 3339 date-time, e.g. 2026-12-01T00:00:00Z")
    return value


Instant = Annotated[dt.datetime, BeforeValidator(_iso_only)]
if TYPE_CHECKING:
    Currency = str
else:  # the schema lists every payable code, so a client sees the choice
    Currency = Literal[tuple(sorted(cur.EXPONENTS))]
MetadataKey = Annotated[str, Field(min_length=1, max_length=40)]
MetadataValue = Annotated[str, Field(max_length=500)]
# What the service checks across fields, said in the schema too (JSON Schema if/then).
_RECURRING_RULES: dict[str, Any] = {
    "if": {"properties": {"kind": {"const": "recurring"}}, "required": ["kind"]},
    "then": {
        "required": ["interval"],
        "properties": {
            "interval": {"enum": list(svc.INTERVALS)},
            "method": {"enum": ["hosted_checkout", "payment_link"]},
            "capture_method": {"const": "automatic"},
        },
    },
    "else": {"properties": {"interval": {"type": "null"}}},
}


class CreatePayment(BaseModel):
    """A new payment. Amounts are integer minor units: JPY 500 is ¥500, USD 500 is $5.00,
    BHD 500 is 0.500 BD. A recurring payment needs an interval and a hosted method."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_RECURRING_RULES)

    amount: Amount = Field(description="minor units of currency")
    currency: Currency = Field(description="ISO 4217 code (upper case), e.g. EUR")
    description: str | None = Field(None, max_length=1000)
    customer: str | None = Field(None, min_length=1, max_length=200, description="your reference")
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict, max_length=svc.MAX_METADATA_KEYS
    )
    capture_method: Literal["automatic", "manual"] = "automatic"
    kind: Literal["one_time", "recurring"] = "one_time"
    interval: Literal["day", "week", "month", "year"] | None = Field(
        None, description="for kind recurring"
    )
    method: Literal["intent", "hosted_checkout", "payment_link"] | None = Field(
        None, description="default: intent, or hosted_checkout for kind recurring"
    )
    status_callback_url: str | None = Field(
        None, max_length=2000, pattern=r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[^\s]*)?$"
    )
    uisp_client_id: ClientId | None = None


class CapturePayment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: Amount | None = Field(None, description="partial capture; default all")


class CreateRefund(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: Amount | None = Field(None, description="default: all that is left")
    reason: str | None = Field(None, max_length=500)


class PaymentOut(BaseModel):
    id: str
    status: PaymentStatus
    amount: int
    currency: str
    currency_exponent: int
    amount_display: str
    amount_captured: int
    amount_refunded: int
    amount_refundable: int
    method: str
    kind: str = Field(description="one_time, recurring, or recurring_charge (a paid invoice)")
    interval: str | None
    parent_payment_id: str | None = Field(description="a recurring_charge's recurring payment")
    capture_method: str
    description: str | None
    customer: str | None
    metadata: dict[str, str]
    status_callback_url: str | None
    uisp_client_id: int | None
    uisp_payment_id: int | None
    provider: str
    provider_ref: str | None
    client_secret: str | None
    hosted_url: str | None
    failure_code: str | None
    failure_message: str | None
    cancel_requested: bool
    capture_requested: bool
    created_at: str
    updated_at: str
    expires_at: str
    finished_at: str | None
    checkout_url: str | None = Field(
        description="the hosted checkout page for the customer: a signed link, valid until"
        " expires_at (the same link on every read); null once final"
    )


class PaymentPage(BaseModel):
    payments: list[PaymentOut]
    next_cursor: str | None = Field(description="pass as cursor for the next (older) page")


class RefundOut(BaseModel):
    id: str
    payment_id: str
    status: Literal["pending", "succeeded", "failed"]
    amount: int
    currency: str
    amount_display: str
    reason: str | None
    provider_ref: str | None
    failure_reason: str | None
    created_at: str
    updated_at: str
    finished_at: str | None


class EventOut(BaseModel):
    id: int
    refund_id: str | None
    at: str
    kind: str
    from_status: str | None
    to_status: str | None
    actor: str
    detail: dict[str, Any]


class EventList(BaseModel):
    events: list[EventOut]


class PaymentQuery(BaseModel):
    """Newest first; ``cursor`` is the previous page's ``next_cursor``."""

    model_config = ConfigDict(extra="forbid")

    status: PaymentStatus | None = None
    customer: str | None = Field(None, max_length=200)
    parent: str | None = Field(
        None,
        max_length=40,
        description="a recurring payment's id: its charges (one per paid invoice)",
    )
    created_gte: Instant | None = None
    created_lt: Instant | None = None
    cursor: str | None = Field(None, pattern=r"^[0-9]{1,19}$")
    limit: int = Field(50, ge=1, le=MAX_LIMIT)


P = schema.ProblemDocument
WRITE_PROBLEMS: dict[int, type[BaseModel]] = {
    400: P, 404: P, 409: P, 415: P, 422: P, 503: P, **AUTH_PROBLEMS,
}  # fmt: skip
READ_PROBLEMS: dict[int, type[BaseModel]] = {400: P, 404: P, **AUTH_PROBLEMS}

# A body's pydantic error on these members is reported with their own problem type.
_FIELD_KINDS = {"amount": "invalid-amount", "currency": "invalid-currency"}


def _problem(exc: PaymentsError, headers: dict[str, str] | None = None) -> Response:
    return _render(exc.status, exc.body(), headers)


def _render(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    response = json_response(body, status, headers=headers)
    if status >= 400:
        response.headers["Content-Type"] = PROBLEM_TYPE
    return response


async def _body(model: type[Any]) -> Any:
    raw = await request.get_data(cache=False, as_text=False)
    if not raw.strip() and model is not CreatePayment:
        return model()  # no body (with or without a type) is {} for the optional-only bodies
    schema.require_json_type()
    try:
        document = schema.parse_json(bytes(raw) if isinstance(raw, bytes) else raw.encode())
    except schema.BadBody as exc:
        raise exc.problem() from None
    if not isinstance(document, dict):
        raise PaymentsError("invalid-request", "the body must be a JSON object", field="body")
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        path = ".".join(str(p) for p in first["loc"]) or "body"
        kind = _FIELD_KINDS.get(path, "invalid-request")
        raise PaymentsError(kind, f"{path}: {first['msg']}", field=path) from None


def _caller() -> Caller:
    principal = auth.current_principal()
    who = principal.key_id or "admin"
    return Caller(scope=who, actor=f"api:{who}")


def _key() -> str | None:
    return request.headers.get("Idempotency-Key")


def blueprint(deps: Deps) -> Blueprint:
    bp = Blueprint("payments", __name__, url_prefix="/api/v1")
    guard = auth.Guard(deps)
    service = PaymentService(deps.db, deps.config.payments, deps.events, deps.metrics)
    read, write = guard.require(auth.PAYMENTS_READ), guard.require(auth.PAYMENTS_WRITE)
    signer = Signer(deps)

    def linked(body: dict[str, Any]) -> dict[str, Any]:
        """A payment's body with its checkout link (not stored: it is derived)."""
        open_ = not states.is_final(body["status"]) and deps.config.payments.provider != "none"
        if not open_:
            return {**body, "checkout_url": None}
        expires = dt.datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
        return {**body, "checkout_url": signer.url(body["id"], expires)}

    @bp.errorhandler(PaymentsError)
    async def _refused(exc: PaymentsError) -> Response:
        return _problem(exc)

    async def answer(outcome: Outcome, wait_until: Any = None, *, refund: bool = False) -> Response:
        headers: dict[str, str] = {}
        if outcome.replayed:
            headers["Idempotent-Replayed"] = "true"
        if outcome.status < 300 and outcome.resource_id:
            prefix = "refunds" if refund else "payments"
            headers["Location"] = f"/api/v1/{prefix}/{outcome.resource_id}"
        seconds = svc.parse_wait(request.headers.get("Prefer"))
        body = outcome.body
        if seconds is not None and outcome.status < 300 and not outcome.replayed:
            assert outcome.resource_id is not None
            if refund:
                body = (await service.wait_refund(outcome.resource_id, seconds)).public()
                waited = True
            else:
                payment, waited = await service.wait(outcome.resource_id, wait_until, seconds)
                body = payment.public()
            if waited:
                headers["Preference-Applied"] = f"wait={seconds:g}"
        if outcome.status < 300 and not refund:
            body = linked(body)
        return _render(outcome.status, body, headers)

    @bp.post("/payments")
    @schema.declare(request=CreatePayment, responses={201: PaymentOut, **WRITE_PROBLEMS})
    @write
    async def create_payment() -> Response:
        """Create a payment: stored and queued at once (201); the processor asks the
        provider. ``Idempotency-Key`` makes a retry safe; ``Prefer: wait=N`` (≤ 30) waits
        for the client secret / hosted URL or a final state."""
        body: CreatePayment = await _body(CreatePayment)
        fields = body.model_dump()
        if fields["method"] is None:
            fields["method"] = "hosted_checkout" if body.kind == "recurring" else "intent"
        params = svc.CreateParams(**fields)
        outcome = await service.create(_caller(), params, _key())
        return await answer(outcome, svc.has_answer)

    @bp.get("/payments")
    @schema.declare(responses={200: PaymentPage, **READ_PROBLEMS})
    @read
    @validate_querystring(PaymentQuery)
    async def list_payments(query_args: PaymentQuery) -> Response:
        """Payments, newest first, filtered by status, customer, parent and creation time."""
        page = await service.list_payments(
            status=query_args.status,
            customer=query_args.customer,
            parent=query_args.parent,
            created_gte=query_args.created_gte,
            created_lt=query_args.created_lt,
            cursor=query_args.cursor,
            limit=query_args.limit,
        )
        return json_response(
            {
                "payments": [linked(p.public()) for p in page.payments],
                "next_cursor": page.next_cursor,
            }
        )

    @bp.get("/payments/<payment_id>")
    @schema.declare(responses={200: PaymentOut, **READ_PROBLEMS})
    @read
    async def get_payment(payment_id: str) -> Response:
        """One payment as it stands."""
        return json_response(linked((await service.get(payment_id)).public()))

    @bp.get("/payments/<payment_id>/events")
    @schema.declare(responses={200: EventList, **READ_PROBLEMS})
    @read
    async def payment_events(payment_id: str) -> Response:
        """The payment's append-only history, oldest first."""
        rows = await service.history(payment_id)
        return json_response({"events": [e.public() for e in rows]})

    @bp.post("/payments/<payment_id>/cancel")
    @schema.declare(responses={200: PaymentOut, 202: PaymentOut, **WRITE_PROBLEMS})
    @write
    async def cancel_payment(payment_id: str) -> Response:
        """Cancel a payment that is not final: 200 if done at once (the provider never
        had it), else 202 while the processor cancels it at the provider."""
        outcome = await service.cancel(_caller(), payment_id, _key())
        return await answer(outcome, lambda p: p.final)

    @bp.post("/payments/<payment_id>/capture")
    @schema.declare(request=CapturePayment, responses={202: PaymentOut, **WRITE_PROBLEMS})
    @write
    async def capture_payment(payment_id: str) -> Response:
        """Capture an authorized (manual capture) payment, all of it or ``amount``."""
        body: CapturePayment = await _body(CapturePayment)
        outcome = await service.capture(_caller(), payment_id, body.amount, _key())
        return await answer(outcome, lambda p: p.status != "requires_capture")

    @bp.post("/payments/<payment_id>/refunds")
    @schema.declare(request=CreateRefund, responses={201: RefundOut, **WRITE_PROBLEMS})
    @write
    async def refund_payment(payment_id: str) -> Response:
        """Refund part (``amount``) or all of what is left; refunds never add up to more
        than was captured, however many arrive at once."""
        body: CreateRefund = await _body(CreateRefund)
        outcome = await service.refund(_caller(), payment_id, body.amount, body.reason, _key())
        return await answer(outcome, refund=True)

    @bp.get("/refunds/<refund_id>")
    @schema.declare(responses={200: RefundOut, **READ_PROBLEMS})
    @read
    async def get_refund(refund_id: str) -> Response:
        """One refund as it stands."""
        return json_response((await service.get_refund(refund_id)).public())

    return bp


__all__ = ["KINDS", "blueprint"]
