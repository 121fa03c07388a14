"""The checkout and paymentd.js in a real Chromium, across three real origins.

The daemon (mock provider) on one port, the example merchant shop
(``daemon/checkout/example_merchant.py``, the demo's) on a second, and a hostile page on a
third: 127.0.0.1 with three ports is three origins to the browser, so the SDK's and the
page's origin checks run as they would on the web.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from quart import Response
from quart_trio import QuartTrio

from daemon.checkout import example_merchant, keys, links
from daemon.fakes.serving import serve_app
from daemon.platform.secrets import load_keyring
from tests.browser import Browser
from tests.payments_harness import ADMIN_TOKEN, Pay, paymentd

pytestmark = pytest.mark.slow

# A page on another origin that tries to pass for the checkout: it posts a fake success
# (and then a marker, so the test knows the fake was delivered first) to its parent.
_EVIL = """<!doctype html><html><body><p>not the checkout</p><script>
var id = new URLSearchParams(location.search).get("payment");
parent.postMessage({source: "paymentd", type: "result", outcome: "success",
                    payment: {id: id, status: "succeeded"}}, "*");
parent.postMessage({evil: "sent"}, "*");
</script></body></html>"""


def evil_app() -> QuartTrio:
    app = QuartTrio("evil", static_folder=None)

    @app.get("/")
    async def page() -> Response:
        return Response(_EVIL, mimetype="text/html")

    return app


def pay_enabled(b: Browser) -> bool:
    from selenium.webdriver.common.by import By

    buttons = b.driver.find_elements(By.CSS_SELECTOR, '[data-test-id="checkout-pay"]')
    return bool(buttons) and bool(buttons[0].is_enabled())


@dataclass
class World:
    pay: Pay
    shop_url: str
    evil_url: str
    browser: Browser

    async def open_checkout(self) -> str:
        """Load the shop, press Pay, wait for the modal's checkout to show the form."""
        b = self.browser
        await b.get(self.shop_url)
        await b.click('[data-test-id="merchant-pay"]')
        await b.find('[data-test-id="paymentd-modal"]')
        await self.enter_frame()
        await b.wait(lambda: pay_enabled(b))
        await self.leave_frame()
        payment_id: str = await b.script("return window.merchantPaymentId")
        return payment_id

    async def enter_frame(self) -> None:
        frame = await self.browser.find('[data-test-id="paymentd-iframe"]')
        await self.browser.call(self.browser.driver.switch_to.frame, frame)

    async def leave_frame(self) -> None:
        await self.browser.call(self.browser.driver.switch_to.default_content)

    async def in_frame_click(self, css: str) -> None:
        await self.enter_frame()
        await self.browser.click(css)
        await self.leave_frame()

    async def events(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await self.browser.script("return window.merchantEvents")
        return found

    async def wait_events(self, count: int) -> list[dict[str, Any]]:
        def probe() -> list[dict[str, Any]] | None:
            found = self.browser.driver.execute_script("return window.merchantEvents")
            return found if len(found) >= count else None

        return await self.browser.wait(probe, seconds=15, what=f"{count} SDK callbacks")

    async def modal_gone(self) -> bool:
        gone: bool = await self.browser.script(
            "return document.querySelector('[data-test-id=\"paymentd-modal\"]') === null"
        )
        return gone


@pytest.fixture
async def world(
    db_url: str, tmp_path: Path, aio_loop: None, browser: Browser
) -> AsyncIterator[World]:
    async with paymentd(db_url, tmp_path) as pay, trio.open_nursery() as nursery:
        shop = example_merchant.ExampleMerchant(pay.running.base_url, ADMIN_TOKEN)
        shop_url = await nursery.start(example_merchant.serve, shop)
        evil_url = await nursery.start(
            serve_app, evil_app(), "127.0.0.1", 0, logging.getLogger("evil")
        )
        shop.publishable_key = (await keys.create(pay.db, "shop", [shop_url])).id
        yield World(pay, shop_url, evil_url, browser)
        nursery.cancel_scope.cancel()


async def test_paying_in_the_modal_calls_on_success_with_the_payment(world: World) -> None:
    b = world.browser
    with trio.fail_after(60):
        payment_id = await world.open_checkout()
        modal = await b.find('[data-test-id="paymentd-modal"]')
        assert await b.call(modal.get_attribute, "role") == "dialog"
        assert await b.call(modal.get_attribute, "aria-modal") == "true"
        assert await b.script("return document.body.style.overflow") == "hidden"
        # Focus starts on the dialog's close button.
        assert await b.script("return document.activeElement.dataset.testId") == "paymentd-close"
        await world.enter_frame()
        assert "30.00 EUR" in await b.text('[data-test-id="checkout-amount"]')
        assert "December internet" in await b.text('[data-test-id="checkout-description"]')
        await b.click('[data-test-id="checkout-pay"]')
        await world.leave_frame()

        (event,) = await world.wait_events(1)
        assert event["kind"] == "success"
        assert event["payload"]["id"] == payment_id
        assert event["payload"]["status"] == "succeeded"
        assert event["payload"]["amount"] == 3000 and event["payload"]["currency"] == "EUR"
        assert "client_secret" not in event["payload"]
        assert await world.modal_gone()
        assert await b.script("return document.body.style.overflow") == ""
        assert (await world.pay.get(payment_id))["status"] == "succeeded"
        errors = [e for e in await b.console_errors() if "favicon.ico" not in e]
        assert errors == []


async def test_declining_calls_on_failure(world: World) -> None:
    with trio.fail_after(60):
        payment_id = await world.open_checkout()
        await world.in_frame_click('[data-test-id="checkout-decline"]')
        (event,) = await world.wait_events(1)
        assert event["kind"] == "failure"
        assert event["payload"]["id"] == payment_id
        assert event["payload"]["status"] == "failed"
        assert event["payload"]["failure_code"] == "card_declined"
        assert await world.modal_gone()


async def test_close_and_escape_call_on_close_unlock_scroll_and_restore_focus(
    world: World,
) -> None:
    from selenium.webdriver.common.keys import Keys

    b = world.browser
    with trio.fail_after(60):
        payment_id = await world.open_checkout()
        # Tab from the close button goes into the frame and wraps back: focus is trapped.
        close = await b.find('[data-test-id="paymentd-close"]')
        await b.call(close.send_keys, Keys.TAB)
        assert await b.script("return document.activeElement.dataset.testId") == "paymentd-iframe"
        await b.script(
            "document.activeElement.dispatchEvent(new KeyboardEvent('keydown',"
            " {key: 'Tab', bubbles: true}))"
        )
        assert await b.script("return document.activeElement.dataset.testId") == "paymentd-close"

        await b.click('[data-test-id="paymentd-close"]')
        (event,) = await world.wait_events(1)
        assert event == {"kind": "close", "payload": None}
        assert await world.modal_gone()
        assert await b.script("return document.body.style.overflow") == ""
        assert await b.script("return document.activeElement.dataset.testId") == "merchant-pay"

        # Again, closed with Escape pressed inside the checkout frame (the page asks the
        # SDK to close: key presses in a frame never reach the embedding page).
        await b.click('[data-test-id="merchant-pay"]')
        await world.enter_frame()
        body = await b.find("body")
        await b.call(body.send_keys, Keys.ESCAPE)
        await world.leave_frame()
        events = await world.wait_events(2)
        assert events[1]["kind"] == "close"
        assert await world.modal_gone()
        assert (await world.pay.get(payment_id))["status"] == "pending"  # nothing paid


async def test_messages_from_another_origin_are_ignored(world: World) -> None:
    b = world.browser
    with trio.fail_after(60):
        payment_id = await world.open_checkout()
        await b.script("window.addEventListener('message', function (e) {"
                       " if (e.data && e.data.evil) window.evilSent = true; })")  # fmt: skip
        # A frame from a third origin posts a fake success into the merchant page ...
        await b.script(
            "var f = document.createElement('iframe'); f.src = arguments[0];"
            " document.body.appendChild(f);",
            f"{world.evil_url}/?payment={payment_id}",
        )
        await b.wait(lambda: b.driver.execute_script("return window.evilSent === true"))
        # ... and the merchant page itself posts one (right shape, wrong origin and source).
        await b.script(
            "window.postMessage({source: 'paymentd', type: 'result', outcome: 'success',"
            " payment: {id: arguments[0], status: 'succeeded'}}, '*');"
            " window.postMessage({evil: 'again'}, '*');",
            payment_id,
        )
        await b.wait(lambda: b.driver.execute_script("return window.evilSent === true"))
        assert await world.events() == []
        assert not await world.modal_gone()
        # The real checkout is still listened to.
        await world.in_frame_click('[data-test-id="checkout-pay"]')
        (event,) = await world.wait_events(1)
        assert event["kind"] == "success" and event["payload"]["id"] == payment_id


async def test_the_page_learns_the_outcome_from_one_stream_without_polling(world: World) -> None:
    """The top-level checkout link (checkout_url): pay, and the page updates in place."""
    b = world.browser
    pay = world.pay
    with trio.fail_after(60):
        r = await pay.create(headers={"Prefer": "wait=10"}, description="Router")
        payment = r.json()
        path = payment["checkout_url"].split("/checkout/", 1)[1]
        await b.get(f"{pay.running.base_url}/checkout/{path}")
        await b.wait(lambda: pay_enabled(b))
        # Count what the page does from now on: fetches, XHRs, timers.
        await b.script(
            "window.calls = {fetch: 0, xhr: 0, timers: 0}; window.stayed = true;"
            " var f = window.fetch; window.fetch = function () { calls.fetch++;"
            " return f.apply(this, arguments); };"
            " var o = XMLHttpRequest.prototype.open; XMLHttpRequest.prototype.open ="
            " function () { calls.xhr++; return o.apply(this, arguments); };"
            " var si = window.setInterval, st = window.setTimeout;"
            " window.setInterval = function () { calls.timers++;"
            " return si.apply(this, arguments); };"
            " window.setTimeout = function () { calls.timers++;"
            " return st.apply(this, arguments); };"
        )
        await b.click('[data-test-id="checkout-pay"]')
        await b.wait_text('[data-test-id="checkout-status"]', r"^Paid$")
        # Updated in place (no reload), by the one stream opened at load.
        assert await b.script("return window.stayed") is True
        assert await b.script("return window.calls") == {"fetch": 1, "xhr": 0, "timers": 0}
        streams = await b.script(
            "return performance.getEntriesByType('resource')"
            ".filter(function (e) { return e.name.indexOf('/events') >= 0; }).length"
        )
        assert streams == 1
        assert await b.script("return document.querySelector('main').dataset.status") == "succeeded"


async def test_a_forged_or_expired_link_shows_a_refusal(world: World) -> None:
    b = world.browser
    with trio.fail_after(60):
        r = await world.pay.create(headers={"Prefer": "wait=10"})
        token = r.json()["checkout_url"].split("/checkout/", 1)[1]
        payload, signature = token.split(".")
        await b.get(f"{world.pay.running.base_url}/checkout/{payload}.{signature[::-1]}")
        assert "not valid" in await b.text('[data-test-id="checkout-refused"]')
        assert await b.find_all('[data-test-id="checkout-pay"]') == []
        expired = links.sign(
            load_keyring(world.pay.cfg.secrets).derive(links.PURPOSE)[0],
            links.Link(r.json()["id"], int(time.time()) - 1, world.shop_url),
        )
        await b.get(f"{world.pay.running.base_url}/checkout/{expired}")
        assert "expired" in await b.text('[data-test-id="checkout-refused"]')
        assert await b.find_all('[data-test-id="checkout-pay"]') == []
