"""The HTTP ingress actor: serves the Quart app (``daemon.platform.http``) with hypercorn on trio.

Consumes: HTTP requests on ``http.host:http.port`` (UISP webhooks, the admin API, probes,
Prometheus scrapes) and the daemon's ``shutdown`` event.
Produces: whatever the routes produce (``uisp_webhooks`` rows, ``uisp_events`` messages,
task retries); reports the bound base URL (``http://host:port``, the real port when
``http.port`` is 0) through ``task_status.started()`` once the socket is listening.
Owns: the listening socket, every in-flight request, and the cap on open connections
(``http.max_connections``, lowered to fit the open-file limit, which it raises at start):
at it, the oldest connection that never sent a byte is closed to make room; if every
slot carries traffic, a new connection gets an instant 503, except probes and webhooks,
which have a few reserved slots (``PRIORITY_SLOTS``).

Shutdown is hypercorn's own graceful path: when ``shutdown`` is set it stops accepting,
lets in-flight requests finish for ``daemon.shutdown_grace_seconds``, then cancels them,
and ``serve()`` returns normally (the supervisor treats that as "done", not a crash).
Open SSE streams watch the same event and end by themselves.
"""

from __future__ import annotations

import errno
import logging
import resource
import socket
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
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


# File descriptors kept out of the connection cap: the database pool, the LISTEN
# connection, OLT sessions, outbound HTTP clients, log files.
FD_RESERVE = 128
# Connections admitted past the cap when their first bytes are one of these requests, so
# probes and UISP keep getting answers while idle clients hold every ordinary slot.
PRIORITY_SLOTS = 16
PRIORITY_REQUESTS = (b"GET /healthz ", b"GET /readyz ", b"POST /webhooks/uisp/")
# How long an over-the-cap connection may take to show its request line.
PRIORITY_PEEK_SECONDS = 0.5
# How long a refused connection is given to read its 503 before it is closed.
REFUSAL_SECONDS = 0.02
_REFUSAL_BODY = (
    b'{"type":"about:blank","title":"Service Unavailable","status":503,'
    b'"detail":"too many connections"}'
)
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n"
    b"connection: close\r\nretry-after: 1\r\n"
    + f"content-length: {len(_REFUSAL_BODY)}\r\n\r\n".encode()
    + _REFUSAL_BODY
)


def raise_fd_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; return the soft limit now in force.

    The default soft limit (1,024) is what a flood of idle connections exhausted; the hard
    limit is what the operator granted (``LimitNOFILE=`` in the unit).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
            return soft
        log.info("open-file limit raised from %d to %d", soft, hard)
        return hard
    return soft


def connection_cap(configured: int, fd_limit: int) -> int:
    """``http.max_connections``, lowered so ordinary plus priority slots fit ``fd_limit``."""
    fit = fd_limit - FD_RESERVE - PRIORITY_SLOTS
    return max(1, min(configured, fit))


class ConnectionCap:
    """Counts open client connections; decides admit, evict, admit-as-priority or refuse.

    At the cap, the oldest connection that has not sent a byte yet is closed to make room
    (an idle flood then only displaces itself); only when every slot carries real
    traffic is a newcomer refused, unless it is a probe or a webhook.
    """

    def __init__(self, limit: int, priority: int = PRIORITY_SLOTS) -> None:
        self.limit = limit
        self.priority = priority
        self.active = 0
        self.priority_active = 0
        self.refused = 0
        self.evicted = 0
        # Admitted connections that have not sent a byte yet, oldest first.
        self.silent: dict[_SlotStream, None] = {}
        self._full_since: float | None = None

    def take(self) -> bool:
        if self.active < self.limit:
            self.active += 1
            return True
        if self._full_since is None:
            self._full_since = trio.current_time()
            log.warning(
                "HTTP connection cap reached (%d open, http.max_connections): closing the"
                " oldest connections that sent nothing; refusing others except health"
                " checks and webhooks",
                self.active,
            )
        if self.silent:
            oldest = next(iter(self.silent))
            oldest.evict()  # gives its slot back
            self.evicted += 1
            self.active += 1
            return True
        return False

    def release_priority(self) -> None:
        self.priority_active -= 1

    def give_back(self) -> None:
        self.active -= 1
        if self._full_since is not None and self.active < self.limit * 9 // 10:
            log.warning(
                "HTTP connections back under the cap after %.0f s; %d closed silent and %d"
                " refused meanwhile",
                trio.current_time() - self._full_since,
                self.evicted,
                self.refused,
            )
            self._full_since = None
            self.refused = self.evicted = 0

    def admitted(self, stream: trio.SocketStream, priority: bool) -> _SlotStream:
        counted = _SlotStream(stream, self.release_priority if priority else self.give_back)
        if not priority:
            counted.on_first_byte = partial(self.silent.pop, counted, None)
            self.silent[counted] = None
        return counted


class _SlotStream:
    """The accepted stream, giving its connection slot back as soon as it is closed.

    A client that connects and leaves without sending a byte (a flood, a TCP health
    check, a port scan) is closed at once: hypercorn would hold that socket until its
    ``keep_alive_timeout`` (5 s) and the slot with it.
    """

    def __init__(self, stream: trio.SocketStream, release: Callable[[], None]) -> None:
        self._stream = stream
        self.socket = stream.socket
        self._release: Callable[[], None] | None = release
        self._received = False
        self.on_first_byte: Callable[[], object] | None = None

    def give_back(self) -> None:
        self._spoke()
        release, self._release = self._release, None
        if release is not None:
            release()

    def _spoke(self) -> None:
        callback, self.on_first_byte = self.on_first_byte, None
        if callback is not None:
            callback()

    def evict(self) -> None:
        """Close it now (to make room): hypercorn's pending read ends with an error."""
        self.give_back()
        self.socket.close()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self._stream.receive_some(max_bytes)
        if data:
            if not self._received:
                self._received = True
                self._spoke()
        elif not self._received:
            await self.aclose()
        return data

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        self.give_back()
        await self._stream.aclose()


async def _is_priority(stream: trio.SocketStream) -> bool:
    """Whether the first bytes (peeked, not consumed) are a probe or a webhook request."""
    want = max(len(p) for p in PRIORITY_REQUESTS)
    with trio.move_on_after(PRIORITY_PEEK_SECONDS):
        while True:
            head = await stream.socket.recv(want, socket.MSG_PEEK)
            if not head or any(head.startswith(p) for p in PRIORITY_REQUESTS):
                return bool(head)
            if len(head) >= want or not any(p.startswith(head) for p in PRIORITY_REQUESTS):
                return False
            await trio.sleep(0.01)  # a partial request line: let the rest arrive
    return False


async def _refuse(stream: trio.SocketStream) -> None:
    """A tiny 503 without parsing the request, then close, within ``REFUSAL_SECONDS``.

    Closing a socket with unread request bytes makes the kernel send a reset, which can
    destroy the 503 before the client reads it; so half-close first and discard what the
    client already sent. Kept short: under a flood, refused sockets still hold fds.
    """
    with trio.move_on_after(REFUSAL_SECONDS), suppress(trio.BrokenResourceError, OSError):
        await stream.send_all(REFUSAL)
        await stream.send_eof()
        received = 0
        while received < 65536 and (chunk := await stream.receive_some(16384)):
            received += len(chunk)
    await trio.aclose_forcefully(stream)


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

    hypercorn has no connection limit, and past the process's fd limit ``accept()`` fails
    for everyone, ``/healthz`` included. Each accepted stream takes a slot; beyond the cap
    it is refused at once unless its first bytes are a probe or a webhook
    (``PRIORITY_REQUESTS``), which may use one of ``cap.priority`` extra slots.
    """
    wrapped = wrap_app(app, hyper.wsgi_max_body_size, None)
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(wrapped, hyper, lifespan_state)
    context = WorkerContext(None)

    async def handle(stream: trio.SocketStream) -> None:
        general = cap.take()
        priority = False
        if not general:
            if cap.priority_active >= cap.priority:
                cap.refused += 1
                await _refuse(stream)
                return
            cap.priority_active += 1
            priority = True
            if not await _is_priority(stream):
                cap.priority_active -= 1
                cap.refused += 1
                await _refuse(stream)
                return
        counted = cap.admitted(stream, priority)
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
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = trio.current_time() + hyper.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


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
    sockets = listen(hyper, http.host, http.port)
    try:
        async with trio.open_nursery() as nursery:
            # The URL we pass on is already accepting connections.
            binds: list[str] = await nursery.start(
                partial(serve, app, hyper, sockets, cap, shutdown_trigger=shutdown.wait)
            )
            if not binds:
                raise RuntimeError(f"hypercorn bound no socket for {hyper.bind}")
            base_url = binds[0]
            log.info("HTTP ingress listening on %s (at most %d connections)", base_url, cap.limit)
            task_status.started(base_url)
    finally:
        for sock in sockets.insecure_sockets:
            sock.close()
    log.info("HTTP ingress stopped")
