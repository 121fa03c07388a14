"""``paymentd_http_requests_total`` and ``paymentd_http_request_seconds`` for every request.

An ASGI middleware around the whole app (like ``requestid``): it sees every response,
Quart's own 404/405/413/500 problems included, and an exception that reaches hypercorn
(which answers 500 itself). The ``route`` label is the matched URL rule, which a
``before_request`` hook leaves in the ASGI scope; a request no rule matched is
``unmatched``. So the label set stays small whatever paths clients send, and a secret in
a path (``/webhooks/uisp/<token>``) never becomes a label value.

The latency is request start to response start: a server-sent event stream would
otherwise count as a request of hours.
"""

from __future__ import annotations

import time
from typing import Any, cast

from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGISendCallable,
    ASGISendEvent,
    Scope,
)
from quart import request
from quart_trio import QuartTrio

from daemon.platform.metrics import Metrics

ROUTE_KEY = "paymentd.route"
UNMATCHED = "unmatched"
# Anything else (a scanner's "PROPFIND") is counted as OTHER, not as its own series.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def install(app: QuartTrio, metrics: Metrics) -> None:
    """Record the matched rule per request and wrap the app's ASGI callable (outermost)."""

    @app.before_request
    async def remember_route() -> None:
        rule = request.url_rule
        if rule is not None:
            request.scope[ROUTE_KEY] = rule.rule  # type: ignore[literal-required]

    app.asgi_app = RequestMetricsMiddleware(app.asgi_app, metrics)  # type: ignore[method-assign]


class RequestMetricsMiddleware:
    def __init__(self, app: ASGIFramework, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method = scope["method"] if scope["method"] in METHODS else "OTHER"
        status: list[int] = []

        def route() -> str:
            return str(cast(dict[str, Any], scope).get(ROUTE_KEY, UNMATCHED))

        async def send_timed(message: ASGISendEvent) -> None:
            if message["type"] == "http.response.start" and not status:
                status.append(int(cast(dict[str, Any], message)["status"]))
                seconds = time.perf_counter() - started
                self.metrics.http_request_seconds.labels(method, route()).observe(seconds)
            await send(message)

        try:
            await self.app(scope, receive, send_timed)
        except Exception:
            # Hypercorn answers 500 when nothing was sent yet; count it as that.
            code = status[0] if status else 500
            self.metrics.http_requests.labels(method, route(), str(code)).inc()
            raise
        if status:  # else the client went away (or shutdown) before any answer
            self.metrics.http_requests.labels(method, route(), str(status[0])).inc()
