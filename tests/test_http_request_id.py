"""``X-Request-ID`` on every response, echoed when sane, bound to the log context."""

from __future__ import annotations

import logging
import re

import pytest
import trio

from daemon.platform import logcontext
from daemon.platform.deps import Deps
from tests.http_fixtures import (
    ADMIN,
    WEBHOOK_PATH,
    deps_fixture,  # noqa: F401 (the "deps" fixture)
    serving,
    uisp_event,
)
from tests.test_http_admin import SseClient
from tests.test_http_uisp_webhook import read_response

GENERATED = re.compile(r"[0-9a-f]{32}")


async def test_every_kind_of_response_carries_one(deps: Deps) -> None:
    with trio.fail_after(20):
        async with serving(deps) as client:
            answers = {
                "ok": await client.get("/healthz"),
                "problem": await client.get("/api/v1/tasks"),  # 401
                "not_found": await client.get("/no/such/thing"),
                "method": await client.delete("/healthz"),
                "webhook": await client.post(WEBHOOK_PATH, json=uisp_event()),
                "bad_body": await client.post(WEBHOOK_PATH, content=b"{", headers=JSON),
                "openapi": await client.get("/openapi.json"),
            }
            async with SseClient.open(str(client.base_url), "/api/v1/events") as sse:
                assert sse.response is not None
                sse_headers = dict(sse.response.headers)
            host, port = client.base_url.host, client.base_url.port
            assert port is not None
            async with await trio.open_tcp_stream(host, port) as stream:
                await stream.send_all(
                    f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: {host}\r\nX-Request-ID: big-1\r\n"
                    "Content-Type: application/json\r\nContent-Length: 9999999\r\n\r\n".encode()
                )
                too_large = await read_response(stream)
        ids = [r.headers["x-request-id"] for r in answers.values()]
        assert all(GENERATED.fullmatch(i) for i in ids), ids
        assert len(set(ids)) == len(ids)
        assert GENERATED.fullmatch(sse_headers[b"x-request-id"].decode())
        assert too_large.startswith(b"HTTP/1.1 413 ")
        assert b"\r\nx-request-id: big-1\r\n" in too_large.lower()


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("sent", "echoed"),
    [
        ("req-42.a_b:c", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("two words", False),
        ("tab\there", False),
        ("", False),
    ],
)
async def test_a_sane_client_id_is_echoed_and_others_replaced(
    deps: Deps, sent: str, echoed: bool
) -> None:
    with trio.fail_after(20):
        async with serving(deps) as client:
            response = await client.get("/healthz", headers={"X-Request-ID": sent})
        got = response.headers["x-request-id"]
        assert (got == sent) is echoed
        if not echoed:
            assert GENERATED.fullmatch(got)
        assert len(response.headers.get_list("x-request-id")) == 1


class ContextRecorder(logging.Handler):
    """Keeps the log context each record was emitted in."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[tuple[str, dict[str, object]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record.getMessage(), logcontext.current()))


async def test_the_request_id_and_webhook_uuid_are_bound_to_that_request_s_lines(
    deps: Deps,
) -> None:
    recorder = ContextRecorder()
    logger = logging.getLogger("daemon")
    logger.addHandler(recorder)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        with trio.fail_after(20):
            async with serving(deps) as client:
                await client.post(
                    WEBHOOK_PATH, content=b"[]", headers={**JSON, "X-Request-ID": "r-1"}
                )
                await client.post(
                    "/api/v1/tasks/77/retry", headers={**ADMIN, "X-Request-ID": "r-2"}
                )
                event = uisp_event()
                await client.post(WEBHOOK_PATH, json=event, headers={"X-Request-ID": "r-3"})
    finally:
        logger.removeHandler(recorder)
        logger.setLevel(old_level)
    refused = [ctx for msg, ctx in recorder.seen if msg.startswith("UISP webhook refused")]
    assert refused == [{"request_id": "r-1"}]
    queued = [ctx for msg, ctx in recorder.seen if "queued" in msg and "UISP webhook" in msg]
    # The webhook's uuid is bound too, once the body is known to be one.
    assert queued == [{"request_id": "r-3", "webhook_uuid": event["uuid"]}]
    # Nothing leaks out of a request into the serving task's own lines.
    assert all(ctx.get("request_id") in {None, "r-1", "r-2", "r-3"} for _, ctx in recorder.seen)
    assert [ctx for msg, ctx in recorder.seen if "listening" in msg] == [{}]
