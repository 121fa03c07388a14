"""Fixtures for the Stripe tests: the front (daemon/fakes/stripe_front.py) before the
session's localstripe, and a ``StripeProvider`` pointed at it.

Import ``stripe_front_fixture`` and ``stripe_provider_fixture`` into a test module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import httpx
import pytest
import trio

from daemon.fakes import stripe_front
from daemon.fakes.stripe_front import StripeFront
from daemon.payments.provider import CreateRequest, create_key
from daemon.payments.stripe_provider import StripeProvider
from daemon.platform.config import PaymentsConfig
from tests.localstripe import LocalStripe


@pytest.fixture(name="front")
async def stripe_front_fixture(localstripe: LocalStripe) -> AsyncIterator[StripeFront]:
    front = StripeFront(localstripe.url, api_key=localstripe.api_key)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(stripe_front.serve, front))
        yield front
        nursery.cancel_scope.cancel()


def stripe_config(front: StripeFront, **overrides: Any) -> PaymentsConfig:
    settings: dict[str, Any] = {
        "provider": "stripe",
        "stripe_api_key": front.api_key,
        "stripe_base_url": front.base_url,
        "provider_timeout_seconds": 10.0,
    }
    return PaymentsConfig(**(settings | overrides))


@pytest.fixture(name="provider")
async def stripe_provider_fixture(front: StripeFront) -> AsyncIterator[StripeProvider]:
    provider = StripeProvider.from_config(stripe_config(front))
    try:
        yield provider
    finally:
        with trio.move_on_after(5, shield=True):
            await provider.aclose()


def create_request(payment_id: str, amount: int = 2500, **fields: Any) -> CreateRequest:
    values: dict[str, Any] = {
        "payment_id": payment_id,
        "amount": amount,
        "currency": "EUR",
        "method": "intent",
        "kind": "one_time",
        "capture_method": "automatic",
        "idempotency_key": create_key(payment_id),
    }
    return CreateRequest(**(values | fields))


async def pay_intent(front: StripeFront, intent_id: str, card: str = "pm_card_visa") -> Any:
    """The customer's browser pays the intent (Stripe.js would: attach a card, confirm)."""
    async with httpx.AsyncClient(base_url=front.upstream, auth=(front.api_key, "")) as c:
        r = await c.post(f"/v1/payment_intents/{intent_id}", data={"payment_method": card})
        r.raise_for_status()
        r = await c.post(f"/v1/payment_intents/{intent_id}/confirm")
        return r
