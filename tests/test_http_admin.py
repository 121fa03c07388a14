"""The admin API, probes and metrics over real HTTP, on a real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import h11
import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from daemon.actors import http_ingress
from daemon.network.tasks import QUEUE as RECONNECT_QUEUE
from daemon.notifications.messages import QUEUE as SMS_QUEUE
from daemon.platform import queues
from daemon.platform.config import DaemonConfig, HttpConfig
from daemon.platform.db import Database
from daemon.platform.deps import Deps
from daemon.platform.events import EventBus
from daemon.platform.http.admin import EventStream
from daemon.uisp.webhooks import QUEUE as UISP_QUEUE
from daemon.wiring import QUEUE_NAMES
from tests.http_fixtures import (
    ADMIN,
    WEBHOOK_PATH,
    assert_problem,
    deps_fixture,  # noqa: F401 (the "deps" fixture)
    make_deps,
    serving,
    uisp_event,
)


async def add_task(db: Database, key: str, state: str = "failed") -> int:
    """A reconnect task row as the OLT worker leaves it."""
    task_id: int = await db.fetchval(
        "INSERT INTO reconnect_tasks (dedupe_key, action, client_id, client_name, phone,"
        " service_id, olt_name, onu, state, attempts, last_error, finished_at)"
        " VALUES ($1, 'activate', 7, 'Ana', '+34600000000', 42, 'olt-1', '0/1/3:12', $2, 5,"
        " CASE WHEN $2 = 'failed' THEN 'connection refused' END,"
        " CASE WHEN $2 IN ('failed', 'succeeded') THEN now() END) RETURNING id",
        key,
        state,
    )
    await db.execute(
        "INSERT INTO task_events (task_id, kind, detail) VALUES ($1, 'failed', $2::jsonb)",
        task_id,
        {"error": "connection refused"},
    )
    return task_id


async def test_the_admin_api_wants_the_bearer_token(deps: Deps, db: Database) -> None:
    with trio.fail_after(20):
        async with serving(deps) as client:
            missing = await client.get("/api/v1/tasks")
            wrong = await client.get("/api/v1/tasks", headers={"Authorization": "Bearer nope"})
            basic = await client.get("/api/v1/queues", headers={"Authorization": "Basic dDp0"})
            non_ascii = await client.get(
                "/api/v1/tasks", headers={b"Authorization": "Bearer é".encode("latin-1")}
            )
        for response in (missing, wrong, basic):
            assert_problem(response, 401)
            assert response.headers["www-authenticate"].startswith("Bearer")
        assert_problem(non_ascii, 401)
        assert 'error="invalid_token"' in wrong.headers["www-authenticate"]


async def test_an_empty_admin_token_disables_the_admin_api(db: Database) -> None:
    with trio.fail_after(20):
        deps = make_deps(db, http=HttpConfig(port=0, admin_token=""))
        async with serving(deps) as client:
            response = await client.get("/api/v1/tasks", headers={"Authorization": "Bearer x"})
        problem = assert_problem(response, 503)
        assert problem["detail"] == "admin API disabled: set http.admin_token"


async def test_without_an_admin_token_a_mistyped_api_key_is_a_401_not_an_outage(
    db: Database,
) -> None:
    with trio.fail_after(20):
        deps = make_deps(db, http=HttpConfig(port=0, admin_token=""))
        async with serving(deps) as client:
            mistyped = await client.get(
                "/api/v1/payments", headers={"Authorization": "Bearer pd_123_short"}
            )
            missing = await client.get("/api/v1/payments")
        for response in (mistyped, missing):
            problem = assert_problem(response, 401)
            assert "API key" in problem["detail"]
            assert response.headers["www-authenticate"].startswith("Bearer")
        assert 'error="invalid_token"' in mistyped.headers["www-authenticate"]


async def test_tasks_are_listed_newest_first_a_page_at_a_time(deps: Deps, db: Database) -> None:
    with trio.fail_after(20):
        ids = [
            await add_task(db, f"k{i}", state)
            for i, state in enumerate(["failed", "succeeded", "failed", "queued", "failed"])
        ]
        async with serving(deps) as client:
            everything = (await client.get("/api/v1/tasks", headers=ADMIN)).json()
            page1 = (await client.get("/api/v1/tasks?state=failed&limit=2", headers=ADMIN)).json()
            page2 = (
                await client.get(
                    "/api/v1/tasks",
                    params={"state": "failed", "limit": 2, "before_id": page1["next_before_id"]},
                    headers=ADMIN,
                )
            ).json()
        assert [t["id"] for t in everything["tasks"]] == ids[::-1]
        assert everything["next_before_id"] is None
        assert [t["id"] for t in page1["tasks"]] == [ids[4], ids[2]]
        assert page1["next_before_id"] == ids[2]
        assert [t["id"] for t in page2["tasks"]] == [ids[0]]
        assert page2["next_before_id"] is None
        # Datetimes travel as ISO 8601 with their offset.
        created = dt.datetime.fromisoformat(everything["tasks"][0]["created_at"])
        assert created.tzinfo is not None


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=ten", "limit"),
        ("state=lost", "state"),
        ("before_id=-3", "before_id"),
        ("before_id=x", "before_id"),
        ("sort=asc", "sort"),
    ],
)
async def test_a_bad_task_query_is_a_400_problem(deps: Deps, query: str, field: str) -> None:
    with trio.fail_after(20):
        async with serving(deps) as client:
            response = await client.get(f"/api/v1/tasks?{query}", headers=ADMIN)
        assert assert_problem(response, 400)["field"] == field


async def test_one_task_comes_with_its_events_and_sms(deps: Deps, db: Database) -> None:
    with trio.fail_after(20):
        task_id = await add_task(db, "svc-42")
        await db.execute(
            "INSERT INTO sms_messages (task_id, phone, body, state)"
            " VALUES ($1, $2, 'hola', 'sent')",
            task_id,
            "+34600000000",
        )
        async with serving(deps) as client:
            task = (await client.get(f"/api/v1/tasks/{task_id}", headers=ADMIN)).json()
            missing = await client.get("/api/v1/tasks/999999", headers=ADMIN)
            huge = await client.get(f"/api/v1/tasks/{2**70}", headers=ADMIN)
        assert (task["id"], task["state"], task["onu"]) == (task_id, "failed", "0/1/3:12")
        assert [(e["kind"], e["detail"]) for e in task["events"]] == [
            ("failed", {"error": "connection refused"})
        ]
        dt.datetime.fromisoformat(task["events"][0]["at"])
        assert (task["sms"]["phone"], task["sms"]["state"]) == ("+34600000000", "sent")
        assert assert_problem(missing, 404)["detail"] == "task 999999 not found"
        assert_problem(huge, 404)


async def test_a_failed_task_can_be_retried_once(deps: Deps, db: Database) -> None:
    with trio.fail_after(20):
        task_id = await add_task(db, "svc-7")
        async with serving(deps) as client:
            retried = await client.post(f"/api/v1/tasks/{task_id}/retry", headers=ADMIN)
            again = await client.post(f"/api/v1/tasks/{task_id}/retry", headers=ADMIN)
            missing = await client.post("/api/v1/tasks/424242/retry", headers=ADMIN)
        assert retried.status_code == 202
        body = retried.json()
        assert (body["id"], body["state"], body["attempts"], body["last_error"]) == (
            task_id,
            "queued",
            0,
            None,
        )
        [message] = await queues.read(db, RECONNECT_QUEUE, 30, 10)
        assert message.message == {"task_id": task_id}
        problem = assert_problem(again, 409)
        assert problem["state"] == "queued"
        assert "failed" in problem["detail"]
        assert_problem(missing, 404)


async def test_queue_statistics_and_gauges(deps: Deps, db: Database) -> None:
    with trio.fail_after(20):
        async with serving(deps) as client:
            await client.post(WEBHOOK_PATH, json=uisp_event())
            response = await client.get("/api/v1/queues", headers=ADMIN)
        stats = {q["queue"]: q for q in response.json()["queues"]}
        assert set(stats) == set(QUEUE_NAMES)
        assert stats[UISP_QUEUE]["depth"] == 1
        assert stats[UISP_QUEUE]["total_messages"] == 1
        assert stats[UISP_QUEUE]["oldest_age_seconds"] >= 0
        assert stats[SMS_QUEUE] == {
            "queue": SMS_QUEUE,
            "depth": 0,
            "oldest_age_seconds": None,
            "total_messages": 0,
        }
        assert deps.metrics.queue_depth.labels(UISP_QUEUE)._value.get() == 1


class SseClient:
    """A minimal Server-Sent Events client on h11 over a trio socket.

    Not httpx: its streaming generators cannot be closed deterministically when the test
    hangs up mid-stream, which ``filterwarnings = error`` rightly refuses.
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)
        self.response: h11.Response | None = None
        self._buffer = b""

    @classmethod
    @asynccontextmanager
    async def open(cls, base_url: str, path: str) -> AsyncIterator[SseClient]:
        url = httpx.URL(base_url)
        assert url.port is not None
        async with await trio.open_tcp_stream(url.host, url.port) as stream:
            client = cls(stream)
            headers = [("Host", f"{url.host}:{url.port}"), ("Accept", "text/event-stream")]
            headers += list(ADMIN.items())
            request = h11.Request(method="GET", target=path, headers=headers)
            await stream.send_all(client.conn.send(request) + client.conn.send(h11.EndOfMessage()))
            while client.response is None:
                event = await client._next_event()
                if isinstance(event, h11.Response):
                    client.response = event
            yield client

    async def _next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(await self.stream.receive_some())

    async def message(self) -> dict[str, Any] | None:
        """The next SSE message ({"comment": ...} for a comment line); None at the end."""
        while True:
            block, sep, rest = self._buffer.partition(b"\n\n")
            if sep:
                self._buffer = rest
                message: dict[str, Any] = {}
                for line in block.decode().split("\n"):
                    name, _, value = line.partition(":")
                    if name == "":
                        message["comment"] = value.strip()
                    else:
                        value = value.removeprefix(" ")
                        message[name] = json.loads(value) if name == "data" else value
                return message
            event = await self._next_event()
            if isinstance(event, h11.Data):
                self._buffer += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                assert self._buffer == b""
                return None


async def test_live_events_stream_a_received_webhook(deps: Deps, db: Database) -> None:
    with trio.fail_after(20):
        body = uisp_event("payment.add", "55", change_type="insert", entity="payment")
        async with serving(deps) as client:
            async with SseClient.open(str(client.base_url), "/api/v1/events") as sse:
                assert sse.response is not None and sse.response.status_code == 200
                headers = {k.decode(): v.decode() for k, v in sse.response.headers}
                assert headers["content-type"].startswith("text/event-stream")
                # The first bytes say the subscription is live: nothing after can be missed.
                assert await sse.message() == {"comment": "subscribed"}
                await client.post(WEBHOOK_PATH, json=body)
                event = await sse.message()
            # The client went away: the server lets go of its subscription.
            # (The bus offers no event for that, so poll; fail_after bounds it.)
            while deps.events.subscriber_count:  # noqa: ASYNC110
                await trio.sleep(0.01)
        assert event is not None
        assert event["event"] == "webhook.received"
        assert int(event["id"]) == event["data"]["id"]
        assert event["data"]["uuid"] == body["uuid"]
        assert (event["data"]["entity_id"], event["data"]["outcome"]) == (55, "queued")


async def test_an_open_event_stream_does_not_hold_up_shutdown(deps: Deps) -> None:
    # Grace far longer than the guard: only a stream that ends by itself passes.
    deps.config = deps.config.replace(daemon=DaemonConfig(shutdown_grace_seconds=60))
    shutdown = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(http_ingress.run, deps, shutdown=shutdown))
            async with SseClient.open(url, "/api/v1/events") as sse:
                assert await sse.message() == {"comment": "subscribed"}
                shutdown.set()
                assert await sse.message() is None
        assert deps.events.subscriber_count == 0


async def test_probes(deps: Deps, db: Database) -> None:
    with trio.fail_after(20):
        async with serving(deps) as client:
            alive = await client.get("/healthz")
            no_actors = await client.get("/readyz")
            deps.health.set_state("http_ingress", "running")
            ready = await client.get("/readyz")
        assert (alive.status_code, alive.json()) == (200, {"status": "ok"})
        problem = assert_problem(no_actors, 503)
        assert problem["health"] == {"ready": False, "status": "0/0 actors running", "actors": {}}
        assert problem["database"] == "ok"
        assert ready.status_code == 200
        assert ready.json()["status"] == "ready"
        assert ready.json()["health"]["actors"]["http_ingress"]["state"] == "running"


async def test_readyz_reveals_no_error_text(deps: Deps, db: Database) -> None:
    """Defect 9: an actor's last error (a DSN, a host, a password prompt) stayed public."""
    with trio.fail_after(20):
        deps.health.set_state("listener", "backoff")
        deps.health.record_crash("listener", "connect to db.internal:5432 as paymentd failed")
        async with serving(deps) as client:
            response = await client.get("/readyz")
        problem = assert_problem(response, 503)
        assert problem["health"]["actors"] == {"listener": {"state": "backoff"}}
        assert "db.internal" not in response.text


async def test_metrics_show_the_webhook_counter(deps: Deps, db: Database) -> None:
    with trio.fail_after(20):
        async with serving(deps) as client:
            await client.post(WEBHOOK_PATH, json=uisp_event())
            await client.post("/webhooks/uisp/wrong", json=uisp_event())
            response = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples
        }
        uisp = (("outcome", "queued"), ("source", "uisp"))
        assert samples[("paymentd_webhooks_total", uisp)] == 1
        wrong = (("outcome", "not_found"), ("source", "uisp"))
        assert samples[("paymentd_webhooks_total", wrong)] == 1
        depth = ("paymentd_queue_depth", (("queue", UISP_QUEUE),))
        assert samples[depth] == 1


async def test_unknown_routes_and_methods_are_problems_too(deps: Deps) -> None:
    with trio.fail_after(20):
        async with serving(deps) as client:
            unknown = await client.get("/nothing/here")
            method = await client.delete("/healthz")
            slash = await client.get("/healthz/")
        assert_problem(unknown, 404)
        assert_problem(method, 405)
        assert "GET" in method.headers["allow"]
        # No HTML redirect for a trailing slash.
        assert slash.status_code == 200


async def test_an_idle_event_stream_sends_keepalives() -> None:
    bus, shutdown = EventBus(), trio.Event()
    with trio.fail_after(5):
        async with EventStream(bus, shutdown, keepalive=0.05) as stream:
            assert await anext(stream) == b": subscribed\n\n"
            assert await anext(stream) == b": keepalive\n\n"
            bus.publish("sms.sent", task_id=3)
            assert (await anext(stream)).startswith(b"id: 1\nevent: sms.sent\ndata: {")
            shutdown.set()
            with pytest.raises(StopAsyncIteration):
                await anext(stream)
        assert bus.subscriber_count == 0
