"""The operator console: server-rendered pages under ``/console`` (issue 8).

Consumes ``Deps`` (the stores through their own modules, ``Health``, the event bus, the
OLT pool when the daemon runs one) and the session cookie. Produces HTML pages
(Jinja2 templates under ``templates/console/``, autoescaped), a live event feed
(``/console/events``, Server-Sent Events) and static CSS/JS under ``/console/static/``.
No front-end build: the JS is a few vanilla files and every list renders without it.

One page module per area (``PAGES``): each has ``register(bp, console)`` adding its
routes and may declare ``NAV = ((endpoint, label), ...)`` for the navigation bar. Every route
but the sign-in page and the static files needs a session (``guard``); every
state-changing request needs the session's CSRF token, checked here before the route
runs, so a page module only puts ``{{ csrf_field() }}`` in its forms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from markupsafe import Markup, escape
from quart import Blueprint, Response, current_app, g, request
from quart_schema import hide

from daemon.console import (
    accounts,
    apikeys,
    docs,
    feed,
    guard,
    network,
    overview,
    payments,
    signin,
    tasks,
    uisp,
    views,
    webhooks,
)
from daemon.console.context import Console
from daemon.platform.deps import Deps

HERE = Path(__file__).parent
# In navigation order; a new page module goes here (and nowhere else).
PAGES: tuple[Any, ...] = (
    signin, overview, tasks, uisp, network, payments, webhooks, apikeys, docs, feed,
)  # fmt: skip


class _PagesBlueprint(Blueprint):
    """Pages, not API: none of the console's routes goes into ``/openapi.json``."""

    def add_url_rule(  # type: ignore[override]  # the same parameters, loosely typed
        self, rule: str, endpoint: str | None = None, view_func: Any = None, **options: Any
    ) -> None:
        if view_func is not None:
            hide(view_func)
        super().add_url_rule(rule, endpoint, view_func, **options)

    @hide
    async def send_static_file(self, filename: str) -> Response:
        return await super().send_static_file(filename)


def blueprint(deps: Deps, shutdown: trio.Event) -> Blueprint:
    console = Console(deps, shutdown)
    bp = _PagesBlueprint(
        "console",
        __name__,
        url_prefix="/console",
        template_folder=str(HERE / "templates"),
        static_folder=str(HERE / "static"),
        static_url_path="/static",
    )
    nav = [entry for page in PAGES for entry in getattr(page, "NAV", ())]

    @bp.before_request
    async def _authenticate() -> Response | None:
        views.refuse_nul("query", request.args.items(multi=True))
        views.refuse_nul("path", (request.view_args or {}).items())
        if request.endpoint in guard.PUBLIC:
            return None
        token = request.cookies.get(guard.COOKIE)
        session = None
        if token:
            session = await accounts.find_session(
                deps.db, token, deps.config.http.admin_token.reveal()
            )
        if session is None:
            # A browser navigating to a page is sent to sign in; anything else (the event
            # stream, a script, curl) gets a problem it can read.
            navigating = "text/html" in request.headers.get("Accept", "")
            if request.method in guard.SAFE_METHODS and navigating:
                return guard.login_redirect()
            from daemon.platform.http.problem import Problem

            raise Problem(401, "sign in to the console first (/console/login)")
        g.console = session
        if request.method not in guard.SAFE_METHODS:
            form = (await request.form).to_dict()
            views.refuse_nul("form", form.items())
            guard.check_csrf(session.csrf_token, form)
            g.form = form
        return None

    @bp.after_request
    async def _headers(response: Response) -> Response:
        # Pages show operational data: never cached, never framed, no sniffing.
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self';"
            " frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        )
        return response

    @bp.context_processor
    async def _context() -> dict[str, Any]:
        session = g.get("console")

        def csrf_field() -> Markup:
            token = session.csrf_token if session is not None else ""
            return Markup('<input type="hidden" name="csrf_token" value="{}">').format(
                escape(token)
            )

        return {
            "session": session,
            "nav": nav,
            "csrf_field": csrf_field,
            # "console.x" in endpoints: link to a page only where it exists.
            "endpoints": current_app.view_functions,
        }

    for page in PAGES:
        page.register(bp, console)
    return bp
