"""Hosted checkout over plain HTTP: signed links, publishable keys, CSRF, the SSE stream.

The whole daemon with the mock provider (``tests/payments_harness.py``), real sockets.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio

from daemon.checkout import keys, links, stream
from daemon.platform.secrets import Keyring, load_keyring
from tests.payments_harness import Pay, paymentd, wait_for

SHOP = "http://shop.example:8000"


@pytest.fixture
async def pay(db_url: str, tmp_path: Path, aio_loop: None) -> AsyncIterator[Pay]:
    async with paymentd(db_url, tmp_path) as running:
        yield running


def link_keys(pay: Pay) -> list[bytes]:
    return load_keyring(pay.cfg.secrets).derive(links.PURPOSE)


async def new_payment(pay: Pay, **body: Any) -> dict[str, Any]:
    r = await pay.create(headers={"Prefer": "wait=10"}, **body)
    assert r.status_code == 201, r.text
    payment: dict[str, Any] = r.json()
    return payment


def path_of(url: str) -> str:
    return urlsplit(url).path


# Signing, without a daemon


def test_a_link_verifies_until_it_expires_and_any_change_is_forged() -> None:
    key = Keyring(b"k" * 32).derive(links.PURPOSE)
    link = links.Link("pay_" + "ab" * 12, int(time.time()) + 60, SHOP)
    token = links.sign(key[0], link)
    assert links.verify(key, token) == link
    payload, signature = token.split(".")
    other = links.sign(key[0], links.Link(link.payment_id, link.expires_at, "http://evil"))
    for forged in (
        f"{other.split('.')[0]}.{signature}",  # another origin under this signature
        f"{payload}.{signature[:-2]}AA",
        f"{payload}x.{signature}",
        payload,
        "",
    ):
        with pytest.raises(links.LinkRefused) as refused:
            links.verify(key, forged)
        assert refused.value.status == 403
    with pytest.raises(links.LinkRefused) as late:
        links.verify(key, token, now=link.expires_at)
    assert late.value.status == 410
    # Another keyring's key signs nothing this one accepts.
    stranger = Keyring(b"s" * 32).derive(links.PURPOSE)
    with pytest.raises(links.LinkRefused):
        links.verify(stranger, token)


def test_links_signed_before_a_key_rotation_still_verify() -> None:
    old, new = b"o" * 32, b"n" * 32
    token = links.sign(
        Keyring(old).derive(links.PURPOSE)[0],
        links.Link("pay_" + "cd" * 12, int(time.time()) + 60, ""),
    )
    rotated = Keyring(new, [old]).derive(links.PURPOSE)
    assert links.verify(rotated, token).payment_id == "pay_" + "cd" * 12
    # The derived key is neither the encryption key nor another purpose's key.
    assert rotated[0] != new and rotated[0] != Keyring(new).derive(b"other")[0]


# The page


async def test_a_payment_carries_a_checkout_url_whose_page_shows_amount_and_description(
    pay: Pay,
) -> None:
    with trio.fail_after(30):
        payment = await new_payment(pay, amount=1234, currency="BHD", description="Fibre <1 Gb>")
        base = pay.running.deps.config.payments.public_base_url  # the daemon's own setting
        assert payment["checkout_url"].startswith(base + "/checkout/")
        # Derived, not stored: the same link on every read, valid as long as the payment.
        assert (await pay.get(payment["id"]))["checkout_url"] == payment["checkout_url"]
        token = path_of(payment["checkout_url"]).rsplit("/", 1)[1]
        expires = links.verify(link_keys(pay), token).expires_at
        assert expires == int(dt.datetime.fromisoformat(payment["expires_at"]).timestamp())
        page = await pay.http.get(path_of(payment["checkout_url"]))
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "1.234 BHD" in page.text  # BHD has three decimals
        assert "Fibre &lt;1 Gb&gt;" in page.text  # escaped, never raw HTML
        csp = page.headers["content-security-policy"]
        # A top-level link: no page may frame it.
        assert "frame-ancestors 'none'" in csp and page.headers["x-frame-options"] == "DENY"
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert page.headers["referrer-policy"] == "no-referrer"
        yen = await new_payment(pay, amount=500, currency="JPY")
        assert "500 JPY" in (await pay.http.get(path_of(yen["checkout_url"]))).text
        # A final payment gets no link.
        declined = await new_payment(pay, metadata={"mock": "decline"})
        assert declined["status"] == "failed" and declined["checkout_url"] is None


async def test_forged_and_expired_links_are_refused_with_a_page_saying_so(pay: Pay) -> None:
    with trio.fail_after(30):
        payment = await new_payment(pay)
        path = path_of(payment["checkout_url"])
        token = path.rsplit("/", 1)[1]
        payload, signature = token.split(".")
        forged = await pay.http.get(f"/checkout/{payload}.{signature[::-1]}")
        assert forged.status_code == 403
        assert "not valid" in forged.text and "1000" not in forged.text
        expired = links.sign(link_keys(pay)[0], links.Link(payment["id"], int(time.time()) - 1, ""))
        gone = await pay.http.get(f"/checkout/{expired}")
        assert gone.status_code == 410 and "expired" in gone.text
        # The stream and the form refuse them too, as problems.
        for url in (f"/checkout/{expired}/events", f"/checkout/{payload}.x/events"):
            r = await pay.http.get(url)
            assert r.status_code in (403, 410)
            assert r.headers["content-type"] == "application/problem+json"
        r = await pay.http.post(f"/checkout/{expired}/pay", data={"csrf": "x"})
        assert r.status_code == 410


# Publishable keys


async def test_the_sdk_gets_a_link_only_for_an_origin_its_publishable_key_lists(pay: Pay) -> None:
    with trio.fail_after(30):
        pk = await keys.create(pay.db, "shop", [SHOP, "https://other.example"])
        payment = await new_payment(pay)
        ask = {"publishable_key": pk.id, "payment_id": payment["id"]}

        ok = await pay.http.post("/checkout-links", json=ask, headers={"Origin": SHOP})
        assert ok.status_code == 200, ok.text
        assert ok.headers["access-control-allow-origin"] == SHOP
        token = ok.json()["path"].rsplit("/", 1)[1]
        embed = links.verify(link_keys(pay), token)
        assert embed.origin == SHOP
        # An SDK link is short-lived (checkout_link_ttl_seconds).
        ttl = pay.running.deps.config.payments.checkout_link_ttl_seconds
        assert time.time() < embed.expires_at <= time.time() + ttl
        page = await pay.http.get(ok.json()["path"])
        # Framed by that shop only, and X-Frame-Options (which cannot say that) left out.
        assert "frame-ancestors http://shop.example:8000" in page.headers["content-security-policy"]
        assert "x-frame-options" not in page.headers
        assert f'data-parent-origin="{SHOP}"' in page.text

        evil = await pay.http.post(
            "/checkout-links", json=ask, headers={"Origin": "http://evil.example"}
        )
        assert evil.status_code == 403 and "origin" in evil.json()["detail"]
        # The refusal is readable by the page that asked (the SDK reports it), nothing more.
        assert evil.headers["access-control-allow-origin"] == "http://evil.example"
        no_origin = await pay.http.post("/checkout-links", json=ask)
        assert no_origin.status_code == 403
        unknown = await pay.http.post(
            "/checkout-links",
            json={**ask, "publishable_key": "pk_" + "0" * 24},
            headers={"Origin": SHOP},
        )
        assert unknown.status_code == 401
        missing = await pay.http.post(
            "/checkout-links",
            json={**ask, "payment_id": "pay_" + "0" * 24},
            headers={"Origin": SHOP},
        )
        assert missing.status_code == 404
        bad = await pay.http.post(
            "/checkout-links", json={"publishable_key": pk.id}, headers={"Origin": SHOP}
        )
        assert bad.status_code == 400 and bad.json()["field"] == "payment_id"

        preflight = await pay.http.options(
            "/checkout-links",
            headers={"Origin": SHOP, "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == SHOP
        assert "content-type" in preflight.headers["access-control-allow-headers"].lower()

        await keys.revoke(pay.db, pk.id)
        revoked = await pay.http.post("/checkout-links", json=ask, headers={"Origin": SHOP})
        assert revoked.status_code == 401


def test_publishable_key_origins_are_checked() -> None:
    assert keys.check_origins(["https://shop.example/", "http://127.0.0.1:8001"]) == [
        "http://127.0.0.1:8001",
        "https://shop.example",
    ]
    for bad in ("https://shop.example/pay", "shop.example", "ftp://x", "https://a b"):
        with pytest.raises(keys.PublishableKeyError):
            keys.check_origins([bad])
    with pytest.raises(keys.PublishableKeyError):
        keys.check_origins([])


# The form and the stream


def csrf_of(page: str) -> str:
    m = re.search(r'name="csrf" value="([0-9a-f]{64})"', page)
    assert m, page
    return m.group(1)


async def events_of(pay: Pay, path: str, into: list[dict[str, Any]], first: trio.Event) -> None:
    """Read the SSE stream until the server ends it (after the outcome)."""
    async with pay.http.stream("GET", path + "/events") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                into.append(json.loads(line[6:]))
                first.set()


async def test_paying_on_the_page_streams_the_outcome_and_the_form_is_csrf_safe(pay: Pay) -> None:
    with trio.fail_after(30):
        payment = await new_payment(pay, description="December")
        path = path_of(payment["checkout_url"])
        page = (await pay.http.get(path)).text
        csrf = csrf_of(page)
        own = {"Origin": str(pay.http.base_url).rstrip("/")}

        # Refused: no token, a wrong one, another site's form, another origin.
        assert (await pay.http.post(path + "/pay", headers=own)).status_code == 403
        r = await pay.http.post(path + "/pay", data={"csrf": "0" * 64}, headers=own)
        assert r.status_code == 403
        r = await pay.http.post(
            path + "/pay", data={"csrf": csrf}, headers={"Sec-Fetch-Site": "cross-site"}
        )
        assert r.status_code == 403
        r = await pay.http.post(
            path + "/pay", data={"csrf": csrf}, headers={"Origin": "http://evil.example"}
        )
        assert r.status_code == 403
        assert (await pay.get(payment["id"]))["status"] == "pending"  # nothing happened

        seen: list[dict[str, Any]] = []
        async with trio.open_nursery() as nursery:
            first = trio.Event()
            nursery.start_soon(events_of, pay, path, seen, first)
            await first.wait()
            assert seen[0]["status"] == "pending" and seen[0]["outcome"] is None
            assert seen[0]["amount_display"] == "10.00 EUR"
            assert "client_secret" not in seen[0] and "metadata" not in seen[0]
            r = await pay.http.post(
                path + "/pay",
                data={"csrf": csrf},
                headers={**own, "Accept": "application/json"},
            )
            assert r.status_code == 200, r.text
        # The stream ended by itself with the outcome.
        assert seen[-1]["status"] == "succeeded" and seen[-1]["outcome"] == "success"
        assert (await pay.get(payment["id"]))["status"] == "succeeded"
        # Paid: the form is refused now.
        again = await pay.http.post(path + "/decline", data={"csrf": csrf}, headers=own)
        assert again.status_code == 409


async def test_without_javascript_the_form_posts_back_to_the_page(pay: Pay) -> None:
    with trio.fail_after(30):
        payment = await new_payment(pay)
        path = path_of(payment["checkout_url"])
        csrf = csrf_of((await pay.http.get(path)).text)
        r = await pay.http.post(path + "/decline", data={"csrf": csrf})
        assert r.status_code == 303 and r.headers["location"] == path
        done = await pay.wait_status(payment["id"], "failed")
        assert done["failure_code"] == "card_declined"
        assert "Declined" in (await pay.http.get(path)).text


async def test_the_sdk_and_the_page_assets_are_served(pay: Pay) -> None:
    with trio.fail_after(30):
        sdk = await pay.http.get("/paymentd.js")
        assert sdk.status_code == 200
        assert sdk.headers["content-type"].startswith("text/javascript")
        assert sdk.headers["cross-origin-resource-policy"] == "cross-origin"
        assert "event.origin !== self.origin" in sdk.text
        for name in ("checkout.js", "checkout.css"):
            assert (await pay.http.get(f"/checkout/static/{name}")).status_code == 200
        assert (await pay.http.get("/checkout/static/nope.js")).status_code == 404
        # The page never polls: one EventSource, no timers.
        page_js = (await pay.http.get("/checkout/static/checkout.js")).text
        assert page_js.count("new EventSource(") == 1
        assert "setInterval" not in page_js and "setTimeout" not in page_js


def test_the_checkout_is_absent_without_a_provider() -> None:
    from daemon.platform.http import create_app
    from tests.http_fixtures import make_deps

    app = create_app(make_deps(None))  # type: ignore[arg-type]  # no route runs here
    assert not any(r.rule.startswith("/checkout") for r in app.url_map.iter_rules())


async def open_stream(pay: Pay, path: str) -> trio.SocketStream | None:
    """A raw connection holding ``path``'s SSE stream past its first status; None (and
    closed) when the daemon refused it."""
    url = urlsplit(pay.running.base_url)
    conn = await trio.open_tcp_stream(url.hostname or "127.0.0.1", url.port or 80)
    await conn.send_all(f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\n\r\n".encode())
    seen = b""
    while b"\r\n\r\n" not in seen or (seen.startswith(b"HTTP/1.1 200") and b"data: " not in seen):
        chunk = await conn.receive_some()
        assert chunk, seen
        seen += chunk
    if not seen.startswith(b"HTTP/1.1 200"):
        await conn.aclose()
        return None
    return conn


async def test_a_link_holder_gets_a_few_streams_not_every_bus_slot(pay: Pay) -> None:
    with trio.fail_after(30):
        payment = await new_payment(pay)
        events = path_of(payment["checkout_url"]) + "/events"
        held = [await open_stream(pay, events) for _ in range(stream.PER_PAYMENT_STREAMS)]
        assert None not in held
        one_more = await pay.http.get(events)
        assert one_more.status_code == 503
        assert "this payment" in one_more.json()["detail"]
        # Another payment's customer is not affected.
        other = await open_stream(
            pay, path_of((await new_payment(pay))["checkout_url"]) + "/events"
        )
        assert other is not None
        await other.aclose()
        for conn in held:
            assert conn is not None
            await conn.aclose()

        async def reopened() -> bool:
            # Closed streams give their slots back once the daemon sees them go.
            conn = await open_stream(pay, events)
            if conn is None:
                return False
            await conn.aclose()
            return True

        assert await wait_for(reopened, 10)


def test_the_cli_creates_lists_and_revokes_publishable_keys(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from daemon.cli import main

    config = tmp_path / "config.toml"
    config.write_text(f'[database]\nurl = "{db_url}"\n')
    base = ["apikey", "publishable"]
    argv = [*base, "create", "--config", str(config), "--name", "shop"]
    assert main([*argv, "--origin", SHOP, "--origin", "https://shop.example/"]) == 0
    out, err = capsys.readouterr()
    key = out.strip()
    assert keys.KEY.fullmatch(key), out
    assert "https://shop.example" in err and "public" in err

    assert main([*base, "list", "--config", str(config)]) == 0
    listing = capsys.readouterr().out
    assert key in listing and SHOP in listing and "active" in listing

    assert main([*base, "revoke", "--config", str(config), key]) == 0
    assert capsys.readouterr().out.strip() == f"revoked {key}"
    assert main([*base, "list", "--config", str(config), "--json"]) == 0
    assert '"revoked_at": null' not in capsys.readouterr().out

    # Mistakes: one line, exit 2, nothing created.
    assert main([*argv, "--origin", "https://shop.example/checkout"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("paymentd: error: --origin") and err.count("\n") == 1
    assert main([*base, "revoke", "--config", str(config), key]) == 2
    assert "already revoked" in capsys.readouterr().err
