"""Stored Stripe events → our payments: the object is re-fetched, whatever the event said.

localstripe (behind the front) is Stripe; PostgreSQL is real; the handler runs on the
messages the store queued, as the consumer would run it.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx
import msgspec
import pytest
import trio

from daemon.fakes import uisp_server
from daemon.fakes.stripe_front import StripeFront
from daemon.payments import jobs, processor, store, stripe_events, stripe_process
from daemon.payments.processor import ProcessorDeps
from daemon.payments.provider import RefundRequest, refund_key
from daemon.payments.stripe_provider import StripeProvider
from daemon.platform import queues
from daemon.platform.config import PaymentsConfig
from daemon.platform.consumer import Lease
from daemon.platform.db import Database
from daemon.platform.events import EventBus
from daemon.uisp.client import UispClient
from tests.http_fixtures import make_deps, serving
from tests.localstripe import LocalStripe
from tests.stripe_fixtures import (
    create_request,
    pay_intent,
    stripe_config,
    stripe_front_fixture,
    stripe_provider_fixture,
)

__all__ = ["stripe_front_fixture", "stripe_provider_fixture"]

WHSEC = "whsec_events_test_secret"


@pytest.fixture
def handler_deps(
    db: Database, provider: StripeProvider, front: StripeFront
) -> stripe_process.StripeEventDeps:
    core = ProcessorDeps(db, provider, stripe_config(front), EventBus())
    return stripe_process.StripeEventDeps(db, provider, core)


async def insert_payment(
    db: Database, provider_object: str, provider_ref: str, **columns: Any
) -> str:
    """A stripe payment the processor has created at Stripe (status pending)."""
    values = {
        "id": "pay_" + secrets.token_hex(12),
        "amount": 2500,
        "currency": "EUR",
        "method": "intent",
        "kind": "one_time",
        "capture_method": "automatic",
        "created_by": "test",
        "provider": "stripe",
        "status": "pending",
        "provider_object": provider_object,
        "provider_ref": provider_ref,
    } | columns
    names = ", ".join(f'"{k}"' for k in values)
    marks = ", ".join(f"${i + 1}" for i in range(len(values)))
    await db.execute(
        f"INSERT INTO payments ({names}, expires_at) VALUES ({marks}, now() + interval '1 day')",
        *values.values(),
    )
    return str(values["id"])


def stripe_event(type_: str, obj: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
    return {
        "id": event_id or "evt_" + secrets.token_hex(8),
        "object": "event",
        "type": type_,
        "created": int(time.time()),
        "livemode": False,
        "data": {"object": obj},
    }


async def process_queue(deps: stripe_process.StripeEventDeps) -> int:
    """Run the handler on every readable message, as the consumer would; how many."""
    handled = 0
    with trio.fail_after(20):
        while msgs := await queues.read(deps.db, stripe_events.QUEUE, 30, 10):
            for msg in msgs:
                # The handler never touches its lease (it holds no long wait).
                await stripe_process.handle(deps, msg, cast(Lease, None))
                handled += 1
    return handled


async def history(db: Database, payment_id: str) -> list[tuple[str, str | None]]:
    return [(e.kind, e.to_status) for e in await store.events(db, payment_id)]


async def test_events_out_of_order_end_in_stripes_final_state(
    db: Database, provider: StripeProvider, front: StripeFront, handler_deps: Any
) -> None:
    with trio.fail_after(10):
        created = await provider.create(create_request("pay_o1"))
        await pay_intent(front, created.ref.id)  # succeeded at Stripe
    payment_id = await insert_payment(db, "payment_intent", created.ref.id)
    snapshot = {"id": created.ref.id, "object": "payment_intent"}
    # Delivered in the wrong order: succeeded first, then an older "processing".
    for kind, status in (("succeeded", "succeeded"), ("processing", "processing")):
        await stripe_events.store(
            db, stripe_event(f"payment_intent.{kind}", snapshot | {"status": status})
        )
    assert await process_queue(handler_deps) == 2
    payment = await store.get(db, payment_id)
    assert payment is not None
    assert (payment.status, payment.amount_captured) == ("succeeded", 2500)
    assert await history(db, payment_id) == [("transition", "succeeded")]
    rows = await db.fetch("SELECT state, outcome FROM stripe_events ORDER BY received_at")
    assert [r["state"] for r in rows] == ["processed", "processed"]
    assert "stays succeeded" in rows[1]["outcome"]


async def test_an_events_snapshot_is_not_trusted(
    db: Database, provider: StripeProvider, handler_deps: Any
) -> None:
    with trio.fail_after(10):
        created = await provider.create(create_request("pay_o2"))  # unpaid at Stripe
    payment_id = await insert_payment(db, "payment_intent", created.ref.id)
    claim = {"id": created.ref.id, "object": "payment_intent", "status": "succeeded"}
    await stripe_events.store(db, stripe_event("payment_intent.succeeded", claim))
    await process_queue(handler_deps)
    payment = await store.get(db, payment_id)
    assert payment is not None and payment.status == "pending"
    assert await history(db, payment_id) == []


async def test_a_refund_event_finishes_the_refund_from_stripes_copy(
    db: Database, provider: StripeProvider, front: StripeFront, handler_deps: Any
) -> None:
    with trio.fail_after(10):
        created = await provider.create(create_request("pay_r9", 2000))
        await pay_intent(front, created.ref.id)
    payment_id = await insert_payment(
        db, "payment_intent", created.ref.id, status="succeeded", amount=2000,
        amount_captured=2000, amount_refunded=700,
    )  # fmt: skip
    refund_id = "rf_" + secrets.token_hex(12)
    with trio.fail_after(10):
        made = await provider.refund(
            RefundRequest(refund_id, created.ref, 700, "EUR", refund_key(refund_id))
        )
    await db.execute(
        "INSERT INTO refunds (id, payment_id, amount, currency, created_by, provider_ref)"
        " VALUES ($1, $2, 700, 'EUR', 'test', $3)",
        refund_id,
        payment_id,
        made.id,
    )
    # A stale snapshot ("pending"): Stripe's copy says succeeded.
    refund_obj = {"id": made.id, "object": "refund", "status": "pending", "metadata": {}}
    await stripe_events.store(db, stripe_event("refund.updated", refund_obj))
    await process_queue(handler_deps)
    refund = await store.get_refund(db, refund_id)
    assert refund is not None and refund.status == "succeeded"
    assert ("refund_transition", "succeeded") in await history(db, payment_id)


async def subscription(
    db: Database, provider: StripeProvider, front: StripeFront, **columns: Any
) -> tuple[str, dict[str, Any]]:
    """A recurring payment at Stripe, its Checkout completed (first invoice paid): our
    payment id and the front's session."""
    payment_id = "pay_" + secrets.token_hex(12)
    with trio.fail_after(10):
        created = await provider.create(
            create_request(payment_id, 3000, method="hosted_checkout", kind="recurring",
                           interval="month")
        )  # fmt: skip
    await insert_payment(
        db, "checkout_session", created.ref.id, method="hosted_checkout", kind="recurring",
        interval="month", amount=3000, id=payment_id, **columns,
    )  # fmt: skip
    with trio.fail_after(10):
        await front.complete_session(created.ref.id)  # no webhook_url: events only recorded
    return payment_id, front.sessions[created.ref.id]


async def charges_of(db: Database, parent: str) -> list[store.Payment]:
    page = await store.list_page(
        db, status=None, customer=None, parent=parent, created_gte=None, created_lt=None,
        before_seq=None, limit=100,
    )  # fmt: skip
    return sorted(page, key=lambda p: p.seq)


async def test_each_paid_invoice_of_a_subscription_becomes_one_payment_of_its_own(
    db: Database, provider: StripeProvider, front: StripeFront, handler_deps: Any
) -> None:
    payment_id, session = await subscription(db, provider, front, customer="ana")
    with trio.fail_after(10):
        second = await front.charge_invoice(session)  # next month: a real PaymentIntent
    events = list(front.sent_events)
    # Redelivered, replayed under another event id, and (out of order) the month's invoice
    # before the subscription's completion: still one charge per invoice.
    for ev in [*reversed(events), *events, stripe_event("invoice.paid", second)]:
        await stripe_events.store(db, ev)
    await process_queue(handler_deps)
    await stripe_events.store(db, stripe_event("invoice.payment_succeeded", second))
    await process_queue(handler_deps)

    parent = await store.get(db, payment_id)
    assert parent is not None and parent.status == "succeeded"
    assert parent.provider_subscription_id == session["subscription"]
    first_invoice = front.invoices[session["invoice"]]
    order = [first_invoice["id"], second["id"]]
    charges = sorted(await charges_of(db, payment_id), key=lambda c: order.index(c.provider_ref))
    assert [(c.provider_ref, c.amount, c.currency, c.status, c.kind) for c in charges] == [
        (first_invoice["id"], 3000, "EUR", "succeeded", "recurring_charge"),
        (second["id"], 3000, "EUR", "succeeded", "recurring_charge"),
    ]
    for charge, invoice in zip(charges, (first_invoice, second), strict=True):
        intent_id = invoice["payments"]["data"][0]["payment"]["payment_intent"]
        assert intent_id.startswith("pi_")
        assert (charge.provider_object, charge.provider_intent_id) == ("invoice", intent_id)
        assert (charge.parent_payment_id, charge.customer, charge.amount_captured) == (
            payment_id, "ana", 3000,
        )  # fmt: skip
        assert await history(db, charge.id) == [
            ("transition", "created"), ("transition", "succeeded"),
        ]  # fmt: skip
        [created] = [e for e in await store.events(db, charge.id) if e.to_status == "created"]
        assert created.detail["charge"] and created.detail["payment_intent"] == intent_id
        announced = await db.fetch(
            "SELECT type, data FROM events WHERE subject = $1 ORDER BY seq", f"payment:{charge.id}"
        )
        assert [r["type"] for r in announced] == ["payment.created", "payment.succeeded"]
        assert {r["data"]["parent_payment_id"] for r in announced} == {payment_id}
    paid = [e.detail for e in await store.events(db, payment_id) if e.kind == "invoice_paid"]
    assert sorted((d["invoice"], d["payment_id"], d["amount"]) for d in paid) == sorted(
        (c.provider_ref, c.id, 3000) for c in charges
    )


async def test_a_failed_invoice_is_noted_on_the_recurring_payment_and_its_retry_is_a_charge(
    db: Database, provider: StripeProvider, front: StripeFront, handler_deps: Any
) -> None:
    payment_id, session = await subscription(db, provider, front)
    with trio.fail_after(10):
        failed = await front.charge_invoice(session, card="pm_card_chargeCustomerFail")
    assert failed["status"] == "open"
    for ev in front.sent_events:
        await stripe_events.store(db, ev)
    await stripe_events.store(db, stripe_event("invoice.payment_failed", failed))  # again
    await process_queue(handler_deps)
    noted = [e.detail for e in await store.events(db, payment_id)
             if e.kind == "invoice_payment_failed"]  # fmt: skip
    assert [(d["invoice"], d["attempt_count"], d["status"]) for d in noted] == [
        (failed["id"], 1, "open")
    ]
    assert [c.provider_ref for c in await charges_of(db, payment_id)] == [session["invoice"]]

    # Stripe retries and the card pays; the late payment_failed changes nothing more.
    with trio.fail_after(10):
        await front.retry_invoice(failed["id"])
    await stripe_events.store(db, front.sent_events[-1])
    await stripe_events.store(db, stripe_event("invoice.payment_failed", failed))
    await process_queue(handler_deps)
    charges = await charges_of(db, payment_id)
    assert [(c.provider_ref, c.status) for c in charges] == [
        (session["invoice"], "succeeded"), (failed["id"], "succeeded"),
    ]  # fmt: skip
    assert len([e for e in await store.events(db, payment_id)
                if e.kind == "invoice_payment_failed"]) == 1  # fmt: skip


async def test_each_months_charge_records_one_uisp_payment_and_the_subscription_none(
    db: Database, provider: StripeProvider, front: StripeFront, nursery: trio.Nursery
) -> None:
    fake = uisp_server.FakeUisp(app_key="app-key")
    client = fake.add_client("Ana", "García", "+34 600 111 222")
    url = await nursery.start(uisp_server.serve, fake)
    cfg = msgspec.structs.replace(stripe_config(front), uisp_record_payments=True)
    async with UispClient(url, "app-key") as uisp:
        core = ProcessorDeps(db, provider, cfg, EventBus(), uisp)
        deps = stripe_process.StripeEventDeps(db, provider, core)
        payment_id, session = await subscription(db, provider, front, uisp_client_id=client["id"])
        with trio.fail_after(10):
            await front.charge_invoice(session)
        for ev in front.sent_events:
            await stripe_events.store(db, ev)
        await process_queue(deps)
        parent = await store.get(db, payment_id)  # succeeded by checkout.session.completed
        assert parent is not None and parent.status == "succeeded"
        with trio.fail_after(20):
            while msgs := await queues.read(db, processor.QUEUE, 30, 10):
                for msg in msgs:
                    await processor.handle(core, msg)
    charges = await charges_of(db, payment_id)
    recorded = sorted(
        (p["providerPaymentId"], p["amount"]) for p in fake.payments.values()
        if p["clientId"] == client["id"]
    )  # fmt: skip
    assert recorded == sorted((c.id, 30.0) for c in charges) and len(recorded) == 2
    for charge in charges:
        again = await store.get(db, charge.id)
        assert again is not None and again.uisp_payment_id is not None
    parent = await store.get(db, payment_id)
    assert parent is not None and parent.uisp_payment_id is None


async def test_stripe_unreachable_retries_the_event_later(
    db: Database, provider: StripeProvider, front: StripeFront, handler_deps: Any
) -> None:
    with trio.fail_after(10):
        created = await provider.create(create_request("pay_u9"))
        await pay_intent(front, created.ref.id)
    payment_id = await insert_payment(db, "payment_intent", created.ref.id)
    await stripe_events.store(
        db, stripe_event("payment_intent.succeeded", {"id": created.ref.id}, "evt_retry")
    )
    front.fail_next(503, "api_error", "Stripe is down")
    [msg] = await queues.read(db, stripe_events.QUEUE, 30, 1)
    await stripe_process.handle(handler_deps, msg, cast(Lease, None))
    row = await stripe_events.get(db, "evt_retry")
    assert row is not None and (row.state, row.attempts) == ("queued", 1)
    # Its message comes back after the retry delay (1 s for a first delivery).
    with trio.fail_after(10):
        while not await queues.read(db, stripe_events.QUEUE, 30, 1):  # noqa: ASYNC110 - the db's clock
            await trio.sleep(0.2)
    await db.execute("SELECT pgmq.set_vt('stripe_events', msg_id, 0) FROM pgmq.q_stripe_events")
    await process_queue(handler_deps)
    payment = await store.get(db, payment_id)
    assert payment is not None and payment.status == "succeeded"


@pytest.fixture
async def ingress(db: Database, front: StripeFront) -> AsyncIterator[str]:
    """The HTTP ingress with Stripe's signing secret; the front and localstripe post to it."""
    deps = make_deps(db, payments=PaymentsConfig(stripe_webhook_secrets=(WHSEC,)))
    async with serving(deps) as client:
        url = f"{client.base_url}".rstrip("/") + "/webhooks/stripe"
        front.webhook_url, front.webhook_secret = url, WHSEC
        yield url


async def test_localstripes_own_signed_webhook_drives_the_payment(
    db: Database,
    provider: StripeProvider,
    front: StripeFront,
    localstripe: LocalStripe,
    ingress: str,
    handler_deps: Any,
) -> None:
    localstripe.register_webhook(f"paymentd-{secrets.token_hex(4)}", ingress, WHSEC)
    with trio.fail_after(10):
        created = await provider.create(create_request("pay_w1"))
    payment_id = await insert_payment(db, "payment_intent", created.ref.id)
    with trio.fail_after(10):
        await pay_intent(front, created.ref.id)
    # localstripe posts payment_intent.succeeded about a second later, signed with WHSEC.
    with trio.fail_after(15):
        while not await db.fetchval(  # noqa: ASYNC110 - another process posts it
            "SELECT count(*) FROM stripe_events WHERE object_id = $1", created.ref.id
        ):
            await trio.sleep(0.1)
    await process_queue(handler_deps)
    payment = await store.get(db, payment_id)
    assert payment is not None and payment.status == "succeeded"
    body = await db.fetchval("SELECT body FROM stripe_events WHERE object_id = $1", created.ref.id)
    assert json.loads(json.dumps(body))["type"] == "payment_intent.succeeded"


async def test_failed_canceled_and_requires_action_events_follow_stripes_copy(
    db: Database,
    provider: StripeProvider,
    front: StripeFront,
    localstripe: LocalStripe,
    handler_deps: Any,
) -> None:
    card = {"number": "4000002500003155", "exp_month": "12", "exp_year": "2030", "cvc": "123"}
    async with httpx.AsyncClient(base_url=localstripe.url, auth=(localstripe.api_key, "")) as c:
        three_ds = (
            await c.post(
                "/v1/payment_methods",
                data={"type": "card", **{f"card[{k}]": v for k, v in card.items()}},
            )
        ).json()["id"]
        with trio.fail_after(10):
            declined = await provider.create(create_request("pay_f1"))
            await pay_intent(front, declined.ref.id, card="pm_card_chargeCustomerFail")
            cancelled = await provider.create(create_request("pay_f2"))
            await c.post(f"/v1/payment_intents/{cancelled.ref.id}/cancel")  # at Stripe
            action = await provider.create(create_request("pay_f3"))
            await pay_intent(front, action.ref.id, card=three_ds)
    ids = {}
    for name, made, kind in (
        ("declined", declined, "payment_failed"),
        ("cancelled", cancelled, "canceled"),
        ("action", action, "requires_action"),
    ):
        ids[name] = await insert_payment(db, "payment_intent", made.ref.id)
        await stripe_events.store(db, stripe_event(f"payment_intent.{kind}", {"id": made.ref.id}))
    await process_queue(handler_deps)
    got = {name: await store.get(db, pid) for name, pid in ids.items()}
    assert {name: p.status for name, p in got.items() if p} == {
        # A declined attempt returns the intent to requires_payment_method: still payable.
        "declined": "pending",
        "cancelled": "canceled",
        "action": "requires_action",
    }
    assert got["declined"] is not None and got["declined"].failure_code == "card_declined"


async def test_charge_refunded_finishes_the_payments_pending_refunds(
    db: Database, provider: StripeProvider, front: StripeFront, handler_deps: Any
) -> None:
    with trio.fail_after(10):
        created = await provider.create(create_request("pay_cr", 1000))
        await pay_intent(front, created.ref.id)
    payment_id = await insert_payment(
        db, "payment_intent", created.ref.id, status="succeeded", amount=1000,
        amount_captured=1000, amount_refunded=400,
    )  # fmt: skip
    refund_id = "rf_" + secrets.token_hex(12)
    with trio.fail_after(10):
        made = await provider.refund(
            RefundRequest(refund_id, created.ref, 400, "EUR", refund_key(refund_id))
        )
    await db.execute(
        "INSERT INTO refunds (id, payment_id, amount, currency, created_by, provider_ref)"
        " VALUES ($1, $2, 400, 'EUR', 'test', $3)",
        refund_id,
        payment_id,
        made.id,
    )
    charge = {"id": "ch_x", "object": "charge", "payment_intent": created.ref.id}
    await stripe_events.store(db, stripe_event("charge.refunded", charge))
    await process_queue(handler_deps)
    refund = await store.get_refund(db, refund_id)
    assert refund is not None and refund.status == "succeeded"


async def test_a_checkout_session_that_expired_at_stripe_expires_the_payment(
    db: Database, provider: StripeProvider, front: StripeFront, handler_deps: Any
) -> None:
    with trio.fail_after(10):
        created = await provider.create(create_request("pay_ex", method="hosted_checkout"))
    payment_id = await insert_payment(
        db, "checkout_session", created.ref.id, method="hosted_checkout"
    )
    front.sessions[created.ref.id]["status"] = "expired"  # Stripe's own 24 h expiry
    session = {"id": created.ref.id, "object": "checkout.session", "status": "expired"}
    await stripe_events.store(db, stripe_event("checkout.session.expired", session))
    await process_queue(handler_deps)
    payment = await store.get(db, payment_id)
    assert payment is not None and payment.status == "expired"


async def test_an_event_about_someone_elses_object_is_recorded_as_ignored(
    db: Database, handler_deps: Any
) -> None:
    other = {"id": "pi_not_ours", "object": "payment_intent", "metadata": {}}
    await stripe_events.store(db, stripe_event("payment_intent.succeeded", other, "evt_x1"))
    await stripe_events.store(db, stripe_event("customer.created", {"id": "cus_1"}, "evt_x2"))
    await process_queue(handler_deps)
    rows = {
        r["event_id"]: (r["state"], r["outcome"])
        for r in await db.fetch("SELECT event_id, state, outcome FROM stripe_events")
    }
    assert rows == {
        "evt_x1": ("processed", "ignored: no payment for pi_not_ours"),
        "evt_x2": ("processed", "ignored: customer.created"),
    }


async def test_a_refund_stripe_answered_pending_is_reconciled_by_re_fetching_it(
    db: Database, provider: StripeProvider, front: StripeFront, handler_deps: Any
) -> None:
    # Stripe replays the first (pending) answer for a repeated key: only a re-fetch of
    # the refund sees it settle.
    with trio.fail_after(10):
        created = await provider.create(create_request("pay_rp", 1000))
        await pay_intent(front, created.ref.id)
    payment_id = await insert_payment(
        db, "payment_intent", created.ref.id, status="succeeded", amount=1000,
        amount_captured=1000, amount_refunded=300,
    )  # fmt: skip
    refund_id = "rf_" + secrets.token_hex(12)
    await db.execute(
        "INSERT INTO refunds (id, payment_id, amount, currency, created_by)"
        " VALUES ($1, $2, 300, 'EUR', 'test')",
        refund_id,
        payment_id,
    )
    front.refunds_start_pending = True
    deps = handler_deps.processor
    with trio.fail_after(20):
        first = await processor.run_refund(deps, refund_id, actor="processor")
        assert first is not None and first.status == "pending"
        kept = await store.get_refund(db, refund_id)
        assert kept is not None and kept.provider_ref is not None
        await db.execute(
            "UPDATE refunds SET updated_at = now() - interval '1 hour' WHERE id = $1", refund_id
        )
        later = msgspec.structs.replace(deps.cfg, reconcile_after_seconds=1.0)
        await jobs.reconcile(ProcessorDeps(db, provider, later, EventBus()))
    refund = await store.get_refund(db, refund_id)
    assert refund is not None and refund.status == "succeeded"
    assert [r.idempotency_key for r in front.created("/v1/refunds")] == [refund_key(refund_id)]
    fetched = [r for r in front.requests if r.method == "GET" and r.path.startswith("/v1/refunds/")]
    assert [r.path for r in fetched] == [f"/v1/refunds/{kept.provider_ref}"]
