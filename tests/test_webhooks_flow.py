"""End to end: an endpoint registered through the running daemon's admin API receives the
events of the existing flow, signed, and verified by the ``standardwebhooks`` package."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import trio
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from daemon.fakes.webhook_receiver import WebhookReceiver
from daemon.platform.config import WebhooksConfig
from tests.flow_harness import ADMIN_TOKEN, World, daemon, world
from tests.test_webhooks_openapi import body_schema

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
LOOPBACK = WebhooksConfig(allowed_cidrs=("127.0.0.0/8",))


@pytest.fixture
async def w(db_url: str, tmp_path: Path, aio_loop: None) -> AsyncIterator[World]:
    async with world(db_url, tmp_path) as running_world:
        yield running_world


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    rx = WebhookReceiver()
    async with trio.open_nursery() as nursery:
        await nursery.start(rx.serve)
        yield rx
        nursery.cancel_scope.cancel()


async def test_a_reconnection_reaches_a_registered_endpoint_signed(
    w: World, receiver: WebhookReceiver
) -> None:
    async with daemon(w, webhooks=LOOPBACK) as flow:
        created = await flow.http.post(
            "/api/v1/webhooks/endpoints",
            json={"url": receiver.url("/partner"), "event_types": ["reconnection.*"]},
            headers=ADMIN,
        )
        assert created.status_code == 201, created.text
        secret = created.json()["secret"]
        endpoint_id = created.json()["endpoint"]["id"]
        await w.fake.record_payment(1, 30.0)
        [task] = await flow.wait_task_state("succeeded")
        with trio.fail_after(30):
            [request] = await receiver.wait_for(1, "/partner")
        await w.sink.wait_messages(1)
        document = (await flow.http.get("/openapi.json")).json()
        await flow.settle()
        delivered = await flow.http.get(
            "/api/v1/webhooks/deliveries", params={"endpoint_id": endpoint_id}, headers=ADMIN
        )
    payload: dict[str, Any] = Webhook(secret).verify(request.body, request.headers)
    assert payload["type"] == "reconnection.succeeded"
    assert request.headers["webhook-id"] == payload["id"]
    assert payload["data"]["task_id"] == task["id"]
    assert (payload["data"]["olt"], payload["data"]["onu"]) == ("olt-hw", "0/1/3:7")
    jsonschema_rs.validator_for(body_schema(document, payload["type"])).validate(payload)
    # The SMS went out too, but this endpoint's filter takes reconnections only.
    assert len(receiver.received) == 1
    [delivery] = delivered.json()["deliveries"]
    assert (delivery["state"], delivery["attempts"], delivery["last_status_code"]) == (
        "succeeded",
        1,
        200,
    )
    # A tampered body is refused by the same verifier (the check above can fail).
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(request.body.replace(b"olt-hw", b"olt-xx"), request.headers)


async def test_the_test_button_sends_a_signed_ping(w: World, receiver: WebhookReceiver) -> None:
    async with daemon(w, webhooks=LOOPBACK) as flow:
        created = (
            await flow.http.post(
                "/api/v1/webhooks/endpoints", json={"url": receiver.url()}, headers=ADMIN
            )
        ).json()
        endpoint_id = created["endpoint"]["id"]
        sent = await flow.http.post(f"/api/v1/webhooks/endpoints/{endpoint_id}/test", headers=ADMIN)
        assert sent.status_code == 202, sent.text
        with trio.fail_after(30):
            [request] = await receiver.wait_for(1)
    payload = Webhook(created["secret"]).verify(request.body, request.headers)
    assert payload["type"] == "webhook.test" and payload["id"] == sent.json()["event_id"]
    assert payload["data"]["endpoint_id"] == endpoint_id
