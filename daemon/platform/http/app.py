"""The Quart (trio flavour) application behind the HTTP ingress actor.

Consumes ``Deps`` (config, database, metrics, event bus, health) and an optional shutdown
event (ends long-lived streams such as SSE when the daemon stops). Produces a ``QuartTrio``
app with three groups of routes:

- ``daemon.uisp.intake``: ``POST /webhooks/uisp/<token>`` (UISP CRM events in);
- ``daemon.payments.stripe_webhook``: ``POST /webhooks/stripe`` (signed Stripe events in);
- ``daemon.platform.http.admin``: ``/api/v1/*`` behind a Bearer token (tasks, queues, events);
- ``daemon.payments.routes``: ``/api/v1/payments``, ``/api/v1/refunds`` (payments:read/write);
- ``daemon.platform.http.health``: ``/healthz``, ``/readyz``, ``/metrics`` (open);
- ``daemon.checkout.routes``: ``/checkout/*`` and ``/paymentd.js`` (HTML, SSE, JS; open:
  signed links and publishable keys), with a payment provider configured;
- ``/openapi.json``: the OpenAPI 3.1 document quart-schema builds from the shapes each
  route declares (``daemon.platform.http.schema``).

Every error, Quart's own 404/405/413/500 and validation failures included, answers
``application/problem+json``; no API route renders HTML (quart-schema's HTML doc pages
are off): the console (``daemon.console``, ``/console``) is for operators, the checkout
page and the mock's page for customers. Every response carries ``X-Request-ID``
(``requestid``).
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from quart import Response, request
from quart_schema import OpenAPIProvider, QuartSchema
from quart_schema.validation import RequestSchemaValidationError
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge

from daemon import __version__
from daemon.payments import mock_provider, stripe_webhook
from daemon.payments import routes as payment_routes
from daemon.platform.db import DatabaseError
from daemon.platform.deps import Deps
from daemon.platform.http import admin, health, network, operations, request_metrics, schema
from daemon.platform.http.problem import (
    PROBLEM_TYPE,
    JSONProvider,
    Problem,
    database_unavailable,
    not_found,
    problem,
)
from daemon.platform.http.requestid import RequestIdMiddleware
from daemon.platform.http.slowclients import BODY_TIMEOUT_SECONDS, ShieldFinalSend
from daemon.uisp import intake
from daemon.webhooks import catalog

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
    app.config["BODY_TIMEOUT"] = BODY_TIMEOUT_SECONDS
    # Trailing-slash and double-slash "fixes" answer with HTML redirects; we want plain 404s.
    app.url_map.strict_slashes = False
    app.url_map.merge_slashes = False

    QuartSchema(
        app,
        # No HTML pages: they pull JavaScript from CDNs and we never render HTML.
        redoc_ui_path=None,
        scalar_ui_path=None,
        swagger_ui_path=None,
        info={
            "title": "paymentd",
            "version": __version__,
            "description": "Bearer credentials are http.admin_token, or an API key"
            " (pd_<id>_<secret>) holding the scopes the operation lists.",
        },
        security_schemes={"bearer": {"type": "http", "scheme": "bearer"}},
        conversion_preference="pydantic",
        openapi_provider_class=Provider,
    )
    # After QuartSchema, which installs its own provider: ours knows our row types.
    app.json = JSONProvider(app)

    stop = shutdown if shutdown is not None else trio.Event()
    app.register_blueprint(intake.blueprint(deps))
    app.register_blueprint(stripe_webhook.blueprint(deps))
    app.register_blueprint(admin.blueprint(deps, stop))
    app.register_blueprint(operations.blueprint(deps))
    app.register_blueprint(network.blueprint(deps))
    # Imported here: the webhook routes use this package's shapes (admin.Shape), so a
    # module-level import would make importing them first a circular import.
    from daemon.webhooks import api as webhooks_api

    app.register_blueprint(webhooks_api.blueprint(deps))
    app.register_blueprint(payment_routes.blueprint(deps))
    if deps.config.payments.provider != "none":
        # The hosted checkout, its SSE status stream and paymentd.js (daemon/checkout).
        from daemon.checkout import routes as checkout_routes

        app.register_blueprint(checkout_routes.blueprint(deps, stop))
    if deps.config.payments.provider == "mock":
        # The mock provider's hosted page (HTML, for the demo); never with a real provider.
        app.register_blueprint(mock_provider.blueprint(deps.db))
    app.register_blueprint(health.blueprint(deps))
    # The operator console (HTML pages under /console, daemon/console/); imported here
    # because it uses the admin routes' event stream.
    from daemon import console

    app.register_blueprint(console.blueprint(deps, stop))
    _register_error_handlers(app)
    # Around the shielded final send: the request id, so even that send carries it.
    app.asgi_app = RequestIdMiddleware(ShieldFinalSend(app.asgi_app))  # type: ignore[method-assign]
    request_metrics.install(app, deps.metrics)  # outermost: every answer is counted
    return app


class Provider(OpenAPIProvider):
    """quart-schema's document, with our media types: problems for every 4xx/5xx.

    Built once: building it takes ~30 ms of CPU, and ``/openapi.json`` is open to anyone,
    so rebuilding it per request would make it a cheap way to load the event loop. Routes
    are all registered before the first request, so the first build is the last.
    """

    _document: dict[str, Any] | None = None

    def schema(self) -> dict[str, Any]:
        if self._document is None:
            document = super().schema()
            # What we send (OpenAPI 3.1 ``webhooks``): one operation per event type.
            document["webhooks"], events = catalog.openapi()
            schemas = document["components"]["schemas"]
            clash = [name for name in events if schemas.get(name, events[name]) != events[name]]
            if clash:
                raise RuntimeError(f"two different schemas are named {clash[0]!r}")
            schemas.update(events)
            self._document = document
        return self._document

    def build_paths(self, rule: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        paths, components = super().build_paths(rule)
        media = schema.media_types_of(self._app.view_functions[rule.endpoint])
        for item in paths.values():
            for operation in item.values():
                if "requestBody" in operation:
                    # Every body we declare is required; quart-schema leaves that out.
                    operation["requestBody"]["required"] = True
                for code, response in operation.get("responses", {}).items():
                    content = response.get("content", {})
                    status = int(code)
                    kind = media.get(status, PROBLEM_TYPE if status >= 400 else None)
                    if kind is not None and "application/json" in content:
                        content[kind] = content.pop("application/json")
        return paths, components


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

    @app.errorhandler(RequestSchemaValidationError)
    async def _invalid(error: RequestSchemaValidationError) -> Response:
        return schema.schema_problem(error).response()

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
