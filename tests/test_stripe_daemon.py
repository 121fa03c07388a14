"""The whole daemon on the Stripe provider: the payments API → the processor → Stripe
(localstripe behind the front) → Stripe's signed webhooks → our payment's final state.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio

from daemon.fakes.stripe_front import StripeFront
from daemon.payments import jobs
from daemon.payments.processor import ProcessorDeps
from daemon.payments.stripe_provider import StripeProvider
from daemon.platform.events import EventBus
from tests.localstripe import LocalStripe
from tests.payments_harness import ADMIN, Pay, paymentd, wait_for
from tests.stripe_fixtures import pay_intent, stripe_front_fixture

__all__ = ["stripe_front_fixture"]

WHSEC = "whsec_daemon_test_0f3b"


@pytest.fixture
async def pay(
    db_url: str, tmp_path: Path, aio_loop: None, front: StripeFront, localstripe: LocalStripe
) -> AsyncIterator[Pay]:
    async with paymentd(
        db_url,
        tmp_path,
        provider="stripe",
        stripe_api_key=front.api_key,
        stripe_base_url=front.base_url,
        stripe_webhook_secrets=(WHSEC,),
        provider_timeout_seconds=2.0,
    ) as running:
        hook = f"{running.running.base_url}/webhooks/stripe"
        front.webhook_url, front.webhook_secret = hook, WHSEC
        localstripe.register_webhook(f"daemon-{secrets.token_hex(4)}", hook, WHSEC)
        yield running


async def intents_for(localstripe: LocalStripe, payment_id: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=localstripe.url, auth=(localstripe.api_key, "")) as c:
        listed = (await c.get("/v1/payment_intents", params={"limit": 1000})).json()["data"]
    return [pi for pi in listed if pi["metadata"].get("paymentd_payment_id") == payment_id]


async def test_a_card_payment_is_created_at_stripe_and_paid_through_its_webhook(
    pay: Pay, front: StripeFront, localstripe: LocalStripe
) -> None:
    r = await pay.create(
        key="k-1", headers={"Prefer": "wait=10"}, amount=1999, description="Fibra 300"
    )
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["status"] == "pending", created  # Prefer: wait got the client secret
    assert created["client_secret"].startswith(created["provider_ref"])
    [sent] = front.created("/v1/payment_intents")
    assert sent.idempotency_key == f"paymentd:{created['id']}:create"
    assert sent.form["description"] == "Fibra 300"
    # The customer pays in the browser; localstripe posts payment_intent.succeeded.
    with trio.fail_after(10):
        await pay_intent(front, created["provider_ref"])
    paid = await pay.wait_status(created["id"], "succeeded")
    assert paid["amount_captured"] == 1999

    # The event's row is marked processed just after the payment's change commits.
    async def processed() -> Any:
        return await pay.db.fetchrow(
            "SELECT type, state FROM stripe_events WHERE object_id = $1 AND state <> 'queued'",
            created["provider_ref"],
        )

    stored = await wait_for(processed)
    assert dict(stored) == {"type": "payment_intent.succeeded", "state": "processed"}
    assert [pi["id"] for pi in await intents_for(localstripe, created["id"])] == [
        created["provider_ref"]
    ]


async def test_the_same_create_twice_at_once_makes_one_payment_and_one_intent(
    pay: Pay, front: StripeFront, localstripe: LocalStripe
) -> None:
    answers: list[httpx.Response] = []

    async def create() -> None:
        answers.append(await pay.create(key="same-key", amount=700))

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(create)
            nursery.start_soon(create)
        # One of them may be told the first is still running (409); ask again.
        if any(a.status_code == 409 for a in answers):
            answers.append(await pay.create(key="same-key", amount=700))
    ok = [a.json()["id"] for a in answers if a.status_code == 201]
    assert ok and len(set(ok)) == 1
    payment_id = ok[0]
    await pay.wait_status(payment_id, "pending")
    assert await pay.db.fetchval("SELECT count(*) FROM payments") == 1
    assert len(await intents_for(localstripe, payment_id)) == 1


async def test_a_lost_create_answer_is_retried_with_the_same_key_one_intent(
    pay: Pay, front: StripeFront, localstripe: LocalStripe
) -> None:
    """Stripe made the intent but we never heard (a crash, a cut connection): the payment
    is unknown; reconciliation creates again with the same key and gets that intent."""
    front.lose_next_answer()
    r = await pay.create(amount=1234)
    payment_id = r.json()["id"]
    await pay.wait_status(payment_id, "unknown")
    assert len(await intents_for(localstripe, payment_id)) == 1  # made, answer lost
    # The reconcile job, once, on the test's connections (the daemon's pool lives in its
    # own asyncio loop) and its own Stripe client: Stripe's state is Stripe's.
    cfg = msgspec.structs.replace(pay.cfg.payments, reconcile_after_seconds=0.001)
    provider = StripeProvider.from_config(cfg)
    try:
        with trio.fail_after(20):
            await jobs.reconcile(ProcessorDeps(pay.db, provider, cfg, EventBus()))
    finally:
        await provider.aclose()
    settled = await pay.wait_status(payment_id, "pending")
    keys = [s.idempotency_key for s in front.created("/v1/payment_intents")]
    assert keys == [f"paymentd:{payment_id}:create"] * 2
    [intent] = await intents_for(localstripe, payment_id)
    assert settled["provider_ref"] == intent["id"]


async def test_a_hosted_checkout_payment_and_its_refund(pay: Pay, front: StripeFront) -> None:
    r = await pay.create(method="hosted_checkout", amount=5000, headers={"Prefer": "wait=10"})
    created = r.json()
    assert created["status"] == "pending" and created["hosted_url"], created
    with trio.fail_after(10):
        await front.complete_session(created["provider_ref"])  # → checkout.session.completed
    await pay.wait_status(created["id"], "succeeded")
    r = await pay.post(f"/payments/{created['id']}/refunds", {"amount": 1500}, key="rf-1")
    assert r.status_code in (200, 201, 202), r.text
    refund_id = r.json()["id"]

    async def refunded() -> dict[str, Any] | None:
        got = await pay.http.get(f"/api/v1/refunds/{refund_id}", headers=ADMIN)
        body: dict[str, Any] = got.json()
        return body if body["status"] == "succeeded" else None

    await wait_for(refunded)
    [sent] = front.created("/v1/refunds")
    assert sent.form["payment_intent"] == front.sessions[created["provider_ref"]]["payment_intent"]


async def test_a_recurring_payment_makes_each_paid_invoice_a_payment(
    pay: Pay, front: StripeFront
) -> None:
    r = await pay.create(
        method="hosted_checkout", kind="recurring", interval="month", amount=2900,
        headers={"Prefer": "wait=10"},
    )  # fmt: skip
    created = r.json()
    assert created["status"] == "pending", created
    with trio.fail_after(10):
        await front.complete_session(created["provider_ref"])  # completed + invoice.paid
        session = front.sessions[created["provider_ref"]]
        await front.charge_invoice(session)  # next month
    await pay.wait_status(created["id"], "succeeded")

    async def two_charges() -> list[Any] | None:
        r = await pay.http.get("/api/v1/payments", params={"parent": created["id"]},
                               headers=ADMIN)  # fmt: skip
        assert r.status_code == 200, r.text
        found = r.json()["payments"]
        return found if len(found) == 2 else None

    charges = await wait_for(two_charges)
    assert [(c["kind"], c["status"], c["amount"], c["currency"]) for c in charges] == [
        ("recurring_charge", "succeeded", 2900, "EUR")
    ] * 2
    assert {c["parent_payment_id"] for c in charges} == {created["id"]}
    assert {c["provider_ref"] for c in charges} == set(front.invoices)
    r = await pay.http.get(f"/api/v1/payments/{created['id']}/events", headers=ADMIN)
    paid = [e["detail"] for e in r.json()["events"] if e["kind"] == "invoice_paid"]
    assert sorted(d["payment_id"] for d in paid) == sorted(c["id"] for c in charges)
