"""Console input and session edge cases found in review: bad input is a 400/404 problem,
never a 500; sessions end where they should."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import pytest
import trio

from daemon.console import feed, guard
from daemon.platform.deps import Deps
from tests.console_fixtures import add_operator, page_csrf, post_login, sign_in
from tests.http_fixtures import assert_problem, deps_fixture, serving

__all__ = ["deps_fixture"]

pytestmark = pytest.mark.usefixtures("aio_loop")


async def test_a_non_ascii_digit_in_an_id_is_a_400(deps: Deps) -> None:
    await add_operator(deps.db)
    with trio.fail_after(20):
        async with serving(deps) as client:
            await sign_in(client)
            # "²".isdigit() is true but int("²") raises.
            for arg in ("service_id", "before_id"):
                body = assert_problem(await client.get(f"/console/tasks?{arg}=%C2%B2"), 400)
                assert arg in body["detail"]
            csrf = await page_csrf(client, "/console/overrides")
            form = {"csrf_token": csrf, "service_id": "²"}
            r = await client.post("/console/overrides", data=form)
            assert r.status_code == 400
            assert "service_id must be a positive whole number" in r.text
            assert await deps.db.fetchval("SELECT count(*) FROM onu_overrides") == 0


async def test_a_nul_in_a_query_form_or_sign_in_is_a_400(deps: Deps) -> None:
    await add_operator(deps.db)
    with trio.fail_after(20):
        async with serving(deps) as client:
            # PostgreSQL text cannot hold NUL; without the check each was a 500.
            body = assert_problem(
                await post_login(client, method="password", name="a\x00b", password="x" * 12), 400
            )
            assert "\\u0000" in body["detail"]
            await sign_in(client)
            assert_problem(await client.get("/console/tasks?olt=a%00b"), 400)
            csrf = await page_csrf(client, "/console/overrides")
            form = {"csrf_token": csrf, "service_id": "5", "olt_name": "x\x00", "onu": "0/1/1:1"}
            assert_problem(await client.post("/console/overrides", data=form), 400)
            assert await deps.db.fetchval("SELECT count(*) FROM onu_overrides") == 0


async def test_a_time_off_the_calendar_in_utc_is_a_400(deps: Deps) -> None:
    await add_operator(deps.db)
    with trio.fail_after(20):
        async with serving(deps) as client:
            await sign_in(client)
            for before in ("0001-01-01T00:00:00%2B01:00", "9999-12-31T23:59:59-01:00"):
                body = assert_problem(await client.get(f"/console/uisp?before={before}"), 400)
                assert "before must be an ISO 8601 time" in body["detail"]
            r = await client.get("/console/uisp?before=2026-01-01T00:00:00%2B01:00")
            assert r.status_code == 200


async def test_removing_the_override_of_a_service_id_past_bigint_says_it_had_none(
    deps: Deps,
) -> None:
    await add_operator(deps.db)
    with trio.fail_after(20):
        async with serving(deps) as client:
            await sign_in(client)
            csrf = await page_csrf(client, "/console/overrides")
            r = await client.post(
                "/console/overrides/99999999999999999999999/remove", data={"csrf_token": csrf}
            )
            assert r.status_code == 303, r.text
            assert r.headers["location"] == "/console/overrides?notice=absent"


async def _stream_ends(
    client: httpx.AsyncClient, after: Callable[[], Awaitable[None]] | None = None
) -> bytes:
    """Open the console's event stream, run ``after`` once it is subscribed, and return
    everything the stream sent before it ended."""
    got = b""
    pending: Callable[[], Awaitable[None]] | None = after
    async with client.stream("GET", "/console/events") as r:
        assert r.status_code == 200
        async for chunk in r.aiter_bytes():
            got += chunk
            if pending is not None and got.startswith(b": subscribed"):
                await pending()
                pending = None
    return got


async def test_the_event_stream_ends_when_its_session_is_signed_out(
    deps: Deps, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feed, "RECHECK_SECONDS", 0.2)
    await add_operator(deps.db)
    with trio.fail_after(20):
        async with serving(deps) as client:
            await sign_in(client)
            csrf = await page_csrf(client)
            cookie = client.cookies[guard.COOKIE]

            async def sign_out() -> None:
                r = await client.post("/console/logout", data={"csrf_token": csrf})
                assert r.status_code == 303

            await _stream_ends(client, sign_out)
            # The browser's reconnect is refused.
            client.cookies.set(guard.COOKIE, cookie)
            assert_problem(await client.get("/console/events"), 401)


async def test_the_event_stream_ends_when_its_session_expires(deps: Deps) -> None:
    await add_operator(deps.db)
    with trio.fail_after(20):
        async with serving(deps) as client:
            await sign_in(client)
            await deps.db.execute(
                "UPDATE console_sessions SET expires_at = now() + interval '1 second'"
            )
            # RECHECK_SECONDS is 15: only the session's own expiry can end this stream.
            with trio.fail_after(5):
                got = await _stream_ends(client)
            assert got.startswith(b": subscribed")


async def test_signing_in_again_replaces_the_browsers_session(deps: Deps) -> None:
    await add_operator(deps.db)
    with trio.fail_after(20):
        async with serving(deps) as client:
            await sign_in(client)
            first = client.cookies[guard.COOKIE]
            await sign_in(client)
            assert client.cookies[guard.COOKIE] != first
            assert await deps.db.fetchval("SELECT count(*) FROM console_sessions") == 1
            client.cookies.clear()
            client.cookies.set(guard.COOKIE, first)
            assert_problem(await client.get("/console/events"), 401)
