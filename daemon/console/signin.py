"""Sign-in and sign-out: ``GET/POST /console/login``, ``POST /console/logout``.

An operator account (name + password, ``paymentd operators add``) or ``http.admin_token``
opens a session (``accounts.open_session``) whose token goes into the cookie; nothing
secret ever travels in a URL (the forms POST). A failure says only that sign-in failed,
never which part was wrong. Ten failures for one account (or the token) from one address
in five minutes, or fifty from one address, answer 429 for the rest of that window.
"""

from __future__ import annotations

import hmac
import logging

from quart import Blueprint, Response, g, render_template, request

from daemon.console import accounts, guard, views
from daemon.console.context import Console

log = logging.getLogger(__name__)

LOGIN_TOKEN_SECONDS = 3600
FAILED = "Sign-in failed: the name, password or token is not right."


def register(bp: Blueprint, console: Console) -> None:
    deps = console.deps

    async def page(error: str | None = None, status: int = 200) -> Response:
        token = guard.new_login_token()
        body = await render_template(
            "console/login.html",
            error=error,
            login_token=token,
            admin_token_enabled=bool(deps.config.http.admin_token),
        )
        response = Response(body, status=status, mimetype="text/html")
        guard.set_cookie(
            response,
            guard.LOGIN_COOKIE,
            token,
            max_age=LOGIN_TOKEN_SECONDS,
            secure=console.secure_cookies,
        )
        return response

    @bp.get("/login")
    async def login() -> Response:
        return await page()

    @bp.post("/login")
    async def login_submit() -> Response:
        guard.check_origin()
        form = (await request.form).to_dict()
        views.refuse_nul("form", form.items())
        # Double submit: the form repeats the random value its page set in a cookie, which
        # another site can neither read nor set (SameSite=Strict, HttpOnly, our path).
        cookie = request.cookies.get(guard.LOGIN_COOKIE, "")
        given = form.get("login_token", "")
        if not cookie or not hmac.compare_digest(given.encode(), cookie.encode()):
            raise guard.csrf_refused("the sign-in form is stale; reload the page and try again")
        client = request.remote_addr or "?"
        account = f"{client} {form.get('name', '') if form.get('method') != 'token' else '*token'}"
        wait = console.throttle.retry_after(account) or console.throttle_address.retry_after(client)
        if wait is not None:
            response = await page(
                f"Too many failed sign-ins; try again in {wait} seconds.", status=429
            )
            response.headers["Retry-After"] = str(wait)
            return response
        admin_token = deps.config.http.admin_token.reveal()
        operator: str | None = None
        if form.get("method") == "token":
            given_token = form.get("token", "")
            ok = bool(admin_token) and hmac.compare_digest(
                given_token.encode(), admin_token.encode()
            )
        else:
            operator = form.get("name", "").strip()
            ok = bool(operator) and await accounts.check_operator(
                deps.db, operator, form.get("password", "")
            )
        if not ok:
            console.throttle.failed(account)
            console.throttle_address.failed(client)
            # The name is what the operator typed, so it may be a password pasted in the
            # wrong box: the log says only that a sign-in failed, and from where.
            log.warning("console sign-in failed from %s", client)
            return await page(FAILED, status=401)
        console.throttle.succeeded(account)
        # Signing in again in a browser that has a session replaces it: the old one
        # would otherwise stay valid, unreferenced, until it expired.
        previous = request.cookies.get(guard.COOKIE)
        if previous:
            await accounts.close_session(deps.db, previous)
        token = await accounts.open_session(
            deps.db,
            operator=operator,
            admin_token=None if operator else admin_token,
            lifetime_seconds=console.lifetime_seconds,
        )
        log.info("console: %s signed in from %s", operator or "the admin token", client)
        response = guard.redirect_to("console.overview")
        secure = console.secure_cookies
        guard.set_cookie(
            response, guard.COOKIE, token, max_age=int(console.lifetime_seconds), secure=secure
        )
        guard.clear_cookie(response, guard.LOGIN_COOKIE, secure=secure)
        return response

    @bp.post("/logout")
    async def logout() -> Response:
        token = request.cookies.get(guard.COOKIE, "")
        await accounts.close_session(deps.db, token)
        log.info("console: %s signed out", g.console.who)
        response = guard.login_redirect()
        guard.clear_cookie(response, guard.COOKIE, secure=console.secure_cookies)
        return response
