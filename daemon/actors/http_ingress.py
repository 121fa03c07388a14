"""The HTTP ingress actor: serves the Quart app (``daemon.platform.http``) with hypercorn on trio.

Consumes: HTTP requests (UISP webhooks, the admin API, probes, Prometheus scrapes) on the
sockets systemd passed (socket activation, ``paymentd.socket``: ``daemon.platform.listenfds``)
or, started without any, on ``http.host:http.port``, bound here; and the daemon's
``shutdown`` event.
Produces: whatever the routes produce (``uisp_webhooks`` rows, ``uisp_events`` messages,
task retries); reports the bound base URL (``http://host:port``, the real port when
``http.port`` is 0) through ``task_status.started()`` once the socket is listening.
Owns: the listening socket (a duplicate of systemd's, when inherited), every in-flight
request, and the cap on open connections (``http.max_connections``, lowered to fit the
open-file limit, which it raises at start): at it, the oldest connection that never sent
a byte is closed to make room; if every slot carries traffic, a new connection gets an
instant 503, except probes and webhooks, which have a few reserved slots
(``PRIORITY_SLOTS``).

Shutdown is hypercorn's own graceful path: when ``shutdown`` is set it stops accepting,
lets in-flight requests finish for ``daemon.shutdown_grace_seconds``, then cancels them,
and ``serve()`` returns normally (the supervisor treats that as "done", not a crash).
Open SSE streams watch the same event and end by themselves. Connections it accepted but
has not read a request from yet are given a moment to send it first (hypercorn closes
idle connections at once on shutdown), so under socket activation nothing that reached
this process is dropped, and what it did not accept waits in systemd's socket for the
next one.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.config import Sockets
from hypercorn.logging import Logger as HyperLogger
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState, LifespanState, ResponseSummary, WWWScope
from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr, wrap_app

from daemon.platform import listenfds
from daemon.platform.config import Config
from daemon.platform.connlimit import ConnectionCap, connection_cap, raise_fd_limit
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
# At shutdown, how long connections accepted just before it may take to send their first
# bytes, and then how long hypercorn gets to parse them, before idle ones are closed.
FIRST_BYTES_GRACE_SECONDS = 1.0
PARSE_GRACE_SECONDS = 0.05


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
    # Headers are bounded by these two instead (a connection stays "idle", and so subject
    # to keep_alive_timeout, until its request's headers are complete); bodies by Quart
    # (http.max_body_bytes, BODY_TIMEOUT) and daemon.platform.http.slowclients.
    hyper.keep_alive_timeout = HEADER_TIMEOUT_SECONDS
    hyper.h11_max_incomplete_size = MAX_HEADER_BYTES
    hyper.include_server_header = False  # no version banner for scanners
    return hyper


class ListenError(OSError):
    """The configured address cannot be listened on; the message names the setting.

    An ``OSError`` so the CLI reports it as a user error (one line, exit 2).
    """


def _listen_error(exc: OSError, host: str, port: int) -> ListenError:
    where = f"{bind_address(host, port)} (http.host:http.port)"
    if exc.errno == errno.EADDRINUSE:
        return ListenError(
            f"cannot listen on {where}: the port is already in use by another process"
            " (another paymentd?); stop it or set http.port to a free port"
        )
    if exc.errno == errno.EACCES:
        return ListenError(
            f"cannot listen on {where}: permission denied (ports below 1024 need"
            " CAP_NET_BIND_SERVICE); set http.port to 1024 or above"
        )
    if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
        return ListenError(
            f"cannot listen on {where}: no such local address; set http.host to an"
            " address of this machine (127.0.0.1, 0.0.0.0, ::)"
        )
    return ListenError(f"cannot listen on {where}: {exc.strerror or exc}")


async def serve(
    app: Any,
    hyper: HyperConfig,
    sockets: Sockets,
    cap: ConnectionCap,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """hypercorn's ``trio.run.worker_serve`` (HTTP only), with a cap on open connections.

    hypercorn has no hook for it, so its loop is reproduced here with every accepted
    stream going through ``cap.admit`` (``daemon.platform.connlimit``) first.
    """
    wrapped = wrap_app(app, hyper.wsgi_max_body_size, None)
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(wrapped, hyper, lifespan_state)
    context = WorkerContext(None)

    async def handle(stream: trio.SocketStream) -> None:
        counted = await cap.admit(stream)
        if counted is None:
            return  # refused
        try:
            state = ConnectionState(lifespan_state.copy())
            # hypercorn types the stream as SSLStream but handles a plain one (no TLS here).
            await TCPServer(wrapped, hyper, context, state, counted)  # type: ignore[arg-type]
        finally:
            counted.give_back()

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            listeners = []
            binds = []
            for sock in sockets.insecure_sockets:
                listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
                binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
            task_status.started(binds)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    nursery.start_soon(
                        partial(
                            trio.serve_listeners, handle, listeners, handler_nursery=server_nursery
                        )
                    )
                    await trio.sleep_forever()
            except BaseExceptionGroup as error:
                _, others = error.split((ShutdownError, KeyboardInterrupt))
                if others is not None:
                    raise others from None
            finally:
                try:
                    await _let_accepted_connections_speak(cap)
                finally:
                    await context.terminated.set()
                    deadline = trio.current_time() + hyper.graceful_timeout
                    server_nursery.cancel_scope.deadline = deadline
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


async def _let_accepted_connections_speak(cap: ConnectionCap) -> None:
    """Wait (bounded) until every accepted connection sent its first bytes, then a moment.

    hypercorn closes a connection it considers idle as soon as ``terminated`` is set, and
    a connection is idle until its request line and headers are parsed: one accepted a
    moment before the shutdown would be closed with its request unread. Silent clients
    (a flood, a port scan) only delay the shutdown by ``FIRST_BYTES_GRACE_SECONDS``.
    """
    if not cap.active and not cap.priority_active:
        return
    with trio.move_on_after(FIRST_BYTES_GRACE_SECONDS):
        while cap.silent:  # noqa: ASYNC110 - no event to wait on; shutdown only
            await trio.sleep(0.005)
    await trio.sleep(PARSE_GRACE_SECONDS)


def inherited_or_bound(hyper: HyperConfig, http_host: str, http_port: int) -> tuple[Sockets, bool]:
    """systemd's sockets when it passed some (``LISTEN_FDS``), else our own on host:port;
    and whether they are systemd's."""
    inherited = listenfds.listening_sockets(os.environ)
    if not inherited:
        return listen(hyper, http_host, http_port), False
    for sock in inherited:
        name = repr_socket_addr(sock.family, sock.getsockname())
        if sock.family == socket.AF_UNIX or sock.getsockname()[1] != http_port:
            log.warning(
                "serving on %s, the socket systemd passed (paymentd.socket ListenStream=);"
                " http.host/http.port (%s) are not used",
                name,
                bind_address(http_host, http_port),
            )
    # No listen() here: it would shrink the backlog systemd set (Backlog=), and that
    # queue is what holds connections while the daemon restarts.
    return Sockets(secure_sockets=[], insecure_sockets=inherited, quic_sockets=[]), True


def listen(hyper: HyperConfig, host: str, port: int) -> Sockets:
    """Bind and listen before serving, so a taken port is one clear error."""
    try:
        sockets = hyper.create_sockets()
        for sock in sockets.insecure_sockets:
            sock.listen(hyper.backlog)
    except OSError as exc:
        raise _listen_error(exc, host, port) from None
    return sockets


async def run(
    deps: Deps,
    *,
    shutdown: trio.Event,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown`` is set; returns normally after the graceful drain."""
    http = deps.config.http
    fd_limit = raise_fd_limit()
    cap = ConnectionCap(connection_cap(http.max_connections, fd_limit))
    if cap.limit < http.max_connections:
        log.warning(
            "http.max_connections lowered from %d to %d to fit the open-file limit (%d)",
            http.max_connections,
            cap.limit,
            fd_limit,
        )
    app = create_app(deps, shutdown=shutdown)
    hyper = hypercorn_config(deps.config)
    sockets, from_systemd = inherited_or_bound(hyper, http.host, http.port)
    try:
        async with trio.open_nursery() as nursery:
            # The URL we pass on is already accepting connections.
            binds: list[str] = await nursery.start(
                partial(serve, app, hyper, sockets, cap, shutdown_trigger=shutdown.wait)
            )
            if not binds:
                raise RuntimeError(f"hypercorn bound no socket for {hyper.bind}")
            base_url = binds[0]
            log.info(
                "HTTP ingress listening on %s (%s; at most %d connections)",
                base_url,
                "socket from systemd" if from_systemd else "bound itself",
                cap.limit,
            )
            task_status.started(base_url)
    finally:
        for sock in sockets.insecure_sockets:
            sock.close()
    log.info("HTTP ingress stopped")
