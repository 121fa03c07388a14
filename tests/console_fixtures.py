"""Helpers for the console tests: sign in over plain HTTP, read a page's CSRF token.

A browser test signs in through the page itself (``browser_sign_in``); an HTTP test uses
``sign_in``, which does what the page's form does (GET the form for its one-time token
and cookie, POST it back), so both go through the same routes.
"""

from __future__ import annotations

import re

import httpx

from daemon.console import accounts
from daemon.platform.db import Database
from tests.browser import Browser

OPERATOR = "alice"
PASSWORD = "correct horse battery"

_LOGIN_TOKEN = re.compile(r'name="login_token" value="([^"]+)"')
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


async def add_operator(db: Database, name: str = OPERATOR, password: str = PASSWORD) -> None:
    await accounts.add_operator(db, name, password)


async def post_login(client: httpx.AsyncClient, **form: str) -> httpx.Response:
    page = await client.get("/console/login")
    assert page.status_code == 200, page.text
    match = _LOGIN_TOKEN.search(page.text)
    assert match is not None, "the sign-in page has no login_token field"
    return await client.post("/console/login", data={"login_token": match.group(1), **form})


async def sign_in(
    client: httpx.AsyncClient, name: str = OPERATOR, password: str = PASSWORD
) -> httpx.Response:
    """Sign in as an operator; the client keeps the session cookie."""
    r = await post_login(client, method="password", name=name, password=password)
    assert r.status_code == 303, r.text
    return r


def csrf_token(html: str) -> str:
    match = _CSRF.search(html)
    assert match is not None, "the page has no csrf_token field"
    return match.group(1)


async def page_csrf(client: httpx.AsyncClient, path: str = "/console/") -> str:
    r = await client.get(path)
    assert r.status_code == 200, r.text
    return csrf_token(r.text)


async def browser_sign_in(
    browser: Browser, base_url: str, name: str = OPERATOR, password: str = PASSWORD
) -> None:
    """Sign in through the sign-in page's form, as an operator would; lands on the overview."""
    await browser.get(f"{base_url}/console/login")
    await browser.fill("[data-test-id=login-password] input[name=name]", name)
    await browser.fill("[data-test-id=login-password] input[name=password]", password)
    await browser.click("[data-test-id=login-password] button[type=submit]")
    await browser.find("[data-test-id=sign-out]")
