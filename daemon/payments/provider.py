"""The payment provider interface: what the payment processor asks of Stripe or the mock.

The processor (``daemon.payments.processor``) is the only caller. It calls a provider
only after committing that it is about to (so a crash leaves a trace), and always with an
idempotency key derived from our own row (``create_key`` …), so a retry after a crash —
or after a timeout whose answer was lost — finds the provider object the first call made
instead of making a second one. Nothing here touches the database.

Amounts are integer minor units of ``currency`` (an upper-case ISO 4217 code; a provider
that wants lower case converts). A provider answers with a ``ProviderPayment`` /
``ProviderRefund`` in our normalized vocabulary, or raises one of three errors:

- ``ProviderDeclined``: the provider said no for good (card declined, fraud): final.
- ``ProviderUnavailable``: no usable answer (timeout, connection error, 5xx, rate limit).
  The call may or may not have taken effect: the payment goes to ``unknown`` and
  reconciliation re-fetches it (the same idempotency key makes a repeat harmless).
- ``ProviderRejected``: our request is invalid for the provider (bad parameter, unknown
  object, wrong state). Retrying the same request cannot help.

Error messages may be shown to API clients and logged: implementations must not put
secrets (API keys, client secrets) in them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

Method = Literal["intent", "hosted_checkout", "payment_link"]
Kind = Literal["one_time", "recurring"]
Interval = Literal["day", "week", "month", "year"]
CaptureMethod = Literal["automatic", "manual"]

# What kind of object the provider made for a payment, so a later call knows where to look:
# Stripe: a PaymentIntent (method "intent"), a Checkout Session ("hosted_checkout", and
# recurring payments: Checkout in subscription mode) or a Payment Link ("payment_link");
# a recurring payment's charge is one paid invoice of its subscription ("invoice").
ObjectKind = Literal["payment_intent", "checkout_session", "payment_link", "invoice"]

# The provider's state of a payment, normalized:
#   requires_payment_method  waiting for the customer to pay (client secret / hosted page)
#   requires_action          the customer has an extra step (3-D Secure, redirect)
#   processing               the provider is working on it (bank transfers, some cards)
#   requires_capture         authorized; waits for our capture (capture_method "manual")
#   succeeded                paid (captured)
#   failed                   the attempt failed for good (Stripe: a declined attempt
#                            returns the intent to requires_payment_method; the provider
#                            reports "failed" only when it will not be paid any more)
#   canceled                 cancelled (by us, or by the provider)
#   expired                  the hosted page / session expired unpaid
ProviderStatus = Literal[
    "requires_payment_method",
    "requires_action",
    "processing",
    "requires_capture",
    "succeeded",
    "failed",
    "canceled",
    "expired",
]
FINAL_PROVIDER_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "canceled", "expired"})

RefundStatus = Literal["pending", "succeeded", "failed"]


# Deterministic idempotency keys, one per logical operation on one of our rows. Stripe
# keeps keys for at least 24 h; our retries (processor redeliveries, reconcile) happen well
# inside that. Stripe allows up to 255 characters; ours are short.
# How long a provider is trusted to still hold a key (Stripe: "at least 24 hours"). A
# create repeated later could make a second object, so it is not repeated blindly.
IDEMPOTENCY_KEY_RETENTION = dt.timedelta(hours=23)


def create_key(payment_id: str) -> str:
    return f"paymentd:{payment_id}:create"


def capture_key(payment_id: str, attempt: int = 1) -> str:
    # A partial capture is one request per payment (Stripe captures once); ``attempt``
    # exists only so a capture rejected for its parameters can be asked again differently.
    return f"paymentd:{payment_id}:capture:{attempt}"


def cancel_key(payment_id: str) -> str:
    return f"paymentd:{payment_id}:cancel"


def refund_key(refund_id: str) -> str:
    return f"paymentd:{refund_id}:refund"


@dataclass(frozen=True)
class ProviderRef:
    """Where a payment lives at its provider."""

    kind: ObjectKind
    id: str  # pi_…, cs_…, plink_… (Stripe), mock_… (mock)


@dataclass(frozen=True)
class CreateRequest:
    payment_id: str
    amount: int  # minor units, > 0
    currency: str  # ISO 4217, upper case
    method: Method
    kind: Kind
    capture_method: CaptureMethod
    idempotency_key: str  # create_key(payment_id)
    interval: Interval | None = None  # set exactly when kind == "recurring"
    description: str | None = None
    customer: str | None = None  # the merchant's customer reference (not a provider id)
    # String values only (Stripe's rule); ours adds "paymentd_payment_id" for tracing.
    metadata: Mapping[str, str] = field(default_factory=dict)
    # Where a hosted page sends the customer afterwards (hosted_checkout, payment_link).
    success_url: str | None = None
    cancel_url: str | None = None


@dataclass(frozen=True)
class ProviderPayment:
    """A provider object as the provider sees it now (a re-fetch, or a call's answer)."""

    ref: ProviderRef
    status: ProviderStatus
    provider_status: str  # the provider's own word ("requires_payment_method", "open" …)
    amount: int
    currency: str  # upper case
    amount_captured: int = 0
    amount_capturable: int = 0  # authorized, not yet captured (manual capture)
    client_secret: str | None = field(default=None, repr=False)  # the browser's; never logged
    hosted_url: str | None = None  # hosted_checkout / payment_link page
    failure_code: str | None = None  # decline code when status is failed
    failure_message: str | None = None
    # The PaymentIntent behind a Checkout Session once there is one (refunds need it).
    intent_id: str | None = None
    subscription_id: str | None = None  # recurring: the subscription the session started

    @property
    def final(self) -> bool:
        return self.status in FINAL_PROVIDER_STATUSES


@dataclass(frozen=True)
class RefundRequest:
    refund_id: str
    payment: ProviderRef  # the provider resolves a session to its PaymentIntent
    amount: int  # minor units, > 0
    currency: str
    idempotency_key: str  # refund_key(refund_id)
    reason: str | None = None


@dataclass(frozen=True)
class ProviderRefund:
    id: str  # re_… (Stripe)
    status: RefundStatus  # Stripe's requires_action/canceled are reported as pending/failed
    provider_status: str
    amount: int
    failure_reason: str | None = None


class ProviderError(Exception):
    """Base of the three outcomes below. ``code`` is short and machine-readable."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class ProviderDeclined(ProviderError):
    """The provider refused the payment for good (card declined …)."""


class ProviderUnavailable(ProviderError):
    """No usable answer (timeout, connection, 5xx, 429): outcome unknown, retry later."""


class ProviderRejected(ProviderError):
    """Our request is invalid for the provider (parameters, state, unknown object)."""


class PaymentProvider(Protocol):
    """One payment provider. Every method may raise the three ``ProviderError`` kinds.

    Implementations bound their own network calls (a hung provider must become
    ``ProviderUnavailable``, not a hang); the processor also bounds each call.
    """

    name: str  # "stripe", "mock": stored with every payment

    async def create(self, req: CreateRequest) -> ProviderPayment:
        """Make the provider object for ``req``. Called again with the same
        ``idempotency_key`` it must return the same object, never make a second."""
        ...

    async def retrieve(self, ref: ProviderRef) -> ProviderPayment:
        """Re-fetch the object (reconcile, provider events: never trust an event's copy)."""
        ...

    async def cancel(self, ref: ProviderRef, *, idempotency_key: str) -> ProviderPayment:
        """Cancel an unpaid payment (Stripe: cancel the intent, expire the session,
        deactivate the link). Cancelling one already canceled/expired answers it as is."""
        ...

    async def capture(
        self, ref: ProviderRef, *, amount: int | None, idempotency_key: str
    ) -> ProviderPayment:
        """Capture an authorized payment; ``amount`` None captures all of it."""
        ...

    async def refund(self, req: RefundRequest) -> ProviderRefund:
        """Refund part or all of a captured payment."""
        ...

    async def retrieve_refund(self, refund_id: str) -> ProviderRefund:
        """Re-fetch a refund by the provider's id."""
        ...

    async def aclose(self) -> None:
        """Release connections; called once at shutdown."""
        ...


__all__ = [
    "FINAL_PROVIDER_STATUSES",
    "IDEMPOTENCY_KEY_RETENTION",
    "CaptureMethod",
    "CreateRequest",
    "Interval",
    "Kind",
    "Method",
    "ObjectKind",
    "PaymentProvider",
    "ProviderDeclined",
    "ProviderError",
    "ProviderPayment",
    "ProviderRef",
    "ProviderRefund",
    "ProviderRejected",
    "ProviderStatus",
    "ProviderUnavailable",
    "RefundRequest",
    "RefundStatus",
    "cancel_key",
    "capture_key",
    "create_key",
    "refund_key",
]
