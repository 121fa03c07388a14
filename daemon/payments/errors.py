"""What the payments service refuses, as face-neutral errors with a stable kind.

Each kind has one status (HTTP's vocabulary, which the gRPC face maps to its codes) and
one problem ``type`` URI (``urn:paymentd:problem:<kind>``), so clients can branch on it.
The idempotency store keeps a refused request's problem body like any other answer.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

TYPE_PREFIX = "urn:paymentd:problem:"

# kind → (status, title). Adding a kind is one line here.
KINDS: dict[str, tuple[int, str]] = {
    "invalid-amount": (400, "Invalid amount"),
    "invalid-currency": (400, "Invalid currency"),
    "invalid-request": (400, "Invalid request"),
    "payment-not-found": (404, "No such payment"),
    "refund-not-found": (404, "No such refund"),
    "invalid-state": (409, "The payment is not in a state that allows this"),
    "idempotency-key-in-use": (409, "A request with this Idempotency-Key is still running"),
    "idempotency-key-reused": (422, "This Idempotency-Key was used with other parameters"),
    "amount-exceeds-refundable": (422, "The refund exceeds what is left to refund"),
    "amount-exceeds-capturable": (422, "The capture exceeds the authorized amount"),
    "payments-disabled": (503, "Payments are not configured"),
}


class PaymentsError(Exception):
    def __init__(self, kind: str, detail: str, **extensions: Any) -> None:
        if kind not in KINDS:
            raise ValueError(f"undeclared payments error kind {kind!r}")
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.extensions = extensions

    @property
    def status(self) -> int:
        return KINDS[self.kind][0]

    @property
    def type_uri(self) -> str:
        return TYPE_PREFIX + self.kind

    def body(self) -> dict[str, Any]:
        """The RFC 9457 problem document for this error."""
        status, title = KINDS[self.kind]
        doc: dict[str, Any] = {
            "type": self.type_uri,
            "title": title or HTTPStatus(status).phrase,
            "status": status,
            "detail": self.detail,
        }
        doc.update({k: v for k, v in self.extensions.items() if k not in doc})
        return doc
