"""A cap on concurrent HTTP connections, below the process's open-file limit.

hypercorn has no connection limit, and past the fd limit ``accept()`` fails for everyone,
``/healthz`` included. ``ConnectionCap.admit`` decides for each accepted socket, in order:

1. under ``limit``: admit;
2. at it: close the oldest admitted connection that has not sent a byte (an idle flood
   then only displaces itself) and admit;
3. every slot carries traffic: peek at the first bytes; a probe or a webhook
   (``PRIORITY_REQUESTS``) gets one of ``PRIORITY_SLOTS`` reserved slots, anything else
   an instant 503 problem and a close.

``raise_fd_limit`` lifts the soft ``RLIMIT_NOFILE`` to the hard one at start-up and
``connection_cap`` keeps the cap, the reserved slots and ``FD_RESERVE`` under it.
"""

from __future__ import annotations

import logging
import resource
import socket
from collections.abc import Callable
from contextlib import suppress
from functools import partial

import trio

log = logging.getLogger(__name__)

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
# Refusals in progress at once (each holds an fd for up to REFUSAL_SECONDS); past this, a
# burst of connections is closed at once without the 503, so a flood accepted faster
# than it can be answered never takes the process past its open-file limit.
MAX_REFUSING = 32
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
        self.refusing = 0
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

    async def admit(self, stream: trio.SocketStream) -> _SlotStream | None:
        """The stream, counted; None when it was refused (and closed)."""
        priority = False
        if not self.take():
            if self.priority_active >= self.priority:
                await self._refuse(stream)
                return None
            self.priority_active += 1
            if not await _is_priority(stream):
                self.priority_active -= 1
                await self._refuse(stream)
                return None
            priority = True
        return self._admitted(stream, priority)

    async def _refuse(self, stream: trio.SocketStream) -> None:
        self.refused += 1
        if self.refusing >= MAX_REFUSING:
            await trio.aclose_forcefully(stream)
            return
        self.refusing += 1
        try:
            await _refuse(stream)
        finally:
            self.refusing -= 1

    def _admitted(self, stream: trio.SocketStream, priority: bool) -> _SlotStream:
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
