"""Console sign-in, sessions and CSRF over plain HTTP (the real ingress, real PostgreSQL)."""

from __future__ import annotations

import httpx
import pytest
import trio

from daemon.console import guard
from daemon.platform.config import ConsoleConfig, HttpConfig
from daemon.platform.deps import Deps
from tests.console_fixtures import (
    OPERATOR,
    PASSWORD,
    add_operator,
    csrf_token,
    page_csrf,
    post_login,
    sign_in,
)
from tests.http_fixtures import ADMIN_TOKEN, assert_problem, deps_fixture, make_deps, serving

__all__ = ["deps_fixture"]

pytestmark = pytest.mark.usefixtures("aio_loop")


def _set_cookie(response: httpx.Response, name: str) -> str:
    [header] = [h for h in response.headers.get_list("set-cookie") if h.startswith(f"{name}=")]
    return header


async def test_an_operator_signs_in_and_gets_a_strict_http_only_cookie(deps: Deps) -> None:
    await add_operator(deps.db)
    with trio.fail_after(20):
        async with serving(deps) as client:
            r = await sign_in(client)
            assert r.headers["location"] == "/console/"
            cookie = _set_cookie(r, guard.COOKIE)
            assert "HttpOnly" in cookie
            assert "SameSite=Strict" in cookie
            assert "Path=/console" in cookie
            assert "Secure" not in cookie  # plain HTTP, and console.behind_tls is off
            token = client.cookies[guard.COOKIE]
            # Neither the redirect nor the page carries the session token.
            page = await client.get("/console/")
            assert page.status_code == 200
            assert token not in r.headers["location"] and token not in page.text
            assert "alice" in page.text
            # Only its hash is stored.
            stored = await deps.db.fetchval("SELECT count(*) FROM console_sessions")
            assert stored == 1
            raw = await deps.db.fetchval(
                "SELECT count(*) FROM console_sessions WHERE token_sha256 = $1::text::bytea", token
            )
            assert raw == 0


async def test_behind_tls_the_cookie_is_secure(db: object) -> None:
    deps = make_deps(db, console=ConsoleConfig(behind_tls=True))  # type: ignore[arg-type]
    await add_operator(deps.db)
    with trio.fail_after(20):
        async with serving(deps) as client:
            page = await client.get("/console/login")
            assert "Secure" in _set_cookie(page, guard.LOGIN_COOKIE)
            # httpx, rightly, keeps a Secure cookie off plain HTTP: send it by hand as the
            # TLS proxy in front would pass it on.
            login = page.cookies[guard.LOGIN_COOKIE]
            r = await client.post(
                "/console/login",
                data={
                    "login_token": login,
                    "method": "password",
                    "name": OPERATOR,
                    "password": PASSWORD,
                },
                headers={"Cookie": f"{guard.LOGIN_COOKIE}={login}"},
            )
            assert r.status_code == 303
            assert "Secure" in _set_cookie(r, guard.COOKIE)


@pytest.mark.parametrize(
    "form",
    [
        {"method": "password", "name": OPERATOR, "password": "wrong password!"},
        {"method": "password", "name": "nobody", "password": PASSWORD},
        {"method": "token", "token": "not-the-token"},
    ],
    ids=["wrong-password", "unknown-name", "wrong-token"],
)
async def test_a_failed_sign_in_says_the_same_whatever_was_wrong(
    deps: Deps, form: dict[str, str]
) -> None:
    await add_operator(deps.db)
    with trio.fail_after(20):
        async with serving(deps) as client:
            r = await post_login(client, **form)
            assert r.status_code == 401
            assert "the name, password or token is not right" in r.text
            assert guard.COOKIE not in client.cookies
            assert await deps.db.fetchval("SELECT count(*) FROM console_sessions") == 0
            # Still signed out.
            page = await client.get("/console/", headers={"Accept": "text/html"})
            assert page.status_code == 303
            assert page.headers["location"] == "/console/login"


async def test_the_admin_token_signs_in_and_a_new_token_ends_that_session(deps: Deps) -> None:
    with trio.fail_after(20):
        async with serving(deps) as client:
            r = await post_login(client, method="token", token=ADMIN_TOKEN)
            assert r.status_code == 303
            page = await client.get("/console/")
            assert page.status_code == 200 and "admin token" in page.text
        # The operator changes http.admin_token and restarts: the old session is gone.
        changed = make_deps(deps.db, http=HttpConfig(port=0, admin_token="another-token"))
        async with serving(changed) as other:
            other.cookies = client.cookies
            page = await other.get("/console/", headers={"Accept": "application/json"})
            assert_problem(page, 401)


async def test_an_expired_session_sends_the_operator_back_to_sign_in(deps: Deps) -> None:
    await add_operator(deps.db)
    with trio.fail_after(20):
        async with serving(deps) as client:
            await sign_in(client)
            assert (await client.get("/console/")).status_code == 200
            await deps.db.execute(
                "UPDATE console_sessions SET expires_at = now() - interval '1 second'"
            )
            page = await client.get("/console/", headers={"Accept": "text/html"})
            assert page.status_code == 303
            assert page.headers["location"] == "/console/login"
            # The live feed (not a page) answers a problem instead of a redirect.
            assert_problem(await client.get("/console/events"), 401)


async def test_a_disabled_operator_is_signed_out_at_once(deps: Deps) -> None:
    from daemon.console import accounts

    await add_operator(deps.db)
    with trio.fail_after(20):
        async with serving(deps) as client:
            await sign_in(client)
            await accounts.disable_operator(deps.db, OPERATOR)
            assert_problem(await client.get("/console/", headers={"Accept": "*/*"}), 401)
            r = await post_login(client, method="password", name=OPERATOR, password=PASSWORD)
            assert r.status_code == 401


async def test_sign_out_deletes_the_session(deps: Deps) -> None:
    await add_operator(deps.db)
    with trio.fail_after(20):
        async with serving(deps) as client:
            await sign_in(client)
            old = client.cookies[guard.COOKIE]
            token = await page_csrf(client)
            r = await client.post("/console/logout", data={"csrf_token": token})
            assert r.status_code == 303 and r.headers["location"] == "/console/login"
            assert await deps.db.fetchval("SELECT count(*) FROM console_sessions") == 0
            # The old cookie value, replayed, opens nothing.
            client.cookies.clear()
            client.cookies.set(guard.COOKIE, old, path="/console")
            assert_problem(await client.get("/console/", headers={"Accept": "*/*"}), 401)


async def test_a_state_changing_post_without_the_right_csrf_token_is_refused(deps: Deps) -> None:
    await add_operator(deps.db)
    with trio.fail_after(20):
        async with serving(deps) as client:
            await sign_in(client)
            token = await page_csrf(client)
            assert_problem(await client.post("/console/logout"), 403)
            assert_problem(await client.post("/console/logout", data={"csrf_token": "x"}), 403)
            # The right token from another site's page is refused too.
            cross = await client.post(
                "/console/logout",
                data={"csrf_token": token},
                headers={"Origin": "https://evil.example"},
            )
            assert_problem(cross, 403)
            # Nothing was changed: still signed in.
            assert await deps.db.fetchval("SELECT count(*) FROM console_sessions") == 1
            assert (await client.get("/console/")).status_code == 200


async def test_a_stale_sign_in_form_is_refused(deps: Deps) -> None:
    await add_operator(deps.db)
    with trio.fail_after(20):
        async with serving(deps) as client:
            r = await client.post(
                "/console/login",
                data={"method": "password", "name": OPERATOR, "password": PASSWORD},
            )
            assert_problem(r, 403)
            assert guard.COOKIE not in client.cookies


async def test_repeated_failures_are_throttled(deps: Deps) -> None:
    await add_operator(deps.db)
    with trio.fail_after(30):
        async with serving(deps) as client:
            for _ in range(10):
                r = await post_login(client, method="password", name=OPERATOR, password="guess")
                assert r.status_code == 401
            # Even the right password waits now: the guesser cannot tell it was right.
            r = await post_login(client, method="password", name=OPERATOR, password=PASSWORD)
            assert r.status_code == 429
            assert int(r.headers["retry-after"]) > 0
            assert guard.COOKIE not in client.cookies
            # Another account from the same address is not locked out by that guesser.
            r = await post_login(client, method="token", token=ADMIN_TOKEN)
            assert r.status_code == 303


async def test_the_overview_renders_its_lists_without_javascript(deps: Deps) -> None:
    await add_operator(deps.db)
    deps.health.set_state("consumer:reconnect", "running")
    with trio.fail_after(20):
        async with serving(deps) as client:
            await sign_in(client)
            page = await client.get("/console/")
            assert page.headers["content-type"].startswith("text/html")
            html = page.text
            assert 'data-actor="consumer:reconnect"' in html
            for queue in deps.queue_names:
                assert f'data-queue="{queue}"' in html
            assert csrf_token(html)
            css = await client.get("/console/static/console.css")
            assert css.status_code == 200 and "text/css" in css.headers["content-type"]


async def test_console_pages_stay_out_of_the_api_document(deps: Deps) -> None:
    with trio.fail_after(20):
        async with serving(deps) as client:
            document = (await client.get("/openapi.json")).json()
            assert "/api/v1/tasks" in document["paths"]
            assert [p for p in document["paths"] if p.startswith("/console")] == []
