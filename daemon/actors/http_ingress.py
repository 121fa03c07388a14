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
from collections.abc import Mapping
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


# Paths whose next segment is a credential: the access line shows "***" in its place,
# whatever the value (a near-miss of the real token, or last month's one, is as sensitive).
SECRET_PATH_PREFIXES = ("/webhooks/uisp/",)


def loggable_path(path: str) -> str:
    """``path`` with the credential segment masked: ``/webhooks/uisp/***``."""
    for prefix in SECRET_PATH_PREFIXES:
        if path.startswith(prefix):
            rest = path[len(prefix) :]
            tail = rest[rest.find("/") :] if "/" in rest else ""
            return f"{prefix}***{tail}"
    return path


class AccessLogger(HyperLogger):
    """hypercorn's logger, with our own small access-log atoms.

    hypercorn's ``AccessLogAtoms`` copies every request and response header and every
    environment variable (``PAYMENTD_*_TOKEN`` included) into a dict for each request,
    and its ``r`` atom is the raw path: the UISP webhook token on every webhook. Ours
    hold only what ``ACCESS_LOG_FORMAT`` uses, with ``loggable_path``. Building them
    only when the access logger is enabled also saves the ~3% of the intake's CPU that
    hypercorn spent on atoms nobody saw (bench/intake_throughput.py, py-spy).
    """

    async def access(
        self, request: WWWScope, response: ResponseSummary, request_time: float
    ) -> None:
        if self.access_logger is not None and self.access_logger.isEnabledFor(logging.INFO):
            await super().access(request, response, request_time)

    def atoms(
        self, request: WWWScope, response: ResponseSummary | None, request_time: float
    ) -> Mapping[str, str]:
        client = request.get("client")
        method = request["method"] if request["type"] == "http" else "GET"
        size = "-"
        status = "-"
        if response is not None:
            status = str(response["status"])
            for name, value in response.get("headers", []):
                if name.lower() == b"content-length":
                    size = value.decode("latin1")
        path = loggable_path(request["path"])
        return {
            "h": f"{client[0]}:{client[1]}" if client and len(client) == 2 else "-",
            "r": f"{method} {path} {request.get('http_version', 'ws')}",
            "s": status,
            "b": size,
            "D": str(int(request_time * 1_000_000)),
        }


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
    # Quart enforces http.max_body_bytes (413 problem) and its own body timeout.
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
