"""The console's money pages in a real Chromium against a whole paymentd (mock provider).

Scenarios: a succeeded payment refunded in part from its page shows the refund and the
new refundable amount; a webhook endpoint's secret rotated from its page is shown once
and is not on the page after; an API key created on its page works against the API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from daemon.platform.secrets import load_keyring
from daemon.webhooks import manage
from tests.browser import Browser
from tests.console_fixtures import add_operator, browser_sign_in
from tests.payments_harness import Pay, paymentd


@pytest.fixture
async def pay(db_url: str, tmp_path: Path, aio_loop: None) -> AsyncIterator[Pay]:
    async with paymentd(db_url, tmp_path) as running:
        await add_operator(running.db)
        yield running


async def test_a_payment_is_refunded_in_part_from_its_page(pay: Pay, browser: Browser) -> None:
    r = await pay.create(amount=1250, metadata={"mock": "succeed"}, headers={"Prefer": "wait=10"})
    payment = await pay.wait_status(r.json()["id"], "succeeded")
    base = pay.running.base_url
    with trio.fail_after(30):
        await browser_sign_in(browser, base)
        await browser.get(f"{base}/console/payments")
        await browser.click(f"[data-payment='{payment['id']}'] a")
        await browser.wait_text("[data-test-id=refundable]", r"^12\.50 EUR$")
        await browser.fill("[data-test-id=refund-form] input[name=amount]", "4.25")
        await browser.fill("[data-test-id=refund-form] input[name=reason]", "outage")
        await browser.click("[data-test-id=refund]")
        await browser.wait_text("[data-test-id=notice]", "Refund requested")
        # wait_text, not text: the live page may re-render these parts under a read.
        await browser.wait_text("[data-test-id=refundable]", r"^8\.25 EUR$")
        await browser.wait_text("[data-test-id=refunded]", r"^4\.25 EUR$")
        refunds = await browser.wait_text("[data-test-id=refunds]", r"4\.25 EUR")
        assert "4.25 EUR" in refunds and "outage" in refunds and "console:alice" in refunds
        # The open page follows the payment over the live feed (static/payment.js): a
        # refund made through the API shows up without a reload.
        await browser.script("window.stillThisPage = true")
        api = await pay.post(f"/payments/{payment['id']}/refunds", {"amount": 100}, key="api-1")
        assert api.status_code == 201, api.text
        await browser.wait_text("[data-test-id=refundable]", r"^7\.25 EUR$")
        await browser.wait_text("[data-test-id=refunds] tbody", api.json()["id"])
        assert await browser.script("return window.stillThisPage === true")
        assert await browser.console_errors() == []


async def test_a_rotated_webhook_secret_is_shown_once(pay: Pay, browser: Browser) -> None:
    box = load_keyring(pay.cfg.secrets)
    endpoint, old = await manage.create(pay.db, box, by="test", url="https://hooks.example/h")
    base = pay.running.base_url
    with trio.fail_after(30):
        await browser_sign_in(browser, base)
        await browser.get(f"{base}/console/webhooks/{endpoint.id}")
        await browser.click("[data-test-id=rotate]")
        secret = await browser.wait_text("[data-test-id=secret]", "^whsec_")
        assert secret != old and secret not in browser.url
        await browser.click(f"a[href$='/console/webhooks/{endpoint.id}']")
        await browser.find("[data-test-id=secrets]")
        assert secret not in await browser.source()
        assert len((await browser.text("[data-test-id=secrets]")).splitlines()) == 2
        assert await browser.console_errors() == []


async def test_an_api_key_made_on_its_page_works_against_the_api(
    pay: Pay, browser: Browser
) -> None:
    base = pay.running.base_url
    with trio.fail_after(30):
        await browser_sign_in(browser, base)
        await browser.get(f"{base}/console/apikeys")
        await browser.fill("[data-test-id=create-apikey] input[name=name]", "billing")
        await browser.click("[data-test-id='scope-payments:write']")
        await browser.click("[data-test-id=create]")
        key = await browser.wait_text("[data-test-id=apikey]", "^pd_")
        assert key not in browser.url
        r = await pay.http.post(
            "/api/v1/payments",
            json={"amount": 500, "currency": "JPY"},
            headers={"Authorization": f"Bearer {key}", "Idempotency-Key": "from-the-console"},
        )
        assert r.status_code == 201, r.text
        read = await pay.http.get("/api/v1/payments", headers={"Authorization": f"Bearer {key}"})
        assert read.status_code == 403  # only the scope chosen on the page
        await browser.get(f"{base}/console/apikeys")
        row = await browser.text(f"[data-key='{key.split('_')[1]}']")
        assert "billing" in row and "payments:write" in row
        assert key not in await browser.source()
        assert await browser.console_errors() == []


async def test_every_money_page_fits_a_phone_screen(pay: Pay, browser: Browser) -> None:
    r = await pay.create(
        amount=1250,
        description="Fibra 300, December",
        customer="client-42",
        metadata={"mock": "succeed"},
        headers={"Prefer": "wait=10"},
    )
    payment = await pay.wait_status(r.json()["id"], "succeeded")
    refund = await pay.post(f"/payments/{payment['id']}/refunds", {"amount": 250}, key="phone")
    assert refund.status_code == 201, refund.text
    box = load_keyring(pay.cfg.secrets)
    endpoint, _ = await manage.create(
        pay.db, box, by="test", url="https://hooks.example/a/rather/long/path/for/a/phone?x=1"
    )
    sent = await manage.send_test(pay.db, endpoint.id, by="test")
    base = pay.running.base_url
    with trio.fail_after(30):
        await browser.call(browser.driver.set_window_size, 390, 844)
        await browser_sign_in(browser, base)
        for path in (
            "/console/payments",
            f"/console/payments/{payment['id']}",
            "/console/webhooks",
            f"/console/webhooks/{endpoint.id}",
            f"/console/webhook-deliveries/{sent.delivery.id}",
            "/console/apikeys",
            "/console/docs",
        ):
            await browser.get(f"{base}{path}")
            await browser.find("main h1")
            overflow = await browser.script(
                "return document.documentElement.scrollWidth - window.innerWidth"
            )
            assert overflow <= 0, f"{path} is {overflow} px wider than the screen"
        assert await browser.console_errors() == []
