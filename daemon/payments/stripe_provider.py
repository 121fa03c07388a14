"""The Stripe provider: ``PaymentProvider`` on stripe-python's async methods (httpx, trio).

What each of our methods becomes at Stripe:

- ``intent``: a PaymentIntent (``capture_method`` manual or Stripe's automatic default);
  the browser confirms it with the client secret.
- ``hosted_checkout``: a Checkout Session (Stripe's hosted card page); ``mode=payment``
  for one-time payments, ``mode=subscription`` with a recurring price for recurring ones
  (each paid invoice then arrives as an ``invoice.paid`` event).
- ``payment_link``: a Price, then a Payment Link for it limited to one completed session.

Every create carries the processor's deterministic idempotency key (a Payment Link's
Price carries ``<key>:price``), so a retry after a crash or a lost answer gets the object
the first call made. Our payment id travels in ``metadata.paymentd_payment_id`` on the
intent / session / subscription / link (and as the session's ``client_reference_id``),
so events and reconciliation find their payment.

Errors: ``CardError`` → ``ProviderDeclined``; connection errors, timeouts, 5xx, 409
(a key in use), 429, and authentication/permission errors (a configuration problem that
an operator fixes; the payment must wait, not fail) → ``ProviderUnavailable``; other
4xx (``InvalidRequestError``, ``IdempotencyError``) → ``ProviderRejected``. Messages are
Stripe's user-facing message and its error code: no key, no client secret.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import stripe
import trio

from daemon.payments.provider import (
    CreateRequest,
    ProviderDeclined,
    ProviderPayment,
    ProviderRef,
    ProviderRefund,
    ProviderRejected,
    ProviderStatus,
    ProviderUnavailable,
    RefundRequest,
    RefundStatus,
)
from daemon.payments.stripe_client import StripeApi, open_api
from daemon.platform.config import PaymentsConfig

log = logging.getLogger(__name__)
T = TypeVar("T")
Obj = dict[str, Any]
# stripe-python types each call's params as a TypedDict; ours are assembled per method and
# kind (and checked by Stripe), so they are passed as Any.
Params = Any

PAYMENT_ID_KEY = "paymentd_payment_id"
REFUND_ID_KEY = "paymentd_refund_id"

_INTENT_STATUS: dict[str, ProviderStatus] = {
    "requires_payment_method": "requires_payment_method",
    # Confirmation is the browser's step with the client secret: still waiting for it.
    "requires_confirmation": "requires_payment_method",
    "requires_action": "requires_action",
    "processing": "processing",
    "requires_capture": "requires_capture",
    "succeeded": "succeeded",
    "canceled": "canceled",
}
_REFUND_STATUS: dict[str, RefundStatus] = {
    "pending": "pending",
    "requires_action": "pending",
    "succeeded": "succeeded",
    "failed": "failed",
    "canceled": "failed",
}
# Where Stripe's API does not count in ISO 4217 minor units (ours): ISK is exponent 0 at
# ISO but two-decimal in Stripe's API (100 = 1 króna); MGA is exponent 2 at ISO but
# zero-decimal at Stripe (1 = 1 ariary). https://docs.stripe.com/currencies#special-cases
# code → (multiply ours by, then divide by) to get Stripe's amount.
_STRIPE_UNITS: dict[str, tuple[int, int]] = {"ISK": (100, 1), "MGA": (1, 100)}


def to_stripe(amount: int, currency: str) -> int:
    """Our minor units of ``currency`` → the amount Stripe's API expects."""
    mul, div = _STRIPE_UNITS.get(currency.upper(), (1, 1))
    if (amount * mul) % div:
        raise ProviderRejected(
            f"{currency.upper()} amounts at Stripe are whole units: {amount} minor units"
            f" is not a multiple of {div}",
            code="amount_not_whole",
        )
    return amount * mul // div


def from_stripe(amount: int, currency: str) -> int:
    """An amount in Stripe's API → our minor units of ``currency``."""
    mul, div = _STRIPE_UNITS.get(currency.upper(), (1, 1))
    return amount * div // mul


# Stripe's own refund reasons; any other reason of ours goes in metadata only.
_STRIPE_REFUND_REASONS = {"duplicate", "fraudulent", "requested_by_customer"}


@dataclass(frozen=True)
class StripeInvoice:
    """A subscription's invoice, as far as our history needs it (recurring payments)."""

    id: str
    status: str  # draft, open, paid, uncollectible, void
    amount_paid: int
    currency: str  # upper case
    subscription_id: str | None
    payment_id: str | None  # our payment, from the subscription's metadata
    billing_reason: str | None
    amount_due: int = 0
    intent_id: str | None = None  # the PaymentIntent that paid it (or tried to)
    charge_id: str | None = None  # that intent's charge
    attempt_count: int = 0  # payment attempts so far (a failed one counts)
    period_start: int | None = None  # unix times of the billed period
    period_end: int | None = None

    @property
    def paid(self) -> bool:
        return self.status == "paid"

    def as_payment(self) -> ProviderPayment:
        """The invoice as a payment (a recurring payment's charge)."""
        status: ProviderStatus = "requires_payment_method"
        if self.status == "paid":
            status = "succeeded"
        elif self.status in ("void", "uncollectible"):
            status = "failed"
        amount = self.amount_paid if self.paid else self.amount_due
        return ProviderPayment(
            ref=ProviderRef("invoice", self.id),
            status=status,
            provider_status=self.status,
            amount=amount,
            currency=self.currency,
            amount_captured=self.amount_paid if self.paid else 0,
            intent_id=self.intent_id,
            subscription_id=self.subscription_id,
        )


class StripeProvider:
    """``PaymentProvider`` for Stripe (or any server speaking its API: localstripe)."""

    name = "stripe"

    def __init__(self, api: StripeApi, *, timeout_seconds: float) -> None:
        self._api = api
        self._v1 = api.client.v1
        # A backstop over httpx's own timeout, which bounds each read, not the whole call.
        self._deadline = timeout_seconds + 5

    @classmethod
    def from_config(cls, cfg: PaymentsConfig) -> StripeProvider:
        """``payments.stripe_api_key``, ``stripe_base_url``, ``provider_timeout_seconds``."""
        timeout = cfg.provider_timeout_seconds
        api = open_api(cfg.stripe_api_key.reveal(), cfg.stripe_base_url, timeout_seconds=timeout)
        return cls(api, timeout_seconds=timeout)

    async def aclose(self) -> None:
        await self._api.aclose()

    # -- calls ------------------------------------------------------------------------

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """One Stripe call, its errors translated; ``what`` names it in messages."""
        try:
            with trio.fail_after(self._deadline):
                return await fn()
        except trio.TooSlowError:
            raise ProviderUnavailable(
                f"{what}: no answer from Stripe within {self._deadline:g} s", code="timeout"
            ) from None
        except stripe.CardError as exc:
            raise ProviderDeclined(_message(what, exc), code=exc.code or "card_declined") from None
        except (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError) as exc:
            raise ProviderUnavailable(_message(what, exc), code=_code(exc, "unavailable")) from None
        except (stripe.AuthenticationError, stripe.PermissionError) as exc:
            log.error("Stripe refused our credentials (%s): check payments.stripe_api_key", what)
            raise ProviderUnavailable(_message(what, exc), code="authentication") from None
        except stripe.StripeError as exc:  # InvalidRequestError, IdempotencyError
            code = _code(exc, "invalid_request")
            raise ProviderRejected(_message(what, exc), code=code) from None

    # -- PaymentProvider ----------------------------------------------------------------

    async def create(self, req: CreateRequest) -> ProviderPayment:
        metadata = {**req.metadata, PAYMENT_ID_KEY: req.payment_id}
        if req.customer:
            metadata.setdefault("paymentd_customer", req.customer)
        key = _key(req.idempotency_key)
        if req.method == "intent":
            if req.kind == "recurring":
                raise ProviderRejected(
                    "recurring payments need method hosted_checkout or payment_link",
                    code="recurring_intent",
                )
            params: Params = {
                "amount": to_stripe(req.amount, req.currency),
                "currency": req.currency.lower(),
                "metadata": metadata,
            }
            if req.capture_method == "manual":
                params["capture_method"] = "manual"
            if req.description:
                params["description"] = req.description
            pi = await self._call(
                "create PaymentIntent",
                lambda: self._v1.payment_intents.create_async(params=params, options=key),
            )
            return _from_intent(pi.to_dict())
        if req.method == "hosted_checkout":
            session = await self._call(
                "create Checkout Session",
                lambda: self._v1.checkout.sessions.create_async(
                    params=_session_params(req, metadata), options=key
                ),
            )
            return await self._from_session(session.to_dict())
        return await self._create_link(req, metadata)

    async def _create_link(self, req: CreateRequest, metadata: dict[str, str]) -> ProviderPayment:
        price_params: Params = {
            "currency": req.currency.lower(),
            "unit_amount": to_stripe(req.amount, req.currency),
            "product_data": {"name": _product_name(req)},
        }
        if req.kind == "recurring":
            price_params["recurring"] = {"interval": req.interval}
        price = await self._call(
            "create Price",
            lambda: self._v1.prices.create_async(
                params=price_params, options=_key(f"{req.idempotency_key}:price")
            ),
        )
        params: Params = {
            "line_items": [{"price": price.id, "quantity": 1}],
            "metadata": metadata,
            # One payment row, one payment: the link stops taking payments after one.
            "restrictions": {"completed_sessions": {"limit": 1}},
        }
        if req.kind == "recurring":
            params["subscription_data"] = {"metadata": metadata}
        else:
            params["payment_intent_data"] = _intent_data(req, metadata)
        if req.success_url:
            params["after_completion"] = {
                "type": "redirect",
                "redirect": {"url": req.success_url},
            }
        link = await self._call(
            "create Payment Link",
            lambda: self._v1.payment_links.create_async(
                params=params, options=_key(req.idempotency_key)
            ),
        )
        return _from_link(link.to_dict(), amount=req.amount, currency=req.currency)

    async def retrieve(self, ref: ProviderRef) -> ProviderPayment:
        if ref.kind == "invoice":  # a recurring payment's charge
            return (await self.retrieve_invoice(ref.id)).as_payment()
        if ref.kind == "payment_intent":
            pi = await self._call(
                "retrieve PaymentIntent", lambda: self._v1.payment_intents.retrieve_async(ref.id)
            )
            return _from_intent(pi.to_dict())
        if ref.kind == "checkout_session":
            session = await self._call(
                "retrieve Checkout Session",
                lambda: self._v1.checkout.sessions.retrieve_async(ref.id),
            )
            return await self._from_session(session.to_dict())
        link = await self._call(
            "retrieve Payment Link", lambda: self._v1.payment_links.retrieve_async(ref.id)
        )
        completed = await self._call(
            "list the Payment Link's sessions",
            lambda: self._v1.checkout.sessions.list_async(
                params={"payment_link": ref.id, "status": "complete", "limit": 1}
            ),
        )
        if completed.data:
            return await self._from_session(completed.data[0].to_dict(), link_id=ref.id)
        info = link.to_dict()
        amount, currency = await self._link_amount(ref.id, info)
        return _from_link(info, amount=amount, currency=currency)

    async def _link_amount(self, link_id: str, link: Obj) -> tuple[int, str]:
        """A link shows no amount; its line item does."""
        items = await self._call(
            "list the Payment Link's line items",
            lambda: self._v1.payment_links.line_items.list_async(link_id),
        )
        first = items.data[0].to_dict()
        currency = str(first.get("currency", "")).upper()
        return from_stripe(int(first.get("amount_total", 0)), currency), currency

    async def cancel(self, ref: ProviderRef, *, idempotency_key: str) -> ProviderPayment:
        key = _key(idempotency_key)
        try:
            if ref.kind == "payment_intent":
                pi = await self._call(
                    "cancel PaymentIntent",
                    lambda: self._v1.payment_intents.cancel_async(ref.id, options=key),
                )
                return _from_intent(pi.to_dict())
            if ref.kind == "checkout_session":
                session = await self._call(
                    "expire Checkout Session",
                    lambda: self._v1.checkout.sessions.expire_async(ref.id, options=key),
                )
                return await self._from_session(session.to_dict())
            link = await self._call(
                "deactivate Payment Link",
                lambda: self._v1.payment_links.update_async(
                    ref.id, params={"active": False}, options=key
                ),
            )
            # A completed link's payment stands: report that, not the deactivation.
            return await self.retrieve(ProviderRef("payment_link", link.id))
        except ProviderRejected:
            # Already canceled / expired (Stripe refuses a second cancel): answer it as is.
            current = await self.retrieve(ref)
            if current.status in ("canceled", "expired"):
                return current
            raise

    async def capture(
        self, ref: ProviderRef, *, amount: int | None, idempotency_key: str
    ) -> ProviderPayment:
        intent_id = await self._intent_of(ref)
        params: Params = {}
        if amount is not None:
            pi_now = await self._call(
                "retrieve PaymentIntent", lambda: self._v1.payment_intents.retrieve_async(intent_id)
            )
            params["amount_to_capture"] = to_stripe(amount, str(pi_now.currency))
        pi = await self._call(
            "capture PaymentIntent",
            lambda: self._v1.payment_intents.capture_async(
                intent_id, params=params, options=_key(idempotency_key)
            ),
        )
        captured = _from_intent(pi.to_dict(), captured=amount)
        if ref.kind != "payment_intent":
            captured = _replace_ref(captured, ref)
        return captured

    async def refund(self, req: RefundRequest) -> ProviderRefund:
        intent_id = await self._intent_of(req.payment)
        params: Params = {
            "payment_intent": intent_id,
            "amount": to_stripe(req.amount, req.currency),
            "metadata": {REFUND_ID_KEY: req.refund_id},
        }
        if req.reason in _STRIPE_REFUND_REASONS:
            params["reason"] = req.reason
        elif req.reason:
            params["metadata"]["paymentd_reason"] = req.reason[:500]
        refund = await self._call(
            "create Refund",
            lambda: self._v1.refunds.create_async(params=params, options=_key(req.idempotency_key)),
        )
        return _from_refund(refund.to_dict())

    async def retrieve_refund(self, refund_id: str) -> ProviderRefund:
        refund = await self._call(
            "retrieve Refund", lambda: self._v1.refunds.retrieve_async(refund_id)
        )
        return _from_refund(refund.to_dict())

    async def retrieve_invoice(self, invoice_id: str) -> StripeInvoice:
        """Stripe-only (recurring payments): re-fetch an invoice (``invoice.*`` events, a
        charge's reconcile), with the PaymentIntent and charge that paid it."""
        params: Params = {"expand": ["payments"]}  # not in the answer unless asked
        invoice = await self._call(
            "retrieve Invoice",
            lambda: self._v1.invoices.retrieve_async(invoice_id, params=params),
        )
        found = _from_invoice(invoice.to_dict())
        if found.intent_id and not found.charge_id:
            intent_id = found.intent_id
            pi = await self._call(
                "retrieve PaymentIntent", lambda: self._v1.payment_intents.retrieve_async(intent_id)
            )
            charge = pi.to_dict().get("latest_charge")
            charge_id = charge.get("id") if isinstance(charge, dict) else charge
            found = dataclasses.replace(found, charge_id=charge_id)
        return found

    # -- helpers ------------------------------------------------------------------------

    async def _intent_of(self, ref: ProviderRef) -> str:
        """The PaymentIntent behind a payment (a session's or a link's, once paid)."""
        if ref.kind == "payment_intent":
            return ref.id
        current = await self.retrieve(ref)
        if current.intent_id is None:
            raise ProviderRejected(
                f"{ref.kind} {ref.id} has no PaymentIntent (not paid)", code="no_payment_intent"
            )
        return current.intent_id

    async def _from_session(self, session: Obj, *, link_id: str | None = None) -> ProviderPayment:
        """A session as a payment; a paid one-time session reports its PaymentIntent."""
        ref = ProviderRef("payment_link", link_id) if link_id else _session_ref(session)
        currency = str(session.get("currency") or "").upper()
        amount = from_stripe(int(session.get("amount_total") or 0), currency)
        status: ProviderStatus
        if session.get("status") == "expired":
            status = "expired"
        elif session.get("status") == "open":
            status = "requires_payment_method"
        elif session.get("mode") == "subscription":
            # complete; "paid" once the first invoice is (invoice.paid events follow).
            status = "succeeded" if session.get("payment_status") == "paid" else "processing"
        else:
            status = "processing"
        intent = session.get("payment_intent")
        intent_id = intent.get("id") if isinstance(intent, dict) else intent
        if intent_id and session.get("mode") == "payment":
            pi = await self._call(
                "retrieve PaymentIntent",
                lambda: self._v1.payment_intents.retrieve_async(intent_id),
            )
            via_intent = _from_intent(pi.to_dict())
            if session.get("status") != "open":
                return _replace_ref(via_intent, ref, hosted_url=session.get("url"))
        sub = session.get("subscription")
        return ProviderPayment(
            ref=ref,
            status=status,
            provider_status=f"{session.get('status')}/{session.get('payment_status')}",
            amount=amount,
            currency=currency,
            amount_captured=amount if status == "succeeded" else 0,
            hosted_url=session.get("url"),
            intent_id=intent_id,
            subscription_id=sub.get("id") if isinstance(sub, dict) else sub,
        )


# -- Stripe objects → our values (plain dicts: ``StripeObject.to_dict()``) ------------------


def _from_intent(pi: Obj, *, captured: int | None = None) -> ProviderPayment:
    """``captured``: what a capture call just asked for, if the answer does not say."""
    status = _INTENT_STATUS.get(str(pi.get("status")), "processing")
    currency = str(pi["currency"]).upper()
    amount = from_stripe(int(pi["amount"]), currency)
    error = pi.get("last_payment_error") or {}
    received = pi.get("amount_received")
    if received is None:
        # localstripe has no amount_received: its capture answer is told what was asked,
        # a re-fetch of a succeeded intent reports all of it (partial captures included).
        received = (captured or amount) if status == "succeeded" else 0
    else:
        received = from_stripe(int(received), currency)
    capturable = pi.get("amount_capturable")
    if capturable is None:  # localstripe again
        capturable = amount if status == "requires_capture" else 0
    else:
        capturable = from_stripe(int(capturable), currency)
    return ProviderPayment(
        ref=ProviderRef("payment_intent", pi["id"]),
        status=status,
        provider_status=str(pi.get("status")),
        amount=amount,
        currency=currency,
        amount_captured=int(received),
        amount_capturable=int(capturable),
        client_secret=pi.get("client_secret"),
        failure_code=error.get("decline_code") or error.get("code"),
        failure_message=error.get("message"),
        intent_id=pi["id"],
    )


def _from_invoice(inv: Obj) -> StripeInvoice:
    # API 2025-03-31 and later: parent.subscription_details and the ``payments`` list
    # (expanded); older: top-level subscription, payment_intent and charge.
    details = (inv.get("parent") or {}).get("subscription_details") or {}
    sub = details.get("subscription") or inv.get("subscription")
    meta = details.get("metadata") or (inv.get("subscription_details") or {}).get("metadata")
    currency = str(inv.get("currency") or "")
    intent, charge = inv.get("payment_intent"), inv.get("charge")
    payments = [p for p in ((inv.get("payments") or {}).get("data") or []) if p.get("payment")]
    # The paid one if there is one, else the latest attempt.
    paid = [p for p in payments if p.get("status") == "paid"] or payments[-1:]
    if paid:
        intent = paid[0]["payment"].get("payment_intent") or intent
        charge = paid[0]["payment"].get("charge") or charge
    period = (inv.get("lines") or {}).get("data") or []
    span = (period[0].get("period") or {}) if period else {}
    return StripeInvoice(
        id=inv["id"],
        status=str(inv.get("status")),
        amount_paid=from_stripe(int(inv.get("amount_paid") or 0), currency),
        currency=currency.upper(),
        subscription_id=sub.get("id") if isinstance(sub, dict) else sub,
        payment_id=(meta or {}).get(PAYMENT_ID_KEY),
        billing_reason=inv.get("billing_reason"),
        amount_due=from_stripe(int(inv.get("amount_due") or 0), currency),
        intent_id=intent.get("id") if isinstance(intent, dict) else intent,
        charge_id=charge.get("id") if isinstance(charge, dict) else charge,
        attempt_count=int(inv.get("attempt_count") or 0),
        period_start=span.get("start") or inv.get("period_start"),
        period_end=span.get("end") or inv.get("period_end"),
    )


def _from_link(link: Obj, *, amount: int, currency: str) -> ProviderPayment:
    active = bool(link.get("active", True))
    return ProviderPayment(
        ref=ProviderRef("payment_link", link["id"]),
        status="requires_payment_method" if active else "canceled",
        provider_status="active" if active else "inactive",
        amount=amount,
        currency=currency.upper(),
        hosted_url=link.get("url"),
    )


def _from_refund(refund: Obj) -> ProviderRefund:
    status = str(refund.get("status"))
    return ProviderRefund(
        id=refund["id"],
        status=_REFUND_STATUS.get(status, "pending"),
        provider_status=status,
        amount=from_stripe(int(refund["amount"]), str(refund.get("currency") or "")),
        failure_reason=refund.get("failure_reason"),
    )


def _session_ref(session: Obj) -> ProviderRef:
    return ProviderRef("checkout_session", session["id"])


def _replace_ref(
    payment: ProviderPayment, ref: ProviderRef, *, hosted_url: str | None = None
) -> ProviderPayment:
    return dataclasses.replace(payment, ref=ref, hosted_url=hosted_url or payment.hosted_url)


def _product_name(req: CreateRequest) -> str:
    return (req.description or f"Payment {req.payment_id}")[:250]


def _intent_data(req: CreateRequest, metadata: Mapping[str, str]) -> Params:
    data: Params = {"metadata": dict(metadata)}
    if req.capture_method == "manual":
        data["capture_method"] = "manual"
    if req.description:
        data["description"] = req.description
    return data


def _session_params(req: CreateRequest, metadata: dict[str, str]) -> Params:
    price_data: Obj = {
        "currency": req.currency.lower(),
        "unit_amount": to_stripe(req.amount, req.currency),
        "product_data": {"name": _product_name(req)},
    }
    params: Params = {
        "mode": "subscription" if req.kind == "recurring" else "payment",
        "line_items": [{"price_data": price_data, "quantity": 1}],
        "client_reference_id": req.payment_id,
        "metadata": metadata,
    }
    if req.kind == "recurring":
        price_data["recurring"] = {"interval": req.interval}
        params["subscription_data"] = {"metadata": metadata}
    else:
        params["payment_intent_data"] = _intent_data(req, metadata)
    if req.success_url:
        params["success_url"] = req.success_url
    if req.cancel_url:
        params["cancel_url"] = req.cancel_url
    return params


def _key(idempotency_key: str) -> stripe.RequestOptions:
    return {"idempotency_key": idempotency_key}


def _message(what: str, exc: stripe.StripeError) -> str:
    text = exc.user_message or type(exc).__name__
    return f"{what}: {text}"


def _code(exc: stripe.StripeError, default: str) -> str:
    return str(exc.code) if getattr(exc, "code", None) else default


__all__ = ["PAYMENT_ID_KEY", "REFUND_ID_KEY", "StripeInvoice", "StripeProvider"]
