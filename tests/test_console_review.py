"""Console input and session edge cases found in review: bad input is a 400/404 problem,
never a 500; sessions end where they should."""

from __future__ import annotations

import pytest
import trio

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
            r = await client.post("/console/overrides", data={"csrf_token": csrf, "service_id": "²"})
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
