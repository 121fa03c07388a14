"""SSH transport: the only client-side module that touches asyncssh (through trio-asyncio).

``open_session`` logs in over SSH, asks for an interactive shell on a PTY (OLT CLIs
want a terminal) and returns a plain-trio ``CliSession``. Everything asyncssh or the OS
can raise is translated into ``OltTransientError`` (or the permanent ``OltAuthError`` /
``OltHostKeyError``) here, so callers never see asyncio
exceptions -- in particular an ``asyncio.CancelledError`` that trio did not cause (it
would escape ``except Exception``).

Must be called from a task that runs inside ``trio_asyncio.open_loop()``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncssh
import trio
import trio_asyncio

from daemon.network.olt.types import (
    DeviceSpec,
    OltHostKeyError,
    OltTimeout,
    OltTransientError,
    auth_error,
)

__all__ = [
    "CliSession",
    "fetch_host_key",
    "host_key_fingerprint",
    "open_session",
    "parse_host_key",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Raw transcript kept per session for diagnostics; bounded so a chatty device cannot grow it.
_TRANSCRIPT_MAX = 16_000
_READ_CHUNK = 4096


async def _bridge(
    what: str,
    timeout: float,  # noqa: ASYNC109
    make: Callable[[], Awaitable[T]],
    *,
    passthrough: tuple[type[BaseException], ...] = (),
) -> T:
    """Await an asyncio call from trio, translating its failures into OltTransientError.

    ``make`` builds the awaitable on the asyncio side, where ``asyncio.wait_for`` bounds
    it: a trio deadline alone cannot cut an asyncio call short (trio-asyncio waits for
    the cancelled future to finish), so a wedged asyncssh call would wedge us too.
    ``passthrough`` exceptions are re-raised untranslated for the caller to classify.
    """

    async def bounded() -> T:
        return await asyncio.wait_for(make(), timeout)

    try:
        result: T = await trio_asyncio.aio_as_trio(bounded)()
        return result
    except asyncio.CancelledError as exc:
        # If trio is cancelling us, let that win (raises trio.Cancelled); otherwise the
        # asyncio side died under us (connection torn down): a transient failure.
        await trio.lowlevel.checkpoint_if_cancelled()
        raise OltTransientError(f"{what}: cancelled on the asyncio side") from exc
    except passthrough:
        raise
    except TimeoutError as exc:
        raise OltTimeout(f"{what}: no response within {timeout:g}s") from exc
    except asyncssh.DisconnectError as exc:
        raise OltTransientError(f"{what}: disconnected ({exc.reason})") from exc
    except (asyncssh.Error, OSError, EOFError) as exc:
        raise OltTransientError(f"{what}: {type(exc).__name__}: {exc}") from exc


def parse_host_key(line: str) -> asyncssh.SSHKey:
    """An OpenSSH public key line (``ssh-ed25519 AAAA...``); ValueError if it is not one."""
    try:
        return asyncssh.import_public_key(line)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise ValueError(f"not an SSH public key: {exc}") from None


def host_key_fingerprint(line: str) -> str:
    """``ssh-ed25519 SHA256:...``: what an operator compares with the device's own."""
    key = parse_host_key(line)
    return f"{key.get_algorithm()} {key.get_fingerprint('sha256')}"


async def fetch_host_key(host: str, port: int, *, timeout: float) -> str:  # noqa: ASYNC109
    """Connect and return the server's host key as an OpenSSH line (no login, no password
    sent). Raises ``OltTransientError`` if the device cannot be reached."""
    key = await _bridge(
        f"host key of {host}:{port}", timeout, lambda: asyncssh.get_server_host_key(host, port)
    )
    if key is None:
        raise OltTransientError(f"{host}:{port} presented no host key")
    line: str = key.export_public_key("openssh").decode().strip()
    return " ".join(line.split()[:2])  # drop any comment


class CliSession:
    """One interactive CLI shell on one device.

    Owns the asyncssh connection and process. Not safe for concurrent use: the OLT pool
    gives each session to one device actor, which runs one command at a time. Every call
    is bounded on the asyncio side too: reads by their ``timeout``, writes (the drain
    that waits for a device that stopped reading) by ``io_timeout``, close by a few
    seconds after which the connection is aborted.
    """

    def __init__(
        self,
        device: str,
        conn: asyncssh.SSHClientConnection,
        process: asyncssh.SSHClientProcess[str],
        *,
        io_timeout: float = 60.0,
        secrets: tuple[str | None, ...] = (),
    ) -> None:
        self.device = device
        # Masked in what our errors quote of the device's output (a CLI may echo them).
        self._secrets = tuple(s for s in secrets if s)
        self._conn = conn
        self._process = process
        self.io_timeout = io_timeout
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

    @property
    def unread(self) -> str:
        """Received text no ``read_until`` has returned yet (e.g. a farewell before EOF)."""
        return self._buffer

    def redact(self, text: str) -> str:
        """``text`` with the session's passwords masked, for quoting device output."""
        for secret in self._secrets:
            text = text.replace(secret, "******")
        return text

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
        # A device that stops reading fills the SSH window and drain never returns.
        await self._io("write", self.io_timeout, self._process.stdin.drain)

    async def _io(
        self,
        what: str,
        timeout: float,  # noqa: ASYNC109
        make: Callable[[], Awaitable[T]],
    ) -> T:
        """A bridged call on the open channel; any failure means the session is gone."""
        try:
            return await _bridge(f"{self.device}: {what}", timeout, make)
        except OltTransientError:
            self.closed = True
            if not self._close_started:
                # Wedged or broken: nothing more will be said on this connection, and a
                # graceful close could wait forever for a peer that stopped reading.
                self._close_started = True
                self._conn.abort()
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
        ``OltTimeout`` on timeout, ``OltTransientError`` on end of stream.
        """
        deadline = trio.current_time() + timeout
        with trio.move_on_at(deadline):
            while True:
                for index, pattern in enumerate(patterns):
                    m = pattern.search(self._buffer)
                    if m is not None:
                        text, self._buffer = self._buffer[: m.end()], self._buffer[m.end() :]
                        return index, text
                remaining = max(deadline - trio.current_time(), 0.001)
                try:
                    chunk = await self._io(
                        "read", remaining, lambda: self._process.stdout.read(_READ_CHUNK)
                    )
                except OltTimeout:
                    break
                if not chunk:
                    self.closed = True
                    raise OltTransientError(
                        f"{self.device}: connection closed by the device; last output: "
                        f"{self.redact(self._buffer[-200:])!r}"
                    )
                self._buffer += chunk
                self.transcript = (self.transcript + chunk)[-_TRANSCRIPT_MAX:]
        self.poisoned = True  # an answer may still arrive later and desynchronise us
        raise OltTimeout(
            f"{self.device}: no answer within {timeout:g}s; "
            f"last output: {self.redact(self._buffer[-200:])!r}"
        )

    async def close(self) -> None:
        """Close the connection; bounded and shielded so it is safe under cancellation."""
        if self._close_started:
            return
        self._close_started = self.closed = True
        self._conn.close()
        with trio.move_on_after(5, shield=True):
            try:
                await _bridge(f"{self.device}: close", 4, self._conn.wait_closed)
            except OltTransientError:
                # Already gone is fine; a peer that does not finish the close is cut off.
                self._conn.abort()


def _known_hosts(spec: DeviceSpec, known_hosts_file: str | None) -> Any:
    """What asyncssh should trust for this device: its pinned key, else the configured
    known_hosts file; ``None`` (no check) only when the operator opted out."""
    if not spec.host_key_check:
        log.warning(
            "%s: SSH host key NOT checked (the device was added with --no-host-key-check): "
            "anyone on the path to %s:%d can read the OLT password; pin the key with "
            "'paymentd olt update %s --refresh-host-key'",
            spec.name,
            spec.host,
            spec.port,
            spec.name,
        )
        return None
    if spec.host_key:
        try:
            # Trusted host keys, CA keys, revoked keys: only the pinned key, no matching.
            return ([parse_host_key(spec.host_key)], [], [])
        except ValueError as exc:
            raise OltHostKeyError(f"{spec.name}: the stored host key is unusable: {exc}") from None
    if known_hosts_file:
        return known_hosts_file
    raise OltHostKeyError(
        f"{spec.name}: no SSH host key is pinned for this device; record it with "
        f"'paymentd olt update {spec.name} --refresh-host-key' (it shows the fingerprint "
        "to compare with the device's)"
    )


async def open_session(
    spec: DeviceSpec,
    *,
    connect_timeout: float,
    known_hosts: str | None,
    keepalive_interval: float = 30.0,
    io_timeout: float = 60.0,
) -> CliSession:
    """Connect, authenticate and open an interactive shell on a PTY.

    The host key must be ``spec.host_key`` if one is pinned, else be in the OpenSSH
    ``known_hosts`` file; neither is checked only if ``spec.host_key_check`` is off.
    Raises ``OltAuthError`` if the device rejects the credentials, ``OltHostKeyError``
    on a host key that does not match, ``OltTransientError`` for anything else.
    """
    trusted = _known_hosts(spec, known_hosts)

    def connect() -> Awaitable[asyncssh.SSHClientConnection]:
        return asyncssh.connect(
            spec.host,
            spec.port,
            username=spec.username,
            password=spec.password,
            known_hosts=trusted,
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
        conn = await _bridge(
            f"{spec.name}: connect {spec.host}:{spec.port}",
            connect_timeout,
            connect,
            passthrough=(asyncssh.PermissionDenied, asyncssh.HostKeyNotVerifiable),
        )
    except asyncssh.PermissionDenied as exc:
        raise auth_error(spec.name, f"SSH login refused: {exc.reason}") from exc
    except asyncssh.HostKeyNotVerifiable as exc:
        pinned = (
            f"the pinned {host_key_fingerprint(spec.host_key)}"
            if spec.host_key
            else f"the keys in {known_hosts}"
        )
        raise OltHostKeyError(
            f"{spec.name}: REFUSED to connect: the SSH host key of {spec.host}:{spec.port} "
            f"does not match {pinned} ({exc.reason}). Someone may be intercepting the "
            f"connection; if the device's key changed legitimately (reinstalled, replaced), "
            f"accept the new one with 'paymentd olt update {spec.name} --refresh-host-key'"
        ) from exc
    try:
        process = await _bridge(
            f"{spec.name}: open shell",
            connect_timeout,
            lambda: conn.create_process(
                term_type="vt100",
                term_size=(200, 24),
                encoding="utf-8",
                errors="replace",
            ),
        )
    except BaseException:
        conn.abort()  # a device stalling the channel open may not answer a close either
        raise
    return CliSession(
        spec.name,
        conn,
        process,
        io_timeout=io_timeout,
        secrets=(spec.password, spec.enable_password),
    )
