"""The HTTP ingress actor: serves the Quart app (``daemon.platform.http``) with hypercorn on trio.

Consumes: HTTP requests on ``http.host:http.port`` (UISP webhooks, the admin API, probes,
Prometheus scrapes) and the daemon's ``shutdown`` event.
Produces: whatever the routes produce (``uisp_webhooks`` rows, ``uisp_events`` messages,
task retries); reports the bound base URL (``http://host:port``, the real port when
``http.port`` is 0) through ``task_status.started()`` once the socket is listening.
Owns: the listening socket and every in-flight request.

Shutdown is hypercorn's own graceful path: when ``shutdown`` is set it stops accepting,
lets in-flight requests finish for ``daemon.shutdown_grace_seconds``, then cancels them,
and ``serve()`` returns normally (the supervisor treats that as "done", not a crash).
Open SSE streams watch the same event and end by themselves.
"""

from __future__ import annotations

import logging
from functools import partial

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.logging import Logger as HyperLogger
from hypercorn.trio import serve
from hypercorn.typing import ResponseSummary, WWWScope

from daemon.platform.config import Config
from daemon.platform.deps import Deps
from daemon.platform.http import create_app

log = logging.getLogger(__name__)

# hypercorn's own messages ("Running on ...", protocol errors) and its access log land in
# the daemon's logging tree instead of hypercorn's private stderr/stdout handlers.
ERROR_LOGGER = "daemon.platform.http.server"
ACCESS_LOGGER = "daemon.platform.http.access"
ACCESS_LOG_FORMAT = '%(h)s "%(r)s" %(s)s %(b)s %(D)sus'
# How long a new or kept-alive connection may take to send a complete set of headers,
# and how large they may be (hypercorn's defaults, pinned because defect 19 relies on them).
HEADER_TIMEOUT_SECONDS = 5.0
MAX_HEADER_BYTES = 16 * 1024


class AccessLogger(HyperLogger):
    """hypercorn's logger, minus the per-request cost of an access line nobody will see.

    hypercorn builds the access-log atoms (a dict of every request and response header
    plus a dozen derived fields) for each request before ``logger.info`` checks the
    level: about 3% of the intake's CPU under load (bench/intake_throughput.py, py-spy)
    when the access logger is above INFO. The line itself is unchanged when it is enabled.
    """

    async def access(
        self, request: WWWScope, response: ResponseSummary, request_time: float
    ) -> None:
        if self.access_logger is not None and self.access_logger.isEnabledFor(logging.INFO):
            await super().access(request, response, request_time)


def bind_address(host: str, port: int) -> str:
    """hypercorn's bind syntax: IPv6 literals need brackets (``[::1]:8080``)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def hypercorn_config(config: Config) -> HyperConfig:
    """The hypercorn settings derived from the daemon's config."""
    hyper = HyperConfig()
    hyper.bind = [bind_address(config.http.host, config.http.port)]
    hyper.graceful_timeout = config.daemon.shutdown_grace_seconds
    hyper.accesslog = logging.getLogger(ACCESS_LOGGER)
    hyper.access_log_format = ACCESS_LOG_FORMAT
    hyper.errorlog = logging.getLogger(ERROR_LOGGER)
    hyper.logger_class = AccessLogger
    # No read_timeout: it would also cut SSE clients, which send nothing while listening.
    # Headers are bounded by these two instead (a connection stays "idle", and so subject
    # to keep_alive_timeout, until its request's headers are complete); bodies by Quart
    # (http.max_body_bytes, BODY_TIMEOUT) and daemon.platform.http.slowclients.
    hyper.keep_alive_timeout = HEADER_TIMEOUT_SECONDS
    hyper.h11_max_incomplete_size = MAX_HEADER_BYTES
    hyper.include_server_header = False  # no version banner for scanners
    return hyper


async def run(
    deps: Deps,
    *,
    shutdown: trio.Event,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown`` is set; returns normally after the graceful drain."""
    app = create_app(deps, shutdown=shutdown)
    hyper = hypercorn_config(deps.config)
    async with trio.open_nursery() as nursery:
        # hypercorn reports its binds (["http://127.0.0.1:54321"]) only after listen(),
        # so the URL we pass on is already accepting connections.
        binds: list[str] = await nursery.start(
            partial(serve, app, hyper, shutdown_trigger=shutdown.wait)
        )
        if not binds:
            raise RuntimeError(f"hypercorn bound no socket for {hyper.bind}")
        base_url = binds[0]
        log.info("HTTP ingress listening on %s", base_url)
        task_status.started(base_url)
    log.info("HTTP ingress stopped")
