"""``/openapi.json`` documents every announced event type under OpenAPI 3.1 ``webhooks``,
and real events (emitted by the stores) match what it documents."""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import pytest
import trio

from daemon.network import tasks
from daemon.notifications import messages
from daemon.platform import outbox
from daemon.platform.db import Database
from daemon.platform.deps import Deps
from daemon.platform.secrets import Keyring
from daemon.webhooks import catalog, endpoints, manage
from tests.http_fixtures import (
    deps_fixture,  # noqa: F401 (the "deps" fixture)
    serving,
)

BOX = Keyring(bytes(range(32)))


@pytest.fixture
async def document(deps: Deps) -> dict[str, Any]:
    with trio.fail_after(20):
        async with serving(deps) as client:
            response = await client.get("/openapi.json")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def body_schema(document: dict[str, Any], event_type: str) -> dict[str, Any]:
    """The request body schema of that webhook, resolvable against the document."""
    post = document["webhooks"][event_type]["post"]
    ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    return {"$ref": ref, "components": document["components"]}


def resolve(document: dict[str, Any], ref: str) -> dict[str, Any]:
    prefix = "#/components/schemas/"
    assert ref.startswith(prefix)
    schema: dict[str, Any] = document["components"]["schemas"][ref.removeprefix(prefix)]
    return schema


async def test_every_event_type_is_a_documented_webhook(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    assert set(document["webhooks"]) == set(outbox.EVENT_TYPES)
    for event_type, summary in outbox.EVENT_TYPES.items():
        post = document["webhooks"][event_type]["post"]
        assert post["summary"] == summary
        headers = {p["name"]: p for p in post["parameters"] if p["in"] == "header"}
        assert {"webhook-id", "webhook-timestamp", "webhook-signature"} <= set(headers)
        assert all(headers[h]["required"] for h in ("webhook-id", "webhook-signature"))
        envelope = resolve(document, body_schema(document, event_type)["$ref"])
        assert set(envelope["required"]) == {"id", "type", "timestamp", "data"}
        assert envelope["properties"]["type"]["const"] == event_type
        data = resolve(document, envelope["properties"]["data"]["$ref"])
        assert data["type"] == "object" and data["properties"]
        assert "2XX" in post["responses"]


async def test_payment_events_document_the_resource_generically(document: dict[str, Any]) -> None:
    for event_type in [t for t in outbox.EVENT_TYPES if t.split(".")[0] in ("payment", "refund")]:
        envelope = resolve(document, body_schema(document, event_type)["$ref"])
        data = resolve(document, envelope["properties"]["data"]["$ref"])
        assert {"id", "status", "amount", "currency"} <= set(data["required"]), event_type
        assert data["properties"]["amount"]["type"] == "integer"
        assert data.get("additionalProperties", True) is not False
    # A payment resource with members this document does not name is still valid.
    validator = jsonschema_rs.validator_for(body_schema(document, "payment.succeeded"))
    payment = {
        "id": "pay_1",
        "status": "succeeded",
        "amount": 3000,
        "currency": "EUR",
        "customer": {"uisp_client_id": 1},
        "metadata": {},
        "provider": "stripe",
    }
    body = {
        "id": "evt_" + "0" * 32,
        "type": "payment.succeeded",
        "timestamp": "2026-01-01T00:00:00Z",
    }
    validator.validate({**body, "data": payment})
    assert not validator.is_valid({**body, "data": {"id": "pay_1", "status": "succeeded"}})
    assert not validator.is_valid({**body, "type": "payment.failed", "data": payment})


async def test_the_events_the_stores_emit_match_the_document(
    document: dict[str, Any], db: Database
) -> None:
    async with db.transaction() as tx:
        ok = await tasks.create(
            tx, dedupe_key="a", webhook_uuid=None, action="activate", service_id=1,
            client_id=2, olt_name="olt", onu="0/1/1:1",
        )  # fmt: skip
        bad = await tasks.create(
            tx, dedupe_key="b", webhook_uuid=None, action="deactivate", service_id=3,
            olt_name="olt", onu="0/1/1:2",
        )  # fmt: skip
        assert ok is not None and bad is not None
        await tasks.finish(tx, ok, "succeeded", output="done")
        await tasks.finish(tx, bad, "failed", error="Failure: The ONT does not exist")
        sms = await messages.queue_for_task(tx, ok, "+34 600 111 222", "hi", "labsmobile")
        assert sms is not None
        await messages.finish(tx, sms, "sent", None, "labsmobile", "ref-1")
        gone, _secret = await endpoints.create(tx, BOX, url="https://gone.example/")
        assert await endpoints.disable(tx, gone.id, "gone", "HTTP 410")
        pinged, _secret = await endpoints.create(tx, BOX, url="https://ping.example/")
    await manage.send_test(db, pinged.id, by="a test")
    ids = [r["id"] for r in await db.fetch("SELECT id FROM events ORDER BY seq")]
    emitted = [await outbox.get(db, event_id) for event_id in ids]
    assert [e.type for e in emitted if e] == [
        "reconnection.succeeded",
        "disconnection.failed",
        "sms.sent",
        "endpoint.disabled",
        "webhook.test",
    ]
    for event in emitted:
        assert event is not None
        jsonschema_rs.validator_for(body_schema(document, event.type)).validate(event.payload())
        catalog.envelope(event.type).model_validate(event.payload())


def test_an_event_type_without_a_data_model_is_refused() -> None:
    with pytest.raises(KeyError):
        catalog.data_model("payment.exploded")
