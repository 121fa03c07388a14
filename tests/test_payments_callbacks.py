"""A payment's ``status_callback_url`` receives its terminal status through the webhook
machinery (daemon/payments/callbacks.py): signed with the daemon-wide callback secret an
admin rotates to learn, verified here with the ``standardwebhooks`` package; a URL the
endpoint rule refuses is a 400 (HTTP) / INVALID_ARGUMENT (gRPC) with nothing stored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from daemon.cli import main
from daemon.fakes.webhook_receiver import WebhookReceiver
from daemon.payments_grpc.gen import payments_pb2 as pb
from daemon.platform.config import WebhooksConfig
from daemon.platform.db import Database
from tests.payments_harness import ADMIN, Pay, paymentd, wait_for
from tests.test_payments_grpc import daemon as grpc_daemon
from tests.test_payments_sql import sql_create

LOOPBACK = WebhooksConfig(allowed_cidrs=("127.0.0.0/8",))
REFUSED = [
    "http://user:pw@shop.example/cb",  # credentials would show in listings and logs
    "http://shop.example/a b",
    "ftp://shop.example/cb",
    "http://shop.example:0/cb",
]


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    rx = WebhookReceiver()
    async with trio.open_nursery() as nursery:
        await nursery.start(rx.serve)
        yield rx
        nursery.cancel_scope.cancel()


async def stored(db: Database) -> dict[str, int]:
    row = await db.fetchrow(
        "SELECT (SELECT count(*) FROM payments) AS payments,"
        " (SELECT count(*) FROM events) AS events,"
        " (SELECT count(*) FROM idempotency_keys) AS keys,"
        " (SELECT count(*) FROM webhook_deliveries) AS deliveries"
    )
    assert row is not None
    return dict(row)


async def rotate_callback_secret(pay: Pay) -> str:
    r = await pay.http.post(
        "/api/v1/webhooks/callback-secret/rotate", json={"overlap_seconds": 0}, headers=ADMIN
    )
    assert r.status_code == 200, r.text
    secret: str = r.json()["secret"]
    return secret


async def test_a_paid_payment_posts_one_signed_payment_succeeded_to_its_callback_url(
    db_url: str, tmp_path: Path, aio_loop: None, receiver: WebhookReceiver
) -> None:
    async with paymentd(db_url, tmp_path, webhooks=LOOPBACK) as pay:
        secret = await rotate_callback_secret(pay)
        listed = await pay.http.get("/api/v1/webhooks/callback-secret", headers=ADMIN)
        assert secret not in listed.text and listed.json()["secrets"]
        url = receiver.url("/cb?order=77")
        wait = {"Prefer": "wait=10"}
        created = await pay.create(status_callback_url=url, headers=wait, key="cb-1")
        assert created.status_code == 201, created.text
        payment = created.json()
        assert payment["status"] == "pending"
        # The customer pays on the mock's page.
        paid = await pay.http.post(f"/mock/pay/{payment['provider_ref']}/pay")
        assert paid.status_code == 200, paid.text
        with trio.fail_after(30):
            [request] = await receiver.wait_for(1, "/cb?order=77")
        await pay.wait_status(payment["id"], "succeeded")

        async def recorded() -> Any:
            rows = await pay.db.fetch(
                "SELECT d.state, d.attempts, e.type FROM webhook_deliveries d"
                " JOIN events e ON e.id = d.event_id WHERE d.target_url = $1",
                url,
            )
            return rows if all(r["state"] != "pending" for r in rows) else None

        rows = await wait_for(recorded)
    payload: dict[str, Any] = Webhook(secret).verify(request.body, request.headers)
    assert payload["type"] == "payment.succeeded"
    assert payload["data"]["id"] == payment["id"]
    assert payload["data"]["status"] == "succeeded"
    assert payload["data"]["amount"] == 1000
    assert request.headers["webhook-id"] == payload["id"]
    # Only the terminal status goes to the callback (not created/pending), once.
    assert [(r["state"], r["attempts"], r["type"]) for r in rows] == [
        ("succeeded", 1, "payment.succeeded")
    ]
    assert len(receiver.received) == 1
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(request.body.replace(b"succeeded", b"failed"), request.headers)


async def test_a_declined_payment_posts_payment_failed(
    db_url: str, tmp_path: Path, aio_loop: None, receiver: WebhookReceiver
) -> None:
    async with paymentd(db_url, tmp_path, webhooks=LOOPBACK) as pay:
        secret = await rotate_callback_secret(pay)
        created = await pay.create(
            status_callback_url=receiver.url("/cb"), metadata={"mock": "decline"}
        )
        assert created.status_code == 201, created.text
        with trio.fail_after(30):
            [request] = await receiver.wait_for(1, "/cb")
    payload = Webhook(secret).verify(request.body, request.headers)
    assert (payload["type"], payload["data"]["failure_code"]) == ("payment.failed", "card_declined")


@pytest.mark.parametrize("url", REFUSED)
async def test_an_invalid_callback_url_is_a_400_and_nothing_is_stored(
    db_url: str, tmp_path: Path, aio_loop: None, url: str
) -> None:
    async with paymentd(db_url, tmp_path) as pay:
        r = await pay.create(status_callback_url=url, key="bad-url")
        assert r.status_code == 400, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        problem = r.json()
        assert problem["field"] == "status_callback_url"
        assert "status_callback_url" in problem["detail"]
        assert url not in problem["detail"]  # a URL may carry a token
        assert await stored(pay.db) == {"payments": 0, "events": 0, "keys": 0, "deliveries": 0}


async def test_grpc_refuses_an_invalid_callback_url_and_stores_nothing(
    db_url: str, tmp_path: Path, aio_loop: None
) -> None:
    async with grpc_daemon(db_url, tmp_path) as (pay, client):
        req = pb.CreatePaymentRequest(
            request_id="grpc-bad-url", amount=1000, currency="EUR",
            status_callback_url="http://user:pw@shop.example/cb",
        )  # fmt: skip
        refused = await client.refused("Create", req)
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "status_callback_url" in (refused.details() or "")
        assert (await stored(pay.db))["payments"] == 0


async def test_a_callback_url_only_the_sql_path_let_through_is_refused_at_the_end_and_noted(
    db_url: str, tmp_path: Path, aio_loop: None
) -> None:
    # The SQL entry point checks scheme, host and length only (docs/ARCHITECTURE.md).
    async with paymentd(db_url, tmp_path, webhooks=LOOPBACK) as pay:
        url = "http://user:pw@127.0.0.1:9/cb"
        params = {"status_callback_url": url, "metadata": {"mock": "succeed"}}
        payment_id = await sql_create(pay.db, amount=1000, currency="EUR", **params)
        await pay.wait_status(payment_id, "succeeded")

        async def noted() -> Any:
            return await pay.db.fetchrow(
                "SELECT detail FROM payment_events WHERE payment_id = $1"
                " AND kind = 'callback_refused'",
                payment_id,
            )

        row = await wait_for(noted)
        assert "credentials" in row["detail"]["reason"]
        assert await pay.db.fetchval("SELECT count(*) FROM webhook_deliveries") == 0


def test_the_cli_rotates_the_callback_secret_and_shows_only_its_metadata(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from daemon.platform.secrets import keygen

    key = tmp_path / "secret.key"
    keygen(key)
    config = tmp_path / "config.toml"
    config.write_text(f'[database]\nurl = "{db_url}"\n[secrets]\nkey_file = "{key}"\n')
    argv = ["webhooks", "callback-secret"]
    assert main([*argv, "rotate", "--overlap", "0", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    secret = out.strip()
    assert secret.startswith("whsec_") and "callback secret" in err
    assert main([*argv, "show", "--config", str(config)]) == 0
    out, _ = capsys.readouterr()
    assert "signing" in out and secret not in out


async def test_a_callback_to_a_private_address_is_refused_by_the_ssrf_guard(
    db_url: str, tmp_path: Path, aio_loop: None, receiver: WebhookReceiver
) -> None:
    # The default config: loopback is not a globally routable address.
    async with paymentd(db_url, tmp_path) as pay:
        url = receiver.url("/cb")
        r = await pay.create(status_callback_url=url, metadata={"mock": "succeed"})
        assert r.status_code == 201, r.text

        async def attempted() -> Any:
            return await pay.db.fetchrow(
                "SELECT state, last_error FROM webhook_deliveries"
                " WHERE target_url = $1 AND attempts >= 1",
                url,
            )

        row = await wait_for(attempted)
    # Refused, not sent; retried on the schedule like an endpoint's (DNS may change).
    assert row["state"] in ("pending", "failed")
    assert row["last_error"].startswith("refused")
    assert receiver.received == []


async def test_a_fully_refunded_payment_also_posts_payment_refunded(
    db_url: str, tmp_path: Path, aio_loop: None, receiver: WebhookReceiver
) -> None:
    async with paymentd(db_url, tmp_path, webhooks=LOOPBACK) as pay:
        secret = await rotate_callback_secret(pay)
        created = await pay.create(
            status_callback_url=receiver.url("/cb"), metadata={"mock": "succeed"}, amount=900
        )
        payment = created.json()
        await pay.wait_status(payment["id"], "succeeded")
        for part in (400, 500):  # the second makes it fully refunded
            r = await pay.post(f"/payments/{payment['id']}/refunds", {"amount": part})
            assert r.status_code == 201, r.text
        with trio.fail_after(30):
            got = await receiver.wait_for(2, "/cb")
    types = sorted(Webhook(secret).verify(g.body, g.headers)["type"] for g in got)
    assert types == ["payment.refunded", "payment.succeeded"]  # (sent in either order)
