"""The mock payment provider: for the demo, and for outcomes localstripe cannot produce.

Its objects live in PostgreSQL (``mock_provider_objects``/``_refunds``, migration 008),
so like a real provider's they outlive a daemon restart, and it honours idempotency keys
the way Stripe does (the same key answers the same object) while counting the calls per
key (``create_calls``), so tests can prove a retry after a crash made no second object.

Each payment chooses its outcome with ``metadata["mock"]``:

==================  ===========================================================
(absent)            waits for the customer: pay or decline on the hosted page
``succeed``         paid at once (``requires_capture`` first for manual capture)
``decline``         declined (card_declined): the payment fails
``processing``      processing, then succeeded after ``metadata["mock_seconds"]``
                    (default 2) — seen when re-fetched (reconcile)
``requires_action`` 3-D Secure style extra step; the hosted page completes it
``timeout``         the first create makes the object, then hangs (the processor's
                    deadline turns it into ``unknown``); later calls answer normally
``unavailable``     every call fails as if the provider were down
``refund_fail``     paid at once; its refunds fail
``refund_pending``  paid at once; its refunds answer ``pending`` (a repeated create
                    too: like Stripe, a repeated key replays the first answer) and
                    succeed when re-fetched ``metadata["mock_seconds"]`` (default 2)
                    after the payment was made
==================  ===========================================================

The hosted page (``GET /mock/pay/<id>``, buttons posting to ``…/pay`` and ``…/decline``)
is served by the daemon's HTTP app when ``payments.provider = "mock"``. A change made
there queues the payment for the processor in the same transaction, as a provider's
webhook would: the processor re-fetches and records it.
"""

from __future__ import annotations

import html
import secrets
from typing import Any

import trio
from quart import Blueprint, Response, request
from quart_schema import hide

from daemon.payments import currency
from daemon.payments.provider import (
    CreateRequest,
    ProviderDeclined,
    ProviderPayment,
    ProviderRef,
    ProviderRefund,
    ProviderRejected,
    ProviderUnavailable,
    RefundRequest,
)
from daemon.platform import queues
from daemon.platform.db import Database, Executor

BEHAVIOURS = (
    "",
    "succeed",
    "decline",
    "processing",
    "requires_action",
    "timeout",
    "unavailable",
    "refund_fail",
    "refund_pending",
)
QUEUE = "payments"  # daemon.payments.store.QUEUE (not imported: the store imports nothing of ours)

_KIND = {"intent": "payment_intent", "hosted_checkout": "checkout_session"}


class MockProvider:
    name = "mock"

    def __init__(self, db: Database, public_base_url: str) -> None:
        self._db = db
        self._base = public_base_url.rstrip("/")

    def page_url(self, object_id: str) -> str:
        return f"{self._base}/mock/pay/{object_id}"

    async def create(self, req: CreateRequest) -> ProviderPayment:
        behaviour = req.metadata.get("mock", "")
        if behaviour not in BEHAVIOURS:
            raise ProviderRejected(
                f"metadata.mock must be one of {', '.join(b for b in BEHAVIOURS if b)}",
                code="parameter_invalid",
            )
        if behaviour == "unavailable":
            raise ProviderUnavailable("the mock provider is unavailable (metadata mock)")
        status, settles = _initial(behaviour, req)
        kind = _KIND.get(req.method, "payment_link")
        object_id = f"mock_{'pi' if kind == 'payment_intent' else 'cs'}_{secrets.token_hex(10)}"
        row: Any = await self._db.fetchrow(
            "INSERT INTO mock_provider_objects (id, idempotency_key, kind, payment_id, status,"
            " amount, currency, capture_method, amount_captured, client_secret, behaviour,"
            " settles_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8,"
            " CASE WHEN $5 = 'succeeded' THEN $6::bigint ELSE 0 END, $9, $10,"
            " now() + make_interval(secs => $11))"
            " ON CONFLICT (idempotency_key) DO UPDATE"
            " SET create_calls = mock_provider_objects.create_calls + 1"
            " RETURNING *",
            object_id,
            req.idempotency_key,
            kind,
            req.payment_id,
            status,
            req.amount,
            req.currency,
            req.capture_method,
            f"{object_id}_secret_{secrets.token_urlsafe(12)}",
            behaviour,
            settles,
        )
        if row["behaviour"] == "timeout" and row["create_calls"] == 1:
            # The object exists; its answer never arrives (until the caller gives up).
            await trio.sleep_forever()
        obs = self._observed(row)
        if obs.status == "failed":
            raise ProviderDeclined("the card was declined (mock)", code="card_declined")
        return obs

    async def retrieve(self, ref: ProviderRef) -> ProviderPayment:
        row = await self._settle(self._db, ref.id)
        return self._observed(row)

    async def cancel(self, ref: ProviderRef, *, idempotency_key: str) -> ProviderPayment:
        async with self._db.transaction() as tx:
            row = await self._settle(tx, ref.id, lock=True)
            if row["status"] in ("requires_payment_method", "requires_action", "requires_capture"):
                row = await tx.fetchrow(
                    "UPDATE mock_provider_objects SET status = 'canceled', updated_at = now()"
                    " WHERE id = $1 RETURNING *",
                    ref.id,
                )
            elif row["status"] not in ("canceled",):
                raise ProviderRejected(
                    f"cannot cancel a {row['status']} payment",
                    code="payment_intent_unexpected_state",
                )
        return self._observed(row)

    async def capture(
        self, ref: ProviderRef, *, amount: int | None, idempotency_key: str
    ) -> ProviderPayment:
        async with self._db.transaction() as tx:
            row = await self._settle(tx, ref.id, lock=True)
            if row["status"] == "succeeded":
                return self._observed(row)  # a repeat of the same capture
            if row["status"] != "requires_capture":
                raise ProviderRejected(
                    f"cannot capture a {row['status']} payment",
                    code="payment_intent_unexpected_state",
                )
            take = row["amount"] if amount is None else amount
            if take > row["amount"]:
                raise ProviderRejected("amount to capture exceeds the authorized amount")
            row = await tx.fetchrow(
                "UPDATE mock_provider_objects SET status = 'succeeded', amount_captured = $2,"
                " updated_at = now() WHERE id = $1 RETURNING *",
                ref.id,
                take,
            )
        return self._observed(row)

    async def refund(self, req: RefundRequest) -> ProviderRefund:
        behaviour = await self._db.fetchval(
            "SELECT behaviour FROM mock_provider_objects WHERE id = $1", req.payment.id
        )
        if behaviour is None:
            raise ProviderRejected(f"no such payment {req.payment.id}", code="resource_missing")
        if behaviour == "unavailable":
            raise ProviderUnavailable("the mock provider is unavailable (metadata mock)")
        async with self._db.transaction() as tx:
            obj: Any = await tx.fetchrow(
                "SELECT * FROM mock_provider_objects WHERE id = $1 FOR UPDATE", req.payment.id
            )
            existing = await tx.fetchrow(
                "UPDATE mock_provider_refunds SET create_calls = create_calls + 1"
                " WHERE idempotency_key = $1 RETURNING *",
                req.idempotency_key,
            )
            if existing is not None:
                if behaviour == "refund_pending":
                    # Stripe replays the first response for a repeated key, whatever the
                    # refund has become since: here that answer was "pending".
                    return _refund({**dict(existing), "status": "pending"})
                return _refund(existing)
            if obj["status"] != "succeeded":
                raise ProviderRejected(f"cannot refund a {obj['status']} payment")
            refunded = await tx.fetchval(
                "SELECT coalesce(sum(amount), 0) FROM mock_provider_refunds"
                " WHERE object_id = $1 AND status <> 'failed'",
                req.payment.id,
            )
            if refunded + req.amount > obj["amount_captured"]:
                raise ProviderRejected("refund exceeds the amount left to refund")
            failed = behaviour == "refund_fail"
            status = "failed" if failed else "succeeded"
            if behaviour == "refund_pending":
                status = "pending"
            row = await tx.fetchrow(
                "INSERT INTO mock_provider_refunds (id, idempotency_key, object_id, amount,"
                " status, failure_reason) VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
                f"mock_re_{secrets.token_hex(10)}",
                req.idempotency_key,
                req.payment.id,
                req.amount,
                status,
                "declined by the bank (mock)" if failed else None,
            )
        return _refund(row)

    async def retrieve_refund(self, refund_id: str) -> ProviderRefund:
        # A "refund_pending" refund settles once its payment's settle time has come.
        row = await self._db.fetchrow(
            "UPDATE mock_provider_refunds r SET status = 'succeeded' FROM mock_provider_objects o"
            " WHERE r.id = $1 AND r.status = 'pending' AND o.id = r.object_id"
            " AND o.settles_at <= now() RETURNING r.*",
            refund_id,
        ) or await self._db.fetchrow("SELECT * FROM mock_provider_refunds WHERE id = $1", refund_id)
        if row is None:
            raise ProviderRejected(f"no such refund {refund_id}", code="resource_missing")
        return _refund(row)

    async def aclose(self) -> None:
        return None

    async def _settle(self, db: Executor, object_id: str, *, lock: bool = False) -> Any:
        """The object, a "processing" one moved on once its time has come."""
        row = await db.fetchrow(
            "UPDATE mock_provider_objects SET updated_at = now(),"
            " status = CASE WHEN capture_method = 'manual' THEN 'requires_capture'"
            " ELSE 'succeeded' END,"
            " amount_captured = CASE WHEN capture_method = 'manual' THEN 0 ELSE amount END"
            " WHERE id = $1 AND status = 'processing' AND settles_at <= now() RETURNING *",
            object_id,
        )
        if row is None:
            row = await db.fetchrow(
                "SELECT * FROM mock_provider_objects WHERE id = $1"
                + (" FOR UPDATE" if lock else ""),
                object_id,
            )
        if row is None:
            raise ProviderRejected(f"no such payment {object_id}", code="resource_missing")
        if row["behaviour"] == "unavailable":
            raise ProviderUnavailable("the mock provider is unavailable (metadata mock)")
        return row

    def _observed(self, row: Any) -> ProviderPayment:
        status = row["status"]
        kind = row["kind"]
        return ProviderPayment(
            ref=ProviderRef(kind, row["id"]),
            status=status,
            provider_status=status,
            amount=row["amount"],
            currency=row["currency"],
            amount_captured=row["amount_captured"],
            amount_capturable=row["amount"] if status == "requires_capture" else 0,
            client_secret=row["client_secret"] if kind == "payment_intent" else None,
            hosted_url=None if kind == "payment_intent" else self.page_url(row["id"]),
            failure_code="card_declined" if status == "failed" else None,
            failure_message="the card was declined (mock)" if status == "failed" else None,
        )


def _initial(behaviour: str, req: CreateRequest) -> tuple[str, float]:
    """The new object's status and, for "processing", seconds until it settles."""
    paid = "requires_capture" if req.capture_method == "manual" else "succeeded"
    if behaviour in ("succeed", "refund_fail"):
        return paid, 0.0
    if behaviour == "refund_pending":
        return paid, _seconds(req)
    if behaviour == "decline":
        return "failed", 0.0
    if behaviour == "processing":
        return "processing", _seconds(req)
    if behaviour == "requires_action":
        return "requires_action", 0.0
    return "requires_payment_method", 0.0


def _seconds(req: CreateRequest) -> float:
    try:
        seconds = float(req.metadata.get("mock_seconds", "2"))
    except ValueError:
        seconds = 2.0
    return max(0.0, min(seconds, 3600.0))


def _refund(row: Any) -> ProviderRefund:
    return ProviderRefund(
        id=row["id"],
        status=row["status"],
        provider_status=row["status"],
        amount=row["amount"],
        failure_reason=row["failure_reason"],
    )


async def count_objects(db: Executor, payment_id: str) -> tuple[int, int]:
    """(objects, create calls) the mock holds for one of our payments (tests, demo)."""
    row: Any = await db.fetchrow(
        "SELECT count(*) AS objects, coalesce(sum(create_calls), 0) AS calls"
        " FROM mock_provider_objects WHERE payment_id = $1",
        payment_id,
    )
    return int(row["objects"]), int(row["calls"])


# The hosted page. HTML only here, only with the mock provider: a stand-in for Stripe's
# hosted Checkout so the demo can "pay".

_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Mock payment</title></head>
<body style="font-family:sans-serif;max-width:30em;margin:3em auto">
<h1>Mock payment</h1><p>{amount}</p><p>Status: <b>{status}</b></p>{buttons}
<p><small>paymentd mock provider &mdash; no money moves.</small></p></body></html>"""
_BUTTONS = """<form method="post" action="{base}/pay"><button>Pay</button></form>
<form method="post" action="{base}/decline"><button>Decline</button></form>"""


async def choose(db: Database, object_id: str, choice: str) -> str | None:
    """The customer pays (``"pay"``) or declines an open mock object: its new status, or
    None if it is not open. Also the hosted checkout's mock form (daemon/checkout)."""
    async with db.transaction() as tx:
        row = await tx.fetchrow(
            "UPDATE mock_provider_objects SET updated_at = now(),"
            " status = CASE WHEN $2 = 'decline' THEN 'failed'"
            " WHEN capture_method = 'manual' THEN 'requires_capture' ELSE 'succeeded' END,"
            " amount_captured = CASE WHEN $2 = 'pay' AND capture_method = 'automatic'"
            " THEN amount ELSE 0 END"
            " WHERE id = $1 AND status IN ('requires_payment_method', 'requires_action')"
            " RETURNING payment_id, status",
            object_id,
            choice,
        )
        if row is None:
            return None
        # The provider's "webhook": the processor re-fetches and records the change.
        if row["payment_id"]:
            await queues.send(tx, QUEUE, {"payment_id": row["payment_id"], "sync": True})
    status: str = row["status"]
    return status


def blueprint(db: Database) -> Blueprint:
    bp = Blueprint("mock_provider", __name__, url_prefix="/mock/pay")

    @bp.get("/<object_id>")
    @hide  # the mock's page is not part of the API
    async def page(object_id: str) -> Response:
        row = await db.fetchrow(
            "SELECT status, amount, currency FROM mock_provider_objects WHERE id = $1", object_id
        )
        if row is None:
            return Response("no such payment", status=404, mimetype="text/plain")
        open_ = row["status"] in ("requires_payment_method", "requires_action")
        body = _PAGE.format(
            amount=html.escape(currency.format_amount(row["amount"], row["currency"])),
            status=html.escape(row["status"]),
            buttons=_BUTTONS.format(base=html.escape(request.path)) if open_ else "",
        )
        return Response(body, mimetype="text/html")

    @bp.post("/<object_id>/<choice>")
    @hide
    async def act(object_id: str, choice: str) -> Response:
        if choice not in ("pay", "decline"):
            return Response("not found", status=404, mimetype="text/plain")
        status = await choose(db, object_id, choice)
        if status is None:
            return Response("this payment is not open", status=409, mimetype="text/plain")
        return Response(f"payment {html.escape(status)}\n", mimetype="text/plain", status=200)

    return bp
