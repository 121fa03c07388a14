"""A tiny merchant web shop that takes a payment with paymentd.js (the demo's, the tests').

It runs on its own origin (another port), as a merchant's site would, so every
cross-origin rule of the SDK is exercised for real. Its server side creates the payment
with its secret credential (``api_token``: an API key with ``payments:write``, or the
demo's admin token) and hands the page only the payment id; the page opens the checkout
with the publishable key. What the SDK's callbacks report is shown in the page and kept
in ``window.merchantEvents`` (the browser tests read it).
"""

from __future__ import annotations

import html
import json
import logging
import secrets
from dataclasses import dataclass

import httpx
import trio
from quart import Response
from quart_trio import QuartTrio

from daemon.fakes.serving import serve_app
from daemon.payments import currency

log = logging.getLogger(__name__)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Example ISP shop</title>
<style>
body {{ font: 16px/1.5 system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; }}
.filler {{ height: 150vh; color: #888; }}
button {{ font: inherit; padding: .6rem 1.2rem; }}
</style></head>
<body>
<h1>Example ISP shop</h1>
<p>December internet: <b>{amount}</b></p>
<p><button type="button" id="pay" data-test-id="merchant-pay">Pay {amount}</button></p>
<h2>What paymentd.js reported</h2>
<ul id="log" data-test-id="merchant-log" aria-live="polite"></ul>
<p class="filler">(a long page, so you can see the scroll lock while the checkout is open)</p>
<script src="{daemon}/paymentd.js"></script>
<script src="/merchant.js" data-key="{key}"></script>
</body></html>
"""

_SCRIPT = """(function () {
  "use strict";
  var key = document.currentScript.getAttribute("data-key");
  window.merchantEvents = [];
  function record(kind, payload) {
    window.merchantEvents.push({ kind: kind, payload: payload || null });
    var li = document.createElement("li");
    li.setAttribute("data-kind", kind);
    li.textContent = kind + (payload ? ": " + JSON.stringify(payload) : "");
    document.getElementById("log").appendChild(li);
  }
  document.getElementById("pay").addEventListener("click", function () {
    fetch("/orders", { method: "POST" }).then(function (r) { return r.json(); })
      .then(function (order) {
        window.merchantPaymentId = order.payment_id;
        window.merchantCheckout = new Paymentd({
          publishableKey: key,
          paymentId: order.payment_id,
          onSuccess: function (payment) { record("success", payment); },
          onFailure: function (payment) { record("failure", payment); },
          onClose: function () { record("close"); }
        });
        return window.merchantCheckout.open();
      });
  });
})();
"""


@dataclass
class ExampleMerchant:
    daemon_url: str  # where paymentd answers (its API, paymentd.js)
    api_token: str  # server-side only: never sent to the browser
    publishable_key: str = ""  # set once created for this shop's origin
    amount: int = 3000
    currency: str = "EUR"
    description: str = "December internet (example shop)"


def create_app(shop: ExampleMerchant) -> QuartTrio:
    app = QuartTrio("example_merchant", static_folder=None)

    @app.get("/")
    async def index() -> Response:
        amount = currency.format_amount(shop.amount, shop.currency)
        body = _PAGE.format(
            amount=html.escape(amount),
            daemon=html.escape(shop.daemon_url.rstrip("/")),
            key=html.escape(shop.publishable_key),
        )
        return Response(body, mimetype="text/html")

    @app.get("/merchant.js")
    async def script() -> Response:
        return Response(_SCRIPT, mimetype="text/javascript")

    @app.post("/orders")
    async def order() -> Response:
        # What a merchant's server does: create the payment with its secret key.
        async with httpx.AsyncClient(base_url=shop.daemon_url, timeout=15) as http:
            resp = await http.post(
                "/api/v1/payments",
                json={
                    "amount": shop.amount,
                    "currency": shop.currency,
                    "description": shop.description,
                    "method": "hosted_checkout",
                },
                headers={
                    "Authorization": f"Bearer {shop.api_token}",
                    "Idempotency-Key": f"shop-{secrets.token_hex(8)}",
                },
            )
        if resp.status_code != 201:
            log.warning("example shop: payment refused: %s", resp.text[:200])
            return Response(resp.text, status=502, mimetype="application/json")
        return Response(json.dumps({"payment_id": resp.json()["id"]}), mimetype="application/json")

    return app


async def serve(
    shop: ExampleMerchant,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the shop until cancelled; report its origin (``http://host:port``)."""
    await serve_app(create_app(shop), host, port, log, task_status=task_status)
