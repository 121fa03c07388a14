"""The Quart (trio flavour) application behind the HTTP ingress actor.

Consumes ``Deps`` (config, database, metrics, event bus, health) and an optional shutdown
event (ends long-lived streams such as SSE when the daemon stops). Produces a ``QuartTrio``
app with three groups of routes:

- ``daemon.uisp.intake``: ``POST /webhooks/uisp/<token>`` (UISP CRM events in);
- ``daemon.platform.http.admin``: ``/api/v1/*`` behind a Bearer token (tasks, queues, events);
- ``daemon.platform.http.health``: ``/healthz``, ``/readyz``, ``/metrics`` (open).

Every error, Quart's own 404/405/413/500 included, answers ``application/problem+json``;
nothing here ever renders HTML.
"""

from __future__ import annotations

import logging

import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge

from daemon.platform.db import DatabaseError
from daemon.platform.deps import Deps
from daemon.platform.http import admin, health, operations
from daemon.platform.http.problem import (
    JSONProvider,
    Problem,
    database_unavailable,
    not_found,
    problem,
)
from daemon.uisp import intake

log = logging.getLogger(__name__)


def create_app(deps: Deps, *, shutdown: trio.Event | None = None) -> QuartTrio:
    """Build the app for one daemon instance (tests build several in one process).

    ``shutdown`` is the daemon's stop event: streaming responses watch it so hypercorn's
    graceful shutdown is not held up by an open SSE connection. Without one the streams
    only end when the client goes away.
    """
    # No static folder: nothing here serves files, and its route would only add surface.
    app = QuartTrio("paymentd", static_folder=None)
    app.json = JSONProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = deps.config.http.max_body_bytes
    # Trailing-slash and double-slash "fixes" answer with HTML redirects; we want plain 404s.
    app.url_map.strict_slashes = False
    app.url_map.merge_slashes = False

    stop = shutdown if shutdown is not None else trio.Event()
    app.register_blueprint(intake.blueprint(deps))
    app.register_blueprint(admin.blueprint(deps, stop))
    app.register_blueprint(operations.blueprint(deps))
    app.register_blueprint(health.blueprint(deps))
    _register_error_handlers(app)
    return app


def _register_error_handlers(app: QuartTrio) -> None:
    @app.errorhandler(Problem)
    async def _problem(error: Problem) -> Response:
        return error.response()

    @app.errorhandler(NotFound)
    async def _not_found(error: NotFound) -> Response:
        # The same body for every 404 Quart raises, so a route cannot be probed for.
        return not_found()

    @app.errorhandler(MethodNotAllowed)
    async def _method_not_allowed(error: MethodNotAllowed) -> Response:
        allowed = sorted(error.valid_methods or ())
        headers = {"Allow": ", ".join(allowed)} if allowed else None
        return problem(405, f"{request.method} is not allowed here", headers=headers)

    @app.errorhandler(RequestEntityTooLarge)
    async def _too_large(error: RequestEntityTooLarge) -> Response:
        limit = app.config["MAX_CONTENT_LENGTH"]
        # Close the connection: the rest of the oversized body is never read, and keeping
        # the connection would leave the client free to keep streaming it at us.
        return problem(
            413,
            f"the request body is larger than {limit} bytes",
            headers={"Connection": "close"},
        )

    @app.errorhandler(HTTPException)
    async def _http_exception(error: HTTPException) -> Response:
        # 413 (MAX_CONTENT_LENGTH), 400 from Quart's parsers, 408 body timeout, 500 from
        # an unhandled exception (Quart logs the traceback before asking us to render it).
        status = error.code or 500
        detail = error.description if status < 500 else None
        return problem(status, detail)

    @app.errorhandler(DatabaseError)
    async def _database_unavailable(error: DatabaseError) -> Response:
        log.warning("%s %s: database unavailable: %s", request.method, request.path, error)
        return database_unavailable()
