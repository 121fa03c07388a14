"""The console's integration pages over plain HTTP: webhook endpoints (create, edit,
disable, rotate — each secret shown once and nowhere after), their deliveries against a
real receiver (attempts, retry, recover), API keys (shown once, usable, revoked), and the
docs page, whose Python and Node samples verify a delivery the dispatcher really signed."""

from __future__ import annotations

import html
import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio
from standardwebhooks.webhooks import WebhookVerificationError

from daemon.fakes.webhook_receiver import Answer, Received, WebhookReceiver
from daemon.platform.config import SecretsConfig
from daemon.platform.db import Database
from daemon.platform.deps import Deps
from daemon.webhooks import deliveries, endpoints
from tests.console_fixtures import add_operator, csrf_token, page_csrf, sign_in
from tests.http_fixtures import make_deps, serving
from tests.webhook_harness import BOX, dispatcher, wait_until

pytestmark = pytest.mark.usefixtures("aio_loop")

_SECRET = re.compile(r"whsec_[A-Za-z0-9+/=]+")
_APIKEY = re.compile(r"pd_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")


@pytest.fixture
def deps(db: Database, tmp_path: Path) -> Deps:
    # The dispatcher harness's keyring, as this daemon's key file: the console seals the
    # secrets it makes with it and the dispatcher under test opens them.
    key_file = tmp_path / "secret.key"
    fd = os.open(key_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.write(fd, (bytes(range(32)).hex() + "\n").encode())
    os.close(fd)
    return make_deps(db, secrets=SecretsConfig(key_file=str(key_file)))


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


async def receiver(nursery: trio.Nursery, status: int = 200) -> WebhookReceiver:
    async def answer(_r: Received) -> Answer:
        return Answer(status, b"ok" if status < 300 else b"down for maintenance")

    rx = WebhookReceiver(answer)
    await nursery.start(rx.serve)
    return rx


async def create_endpoint(client: httpx.AsyncClient, url: str, **form: str) -> tuple[str, str]:
    token = await page_csrf(client, "/console/webhooks")
    r = await client.post(
        "/console/webhooks", data={"csrf_token": token, "url": url, "event_types": "*", **form}
    )
    assert r.status_code == 200, r.text
    match = _SECRET.search(r.text)
    assert match is not None and 'data-test-id="secret-once"' in r.text
    endpoint = re.search(r"ep_[0-9a-f]{24}", r.text)
    assert endpoint is not None
    return endpoint.group(0), match.group(0)


async def test_endpoints_are_created_edited_disabled_and_each_secret_is_shown_once(
    deps: Deps, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await add_operator(deps.db)
    with trio.fail_after(20):
        async with serving(deps) as client:
            await sign_in(client)
            empty = await client.get("/console/webhooks")
            assert 'data-test-id="no-endpoints"' in empty.text
            token = csrf_token(empty.text)
            bad = await client.post(
                "/console/webhooks", data={"csrf_token": token, "url": "ftp://x"}
            )
            assert bad.status_code == 400 and "url: must be an http" in bad.text
            assert 'value="ftp://x"' in bad.text  # the form again, as typed
            bad = await client.post(
                "/console/webhooks",
                data={"csrf_token": token, "url": "https://a.example/h", "event_types": "nope"},
            )
            assert bad.status_code == 400 and "unknown event type" in html.unescape(bad.text)
            no_csrf = await client.post("/console/webhooks", data={"url": "https://a.example/h"})
            assert no_csrf.status_code == 403
            assert await endpoints.list_endpoints(deps.db) == []

            ep, first = await create_endpoint(
                client, "https://hooks.example/paymentd?token=t0k", description="billing"
            )
            listed = await client.get("/console/webhooks")
            assert f'data-endpoint="{ep}"' in listed.text and "billing" in listed.text
            page = await client.get(f"/console/webhooks/{ep}")
            assert page.status_code == 200 and 'data-test-id="secrets"' in page.text

            edit = {
                "csrf_token": token,
                "url": "https://hooks.example/v2",
                "description": "billing v2",
                "event_types": "payment.* refund.*",
            }
            r = await client.post(f"/console/webhooks/{ep}", data=edit)
            assert r.status_code == 303 and r.headers["location"].endswith("notice=saved")
            saved = await endpoints.get(deps.db, ep)
            assert saved is not None and saved.url == "https://hooks.example/v2"
            assert saved.event_types == ("payment.*", "refund.*")
            assert saved.rate_limit_per_second is None
            r = await client.post(
                f"/console/webhooks/{ep}",
                data={**edit, "rate_limit_per_second": "5", "max_concurrency": "2"},
            )
            assert r.status_code == 303
            limited = await endpoints.get(deps.db, ep)
            assert limited is not None and limited.rate_limit_per_second == 5
            assert limited.max_concurrency == 2
            for bad_limit in ("x", "0"):
                r = await client.post(
                    f"/console/webhooks/{ep}", data={**edit, "rate_limit_per_second": bad_limit}
                )
                assert r.status_code == 400 and "rate_limit_per_second:" in r.text
            r = await client.post(f"/console/webhooks/{ep}", data=edit)  # empty: no limit again
            assert (await endpoints.get(deps.db, ep)).rate_limit_per_second is None  # type: ignore[union-attr]
            r = await client.post(f"/console/webhooks/{ep}", data={**edit, "url": "nope"})
            assert r.status_code == 400 and 'data-test-id="notice"' in r.text

            r = await client.post(f"/console/webhooks/{ep}/disable", data={"csrf_token": token})
            assert r.status_code == 303
            page = await client.get(r.headers["location"])
            assert "Endpoint disabled" in page.text and 'data-test-id="enable"' in page.text
            r = await client.post(f"/console/webhooks/{ep}/test", data={"csrf_token": token})
            assert r.status_code == 409 and "enable it first" in r.text
            r = await client.post(f"/console/webhooks/{ep}/enable", data={"csrf_token": token})
            assert r.status_code == 303
            assert (await endpoints.get(deps.db, ep)).enabled  # type: ignore[union-attr]

            no_csrf = await client.post(f"/console/webhooks/{ep}/rotate")
            assert no_csrf.status_code == 403
            assert len(await endpoints.secrets_of(deps.db, ep)) == 1
            rotated = await client.post(
                f"/console/webhooks/{ep}/rotate", data={"csrf_token": token}
            )
            assert rotated.status_code == 200 and rotated.headers["cache-control"] == "no-store"
            second = _SECRET.search(rotated.text)
            assert second is not None and second.group(0) != first
            assert str(rotated.url).endswith(f"/console/webhooks/{ep}/rotate")
            assert len(await endpoints.secrets_of(deps.db, ep)) == 2

            later = [
                await client.get(path)
                for path in ("/console/webhooks", f"/console/webhooks/{ep}", "/console/")
            ]
            for response in later:
                assert response.status_code == 200
                assert _SECRET.search(response.text) is None
            assert (await client.get("/console/webhooks/ep_nope")).status_code == 404
    for secret in (first, second.group(0)):
        assert secret not in caplog.text
    assert "t0k" not in caplog.text  # the URL's query is not logged either


async def test_deliveries_show_their_attempts_and_are_retried_and_recovered(
    deps: Deps, nursery: trio.Nursery
) -> None:
    await add_operator(deps.db)
    ok = await receiver(nursery)
    down = await receiver(nursery, 503)
    with trio.fail_after(30):
        async with serving(deps) as client, dispatcher(deps.db, retry_schedule_seconds=(0,)) as d:
            await sign_in(client)
            ep, secret = await create_endpoint(client, ok.url())
            token = await page_csrf(client, f"/console/webhooks/{ep}")
            r = await client.post(f"/console/webhooks/{ep}/test", data={"csrf_token": token})
            assert r.status_code == 303 and r.headers["location"].endswith("notice=tested")
            await d.fan_out()  # the daemon's outbox consumer: it rings the dispatcher
            [got] = await ok.wait_for(1)
            assert json.loads(got.body)["type"] == "webhook.test"
            [delivery] = await deliveries.list_deliveries(deps.db, endpoint_id=ep)

            async def finished() -> bool:
                found = await deliveries.get(deps.db, delivery.id)
                return found is not None and found.state == "succeeded"

            await wait_until("delivered", finished)
            page = await client.get(f"/console/webhooks/{ep}")
            assert f'data-delivery="{delivery.id}"' in page.text
            detail = await client.get(f"/console/webhook-deliveries/{delivery.id}")
            attempts = detail.text.split('data-test-id="attempts"')[1]
            assert ">200<" in attempts and " ms<" in attempts and "<code>ok</code>" in attempts
            r = await client.post(
                f"/console/webhook-deliveries/{delivery.id}/retry", data={"csrf_token": token}
            )
            assert r.status_code == 303
            await d.fan_out()
            await ok.wait_for(2)
            missing = await client.post(
                "/console/webhook-deliveries/999999/retry", data={"csrf_token": token}
            )
            assert missing.status_code == 404

            # An endpoint that answers 503 to its one attempt: failed, then recovered.
            failing, _ = await create_endpoint(client, down.url())
            await client.post(f"/console/webhooks/{failing}/test", data={"csrf_token": token})
            await d.fan_out()
            await down.wait_for(1)

            async def failed() -> bool:
                return bool(
                    await deliveries.list_deliveries(deps.db, endpoint_id=failing, state="failed")
                )

            await wait_until("failed", failed)
            detail = await client.get(f"/console/webhooks/{failing}", params={"state": "failed"})
            assert "down for maintenance" not in detail.text  # the list shows the status
            [bad] = await deliveries.list_deliveries(deps.db, endpoint_id=failing)
            attempts = (await client.get(f"/console/webhook-deliveries/{bad.id}")).text
            assert ">503<" in attempts and "down for maintenance" in attempts
            r = await client.post(
                f"/console/webhooks/{failing}/recover",
                data={"csrf_token": token, "since": "2000-01-01T00:00"},
            )
            assert r.status_code == 303
            page = await client.get(r.headers["location"])
            assert "1 failed deliveries are queued again." in page.text
            await d.fan_out()
            await down.wait_for(2)
            r = await client.post(
                f"/console/webhooks/{failing}/recover", data={"csrf_token": token, "since": "x"}
            )
            assert r.status_code == 400 and "since:" in r.text
    assert secret not in page.text


async def test_an_api_key_is_shown_once_works_against_the_api_and_is_revoked(
    deps: Deps, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await add_operator(deps.db)
    with trio.fail_after(20):
        async with serving(deps) as client:
            await sign_in(client)
            page = await client.get("/console/apikeys")
            assert 'data-test-id="no-apikeys"' in page.text
            token = csrf_token(page.text)
            r = await client.post("/console/apikeys", data={"csrf_token": token, "name": "x"})
            assert r.status_code == 400 and "at least one scope" in r.text
            r = await client.post(
                "/console/apikeys", data={"csrf_token": token, "name": "!", "scope": "admin"}
            )
            assert r.status_code == 400 and "name must be" in r.text
            r = await client.post("/console/apikeys", data={"name": "x", "scope": "admin"})
            assert r.status_code == 403
            created = await client.post(
                "/console/apikeys",
                data={
                    "csrf_token": token,
                    "name": "billing",
                    "scope": ["payments:read", "webhooks:manage"],
                },
            )
            assert created.status_code == 200
            assert str(created.url).endswith("/console/apikeys")  # answered here, no redirect
            match = _APIKEY.search(created.text)
            assert match is not None
            key = match.group(0)
            key_id = key.split("_")[1]
            bearer = {"Authorization": f"Bearer {key}"}
            r = await client.get("/api/v1/payments", headers=bearer)
            assert r.status_code == 200, r.text
            r = await client.get("/api/v1/webhooks/endpoints", headers=bearer)
            assert r.status_code == 200
            r = await client.post("/api/v1/payments", headers=bearer, json={})
            assert r.status_code == 403  # no payments:write

            listed = await client.get("/console/apikeys")
            row = listed.text.split(f'data-key="{key_id}"')[1].split("</tr>")[0]
            assert "billing" in row and "payments:read, webhooks:manage" in row
            assert "state-active" in row and "<time" in row.split('data-label="Last used"')[1]
            assert key.split("_", 2)[2] not in listed.text

            r = await client.post(f"/console/apikeys/{key_id}/revoke", data={"csrf_token": token})
            assert r.status_code == 303 and r.headers["location"].endswith("notice=revoked")
            assert (await client.get("/api/v1/payments", headers=bearer)).status_code == 401
            again = await client.post(
                f"/console/apikeys/{key_id}/revoke", data={"csrf_token": token}
            )
            assert again.status_code == 409 and "already revoked" in again.text
            r = await client.post("/console/apikeys/nope/revoke", data={"csrf_token": token})
            assert r.status_code == 404
    assert key.split("_", 2)[2] not in caplog.text


def _samples(page: str) -> dict[str, str]:
    found = re.findall(r'<pre data-sample="([a-z-]+)"[^>]*>(.*?)</pre>', page, re.S)
    return {name: html.unescape(code) for name, code in found}


async def test_the_docs_samples_verify_a_delivery_the_dispatcher_signed(
    deps: Deps, nursery: trio.Nursery, tmp_path: Path
) -> None:
    await add_operator(deps.db)
    rx = await receiver(nursery)
    with trio.fail_after(30):
        async with dispatcher(deps.db) as d:
            async with deps.db.transaction() as tx:
                _, secret = await endpoints.create(tx, BOX, url=rx.url())
            await d.emit("payment.succeeded", {"id": "pay_1", "amount": 1250})
            [delivery] = await rx.wait_for(1)
        async with serving(deps) as client:
            await sign_in(client)
            page = await client.get("/console/docs")
            document = (await client.get("/openapi.json")).json()
    assert page.status_code == 200
    # Every documented API route is listed, from the live document.
    for path, item in document["paths"].items():
        if path.startswith("/console"):
            continue
        for method in item:
            if method in ("get", "post", "patch", "delete", "put"):
                cells = f'<code>{method.upper()}</code></td><td data-label="Path">'
                assert f"{cells}<code>{html.escape(path)}</code>" in page.text
    assert "Idempotency-Key" in page.text and "Prefer: wait=" in page.text
    samples = _samples(page.text)
    assert set(samples) == {"python-standardwebhooks", "python-hmac", "node"}
    tampered = delivery.body.replace(b"1250", b"9999")
    for name, failure in (
        ("python-standardwebhooks", WebhookVerificationError),
        ("python-hmac", ValueError),
    ):
        namespace: dict[str, object] = {}
        exec(compile(samples[name], name, "exec"), namespace)  # the page's own code
        verify = namespace["verify"]
        event = verify(secret, delivery.headers, delivery.body)  # type: ignore[operator]
        assert event["type"] == "payment.succeeded" and event["data"]["amount"] == 1250
        with pytest.raises(failure):
            verify(secret, delivery.headers, tampered)  # type: ignore[operator]
        with pytest.raises(failure):
            verify(endpoints.generate_secret(), delivery.headers, delivery.body)  # type: ignore[operator]
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the Python samples verified, the Node one not run")
    script = tmp_path / "verify.js"
    script.write_text(samples["node"], encoding="utf-8")
    runner = tmp_path / "run.js"
    runner.write_text(
        "const { verify } = require(process.argv[2]);\n"
        "const [secret, headers, body] = JSON.parse(require('fs').readFileSync(0, 'utf8'));\n"
        "try { const raw = Buffer.from(body, 'base64');\n"
        "  console.log(JSON.stringify(verify(secret, headers, raw))); }\n"
        "catch (e) { console.log('refused: ' + e.message); }\n",
        encoding="utf-8",
    )
    import base64

    def run(body: bytes) -> str:
        given = json.dumps([secret, delivery.headers, base64.b64encode(body).decode()])
        done = subprocess.run(
            [node, str(runner), str(script)],
            input=given,
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        return done.stdout.strip()

    assert json.loads(run(delivery.body))["data"]["amount"] == 1250
    assert run(tampered) == "refused: no valid webhook-signature"


async def test_every_action_needs_the_csrf_token_and_every_page_a_session(deps: Deps) -> None:
    await add_operator(deps.db)
    async with deps.db.transaction() as tx:
        ep, _ = await endpoints.create(tx, BOX, url="https://hooks.example/h")
    pages = [
        "/console/payments",
        "/console/payments/pay_x",
        "/console/webhooks",
        f"/console/webhooks/{ep.id}",
        "/console/webhook-deliveries/1",
        "/console/apikeys",
        "/console/docs",
    ]
    actions = [
        "/console/payments/pay_x/refund",
        "/console/payments/pay_x/capture",
        "/console/payments/pay_x/cancel",
        "/console/webhooks",
        f"/console/webhooks/{ep.id}",
        f"/console/webhooks/{ep.id}/disable",
        f"/console/webhooks/{ep.id}/enable",
        f"/console/webhooks/{ep.id}/rotate",
        f"/console/webhooks/{ep.id}/test",
        f"/console/webhooks/{ep.id}/recover",
        "/console/webhook-deliveries/1/retry",
        "/console/apikeys",
        "/console/apikeys/abc/revoke",
    ]
    with trio.fail_after(20):
        async with serving(deps) as client:
            for path in pages:
                r = await client.get(path, headers={"Accept": "text/html"})
                assert r.status_code == 303, path
                assert r.headers["location"].endswith("/console/login")
            for path in actions:
                assert (
                    await client.post(path, data={"url": "https://x.example"})
                ).status_code == 401
            await sign_in(client)
            for path in actions:
                r = await client.post(
                    path, data={"url": "https://x.example", "idempotency_key": "k"}
                )
                assert r.status_code == 403, path
                assert "CSRF" in r.json()["detail"]
    assert len(await endpoints.secrets_of(deps.db, ep.id)) == 1
    assert len(await endpoints.list_endpoints(deps.db)) == 1
    assert (await endpoints.get(deps.db, ep.id)).enabled  # type: ignore[union-attr]
