"""SSH transport: the only client-side module that touches asyncssh (through trio-asyncio).

``open_session`` logs in over SSH, asks for an interactive shell on a PTY (OLT CLIs
want a terminal) and returns a plain-trio ``CliSession``. Everything asyncssh or the OS
can raise is translated into ``OltTransientError`` here, so callers never see asyncio
exceptions -- in particular an ``asyncio.CancelledError`` that trio did not cause (it
would escape ``except Exception``).

Must be called from a task that runs inside ``trio_asyncio.open_loop()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncssh
import trio
import trio_asyncio

from daemon.network.olt.types import DeviceSpec, OltTransientError

__all__ = ["CliSession", "open_session"]

T = TypeVar("T")

# Raw transcript kept per session for diagnostics; bounded so a chatty device cannot grow it.
_TRANSCRIPT_MAX = 16_000
_READ_CHUNK = 4096


async def _bridge(what: str, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """Await an asyncio call from trio, translating its failures into OltTransientError."""
    try:
        result: T = await trio_asyncio.aio_as_trio(fn)(*args, **kwargs)
        return result
    except asyncio.CancelledError as exc:
        # If trio is cancelling us, let that win (raises trio.Cancelled); otherwise the
        # asyncio side died under us (connection torn down): a transient failure.
        await trio.lowlevel.checkpoint_if_cancelled()
        raise OltTransientError(f"{what}: cancelled on the asyncio side") from exc
    except asyncssh.PermissionDenied as exc:
        raise OltTransientError(f"{what}: authentication failed ({exc.reason})") from exc
    except asyncssh.DisconnectError as exc:
        raise OltTransientError(f"{what}: disconnected ({exc.reason})") from exc
    except (asyncssh.Error, OSError, TimeoutError, EOFError) as exc:
        raise OltTransientError(f"{what}: {type(exc).__name__}: {exc}") from exc


class CliSession:
    """One interactive CLI shell on one device.

    Owns the asyncssh connection and process. Not safe for concurrent use: the OLT pool
    gives each session to one device actor, which runs one command at a time.
    """

    def __init__(
        self,
        device: str,
        conn: asyncssh.SSHClientConnection,
        process: asyncssh.SSHClientProcess[str],
    ) -> None:
        self.device = device
        self._conn = conn
        self._process = process
        self._buffer = ""  # received but not yet returned by read_until
        self.transcript = ""  # tail of everything received, for diagnostics
        self.closed = False
        self._close_started = False
        # Set by a driver that could not bring the CLI back to a known mode; the owner
        # must then discard the session instead of reusing it.
        self.poisoned = False

    @property
    def usable(self) -> bool:
        return not self.closed and not self.poisoned

    async def send_raw(self, text: str) -> None:
        """Send text as typed, without a line ending (pager space, y/n answers)."""
        if self.closed:
            raise OltTransientError(f"{self.device}: session is closed")
        try:
            self._process.stdin.write(text)
        except (asyncssh.Error, OSError) as exc:
            self.closed = True
            raise OltTransientError(f"{self.device}: write failed: {exc}") from exc
        # write() only buffers; drain applies back-pressure and surfaces a dead channel.
        await self._io("write", self._process.stdin.drain)

    async def _io(self, what: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """A bridged call on the open channel; any failure means the session is gone."""
        try:
            return await _bridge(f"{self.device}: {what}", fn, *args)
        except OltTransientError:
            self.closed = True
            raise

    async def send_line(self, line: str) -> None:
        """Send one command line (terminated by a newline, as netmiko does)."""
        await self.send_raw(line + "\n")

    # The timeout is part of the contract (not left to the caller's cancel scope) because a
    # timed-out read must also mark the session unusable.
    async def read_until(
        self,
        patterns: list[re.Pattern[str]],
        timeout: float,  # noqa: ASYNC109
    ) -> tuple[int, str]:
        """Read until one of ``patterns`` matches the text received so far.

        Returns the index of the first pattern (in list order) that matches and the text
        up to the end of that match; the rest stays buffered for the next read. Raises
        ``OltTransientError`` on timeout or end of stream.
        """
        with trio.move_on_after(timeout):
            while True:
                for index, pattern in enumerate(patterns):
                    m = pattern.search(self._buffer)
                    if m is not None:
                        text, self._buffer = self._buffer[: m.end()], self._buffer[m.end() :]
                        return index, text
                chunk = await self._io("read", self._process.stdout.read, _READ_CHUNK)
                if not chunk:
                    self.closed = True
                    raise OltTransientError(
                        f"{self.device}: connection closed by the device; last output: "
                        f"{self._buffer[-200:]!r}"
                    )
                self._buffer += chunk
                self.transcript = (self.transcript + chunk)[-_TRANSCRIPT_MAX:]
        self.poisoned = True  # an answer may still arrive later and desynchronise us
        raise OltTransientError(
            f"{self.device}: no answer within {timeout:g}s; last output: {self._buffer[-200:]!r}"
        )

    async def close(self) -> None:
        """Close the connection; bounded and shielded so it is safe under cancellation."""
        if self._close_started:
            return
        self._close_started = self.closed = True
        self._conn.close()
        with trio.move_on_after(5, shield=True):
            # Already gone is fine: nothing is left to release.
            with contextlib.suppress(OltTransientError):
                await _bridge(f"{self.device}: close", self._conn.wait_closed)


async def open_session(
    spec: DeviceSpec,
    *,
    connect_timeout: float,
    known_hosts: str | None,
    keepalive_interval: float = 30.0,
) -> CliSession:
    """Connect, authenticate and open an interactive shell on a PTY.

    ``known_hosts`` is an OpenSSH known_hosts path, or None to skip host key checks.
    asyncio-side timeouts are set because a trio deadline cannot cut asyncssh short.
    """
    conn = await _bridge(
        f"{spec.name}: connect {spec.host}:{spec.port}",
        asyncssh.connect,
        spec.host,
        spec.port,
        username=spec.username,
        password=spec.password,
        known_hosts=known_hosts,
        # Only password auth: never offer the service account's keys or agent to an OLT.
        client_keys=None,
        agent_path=None,
        preferred_auth="password,keyboard-interactive",
        connect_timeout=connect_timeout,
        login_timeout=connect_timeout,
        keepalive_interval=keepalive_interval,
        keepalive_count_max=3,
    )
    try:
        process = await _bridge(
            f"{spec.name}: open shell",
            conn.create_process,
            term_type="vt100",
            term_size=(200, 24),
            encoding="utf-8",
            errors="replace",
        )
    except BaseException:
        conn.close()
        raise
    return CliSession(spec.name, conn, process)
