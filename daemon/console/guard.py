"""Who may see a console page, and which forms may change anything.

Consumes the session cookie (``paymentd_console``, an opaque token: ``accounts``) and,
for every state-changing request, the form's ``csrf_token`` field (or an
``X-CSRF-Token`` header) and the ``Origin``/``Referer`` headers. Produces ``g.console``
(the ``Session``) for the page, a redirect to the sign-in page for a page asked for
without a session, a 401 problem for anything else asked for without one, and a 403
problem for a state-changing request whose token is missing or wrong or whose origin is
another site.

The cookie is HttpOnly, SameSite=Strict, scoped to ``/console``, and Secure when the
request came over TLS or ``console.behind_tls`` says a proxy terminates it. The sign-in
form, which has no session yet, is protected by a double-submit token: a random value in
a short-lived cookie that the form must repeat.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import urlsplit

from quart import Response, g, redirect, request, url_for

from daemon.console.accounts import Session
from daemon.platform.http.problem import Problem

COOKIE = "paymentd_console"
LOGIN_COOKIE = "paymentd_console_login"
COOKIE_PATH = "/console"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Endpoints open without a session (the sign-in page itself, CSS and JS).
PUBLIC = frozenset({"console.login", "console.login_submit", "console.static"})


def secure_cookies(behind_tls: bool) -> bool:
    return behind_tls or request.scheme in ("https", "wss")


def set_cookie(response: Response, name: str, value: str, *, max_age: int, secure: bool) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        secure=secure,
        httponly=True,
        samesite="Strict",
    )


def clear_cookie(response: Response, name: str, *, secure: bool) -> None:
    response.delete_cookie(name, path=COOKIE_PATH, secure=secure, httponly=True, samesite="Strict")


def current() -> Session:
    """The signed-in session of this request (every non-public page has one)."""
    session: Session = g.console
    return session


def csrf_refused(detail: str) -> Problem:
    return Problem(403, detail)


def check_origin() -> None:
    """A browser names the page a form came from; another site's page is refused.

    Absent headers are allowed (some privacy settings drop them): the token decides.
    """
    for header in ("Origin", "Referer"):
        value = request.headers.get(header)
        if value is None:
            continue
        if value == "null":
            raise csrf_refused("the request came from an opaque origin")
        if urlsplit(value).netloc.lower() != request.host.lower():
            raise csrf_refused(f"the {header} header names another site")
        return


def submitted_token(form: dict[str, str]) -> str:
    return form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""


def check_csrf(expected: str, form: dict[str, str]) -> None:
    """The form's token must equal the session's; compared in constant time."""
    check_origin()
    given = submitted_token(form)
    if not given:
        raise csrf_refused("the form has no CSRF token; reload the page and submit it again")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise csrf_refused("the form's CSRF token is not this session's; reload the page")


def redirect_to(endpoint: str, **values: Any) -> Response:
    """303 See Other: after a POST the browser GETs the page (POST-redirect-GET)."""
    response = redirect(url_for(endpoint, **values), 303)
    assert isinstance(response, Response)
    return response


def login_redirect() -> Response:
    return redirect_to("console.login")


def new_login_token() -> str:
    return secrets.token_urlsafe(24)


class LoginThrottle:
    """At most ``limit`` failed sign-ins per client address per ``window`` seconds.

    In memory and per process: it slows a guesser down without adding a table, and a
    restart forgetting it costs an attacker a restart. Bounded: the oldest addresses are
    forgotten first once ``max_clients`` are tracked.
    """

    def __init__(self, limit: int = 10, window: float = 300.0, max_clients: int = 10_000) -> None:
        self.limit = limit
        self.window = window
        self.max_clients = max_clients
        self._failures: OrderedDict[str, list[float]] = OrderedDict()

    def _recent(self, client: str, now: float) -> list[float]:
        times = [t for t in self._failures.get(client, ()) if now - t < self.window]
        if times:
            self._failures[client] = times
        else:
            self._failures.pop(client, None)
        return times

    def retry_after(self, client: str) -> int | None:
        """Seconds to wait before trying again, or None when the client may try now."""
        now = time.monotonic()
        times = self._recent(client, now)
        if len(times) < self.limit:
            return None
        return max(1, int(self.window - (now - times[0])) + 1)

    def failed(self, client: str) -> None:
        now = time.monotonic()
        times = self._recent(client, now)
        times.append(now)
        self._failures[client] = times
        self._failures.move_to_end(client)
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)
