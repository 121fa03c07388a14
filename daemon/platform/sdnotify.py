"""The systemd notify protocol (``Type=notify``, ``WatchdogSec=``), without dependencies.

systemd passes ``NOTIFY_SOCKET`` (a filesystem path, or ``@name`` for an abstract
socket) and, with a watchdog, ``WATCHDOG_USEC`` / ``WATCHDOG_PID``. We send newline-
separated ``KEY=value`` datagrams over a non-blocking AF_UNIX socket. Without
``NOTIFY_SOCKET`` (run by hand, in tests, in the demo) every call is a no-op.

The senders are synchronous on purpose. A datagram send on a non-blocking socket never
waits (it succeeds or fails with EAGAIN at once), so there is nothing to await, and an
``await`` would be a checkpoint: ``STOPPING=1`` sent from a cancelled scope during
shutdown would raise ``Cancelled`` instead of going out. Sync methods can also be called
from plain functions and ``finally`` blocks.

Sending never raises: a lost notification must not take the daemon down. If READY=1 is
lost, systemd's start timeout reports it; if pings are lost, the watchdog does.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping

import trio

log = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends state changes to systemd; built from the environment the daemon got."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._env = dict(env)
        self._address: str | None = None
        raw = env.get("NOTIFY_SOCKET", "")
        if raw.startswith("@"):
            # Abstract namespace: the name starts with a NUL byte instead of '@'.
            self._address = "\0" + raw[1:]
        elif raw.startswith("/"):
            self._address = raw
        elif raw:
            # e.g. "vsock:..." (VMs, systemd 253+): not something a host service receives.
            log.warning("NOTIFY_SOCKET=%r is not a unix socket; systemd notify disabled", raw)
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """Whether there is a socket to notify (i.e. we run under ``Type=notify``)."""
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of ``WATCHDOG_USEC``), or ``None``.

        ``None`` when no watchdog is configured, when there is no notify socket, or when
        ``WATCHDOG_PID`` names another process (the watchdog is then not ours to feed).
        """
        if not self.enabled:
            return None
        pid = self._env.get("WATCHDOG_PID")
        if pid and pid != str(os.getpid()):
            return None
        try:
            usec = int(self._env.get("WATCHDOG_USEC", ""))
        except ValueError:
            return None
        if usec <= 0:
            return None
        # Half the timeout, as sd_watchdog_enabled(3) advises: one late ping is not fatal.
        return usec / 2 / 1_000_000

    def notify(self, **fields: str | int | bool) -> bool:
        """Send ``KEY=value`` fields in one datagram; ``True`` if it was sent.

        Newlines in values are replaced by spaces: the protocol splits fields on them.
        """
        if self._address is None or not fields:
            return False
        lines = []
        for key, value in fields.items():
            text = ("1" if value else "0") if isinstance(value, bool) else str(value)
            lines.append(f"{key}={text.replace(chr(10), ' ')}")
        data = "\n".join(lines).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
            self._sock.sendto(data, self._address)
        except OSError as exc:
            log.warning("systemd notify failed (%s): %s", ", ".join(fields), exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Tell systemd start-up is complete (``READY=1``), optionally with a status."""
        if status is None:
            return self.notify(READY=1)
        return self.notify(READY=1, STATUS=status)

    def stopping(self, status: str | None = None) -> bool:
        """Tell systemd we are shutting down (``STOPPING=1``)."""
        if status is None:
            return self.notify(STOPPING=1)
        return self.notify(STOPPING=1, STATUS=status)

    def status(self, text: str) -> bool:
        """Set the one-line status ``systemctl status`` shows."""
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        """Feed the watchdog (``WATCHDOG=1``)."""
        return self.notify(WATCHDOG=1)

    def close(self) -> None:
        """Close the socket (idempotent); a later notify opens a new one."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> SystemdNotifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


async def watchdog_loop(
    notifier: SystemdNotifier,
    is_healthy: Callable[[], bool],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Ping ``WATCHDOG=1`` every ``watchdog_interval()`` seconds while ``is_healthy()``.

    While unhealthy we *withhold* the pings rather than keep them going: the watchdog is
    how systemd learns the process is alive but no longer working (an actor crash-looping
    past what the supervisor can fix, a wedged task), and a restart from a clean process
    is the remedy the supervisor cannot apply to itself. If the trio loop itself is
    blocked, this task cannot run and the pings stop the same way. So ``is_healthy``
    should mean "a restart would help", not "a dependency is down" (PostgreSQL or the
    VPN being down is not fixed by restarting us).

    Returns at once (after ``started()``) when the watchdog is not enabled.
    """
    interval = notifier.watchdog_interval()
    task_status.started()
    if interval is None:
        return
    log.info("systemd watchdog enabled: pinging every %.1fs while healthy", interval)
    healthy = True
    deadline = trio.current_time()
    while True:
        now_healthy = is_healthy()
        if now_healthy:
            notifier.watchdog()
        if now_healthy != healthy:
            if now_healthy:
                log.warning("healthy again: resuming systemd watchdog pings")
            else:
                log.error("unhealthy: withholding systemd watchdog pings so systemd restarts us")
            healthy = now_healthy
        # Deadlines from a fixed origin, so a slow send does not make the pings drift late.
        deadline = max(deadline + interval, trio.current_time())
        await trio.sleep_until(deadline)
