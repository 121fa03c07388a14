"""``/console/payments``: the payment list, one payment's history and refunds, and the
operator's capture / cancel / refund.

Every read and write is ``daemon.payments.service.PaymentService``, the code path behind
``/api/v1/payments``: the same state checks, the same queueing (nothing here calls a
provider; the processor does), the same idempotency. Each action form carries an
``idempotency_key`` generated when the page was rendered, passed to the service as the
API's ``Idempotency-Key``: a form submitted twice (a double click, a reload that
resends) is answered from the stored first answer instead of refunding twice. Keys are
scoped to the console (``Caller.scope``), apart from any API key's.

Amounts are typed and shown in the currency's major units with its ISO exponent (JPY 0
digits, EUR 2, BHD 3); an amount with more digits than the currency has is refused, not
rounded. A refusal (more than is refundable, a payment in the wrong state) is the page
again with the service's own words and its status (409/422), nothing changed.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from decimal import Decimal, InvalidOperation
from typing import Any

from quart import Blueprint, Response, render_template, request

from daemon.console import guard, views
from daemon.console.context import Console
from daemon.payments import currency, states
from daemon.payments.errors import PaymentsError
from daemon.payments.idempotency import Outcome
from daemon.payments.service import Caller, PaymentService
from daemon.platform.http.problem import Problem
from daemon.platform.money import format_minor

log = logging.getLogger(__name__)

NAV = (("console.payments_list", "Payments"),)
STATUSES: tuple[str, ...] = tuple(states.PAYMENT_TRANSITIONS)
NOTICES: views.Notices = {
    "refunded": ("Refund requested: it is pending until the provider answers.", False),
    "captured": ("Capture requested: the processor asks the provider now.", False),
    "canceled": ("Cancelled.", False),
    "cancel_requested": ("Cancel requested: the processor cancels it at the provider.", False),
}
# The console's own idempotency scope: its keys never meet an API key's.
SCOPE = "console"


class BadAmount(ValueError):
    pass


def parse_amount(text: str, code: str) -> int | None:
    """``"12.5"`` EUR → 1250 minor units; empty → None (all of it). More decimals than
    the currency has (``"1.234"`` EUR, ``"1.5"`` JPY) are refused, never rounded."""
    text = text.strip().replace(",", ".")
    if not text:
        return None
    digits = currency.exponent(code)
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise BadAmount(f"amount: {text!r} is not a number") from None
    if not value.is_finite() or value <= 0:
        raise BadAmount("amount: give a positive amount, or leave it empty for all of it")
    scaled = value.scaleb(digits)
    if scaled != scaled.to_integral_value():
        places = f"{digits} decimal places" if digits else "no decimals"
        raise BadAmount(f"amount: {code} takes {places}, got {text!r}")
    return int(scaled)


def money(amount: int, code: str) -> str:
    return currency.format_amount(amount, code)


def _date_arg(name: str) -> dt.date | None:
    raw = request.args.get(name, "").strip()
    if not raw:
        return None
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise Problem(400, f"{name} must be a date, YYYY-MM-DD") from None


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


def new_key() -> str:
    """A fresh Idempotency-Key for one rendered form."""
    return "console-" + secrets.token_urlsafe(18)


def register(bp: Blueprint, console: Console) -> None:
    deps = console.deps
    service = PaymentService(deps.db, deps.config.payments, deps.events, deps.metrics)

    @bp.get("/payments")
    async def payments_list() -> str:
        status = views.text_arg("status", STATUSES)
        customer = views.text_arg("customer")
        if customer is not None and len(customer) > 200:
            raise Problem(400, "customer is at most 200 characters")
        created_from = _date_arg("created_from")
        created_to = _date_arg("created_to")  # inclusive: the whole day
        cursor = views.text_arg("cursor")
        try:
            page = await service.list_payments(
                status=status,
                customer=customer,
                created_gte=None if created_from is None else _midnight(created_from),
                created_lt=None
                if created_to is None
                else _midnight(created_to + dt.timedelta(days=1)),
                cursor=cursor,
                limit=views.PAGE_SIZE,
            )
        except PaymentsError as exc:
            raise Problem(400, exc.detail) from None
        filters: dict[str, Any] = {
            k: v
            for k, v in {
                "status": status,
                "customer": customer,
                "created_from": created_from and created_from.isoformat(),
                "created_to": created_to and created_to.isoformat(),
            }.items()
            if v
        }
        return await render_template(
            "console/payments.html",
            payments=page.payments,
            next_cursor=page.next_cursor,
            paged=cursor is not None,
            statuses=STATUSES,
            filters=filters,
            money=money,
        )

    async def detail_page(
        payment_id: str,
        *,
        error: str | None = None,
        status: int = 200,
        form: dict[str, str] | None = None,
    ) -> tuple[str, int]:
        try:
            payment = await service.get(payment_id)
            history = await service.history(payment_id)
            refunds = await service.refunds(payment_id)
        except PaymentsError as exc:
            raise Problem(exc.status, exc.detail) from None
        page_notices = {"notice": error, "notice_error": True} if error else views.notices(NOTICES)
        html = await render_template(
            "console/payment.html",
            payment=payment,
            history=history,
            refunds=refunds,
            refundable=payment.amount_captured - payment.amount_refunded,
            exponent=currency.exponent(payment.currency),
            money=money,
            major=lambda units: format_minor(units, currency.exponent(payment.currency)),
            # One key per form and rendering: a resubmitted form repeats its key.
            keys={"refund": new_key(), "capture": new_key(), "cancel": new_key()},
            form=form or {},
            **page_notices,
        )
        return html, status

    @bp.get("/payments/<payment_id>")
    async def payment_detail(payment_id: str) -> tuple[str, int]:
        return await detail_page(payment_id)

    def caller() -> Caller:
        return Caller(scope=SCOPE, actor=guard.current().who)

    async def answered(
        payment_id: str, outcome: Outcome, notice: str, form: dict[str, str]
    ) -> Response | tuple[str, int]:
        if outcome.status >= 400:
            # The service's refusal (stored under the key, as the API's would be): the
            # page again, with its words and its status, nothing changed.
            detail = str(outcome.body.get("detail") or outcome.body.get("title"))
            return await detail_page(payment_id, error=detail, status=outcome.status, form=form)
        return guard.redirect_to("console.payment_detail", payment_id=payment_id, notice=notice)

    def form_key(form: dict[str, str]) -> str:
        key = form.get("idempotency_key", "").strip()
        if not key:
            raise Problem(400, "the form has no idempotency_key; reload the page")
        return key

    async def amount_of(payment_id: str, form: dict[str, str]) -> int | None:
        payment = await service.get(payment_id)
        return parse_amount(form.get("amount", ""), payment.currency)

    async def act(payment_id: str, action: str) -> Response | tuple[str, int]:
        form = views.form()
        key = form_key(form)
        try:
            if action == "refund":
                amount = await amount_of(payment_id, form)
                reason = form.get("reason", "").strip() or None
                outcome = await service.refund(caller(), payment_id, amount, reason, key)
                notice = "refunded"
            elif action == "capture":
                amount = await amount_of(payment_id, form)
                outcome = await service.capture(caller(), payment_id, amount, key)
                notice = "captured"
            else:
                outcome = await service.cancel(caller(), payment_id, key)
                notice = "canceled" if outcome.status == 200 else "cancel_requested"
        except BadAmount as exc:
            return await detail_page(payment_id, error=str(exc), status=400, form=form)
        except PaymentsError as exc:
            if exc.kind == "payment-not-found":
                raise Problem(404, exc.detail) from None
            return await detail_page(payment_id, error=exc.detail, status=exc.status, form=form)
        if outcome.status < 400 and not outcome.replayed:
            log.info("payment %s: %s requested by %s", payment_id, action, guard.current().who)
        return await answered(payment_id, outcome, notice, form)

    @bp.post("/payments/<payment_id>/refund")
    async def payment_refund(payment_id: str) -> Response | tuple[str, int]:
        return await act(payment_id, "refund")

    @bp.post("/payments/<payment_id>/capture")
    async def payment_capture(payment_id: str) -> Response | tuple[str, int]:
        return await act(payment_id, "capture")

    @bp.post("/payments/<payment_id>/cancel")
    async def payment_cancel(payment_id: str) -> Response | tuple[str, int]:
        return await act(payment_id, "cancel")
