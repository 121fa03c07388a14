"""The hosted checkout on the Stripe provider: a hand-off to the Checkout Session's page
(which refuses to be framed), and the outcome from Stripe's webhook on the page's stream.
localstripe behind the Stripe front (``daemon/fakes/stripe_front.py``), real HTTP."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio

from daemon.checkout import keys
from daemon.fakes.stripe_front import StripeFront
from tests.localstripe import LocalStripe
from tests.payments_harness import Pay, paymentd
from tests.stripe_fixtures import stripe_front_fixture

__all__ = ["stripe_front_fixture"]

WHSEC = "whsec_checkout_test_5d1e"
SHOP = "http://127.0.0.1:9"


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
        localstripe.register_webhook(f"checkout-{secrets.token_hex(4)}", hook, WHSEC)
        yield running


async def test_the_page_hands_off_to_stripe_checkout_and_streams_the_outcome(
    pay: Pay, front: StripeFront
) -> None:
    with trio.fail_after(40):
        r = await pay.create(method="hosted_checkout", amount=5000, headers={"Prefer": "wait=10"})
        created = r.json()
        assert created["status"] == "pending" and created["hosted_url"], created
        path = urlsplit(created["checkout_url"]).path
        page = await pay.http.get(path)
        assert page.status_code == 200
        assert "50.00 EUR" in page.text
        # Stripe's page cannot be framed: a link to it, in the same (top) window here.
        assert f'href="{created["hosted_url"]}"' in page.text
        assert 'target="_top"' in page.text and 'name="csrf"' not in page.text
        # The mock's form is not for Stripe payments.
        refused = await pay.http.post(path + "/pay", data={"csrf": "x"})
        assert refused.status_code == 403  # no CSRF token is ever issued for it

        # Embedded by the SDK, the hand-off opens a new tab and the modal keeps waiting.
        pk = await keys.create(pay.db, "shop", [SHOP])
        link = await pay.http.post(
            "/checkout-links",
            json={"publishable_key": pk.id, "payment_id": created["id"]},
            headers={"Origin": SHOP},
        )
        embedded = await pay.http.get(link.json()["path"])
        assert 'target="_blank"' in embedded.text

        seen: list[dict[str, Any]] = []
        async with pay.http.stream("GET", path + "/events") as stream:
            lines = stream.aiter_lines()
            async for line in lines:
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:]))
                    break
            assert seen[0]["hosted_url"] == created["hosted_url"]
            await front.complete_session(created["provider_ref"])  # the customer pays
            async for line in lines:
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:]))
        assert seen[-1]["status"] == "succeeded" and seen[-1]["outcome"] == "success"
