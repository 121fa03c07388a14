"""The webhook admin API, over real HTTP (the ingress actor) on a real database."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from daemon.platform import auth, outbox
from daemon.platform.config import SecretsConfig
from daemon.platform.db import Database
from daemon.platform.deps import Deps
from daemon.platform.secrets import keygen, load_keyring
from daemon.webhooks import deliveries, endpoints
from tests.http_fixtures import ADMIN, assert_problem, make_deps, serving

BASE = "/api/v1/webhooks"


@pytest.fixture
def deps(db: Database, tmp_path: Path) -> Deps:
    key = tmp_path / "secret.key"
    keygen(key)
    return make_deps(db, secrets=SecretsConfig(key_file=str(key)))


@pytest.fixture
async def client(deps: Deps) -> AsyncIterator[httpx.AsyncClient]:
    with trio.fail_after(60):
        async with serving(deps) as served:
            yield served


async def add_endpoint(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post(
        f"{BASE}/endpoints", json={"url": "https://partner.example/hooks", **body}, headers=ADMIN
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def failed_delivery(db: Database, endpoint_id: str, event_type: str = "sms.sent") -> int:
    """An event delivered to the endpoint that ran out of attempts (as the dispatcher
    leaves it)."""
    async with db.transaction() as tx:
        event = await outbox.emit(tx, event_type, {"sms_id": 1})
        delivery_id: int = await tx.fetchval(
            "INSERT INTO webhook_deliveries (event_id, endpoint_id, state, attempts,"
            " next_attempt_at, last_status_code, last_error, finished_at)"
            " VALUES ($1, $2, 'failed', 8, NULL, 500, 'HTTP 500', now()) RETURNING id",
            event.id,
            endpoint_id,
        )
        await tx.execute(
            "INSERT INTO webhook_attempts (delivery_id, attempt, started_at, duration_ms, url,"
            " address, status_code, response_body)"
            " VALUES ($1, 1, now(), 12, 'https://partner.example/hooks', '203.0.113.5', 500,"
            " 'oops')",
            delivery_id,
        )
    return delivery_id


async def test_create_shows_the_secret_once_and_never_again(
    client: httpx.AsyncClient, deps: Deps, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    created = await add_endpoint(
        client,
        url="https://partner.example/hooks?token=url-token",
        description="billing",
        event_types=["payment.*", "sms.sent"],
        max_concurrency=2.0,
    )
    secret = created["secret"]
    assert secret.startswith("whsec_") and len(endpoints.secret_key(secret)) >= 24
    endpoint = created["endpoint"]
    assert endpoint["id"].startswith("ep_") and endpoint["enabled"] is True
    assert (endpoint["event_types"], endpoint["max_concurrency"]) == (["payment.*", "sms.sent"], 2)
    assert endpoint["legacy_signature"] is False and endpoint["rate_limit_per_second"] is None

    listed = await client.get(f"{BASE}/endpoints", headers=ADMIN)
    one = await client.get(f"{BASE}/endpoints/{endpoint['id']}", headers=ADMIN)
    assert listed.status_code == 200 and one.status_code == 200
    assert [e["id"] for e in listed.json()["endpoints"]] == [endpoint["id"]]
    [meta] = one.json()["secrets"]
    assert meta["expires_at"] is None and set(meta) == {
        "id",
        "endpoint_id",
        "created_at",
        "expires_at",
    }
    key_part = secret.removeprefix("whsec_")
    for text in (listed.text, one.text, caplog.text):
        assert key_part not in text
    assert "created by the admin token" in caplog.text and "url-token" not in caplog.text
    # Stored under the keyring, never in the clear; it decrypts to what was shown.
    stored = await db.fetchval("SELECT secret_enc FROM webhook_secrets")
    assert key_part not in stored
    box = load_keyring(deps.config.secrets)
    assert await endpoints.active_secrets(db, box, endpoint["id"]) == [secret]


async def test_a_given_secret_is_used_and_a_bad_one_refused(client: httpx.AsyncClient) -> None:
    mine = "whsec_" + "A" * 43 + "="
    created = await add_endpoint(client, secret=mine)
    assert created["secret"] == mine
    short = await client.post(
        f"{BASE}/endpoints",
        json={"url": "https://p.example/", "secret": "whsec_c2hvcnQ="},
        headers=ADMIN,
    )
    body = assert_problem(short, 400)
    assert body["field"] == "secret" and "c2hvcnQ" not in short.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "https://ops:hunter2@partner.example/"}, "url"),
        ({"url": "ftp://partner.example/"}, "url"),
        ({"url": "https://p.example/", "event_types": ["payment.exploded"]}, "event_types"),
        ({"url": "https://p.example/", "event_types": ["invoice.*"]}, "event_types"),
        ({"url": "https://p.example/", "event_types": []}, "event_types"),
        ({"url": "https://p.example/", "enabled": "true"}, "enabled"),
        ({"url": "https://p.example/", "max_concurrency": 0}, "max_concurrency"),
        ({"url": "https://p.example/", "max_concurrency": "3"}, "max_concurrency"),
        ({"url": "https://p.example/", "rate_limit_per_second": 2.5}, "rate_limit_per_second"),
        ({"url": "https://p.example:65536/"}, "url"),
        ({"url": "https://[2001:db8::1/"}, "url"),
        ({"url": "https://[partner.example]/"}, "url"),
        ({"url": "https://p.example/#top"}, "url"),
        ({"url": "https://p.example/", "colour": "blue"}, "colour"),
        ({"description": "no url"}, "url"),
    ],
)
async def test_bad_endpoints_are_refused_naming_the_field(
    client: httpx.AsyncClient, db: Database, body: dict[str, Any], field: str
) -> None:
    response = await client.post(f"{BASE}/endpoints", json=body, headers=ADMIN)
    problem = assert_problem(response, 400)
    assert problem["field"].split(".")[0] == field, problem
    assert "hunter2" not in response.text
    assert await db.fetchval("SELECT count(*) FROM webhook_endpoints") == 0


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/deliveries?endpoint_id=ep_1%00x", "endpoint_id"),
        ("/deliveries?event_id=evt_%00", "event_id"),
        ("/deliveries?event_type=sms.%00", "event_type"),
        ("/endpoints?after=ep_%00", "after"),
    ],
)
async def test_a_nul_in_a_filter_is_a_400_not_a_database_error(
    client: httpx.AsyncClient, path: str, field: str
) -> None:
    # PostgreSQL text cannot hold NUL: passed through, the query failed with a 500.
    problem = assert_problem(await client.get(f"{BASE}{path}", headers=ADMIN), 400)
    assert problem["field"] == field


async def test_an_ipv6_literal_url_is_an_endpoint_like_any_other(
    client: httpx.AsyncClient,
) -> None:
    # The CLI took it; the API's URL pattern refused every '[' (the SSRF guard, not the
    # pattern, decides which addresses may be reached).
    created = await add_endpoint(client, url="https://[2001:db8::1]:8443/in?x=1")
    assert created["endpoint"]["url"] == "https://[2001:db8::1]:8443/in?x=1"


async def test_bodies_must_be_json(client: httpx.AsyncClient) -> None:
    plain = await client.post(f"{BASE}/endpoints", content=b'{"url": "https://p.example/"}')
    assert_problem(plain, 401)  # the scope is checked before anything is read
    typed = await client.post(
        f"{BASE}/endpoints", content=b'{"url": "https://p.example/"}', headers=ADMIN
    )
    assert_problem(typed, 415)
    broken = await client.post(
        f"{BASE}/endpoints",
        content=b'{"url": "https://p.example/", "url": "x"}',
        headers={**ADMIN, "Content-Type": "application/json"},
    )
    assert assert_problem(broken, 400)["field"] == "url"


async def test_listing_pages_by_id_and_filters_by_enabled(client: httpx.AsyncClient) -> None:
    ids = sorted([(await add_endpoint(client))["endpoint"]["id"] for _ in range(3)])
    off = (await add_endpoint(client, enabled=False))["endpoint"]
    first = (await client.get(f"{BASE}/endpoints?limit=2", headers=ADMIN)).json()
    assert len(first["endpoints"]) == 2 and first["next_after"] is not None
    rest = await client.get(f"{BASE}/endpoints?after={first['next_after']}", headers=ADMIN)
    seen = [e["id"] for e in first["endpoints"] + rest.json()["endpoints"]]
    assert seen == sorted([*ids, off["id"]]) and rest.json()["next_after"] is None
    disabled = (await client.get(f"{BASE}/endpoints?enabled=false", headers=ADMIN)).json()
    assert [e["id"] for e in disabled["endpoints"]] == [off["id"]]
    assert disabled["endpoints"][0]["disabled_reason"] == "operator"
    assert_problem(await client.get(f"{BASE}/endpoints?limit=0", headers=ADMIN), 400)


async def test_update_changes_only_what_is_given(client: httpx.AsyncClient) -> None:
    endpoint = (await add_endpoint(client, rate_limit_per_second=5))["endpoint"]
    url = f"{BASE}/endpoints/{endpoint['id']}"
    changed = await client.patch(
        url,
        json={"url": "http://127.0.0.1:9/in", "event_types": ["reconnection.*"], "enabled": False},
        headers=ADMIN,
    )
    assert changed.status_code == 200, changed.text
    after = changed.json()["endpoint"]
    assert (after["url"], after["event_types"], after["enabled"]) == (
        "http://127.0.0.1:9/in",
        ["reconnection.*"],
        False,
    )
    assert after["disabled_reason"] == "operator" and after["rate_limit_per_second"] == 5
    again = await client.patch(
        url, json={"enabled": True, "rate_limit_per_second": None}, headers=ADMIN
    )
    assert again.json()["endpoint"]["enabled"] is True
    assert again.json()["endpoint"]["disabled_reason"] is None
    assert again.json()["endpoint"]["rate_limit_per_second"] is None
    assert again.json()["endpoint"]["description"] == endpoint["description"]

    assert (
        assert_problem(await client.patch(url, json={"url": None}, headers=ADMIN), 400)["field"]
        == "url"
    )
    bad = await client.patch(url, json={"url": "https://u:p@x.example/"}, headers=ADMIN)
    assert assert_problem(bad, 400)["field"] == "url"
    unknown = f"{BASE}/endpoints/ep_{'0' * 24}"
    assert_problem(await client.patch(unknown, json={"enabled": True}, headers=ADMIN), 404)
    assert_problem(await client.patch(f"{BASE}/endpoints/nope", json={}, headers=ADMIN), 404)


async def test_delete_removes_the_endpoint_and_its_deliveries(
    client: httpx.AsyncClient, db: Database
) -> None:
    endpoint = (await add_endpoint(client))["endpoint"]
    await failed_delivery(db, endpoint["id"])
    url = f"{BASE}/endpoints/{endpoint['id']}"
    deleted = await client.delete(url, headers=ADMIN)
    assert (deleted.status_code, deleted.json()) == (200, {"deleted": endpoint["id"]})
    assert_problem(await client.get(url, headers=ADMIN), 404)
    assert_problem(await client.delete(url, headers=ADMIN), 404)
    assert await db.fetchval("SELECT count(*) FROM webhook_deliveries") == 0
    assert await db.fetchval("SELECT count(*) FROM webhook_secrets") == 0


async def test_rotation_keeps_the_old_secret_signing_for_the_overlap(
    client: httpx.AsyncClient, deps: Deps, db: Database
) -> None:
    created = await add_endpoint(client)
    endpoint_id, old = created["endpoint"]["id"], created["secret"]
    rotated = await client.post(
        f"{BASE}/endpoints/{endpoint_id}/rotate-secret", json={}, headers=ADMIN
    )
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["secret"]
    assert new.startswith("whsec_") and new != old
    newest, previous = rotated.json()["secrets"]
    assert newest["expires_at"] is None
    left = dt.datetime.fromisoformat(previous["expires_at"]) - dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=23) < left <= dt.timedelta(hours=24)
    box = load_keyring(deps.config.secrets)
    assert await endpoints.active_secrets(db, box, endpoint_id) == [new, old]
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=25)
    assert await endpoints.active_secrets(db, box, endpoint_id, now=later) == [new]
    # Neither secret shows in the endpoint's own page.
    page = (await client.get(f"{BASE}/endpoints/{endpoint_id}", headers=ADMIN)).text
    assert old.removeprefix("whsec_") not in page and new.removeprefix("whsec_") not in page

    at_once = await client.post(
        f"{BASE}/endpoints/{endpoint_id}/rotate-secret",
        json={"overlap_seconds": 0},
        headers=ADMIN,
    )
    assert await endpoints.active_secrets(db, box, endpoint_id) == [at_once.json()["secret"]]
    refused = await client.post(
        f"{BASE}/endpoints/{endpoint_id}/rotate-secret",
        json={"overlap_seconds": -1},
        headers=ADMIN,
    )
    assert assert_problem(refused, 400)["field"] == "overlap_seconds"
    missing = f"{BASE}/endpoints/ep_{'0' * 24}/rotate-secret"
    assert_problem(await client.post(missing, json={}, headers=ADMIN), 404)


async def test_the_test_ping_goes_to_that_endpoint_only(
    client: httpx.AsyncClient, db: Database
) -> None:
    target = (await add_endpoint(client))["endpoint"]
    everything = (await add_endpoint(client, event_types=["*"]))["endpoint"]
    sent = await client.post(f"{BASE}/endpoints/{target['id']}/test", headers=ADMIN)
    assert sent.status_code == 202, sent.text
    body = sent.json()
    event = await outbox.get(db, body["event_id"])
    assert event is not None and event.type == "webhook.test"
    assert event.data["endpoint_id"] == target["id"]
    assert body["delivery"]["endpoint_id"] == target["id"]
    assert body["delivery"]["state"] == "pending"
    # The fan-out of the ping (its outbox message) adds no delivery for the "*" endpoint.
    async with db.transaction() as tx:
        now = await tx.fetchval("SELECT now()")
        assert await deliveries.fan_out(tx, event.id, event.type, now) == 0
    rows = await db.fetch("SELECT endpoint_id FROM webhook_deliveries")
    assert [r["endpoint_id"] for r in rows] == [target["id"]]
    assert everything["id"] != target["id"]

    await client.patch(f"{BASE}/endpoints/{target['id']}", json={"enabled": False}, headers=ADMIN)
    assert_problem(await client.post(f"{BASE}/endpoints/{target['id']}/test", headers=ADMIN), 409)
    assert_problem(await client.post(f"{BASE}/endpoints/ep_{'1' * 24}/test", headers=ADMIN), 404)


async def test_recover_resends_the_failed_deliveries_since_a_time(
    client: httpx.AsyncClient, db: Database
) -> None:
    endpoint = (await add_endpoint(client))["endpoint"]
    other = (await add_endpoint(client))["endpoint"]
    old = await failed_delivery(db, endpoint["id"])
    await db.execute(
        "UPDATE webhook_deliveries SET created_at = now() - interval '3 days' WHERE id = $1", old
    )
    recent = [await failed_delivery(db, endpoint["id"]) for _ in range(2)]
    elsewhere = await failed_delivery(db, other["id"])
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).isoformat()
    url = f"{BASE}/endpoints/{endpoint['id']}/recover"
    response = await client.post(url, json={"since": since}, headers=ADMIN)
    assert response.status_code == 202, response.text
    assert response.json() == {"recovered": 2}
    states = dict(await db.fetch("SELECT id, state FROM webhook_deliveries"))
    assert [states[i] for i in recent] == ["pending", "pending"]
    assert (states[old], states[elsewhere]) == ("failed", "failed")
    # The dispatcher is woken (the outbox queue carries a nudge).
    assert (
        await db.fetchval(f"SELECT count(*) FROM pgmq.q_{outbox.QUEUE} WHERE message ? 'nudge'")
        == 1
    )

    for bad in ({"since": "2026-01-01T00:00:00"}, {"since": "yesterday"}, {"since": 0}, {}):
        response = await client.post(url, json=bad, headers=ADMIN)
        assert assert_problem(response, 400)["field"] == "since"
    await client.patch(f"{BASE}/endpoints/{endpoint['id']}", json={"enabled": False}, headers=ADMIN)
    assert_problem(await client.post(url, json={"since": since}, headers=ADMIN), 409)


async def test_deliveries_are_listed_filtered_and_paged_with_their_attempts(
    client: httpx.AsyncClient, db: Database
) -> None:
    a = (await add_endpoint(client))["endpoint"]["id"]
    b = (await add_endpoint(client))["endpoint"]["id"]
    mine = [await failed_delivery(db, a, "sms.sent") for _ in range(3)]
    theirs = await failed_delivery(db, b, "reconnection.failed")
    await db.execute(
        "UPDATE webhook_deliveries SET created_at = now() - interval '2 hours' WHERE id = $1",
        mine[0],
    )

    everything = (await client.get(f"{BASE}/deliveries", headers=ADMIN)).json()
    assert [d["id"] for d in everything["deliveries"]] == [theirs, *reversed(mine)]
    page = (await client.get(f"{BASE}/deliveries?endpoint_id={a}&limit=2", headers=ADMIN)).json()
    assert [d["id"] for d in page["deliveries"]] == [mine[2], mine[1]]
    rest = await client.get(
        f"{BASE}/deliveries?endpoint_id={a}&before_id={page['next_before_id']}", headers=ADMIN
    )
    assert [d["id"] for d in rest.json()["deliveries"]] == [mine[0]]
    assert rest.json()["next_before_id"] is None
    by_type = (
        await client.get(f"{BASE}/deliveries?event_type=reconnection.failed", headers=ADMIN)
    ).json()
    assert [d["id"] for d in by_type["deliveries"]] == [theirs]
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    recent = await client.get(
        f"{BASE}/deliveries", params={"since": since, "endpoint_id": a}, headers=ADMIN
    )
    assert [d["id"] for d in recent.json()["deliveries"]] == [mine[2], mine[1]]
    none_pending = (await client.get(f"{BASE}/deliveries?state=pending", headers=ADMIN)).json()
    assert none_pending["deliveries"] == []
    assert_problem(await client.get(f"{BASE}/deliveries?state=lost", headers=ADMIN), 400)
    for bad_time in ("0.5", "2026-01-01T00:00:00", "2026-13-01T00:00:00Z"):
        refused = await client.get(f"{BASE}/deliveries", params={"until": bad_time}, headers=ADMIN)
        assert assert_problem(refused, 400)["field"] == "until"

    detail = (await client.get(f"{BASE}/deliveries/{mine[0]}", headers=ADMIN)).json()
    assert detail["delivery"]["id"] == mine[0] and detail["delivery"]["event_type"] == "sms.sent"
    [attempt] = detail["attempts"]
    assert (attempt["status_code"], attempt["duration_ms"], attempt["response_body"]) == (
        500,
        12,
        "oops",
    )
    assert_problem(await client.get(f"{BASE}/deliveries/999999", headers=ADMIN), 404)
    assert_problem(await client.get(f"{BASE}/deliveries/{2**63}", headers=ADMIN), 404)


async def test_retry_sends_a_delivery_again_now(client: httpx.AsyncClient, db: Database) -> None:
    endpoint = (await add_endpoint(client))["endpoint"]["id"]
    delivery_id = await failed_delivery(db, endpoint)
    retried = await client.post(f"{BASE}/deliveries/{delivery_id}/retry", headers=ADMIN)
    assert retried.status_code == 202, retried.text
    delivery = retried.json()["delivery"]
    assert delivery["state"] == "pending" and delivery["next_attempt_at"] is not None
    assert delivery["finished_at"] is None
    assert_problem(await client.post(f"{BASE}/deliveries/424242/retry", headers=ADMIN), 404)
    await client.patch(f"{BASE}/endpoints/{endpoint}", json={"enabled": False}, headers=ADMIN)
    assert_problem(await client.post(f"{BASE}/deliveries/{delivery_id}/retry", headers=ADMIN), 409)


async def test_the_routes_need_the_webhooks_manage_scope(
    client: httpx.AsyncClient, db: Database
) -> None:
    reader = await auth.create_key(db, "reader", [auth.PAYMENTS_READ, auth.ADMIN])
    manager = await auth.create_key(db, "partner ops", [auth.WEBHOOKS_MANAGE])
    refused = await client.get(
        f"{BASE}/endpoints", headers={"Authorization": f"Bearer {reader.key}"}
    )
    assert assert_problem(refused, 403)["scope"] == "webhooks:manage"
    assert_problem(await client.get(f"{BASE}/deliveries"), 401)
    allowed = await client.post(
        f"{BASE}/endpoints",
        json={"url": "https://p.example/"},
        headers={"Authorization": f"Bearer {manager.key}"},
    )
    assert allowed.status_code == 201
    # A webhooks key cannot reach the rest of the admin API.
    tasks = await client.get("/api/v1/tasks", headers={"Authorization": f"Bearer {manager.key}"})
    assert_problem(tasks, 403)
