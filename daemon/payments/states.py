"""The payment and refund state machines, declared once.

Payments::

    created ──► pending ◄──► requires_action ──► processing ──► succeeded
       │           │               │                 │     ╲
       │           ▼               ▼                 ▼      requires_capture ──► succeeded
       │        failed / canceled / expired       failed / canceled
       └──► unknown ──► (whatever the provider says when re-fetched)

- ``created``: stored and queued; the provider has not answered yet.
- ``pending``: the provider waits for the customer (client secret / hosted page).
- ``requires_action``: the customer has an extra step (3-D Secure).
- ``processing``: the provider is working on it.
- ``requires_capture``: authorized, waits for our capture (``capture_method`` manual).
- ``unknown``: a provider call got no usable answer (timeout); reconcile re-fetches.
- final: ``succeeded``, ``failed``, ``canceled``, ``expired``. Nothing leaves them;
  refunds of a succeeded payment are their own machine.

Refunds: ``pending`` → ``succeeded`` | ``failed``.

Every change goes through ``daemon.payments.store.transition``, which checks it here and
appends it to ``payment_events`` in the same transaction.
"""

from __future__ import annotations

from typing import Literal

from daemon.payments.provider import ProviderStatus

PaymentStatus = Literal[
    "created",
    "pending",
    "requires_action",
    "processing",
    "requires_capture",
    "unknown",
    "succeeded",
    "failed",
    "canceled",
    "expired",
]
RefundStatus = Literal["pending", "succeeded", "failed"]

PAYMENT_FINAL: frozenset[str] = frozenset({"succeeded", "failed", "canceled", "expired"})
# Waiting for the customer: what expire may cancel once past its time to live.
AWAITING_CUSTOMER: frozenset[str] = frozenset({"created", "pending", "requires_action"})
# What reconcile re-fetches once untouched past its threshold (an authorization waiting
# for capture too: Stripe cancels it by itself after about 7 days).
RECONCILABLE: frozenset[str] = frozenset(
    {"pending", "requires_action", "processing", "requires_capture", "unknown"}
)

_OPEN_AT_PROVIDER = ("pending", "requires_action", "processing", "requires_capture")
_ANY_PROVIDER_ANSWER = (*_OPEN_AT_PROVIDER, "succeeded", "failed", "canceled", "expired")

PAYMENT_TRANSITIONS: dict[str, frozenset[str]] = {
    "created": frozenset({*_ANY_PROVIDER_ANSWER, "unknown"}),
    "unknown": frozenset(_ANY_PROVIDER_ANSWER),
    "pending": frozenset({*_ANY_PROVIDER_ANSWER, "unknown"} - {"pending"}),
    "requires_action": frozenset({*_ANY_PROVIDER_ANSWER, "unknown"} - {"requires_action"}),
    # A failed attempt sends a Stripe intent back to requires_payment_method (pending).
    # A processing payment is not expired: money may be on its way.
    "processing": frozenset({*_ANY_PROVIDER_ANSWER, "unknown"} - {"processing", "expired"}),
    # An authorization is captured, cancelled, or lapses (Stripe cancels it after ~7 days).
    "requires_capture": frozenset({"processing", "succeeded", "canceled", "expired", "unknown"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "canceled": frozenset(),
    "expired": frozenset(),
}

REFUND_TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"succeeded", "failed"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
}

# The provider's normalized status → ours.
FROM_PROVIDER: dict[ProviderStatus, PaymentStatus] = {
    "requires_payment_method": "pending",
    "requires_action": "requires_action",
    "processing": "processing",
    "requires_capture": "requires_capture",
    "succeeded": "succeeded",
    "failed": "failed",
    "canceled": "canceled",
    "expired": "expired",
}

# What the outbox announces on entering a state (daemon.platform.outbox.EVENT_TYPES);
# the other states are recorded in the history only.
OUTBOX_EVENT: dict[str, str] = {
    "pending": "payment.pending",
    "requires_action": "payment.pending",
    "succeeded": "payment.succeeded",
    "failed": "payment.failed",
    "canceled": "payment.canceled",
    "expired": "payment.expired",
}


class InvalidTransition(ValueError):
    """A change the state machine does not allow (a programming or ordering error)."""


def can_move(from_status: str, to_status: str) -> bool:
    return to_status in PAYMENT_TRANSITIONS.get(from_status, frozenset())


def check_payment(from_status: str, to_status: str) -> None:
    if not can_move(from_status, to_status):
        raise InvalidTransition(f"a payment cannot go from {from_status} to {to_status}")


def check_refund(from_status: str, to_status: str) -> None:
    if to_status not in REFUND_TRANSITIONS.get(from_status, frozenset()):
        raise InvalidTransition(f"a refund cannot go from {from_status} to {to_status}")


def is_final(status: str) -> bool:
    return status in PAYMENT_FINAL
