"""OLT simulator: an asyncssh server speaking the Huawei SmartAX and ZTE ZXAN CLIs.

Used by the tests and by ``paymentd demo`` / ``paymentd sim olt``. One ``SimDevice`` per
listening port. Device state (each ONU's control flag) lives on the ``SimDevice`` and so
persists across sessions. Faults are injected through the Python API: per-command
latency, a hold (every answer waits until released), hung commands, connections dropped
in the middle of a command (before or after the command took effect), refused logins, a
cap on concurrent sessions, a channel open that is never answered and a shell that stops
reading its input.

Each device presents a stable SSH host key derived from its name (so a demo restarted
with the same devices is still the same devices); ``change_host_key`` replaces it, as a
reinstalled device -- or an impostor -- would.

The server runs on the asyncio side of ``trio_asyncio.open_loop()``; ``serve`` is the trio
entry point. The vendor grammars live in ``daemon.network.olt.sim_vendors``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import asyncssh
import trio
import trio_asyncio
from asyncssh.sftp import MIN_SFTP_VERSION
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["SimDevice", "SimOnu", "demo_devices", "serve"]

log = logging.getLogger(__name__)

OnuKey = tuple[int, int, int, int]


class _OnuLike(Protocol):  # OnuRef or SimOnu; read-only so frozen dataclasses fit
    @property
    def frame(self) -> int: ...
    @property
    def slot(self) -> int: ...
    @property
    def port(self) -> int: ...
    @property
    def onu_id(self) -> int: ...


@dataclass
class SimOnu:
    frame: int
    slot: int
    port: int
    onu_id: int
    active: bool = False
    serial: str = ""

    @property
    def key(self) -> OnuKey:
        return (self.frame, self.slot, self.port, self.onu_id)


@dataclass
class _Drop:
    match: str | None  # None: the next command, whatever it is
    after: bool  # apply the command before dropping the connection
    times: int


@dataclass(eq=False)
class SimDevice:
    """One simulated OLT: credentials, ONUs, quirks, faults and what was observed."""

    name: str
    vendor: Literal["huawei", "zte"]
    username: str = "admin"
    password: str = "admin"
    enable_password: str | None = None
    hostname: str = ""  # prompt name; defaults per vendor
    onus: dict[OnuKey, SimOnu] = field(default_factory=dict)
    latency: float = 0.0  # seconds before each command's answer
    max_sessions: int = 4
    cli_login: bool = False  # skip SSH auth and ask Username:/Password: in the shell
    echo_password: bool = False  # a CLI that echoes what is typed at Password:
    refuse_logins: bool = False
    # Firmware quirks that keep the smart prompt / pager on despite the set-up commands,
    # to exercise the drivers' handling of them.
    sticky_smart: bool = False
    sticky_pager: bool = False
    page_lines: int = 20
    # Accept activate/deactivate without changing anything (to test read-back checks).
    readonly: bool = False
    # Never answer a session (channel) open request: the client waits for the shell.
    stall_channel_open: bool = False
    # SSH receive window per channel (None: asyncssh's 2 MiB); a small one makes a shell
    # that stops reading back-pressure the client's writes quickly.
    window: int | None = None
    # Observations for tests.
    command_log: list[str] = field(default_factory=list)
    sessions_opened: int = 0
    connections_made: int = 0  # SSH connections accepted (before host key or auth)
    auth_attempts: int = 0
    active_sessions: int = 0
    peak_sessions: int = 0  # most sessions open at once
    port: int = 0
    host_key_generation: int = 0  # bumped by change_host_key
    _hang: int = 0
    _hang_on: list[str] = field(default_factory=list)
    _stop_reading: int = 0
    _acceptor: asyncssh.SSHAcceptor | None = None
    _drops: list[_Drop] = field(default_factory=list)
    _connections: set[asyncssh.SSHServerConnection] = field(default_factory=set)
    _released: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        if not self.hostname:
            self.hostname = "MA5800-X15" if self.vendor == "huawei" else "ZXAN"
        self._released.set()

    # -- state ---------------------------------------------------------------------
    def add_onu(
        self, frame: int, slot: int, port: int, onu_id: int, active: bool = False
    ) -> SimOnu:
        onu = SimOnu(
            frame, slot, port, onu_id, active, serial=f"HWTC{slot:02X}{port:02X}{onu_id:04X}"
        )
        self.onus[onu.key] = onu
        return onu

    def is_active(self, onu: _OnuLike) -> bool:
        return self.onus[(onu.frame, onu.slot, onu.port, onu.onu_id)].active

    def set_active(self, onu: _OnuLike, active: bool) -> None:
        self.onus[(onu.frame, onu.slot, onu.port, onu.onu_id)].active = active

    def _switch(self, onu: SimOnu, active: bool) -> None:
        if not self.readonly:
            onu.active = active

    # -- host key ------------------------------------------------------------------
    def host_key(self) -> asyncssh.SSHKey:
        """This device's current private host key: derived from its name and generation,
        so it is the same on every run until ``change_host_key``. Anyone can derive it:
        fine for a simulator, which guards nothing."""
        seed = hashlib.sha256(f"paymentd-sim:{self.name}:{self.host_key_generation}".encode())
        pem = Ed25519PrivateKey.from_private_bytes(seed.digest()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        return asyncssh.import_private_key(pem)

    def public_host_key(self) -> str:
        """The current host key as an OpenSSH public key line (what ``olt add`` records)."""
        line: str = self.host_key().export_public_key("openssh").decode()
        return " ".join(line.split()[:2])

    def change_host_key(self) -> None:
        """Present a different host key to every new connection from now on."""
        self.host_key_generation += 1
        if self._acceptor is not None:
            self._acceptor.update(server_host_keys=[self.host_key()])

    # -- faults --------------------------------------------------------------------
    def hold(self) -> None:
        """Every command from now on waits before its answer until ``release``: a test
        keeps the device busy until requests have piled up behind it."""
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def hang_next(self, n: int = 1) -> None:
        """The next ``n`` commands are never answered (the session stays open)."""
        self._hang += n

    def hang_on(self, substring: str, times: int = 1) -> None:
        """The next ``times`` commands containing ``substring`` are never answered, e.g.
        a device that logs in fine but hangs on the change command."""
        self._hang_on.extend([substring] * times)

    def stop_reading_next(self, n: int = 1) -> None:
        """On each of the next ``n`` commands the shell stops reading its input for good
        (without answering): the SSH window fills and the client's writes block."""
        self._stop_reading += n

    def drop_next(self, n: int = 1, *, after: bool = True) -> None:
        """Drop the connection in the middle of each of the next ``n`` commands.

        ``after=True`` applies the command first (the client never sees the answer);
        ``after=False`` drops before it takes effect.
        """
        self._drops.append(_Drop(None, after, n))

    def drop_on(self, substring: str, *, after: bool = True, times: int = 1) -> None:
        """Drop the connection on the next ``times`` commands containing ``substring``."""
        self._drops.append(_Drop(substring, after, times))

    def clear_faults(self) -> None:
        self._hang = self._stop_reading = 0
        self._hang_on.clear()
        self.stall_channel_open = False
        self._drops.clear()
        self.refuse_logins = False
        self.latency = 0.0
        self.release()

    def disconnect_all(self) -> None:
        """Abort every open connection (as a device reboot would)."""
        for conn in list(self._connections):
            conn.abort()

    def _take_fault(
        self, command: str
    ) -> Literal["hang", "stop_reading", "drop_before", "drop_after"] | None:
        if self._stop_reading > 0:
            self._stop_reading -= 1
            return "stop_reading"
        if self._hang > 0:
            self._hang -= 1
            return "hang"
        for substring in self._hang_on:
            if substring in command:
                self._hang_on.remove(substring)
                return "hang"
        for drop in self._drops:
            if drop.match is None or drop.match in command:
                drop.times -= 1
                if drop.times <= 0:
                    self._drops.remove(drop)
                return "drop_after" if drop.after else "drop_before"
        return None


class _SSHServer(asyncssh.SSHServer):
    """Per-connection asyncssh callbacks: authentication and connection bookkeeping."""

    def __init__(self, device: SimDevice) -> None:
        self._device = device
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._device._connections.add(conn)
        self._device.connections_made += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._device._connections.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        return not self._device.cli_login  # CLI-login devices authenticate in the shell

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        d = self._device
        d.auth_attempts += 1
        return not d.refuse_logins and username == d.username and password == d.password

    def session_requested(
        self,
    ) -> asyncssh.SSHServerSession[str] | Awaitable[asyncssh.SSHServerSession[str]]:
        # Instead of create_server's process_factory, so a session open can be stalled.
        if self._device.stall_channel_open and self._conn is not None:
            return _stall_until_closed(self._conn)
        return _process(self._device)


def _process(device: SimDevice) -> asyncssh.SSHServerSession[str]:
    async def process_factory(process: asyncssh.SSHServerProcess[str]) -> None:
        await _run_shell(device, process)

    # What asyncssh builds itself for a process_factory (no SFTP, no SCP).
    session: asyncssh.SSHServerSession[str] = asyncssh.SSHServerProcess(
        process_factory, None, MIN_SFTP_VERSION, False
    )
    return session


async def _stall_until_closed(
    conn: asyncssh.SSHServerConnection,
) -> asyncssh.SSHServerSession[str]:
    """A session open that is never confirmed; it ends (refused) with the connection, so
    no asyncio task is left pending (a destroyed pending task tears down the loop)."""
    await conn.wait_closed()
    raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "connection closed")


async def _run_shell(device: SimDevice, process: asyncssh.SSHServerProcess[str]) -> None:
    """Serve one interactive session; never lets an exception reach the event loop."""
    from daemon.network.olt.sim_vendors import shell_for  # vendor grammars; imported late (cycle)

    device.sessions_opened += 1
    device.active_sessions += 1
    device.peak_sessions = max(device.peak_sessions, device.active_sessions)
    try:
        await shell_for(device, process).run()
    except (OSError, asyncssh.Error, ConnectionError) as exc:
        log.debug("%s: session ended: %r", device.name, exc)
    except Exception:
        # A simulator bug must not tear down the trio-asyncio loop: log it, end the session.
        log.exception("%s: simulator shell crashed", device.name)
    finally:
        device.active_sessions -= 1
        with contextlib.suppress(OSError, asyncssh.Error):
            process.exit(0)


async def serve(
    devices: list[SimDevice],
    host: str = "127.0.0.1",
    *,
    base_port: int = 0,
    task_status: trio.TaskStatus[list[tuple[SimDevice, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen for each device (port ``base_port + i``, or ephemeral when 0) until cancelled.

    A trio function; must run inside ``trio_asyncio.open_loop()``. Reports
    ``[(device, port), ...]`` through ``task_status`` once every listener is up.
    """
    acceptors: list[asyncssh.SSHAcceptor] = []
    try:
        for i, device in enumerate(devices):

            def server_factory(d: SimDevice = device) -> _SSHServer:
                return _SSHServer(d)

            window = {} if device.window is None else {"window": device.window}
            acceptor = await trio_asyncio.aio_as_trio(asyncssh.create_server)(
                server_factory,
                host,
                base_port + i if base_port else 0,
                server_host_keys=[device.host_key()],
                line_editor=False,  # the shells do their own echo and raw key reads
                encoding="utf-8",
                keepalive_interval=30,
                **window,
            )
            acceptors.append(acceptor)
            device._acceptor = acceptor
            device.port = acceptor.get_port()
        task_status.started([(d, d.port) for d in devices])
        await trio.sleep_forever()
    finally:
        with trio.move_on_after(5, shield=True):
            for device in devices:
                device.disconnect_all()
            for device in devices:
                device._acceptor = None
            for acceptor in acceptors:
                acceptor.close()
                await trio_asyncio.aio_as_trio(acceptor.wait_closed)()


def demo_devices() -> list[SimDevice]:
    """Two Huawei OLTs and one ZTE OLT with a few ONUs, some deactivated (for the demo)."""
    hw1 = SimDevice("olt-huawei-1", "huawei", username="paymentd", password="huawei-1")
    hw2 = SimDevice(
        "olt-huawei-2", "huawei", username="paymentd", password="huawei-2", hostname="MA5600T"
    )
    zte = SimDevice(
        "olt-zte-1",
        "zte",
        username="paymentd",
        password="zte-1",
        enable_password="zte-enable",
        cli_login=True,
    )
    for onu_id in range(1, 6):
        hw1.add_onu(0, 1, 3, onu_id, active=onu_id % 2 == 1)
        hw2.add_onu(0, 2, 0, onu_id, active=onu_id != 2)
        zte.add_onu(1, 2, 1, onu_id, active=onu_id != 3)
    return [hw1, hw2, zte]
