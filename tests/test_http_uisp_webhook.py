"""UISP webhooks over real HTTP into a real PostgreSQL: what UISP (and an attacker) see."""

from __future__ import annotations

import json
import logging
import uuid
from http import HTTPStatus
from typing import Any

import pytest
import trio

from daemon.platform import queues
from daemon.platform.config import HttpConfig, UispConfig
from daemon.platform.db import Database
from daemon.platform.deps import Deps
from daemon.uisp.webhooks import QUEUE as UISP_QUEUE
from tests.http_fixtures import (
    WEBHOOK_PATH,
    assert_problem,
    deps_fixture,  # noqa: F401 (the "deps" fixture)
    make_deps,
    serving,
    uisp_event,
)


async def stored_webhooks(db: Database) -> list[dict[str, Any]]:
    rows = await db.fetch("SELECT * FROM uisp_webhooks ORDER BY received_at")
    return [dict(r) for r in rows]


async def queued_messages(db: Database) -> list[dict[str, Any]]:
    return [m.message for m in await queues.read(db, UISP_QUEUE, 30, 100)]


def webhook_count(deps: Deps, outcome: str) -> float:
    value = deps.metrics.registry.get_sample_value(
        "paymentd_webhooks_total", {"source": "uisp", "outcome": outcome}
    )
    return value or 0.0


async def test_a_payment_event_is_stored_and_queued_once(deps: Deps, db: Database) -> None:
    with trio.fail_after(20):
        body = uisp_event("payment.add", 1234, change_type="insert", entity="payment")
        with deps.events.subscribe() as live:
            async with serving(deps) as client:
                response = await client.post(WEBHOOK_PATH, json=body)
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/json"
            assert response.json() == {"status": "queued"}

            [row] = await stored_webhooks(db)
            assert row["uuid"] == uuid.UUID(body["uuid"])
            assert (row["event_name"], row["entity"], row["entity_id"]) == (
                "payment.add",
                "payment",
                1234,
            )
            assert (row["change_type"], row["deliveries"]) == ("insert", 1)
            assert row["body"] == body
            assert await queued_messages(db) == [{"uuid": body["uuid"]}]
            assert webhook_count(deps, "queued") == 1
            event = live.receive_nowait()
            assert event.kind == "webhook.received"
            assert event.data["uuid"] == body["uuid"]
            assert event.data["event"] == "payment.add"
            assert (event.data["entity_id"], event.data["outcome"]) == (1234, "queued")


async def test_redeliveries_count_but_queue_nothing_more(deps: Deps, db: Database) -> None:
    with trio.fail_after(20):
        body = uisp_event()
        async with serving(deps) as client:
            answers = [(await client.post(WEBHOOK_PATH, json=body)).json() for _ in range(3)]
        assert answers == [{"status": "queued"}, {"status": "duplicate"}, {"status": "duplicate"}]
        [row] = await stored_webhooks(db)
        assert row["deliveries"] == 3
        assert await queued_messages(db) == [{"uuid": body["uuid"]}]
        assert webhook_count(deps, "duplicate") == 2


async def test_concurrent_redeliveries_store_and_queue_once(deps: Deps, db: Database) -> None:
    """UISP (or a proxy) retrying while the first delivery is still in flight."""
    with trio.fail_after(20):
        body = uisp_event()
        answers: list[str] = []
        async with serving(deps) as client:

            async def post() -> None:
                answers.append((await client.post(WEBHOOK_PATH, json=body)).json()["status"])

            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(post)
        assert sorted(answers) == ["duplicate"] * 4 + ["queued"]
        [row] = await stored_webhooks(db)
        assert row["deliveries"] == 5
        assert await queued_messages(db) == [{"uuid": body["uuid"]}]


async def test_an_entity_id_sent_as_a_string_of_digits_is_accepted(
    deps: Deps, db: Database
) -> None:
    with trio.fail_after(20):
        async with serving(deps) as client:
            response = await client.post(WEBHOOK_PATH, json=uisp_event(entity_id="987"))
        assert response.json() == {"status": "queued"}
        [row] = await stored_webhooks(db)
        assert row["entity_id"] == 987


async def test_the_uisp_test_event_is_answered_and_forgotten(deps: Deps, db: Database) -> None:
    with trio.fail_after(20):
        # Exactly what UISP's "Test Endpoint" button sends.
        body = uisp_event("test", None, change_type="test", entity="webhook")
        body["extraData"] = {"entity": None, "entityBeforeEdit": None}
        async with serving(deps) as client:
            response = await client.post(WEBHOOK_PATH, json=body)
        assert (response.status_code, response.json()) == (200, {"status": "test"})
        assert await stored_webhooks(db) == []
        assert await queued_messages(db) == []
        assert webhook_count(deps, "test") == 1


def _without(key: str) -> bytes:
    body = uisp_event()
    del body[key]
    return json.dumps(body).encode()


def _with(key: str, value: Any) -> bytes:
    return json.dumps({**uisp_event(), key: value}).encode()


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        pytest.param(b'{"uuid": "2c6984d7-03ae-4e48-a212-7b99378837a2",', "body", id="truncated"),
        pytest.param(b"[1, 2]", "body", id="not-an-object"),
        pytest.param(b"\xff\xfe", "body", id="not-utf8"),
        pytest.param(_with("entityId", float("nan")), "body", id="nan"),
        pytest.param(_without("uuid"), "uuid", id="missing-uuid"),
        pytest.param(_with("uuid", "not-a-uuid"), "uuid", id="bad-uuid"),
        pytest.param(_with("entityId", "abc"), "entityId", id="entity-id-abc"),
        pytest.param(_with("entityId", None), "entityId", id="entity-id-null"),
        pytest.param(_with("entityId", True), "entityId", id="entity-id-bool"),
        pytest.param(_with("entityId", -1), "entityId", id="entity-id-negative"),
        pytest.param(_with("entityId", 2**63), "entityId", id="entity-id-over-bigint"),
        pytest.param(_with("eventName", 5), "eventName", id="event-name-number"),
        pytest.param(_without("entity"), "entity", id="missing-entity"),
        pytest.param(_with("changeType", ""), "changeType", id="empty-change-type"),
        pytest.param(_with("extraData", [1]), "extraData", id="extra-data-list"),
        pytest.param(
            b'{"uuid": "2c6984d7-03ae-4e48-a212-7b99378837a2", "uuid": "x"}',
            "uuid",
            id="duplicate-key",
        ),
    ],
)
async def test_malformed_bodies_are_refused_and_nothing_is_stored(
    deps: Deps, db: Database, raw: bytes, field: str
) -> None:
    with trio.fail_after(20):
        async with serving(deps) as client:
            response = await client.post(
                WEBHOOK_PATH, content=raw, headers={"Content-Type": "application/json"}
            )
        problem = assert_problem(response, 400)
        assert problem["field"] == field
        assert field == "body" or field in problem["detail"]
        assert await stored_webhooks(db) == []
        assert await queued_messages(db) == []
        assert webhook_count(deps, "bad_request") == 1


def _extra(raw_value: str) -> bytes:
    """A valid event whose extraData carries ``raw_value`` as written (raw JSON text)."""
    body = json.dumps({**uisp_event(), "extraData": None})
    return body.replace('"extraData": null', f'"extraData": {{"x": {raw_value}}}').encode()


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        pytest.param(_with("eventName", "pay\x00ment.add"), "eventName", id="nul-in-a-field"),
        pytest.param(_extra('"a\\u0000b"'), "extraData", id="nul-deep-inside"),
        pytest.param(_extra('{"k\\u0000": 1}'), "body", id="nul-in-a-key"),
        pytest.param(_with("entity", "\ud800"), "entity", id="lone-surrogate"),
        pytest.param(_extra('"\\udfff"'), "extraData", id="lone-low-surrogate-deep"),
        pytest.param(_extra("1e400"), "body", id="float-overflow"),
        pytest.param(_extra("-1e400"), "body", id="float-overflow-negative"),
        pytest.param(_extra("1" * 4301), "body", id="integer-of-4301-digits"),
        pytest.param(_extra("[" * 5000 + "]" * 5000), "body", id="nested-5000-deep"),
        pytest.param(_extra("[" * 40 + "]" * 40), "body", id="nested-past-the-limit"),
    ],
)
async def test_bodies_the_database_cannot_store_are_400_not_500(
    deps: Deps, db: Database, raw: bytes, field: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Defect 18: these answered 500 with an ERROR traceback."""
    with trio.fail_after(20):
        async with serving(deps) as client:
            response = await client.post(
                WEBHOOK_PATH, content=raw, headers={"Content-Type": "application/json"}
            )
        assert assert_problem(response, 400)["field"] == field
        assert await stored_webhooks(db) == []
        assert await queued_messages(db) == []
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "application/jsonx", "json"],
)
async def test_a_body_that_is_not_declared_json_is_415(
    deps: Deps, db: Database, content_type: str | None
) -> None:
    with trio.fail_after(20):
        headers = {} if content_type is None else {"Content-Type": content_type}
        async with serving(deps) as client:
            response = await client.post(
                WEBHOOK_PATH, content=json.dumps(uisp_event()).encode(), headers=headers
            )
        assert_problem(response, 415)
        assert response.headers["accept-post"] == "application/json"
        assert await stored_webhooks(db) == []
        assert webhook_count(deps, "unsupported_media_type") == 1


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/x+json",
    ],
)
async def test_json_with_or_without_charset_is_accepted(
    deps: Deps, db: Database, content_type: str
) -> None:
    with trio.fail_after(20):
        async with serving(deps) as client:
            response = await client.post(
                WEBHOOK_PATH,
                content=json.dumps(uisp_event()).encode(),
                headers={"Content-Type": content_type},
            )
        assert response.json() == {"status": "queued"}
        assert len(await stored_webhooks(db)) == 1


async def read_response(stream: trio.SocketStream) -> bytes:
    """One HTTP/1.1 response with a Content-Length body, read off a raw stream."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        raw += await stream.receive_some()
    head, _, body = raw.partition(b"\r\n\r\n")
    [length] = [
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    ]
    while len(body) < length:
        body += await stream.receive_some()
    return head + b"\r\n\r\n" + body


async def test_a_body_over_the_limit_is_refused_with_413(deps: Deps, db: Database) -> None:
    with trio.fail_after(20):
        async with serving(deps) as client:
            # Raw socket: the server answers as soon as it sees the Content-Length, before
            # the body is sent, which httpx (rightly) reports as an aborted upload.
            host, port = client.base_url.host, client.base_url.port
            assert port is not None
            stream = await trio.open_tcp_stream(host, port)
            async with stream:
                size = 1024 * 1024 + 1
                await stream.send_all(
                    f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: {host}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n".encode()
                    + b'{"uuid": "'
                )
                raw = await read_response(stream)
            # A later, well-behaved request on a new connection is unaffected.
            ok = await client.post(WEBHOOK_PATH, json=uisp_event())
        head, _, payload = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413 ")
        assert b"content-type: application/problem+json" in head.lower()
        problem = json.loads(payload)
        # "Content Too Large" since Python 3.13 (RFC 9110), "Request Entity Too Large" before.
        assert (problem["status"], problem["title"]) == (413, HTTPStatus(413).phrase)
        assert str(1024 * 1024) in problem["detail"]
        assert ok.json() == {"status": "queued"}
        assert len(await stored_webhooks(db)) == 1
        assert webhook_count(deps, "too_large") == 1


async def test_a_wrong_token_looks_exactly_like_an_unknown_url(deps: Deps, db: Database) -> None:
    with trio.fail_after(20):
        async with serving(deps) as client:
            unknown = await client.post("/no/such/route", json=uisp_event())
            wrong = await client.post("/webhooks/uisp/guess", json=uisp_event())
            # Any method: a 405 would confirm the path exists.
            probe = await client.get("/webhooks/uisp/guess")
            options = await client.options("/webhooks/uisp/guess")
            right_token_wrong_method = await client.get(WEBHOOK_PATH)
        assert assert_problem(wrong, 404) == assert_problem(unknown, 404)
        assert assert_problem(probe, 404) == assert_problem(unknown, 404)
        assert_problem(options, 404)
        assert_problem(right_token_wrong_method, 405)
        assert right_token_wrong_method.headers["allow"] == "POST"
        assert await stored_webhooks(db) == []
        assert webhook_count(deps, "not_found") == 3


async def test_an_empty_configured_token_disables_the_endpoint(db: Database) -> None:
    with trio.fail_after(20):
        deps = make_deps(db, uisp=UispConfig(webhook_token=""))
        async with serving(deps) as client:
            empty = await client.post("/webhooks/uisp/", json=uisp_event())
            anything = await client.post("/webhooks/uisp/x", json=uisp_event())
        assert_problem(empty, 404)
        assert_problem(anything, 404)
        assert await stored_webhooks(db) == []


async def test_an_unreachable_database_answers_503_with_retry_after(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(20):
        # A pool with no connections yet, pointing at a port nobody listens on: the first
        # acquire fails the way a stopped PostgreSQL does.
        with trio.socket.socket() as sock:
            await sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        url = f"postgresql://postgres@127.0.0.1:{port}/paymentd"
        async with Database.open(url, min_size=0, max_size=1) as down:
            deps = make_deps(down, http=HttpConfig(port=0, admin_token="t"))
            async with serving(deps) as client:
                response = await client.post(WEBHOOK_PATH, json=uisp_event())
                ready = await client.get("/readyz")
        assert_problem(response, 503)
        assert int(response.headers["retry-after"]) > 0
        assert webhook_count(deps, "unavailable") == 1
        problem = assert_problem(ready, 503)
        # Defect 9: the unauthenticated probe said what the driver said (host, port,
        # errno); now that goes to the log only.
        assert problem["database"] == "unavailable"
        assert str(port) not in ready.text
        assert "onnect" not in ready.text
        assert any(
            "/readyz" in r.getMessage() and str(port) in r.getMessage() for r in caplog.records
        )
