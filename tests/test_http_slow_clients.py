"""Defect 19: a client that trickles headers or a body cannot hold a connection for ever.

Raw sockets, because the point is a client that misbehaves below HTTP. The timeouts are
shortened (monkeypatched module constants read when the server starts) so the tests stay
quick; what they check is that the server closes the connection, not how fast.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import pytest
import trio

from daemon.actors import http_ingress
from daemon.platform.deps import Deps
from daemon.platform.http import app as http_app
from tests.http_fixtures import (
    WEBHOOK_PATH,
    deps_fixture,  # noqa: F401 (the "deps" fixture)
    serving,
)
from tests.test_http_admin import SseClient

LARGE = b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"


@pytest.fixture(autouse=True)
def short_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_ingress, "HEADER_TIMEOUT_SECONDS", 0.5)
    monkeypatch.setattr(http_app, "BODY_TIMEOUT_SECONDS", 1)


async def trickle_until_closed(host: str, port: int, head: bytes) -> bytes:
    """Send ``head``, then a byte every 50 ms; what the server sent before it closed."""
    received = b""
    async with await trio.open_tcp_stream(host, port) as stream:
        await stream.send_all(head)

        async def drip() -> None:
            while True:
                await trio.sleep(0.05)
                try:
                    await stream.send_all(b" ")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drip)
            while True:
                try:
                    data = await stream.receive_some()
                except trio.BrokenResourceError:
                    data = b""  # reset: closed as well
                if not data:
                    break
                received += data
            nursery.cancel_scope.cancel()
    return received


@pytest.mark.parametrize(
    ("head", "status"),
    [
        # Answered at once, body never read: before the fix the connection stayed open.
        (b"POST /healthz HTTP/1.1\r\nHost: x\r\n" + LARGE, b"405"),
        (b"POST /webhooks/uisp/guess HTTP/1.1\r\nHost: x\r\n" + LARGE, b"404"),
        (b"POST /no/such/url HTTP/1.1\r\nHost: x\r\n" + LARGE, b"404"),
        (b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\n" + LARGE, b"401"),
        # A body the route reads: Quart's body timeout (408).
        (f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: x\r\n".encode() + LARGE, b"408"),
        # Headers that never end: hypercorn's idle timeout, no answer at all.
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ", b""),
    ],
    ids=["405", "wrong-token", "unknown-url", "sse-unauthenticated", "read-body", "headers"],
)
async def test_a_trickling_client_is_disconnected(deps: Deps, head: bytes, status: bytes) -> None:
    with trio.fail_after(10):
        async with serving(deps) as client:
            host, port = client.base_url.host, client.base_url.port
            assert port is not None
            received = await trickle_until_closed(host, port, head)
            # The server is still fine for everyone else.
            assert (await client.get("/healthz")).status_code == 200
        if status:
            assert received.startswith(b"HTTP/1.1 " + status + b" "), received[:80]
        else:
            assert received == b""


async def test_an_established_event_stream_outlives_every_read_bound(deps: Deps) -> None:
    with trio.fail_after(10):
        async with (
            serving(deps) as client,
            SseClient.open(str(client.base_url), "/api/v1/events") as sse,
        ):
            assert await sse.message() == {"comment": "subscribed"}
            # Longer than both shortened bounds, with the client sending nothing.
            await trio.sleep(1.5)
            deps.events.publish("sms.sent", task_id=1)
            message = await sse.message()
        assert message is not None and message["event"] == "sms.sent"


async def test_keep_alive_still_reuses_the_connection(deps: Deps) -> None:
    with trio.fail_after(10):
        async with serving(deps) as client:
            host, port = client.base_url.host, client.base_url.port
            assert port is not None
            async with await trio.open_tcp_stream(host, port) as stream:
                answers = b""
                for _ in range(3):
                    await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    while answers.count(b"HTTP/1.1 200 ") < _ + 1 or not answers.endswith(b"}"):
                        answers += await stream.receive_some()
        assert answers.count(b"HTTP/1.1 200 ") == 3
        assert b"connection: close" not in answers.lower()


async def test_http2_data_after_an_early_answer_does_not_crash_the_server(deps: Deps) -> None:
    """hypercorn raised KeyError for DATA on a stream it had answered and forgotten; on trio
    that ended serve() itself, so one HTTP/2 (cleartext) request dropped every connection."""
    with trio.fail_after(10):
        async with serving(deps) as client:
            host, port = client.base_url.host, client.base_url.port
            assert port is not None
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            async with await trio.open_tcp_stream(host, port) as stream:

                async def status_of(stream_id: int) -> bytes:
                    while True:
                        events = conn.receive_data(await stream.receive_some())
                        await stream.send_all(conn.data_to_send())  # settings ACKs
                        for event in events:
                            if (
                                isinstance(event, h2.events.ResponseReceived)
                                and event.stream_id == stream_id
                            ):
                                return dict(event.headers)[b":status"]

                request = [(":method", "POST"), (":path", "/no/such/url")]
                request += [(":scheme", "http"), (":authority", "x")]
                conn.send_headers(1, [*request, ("content-length", "100000")])
                await stream.send_all(conn.data_to_send())
                first = await status_of(1)
                # The rest of the announced body, after the answer.
                for _ in range(3):
                    conn.send_data(1, b"x" * 100)
                    await stream.send_all(conn.data_to_send())
                # The same connection still serves a new request.
                health = [(":method", "GET"), (":path", "/healthz")]
                conn.send_headers(3, health + request[2:], end_stream=True)
                await stream.send_all(conn.data_to_send())
                second = await status_of(3)
            assert (await client.get("/healthz")).status_code == 200
        assert (first, second) == (b"404", b"200")
