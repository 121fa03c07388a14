"""The localstripe fixture: the session's fake Stripe answers stripe-python under trio."""

from __future__ import annotations

import trio

from daemon.payments.stripe_client import open_api
from tests.localstripe import LocalStripe


async def test_a_payment_intent_is_created_and_read_back(localstripe: LocalStripe) -> None:
    api = open_api(localstripe.api_key, localstripe.url, timeout_seconds=10)
    c = api.client
    with trio.fail_after(10):
        created = await c.v1.payment_intents.create_async(
            params={"amount": 1234, "currency": "eur", "metadata": {"payment_id": "7"}}
        )
        read = await c.v1.payment_intents.retrieve_async(created.id)
        await api.aclose()
    assert created.id.startswith("pi_")
    assert created.client_secret and created.client_secret.startswith(created.id)
    assert (read.id, read.amount, read.currency, read.status) == (
        created.id,
        1234,
        "eur",
        "requires_payment_method",
    )
    assert read.metadata.to_dict() == {"payment_id": "7"}
