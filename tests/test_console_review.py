"""Console input and session edge cases found in review: bad input is a 400/404 problem,
never a 500; sessions end where they should."""

from __future__ import annotations

import pytest
import trio

from daemon.platform.deps import Deps
from tests.console_fixtures import add_operator, page_csrf, sign_in
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
