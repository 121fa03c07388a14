"""The Stripe provider against localstripe (behind the front that adds what it lacks).

Every test talks real HTTP: stripe-python → the front → localstripe.
"""

from __future__ import annotations

import logging
import socket

import httpx
import pytest
import trio

from daemon.fakes.stripe_front import StripeFront
from daemon.payments.provider import (
    ProviderDeclined,
    ProviderRef,
    ProviderRejected,
    ProviderUnavailable,
    RefundRequest,
    cancel_key,
    capture_key,
    refund_key,
)
from daemon.payments.stripe_provider import StripeProvider
from tests.localstripe import LocalStripe
from tests.stripe_fixtures import (
    create_request,
    pay_intent,
    stripe_config,
    stripe_front_fixture,
    stripe_provider_fixture,
)

__all__ = ["stripe_front_fixture", "stripe_provider_fixture"]


async def test_an_intent_is_created_with_our_key_metadata_and_a_client_secret(
    provider: StripeProvider, front: StripeFront
) -> None:
    with trio.fail_after(10):
        created = await provider.create(
            create_request("pay_a1", 2500, description="Fibra 300, March", customer="cus-77")
        )
    assert created.ref == ProviderRef("payment_intent", created.ref.id)
    assert created.ref.id.startswith("pi_")
    assert created.status == "requires_payment_method"
    assert (created.amount, created.currency) == (2500, "EUR")
    assert created.client_secret and created.client_secret.startswith(created.ref.id)
    [sent] = front.created("/v1/payment_intents")
    assert sent.idempotency_key == "paymentd:pay_a1:create"
    assert sent.form["amount"] == "2500" and sent.form["currency"] == "eur"
    assert sent.form["metadata"] == {"paymentd_payment_id": "pay_a1", "paymentd_customer": "cus-77"}
    assert sent.form["description"] == "Fibra 300, March"
    assert "capture_method" not in sent.form  # Stripe's automatic default


async def test_the_same_idempotency_key_twice_makes_one_payment_intent(
    provider: StripeProvider, front: StripeFront, localstripe: LocalStripe
) -> None:
    req = create_request("pay_twice")
    with trio.fail_after(10):
        first = await provider.create(req)
        again = await provider.create(req)  # a retry after a crash: same row, same key
    assert again.ref == first.ref
    sent = front.created("/v1/payment_intents")
    assert [s.idempotency_key for s in sent] == [req.idempotency_key] * 2
    # localstripe itself holds exactly one intent for this payment.
    async with httpx.AsyncClient(base_url=localstripe.url, auth=(localstripe.api_key, "")) as c:
        listed = (await c.get("/v1/payment_intents", params={"limit": 100})).json()["data"]
    ours = [pi for pi in listed if pi["metadata"].get("paymentd_payment_id") == "pay_twice"]
    assert [pi["id"] for pi in ours] == [first.ref.id]


async def test_localstripe_alone_ignores_idempotency_keys(localstripe: LocalStripe) -> None:
    """Why the front exists: two creates with one key make two intents on localstripe."""
    headers = {"Idempotency-Key": "same-key"}
    async with httpx.AsyncClient(base_url=localstripe.url, auth=(localstripe.api_key, "")) as c:
        ids = [
            (await c.post("/v1/payment_intents", data={"amount": 100, "currency": "eur"},
                          headers=headers)).json()["id"]
            for _ in range(2)
        ]  # fmt: skip
    assert ids[0] != ids[1]


async def test_the_same_key_with_other_parameters_is_rejected(
    provider: StripeProvider,
) -> None:
    with trio.fail_after(10):
        await provider.create(create_request("pay_b1", 1000))
        with pytest.raises(ProviderRejected) as info:
            await provider.create(create_request("pay_b1", 1500))
    assert "same parameters" in info.value.message


async def test_a_manual_intent_is_captured_in_part(
    provider: StripeProvider, front: StripeFront
) -> None:
    with trio.fail_after(10):
        created = await provider.create(create_request("pay_m1", 1000, capture_method="manual"))
        assert front.created("/v1/payment_intents")[0].form["capture_method"] == "manual"
        assert (await pay_intent(front, created.ref.id)).status_code == 200
        authorized = await provider.retrieve(created.ref)
        assert authorized.status == "requires_capture"
        assert authorized.amount_capturable == 1000
        captured = await provider.capture(
            created.ref, amount=600, idempotency_key=capture_key("pay_m1")
        )
        # A retry of the same capture (lost answer) is answered from Stripe's key store.
        again = await provider.capture(
            created.ref, amount=600, idempotency_key=capture_key("pay_m1")
        )
    assert (captured.status, captured.amount_captured) == ("succeeded", 600)
    assert again == captured
    [sent] = front.created(f"/v1/payment_intents/{created.ref.id}/capture")[:1]
    assert sent.form == {"amount_to_capture": "600"}
    assert sent.idempotency_key == "paymentd:pay_m1:capture:1"


async def test_an_unpaid_intent_is_cancelled_and_cancelling_again_answers_it(
    provider: StripeProvider,
) -> None:
    with trio.fail_after(10):
        created = await provider.create(create_request("pay_c1"))
        cancelled = await provider.cancel(created.ref, idempotency_key=cancel_key("pay_c1"))
        # Another key (an operator retry): Stripe refuses a second cancel, we answer as is.
        again = await provider.cancel(created.ref, idempotency_key="paymentd:pay_c1:cancel:2")
    assert cancelled.status == "canceled"
    assert again.status == "canceled" and again.ref == created.ref


async def test_a_paid_intent_is_refunded_in_part(
    provider: StripeProvider, front: StripeFront
) -> None:
    with trio.fail_after(10):
        created = await provider.create(create_request("pay_r1", 2000))
        await pay_intent(front, created.ref.id)
        paid = await provider.retrieve(created.ref)
        refund = await provider.refund(
            RefundRequest("ref_1", created.ref, 500, "EUR", refund_key("ref_1"), "customer left")
        )
        read = await provider.retrieve_refund(refund.id)
    assert (paid.status, paid.amount_captured) == ("succeeded", 2000)
    assert (refund.status, refund.amount) == ("succeeded", 500)
    assert read == refund
    [sent] = front.created("/v1/refunds")
    assert sent.idempotency_key == "paymentd:ref_1:refund"
    assert sent.form["payment_intent"] == created.ref.id
    assert sent.form["metadata"] == {
        "paymentd_refund_id": "ref_1",
        "paymentd_reason": "customer left",
    }


async def test_a_declined_card_leaves_the_intent_waiting_with_the_decline_code(
    provider: StripeProvider, front: StripeFront
) -> None:
    with trio.fail_after(10):
        created = await provider.create(create_request("pay_d1"))
        answer = await pay_intent(front, created.ref.id, card="pm_card_chargeCustomerFail")
        now = await provider.retrieve(created.ref)
    assert answer.status_code == 402
    # Stripe: a failed attempt returns the intent to requires_payment_method.
    assert now.status == "requires_payment_method"
    assert now.failure_code == "card_declined"


async def test_a_one_time_checkout_session_is_created_and_paid(
    provider: StripeProvider, front: StripeFront
) -> None:
    req = create_request(
        "pay_h1",
        4200,
        method="hosted_checkout",
        capture_method="manual",
        success_url="https://isp.example/paid",
        cancel_url="https://isp.example/cancel",
    )
    with trio.fail_after(10):
        created = await provider.create(req)
        assert created.ref.kind == "checkout_session"
        assert created.status == "requires_payment_method"
        assert created.hosted_url and created.hosted_url.endswith(created.ref.id)
        await front.complete_session(created.ref.id)
        paid = await provider.retrieve(created.ref)
    [sent] = front.created("/v1/checkout/sessions")
    assert sent.idempotency_key == "paymentd:pay_h1:create"
    assert sent.form["mode"] == "payment"
    assert sent.form["client_reference_id"] == "pay_h1"
    assert sent.form["line_items"] == [
        {
            "price_data": {
                "currency": "eur",
                "unit_amount": "4200",
                "product_data": {"name": "Payment pay_h1"},
            },
            "quantity": "1",
        }
    ]
    assert sent.form["payment_intent_data"] == {
        "metadata": {"paymentd_payment_id": "pay_h1"},
        "capture_method": "manual",
    }
    assert sent.form["success_url"] == "https://isp.example/paid"
    # Paid: reported through its PaymentIntent (manual capture: authorized), same ref.
    assert paid.ref == created.ref
    assert paid.status == "requires_capture"
    assert paid.intent_id and paid.intent_id.startswith("pi_")


async def test_a_recurring_checkout_session_is_a_subscription(
    provider: StripeProvider, front: StripeFront
) -> None:
    req = create_request(
        "pay_s1", 3000, method="hosted_checkout", kind="recurring", interval="month"
    )
    with trio.fail_after(10):
        created = await provider.create(req)
        await front.complete_session(created.ref.id)
        paid = await provider.retrieve(created.ref)
    [sent] = front.created("/v1/checkout/sessions")
    assert sent.form["mode"] == "subscription"
    assert sent.form["line_items"][0]["price_data"]["recurring"] == {"interval": "month"}
    assert sent.form["subscription_data"] == {"metadata": {"paymentd_payment_id": "pay_s1"}}
    assert "payment_intent_data" not in sent.form
    assert paid.status == "succeeded"
    assert paid.subscription_id and paid.subscription_id.startswith("sub_")


async def test_a_recurring_intent_is_refused_before_calling_stripe(
    provider: StripeProvider, front: StripeFront
) -> None:
    with pytest.raises(ProviderRejected):
        await provider.create(create_request("pay_x", kind="recurring", interval="month"))
    assert front.requests == []


async def test_a_payment_link_is_a_price_and_a_one_use_link(
    provider: StripeProvider, front: StripeFront
) -> None:
    with trio.fail_after(10):
        created = await provider.create(create_request("pay_l1", 990, method="payment_link"))
        again = await provider.retrieve(created.ref)
        cancelled = await provider.cancel(created.ref, idempotency_key=cancel_key("pay_l1"))
    assert created.ref.kind == "payment_link" and created.hosted_url
    assert (again.status, again.amount, again.currency) == ("requires_payment_method", 990, "EUR")
    assert cancelled.status == "canceled"
    [price] = front.created("/v1/prices")
    assert price.idempotency_key == "paymentd:pay_l1:create:price"
    [link] = front.created("/v1/payment_links")
    assert link.idempotency_key == "paymentd:pay_l1:create"
    assert link.form["restrictions"] == {"completed_sessions": {"limit": "1"}}


async def test_stripe_errors_become_the_providers_three_outcomes(
    provider: StripeProvider, front: StripeFront
) -> None:
    with trio.fail_after(10):
        front.fail_next(402, "card_error", "Your card was declined.", code="card_declined")
        with pytest.raises(ProviderDeclined) as declined:
            await provider.create(create_request("pay_e1"))
        front.fail_next(500, "api_error", "Something went wrong on Stripe's end.")
        with pytest.raises(ProviderUnavailable):
            await provider.create(create_request("pay_e2"))
        front.fail_next(429, "invalid_request_error", "Too many requests", code="rate_limit")
        with pytest.raises(ProviderUnavailable):
            await provider.create(create_request("pay_e3"))
        with pytest.raises(ProviderRejected):  # localstripe itself: amount must be > 0
            await provider.create(create_request("pay_e4", 0))
        with pytest.raises(ProviderRejected):
            await provider.retrieve(ProviderRef("payment_intent", "pi_missing"))
    assert declined.value.code == "card_declined"


async def test_no_answer_in_time_is_unavailable(front: StripeFront) -> None:
    provider = StripeProvider.from_config(stripe_config(front, provider_timeout_seconds=0.5))
    front.stall()
    try:
        with trio.fail_after(10), pytest.raises(ProviderUnavailable):
            await provider.create(create_request("pay_t1"))
    finally:
        front.unstall()
        await provider.aclose()


async def test_an_unreachable_stripe_is_unavailable(front: StripeFront) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    provider = StripeProvider.from_config(stripe_config(front, stripe_base_url=url))
    try:
        with trio.fail_after(10), pytest.raises(ProviderUnavailable) as info:
            await provider.create(create_request("pay_u1"))
    finally:
        await provider.aclose()
    assert info.value.code == "unavailable"


async def test_the_api_key_and_client_secrets_stay_out_of_logs_and_errors(
    front: StripeFront, caplog: pytest.LogCaptureFixture
) -> None:
    key = "sk_test_do_not_log_me_4f1c"
    provider = StripeProvider.from_config(stripe_config(front, stripe_api_key=key))
    caplog.set_level(logging.DEBUG)  # everything, stripe's and httpx's loggers included
    try:
        with trio.fail_after(10):
            created = await provider.create(create_request("pay_k1"))
        bad = StripeProvider.from_config(stripe_config(front, stripe_api_key="rk_wrong_key_9a8b7c"))
        with trio.fail_after(10), pytest.raises(ProviderUnavailable) as info:
            await bad.create(create_request("pay_k2"))  # localstripe: 401
        await bad.aclose()
    finally:
        await provider.aclose()
    assert created.client_secret
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert key not in text and created.client_secret not in text
    assert "rk_wrong_key_9a8b7c" not in str(info.value) and info.value.code == "authentication"
    assert key not in repr(provider) and key not in repr(stripe_config(front, stripe_api_key=key))


async def test_a_3d_secure_card_leaves_the_intent_requiring_action(
    provider: StripeProvider, front: StripeFront, localstripe: LocalStripe
) -> None:
    card = {"number": "4000002500003155", "exp_month": "12", "exp_year": "2030", "cvc": "123"}
    async with httpx.AsyncClient(base_url=localstripe.url, auth=(localstripe.api_key, "")) as c:
        pm = (
            await c.post(
                "/v1/payment_methods",
                data={"type": "card", **{f"card[{k}]": v for k, v in card.items()}},
            )
        ).json()["id"]
    with trio.fail_after(10):
        created = await provider.create(create_request("pay_3ds"))
        await pay_intent(front, created.ref.id, card=pm)
        now = await provider.retrieve(created.ref)
    assert now.status == "requires_action"


async def test_a_paid_checkout_session_is_refunded_through_its_payment_intent(
    provider: StripeProvider, front: StripeFront
) -> None:
    with trio.fail_after(10):
        created = await provider.create(create_request("pay_hr", 1800, method="hosted_checkout"))
        await front.complete_session(created.ref.id)
        refund = await provider.refund(
            RefundRequest("ref_h", created.ref, 800, "EUR", refund_key("ref_h"), "duplicate")
        )
    intent = front.sessions[created.ref.id]["payment_intent"]
    [sent] = front.created("/v1/refunds")
    assert sent.form["payment_intent"] == intent
    assert sent.form["reason"] == "duplicate"  # one of Stripe's own reasons: passed as such
    assert (refund.status, refund.amount) == ("succeeded", 800)


async def test_isk_and_mga_are_converted_to_the_unit_stripe_counts_in(
    provider: StripeProvider, front: StripeFront
) -> None:
    # Our amounts are ISO 4217 minor units. Stripe's API counts ISK in hundredths (ISO:
    # exponent 0) and MGA in whole ariary (ISO: 2): passed through, 500 ISK was charged
    # as 5 kr and 1000 MGA (10.00) as 1000 ariary.
    with trio.fail_after(10):
        isk = await provider.create(create_request("pay_isk", 500, currency="ISK"))
        await pay_intent(front, isk.ref.id)
        paid = await provider.retrieve(isk.ref)
        refund = await provider.refund(
            RefundRequest("ref_isk", isk.ref, 200, "ISK", refund_key("ref_isk"))
        )
        mga = await provider.create(create_request("pay_mga", 1000, currency="MGA"))
        with pytest.raises(ProviderRejected, match="MGA"):  # 10.50 MGA: no such Stripe amount
            await provider.create(create_request("pay_mga_frac", 1050, currency="MGA"))
    sent_isk, sent_mga = front.created("/v1/payment_intents")
    assert (sent_isk.form["amount"], sent_isk.form["currency"]) == ("50000", "isk")
    assert (sent_mga.form["amount"], sent_mga.form["currency"]) == ("10", "mga")
    assert front.created("/v1/refunds")[0].form["amount"] == "20000"
    # What comes back is in our units again.
    assert (isk.amount, paid.amount, paid.amount_captured, refund.amount) == (500, 500, 500, 200)
    assert mga.amount == 1000
