"""systemd notify over a real unix datagram socket that the test listens on, as systemd does."""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from daemon.platform.sdnotify import SystemdNotifier, watchdog_loop


@pytest.fixture
def sock_path() -> Iterator[str]:
    # A short directory: AF_UNIX paths are limited to 108 bytes, pytest's tmp_path may not be.
    with tempfile.TemporaryDirectory(prefix="sdn") as d:
        yield os.path.join(d, "notify")


def _listener(address: str) -> trio.socket.SocketType:
    """The socket systemd would listen on.

    Bound synchronously: trio's ``bind`` of a unix socket runs in a worker thread, and the
    autojump clock skips virtual time while a thread runs, straight past any deadline.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return trio.socket.from_stdlib_socket(sock)


async def test_ready_status_stopping_watchdog_reach_the_socket(sock_path: str) -> None:
    with trio.fail_after(5), _listener(sock_path) as listener:
        notifier = SystemdNotifier({"NOTIFY_SOCKET": sock_path})
        assert notifier.enabled
        assert notifier.ready()
        assert await listener.recv(4096) == b"READY=1"
        notifier.status("processing: 3 queued\nsecond line")
        assert await listener.recv(4096) == b"STATUS=processing: 3 queued second line"
        notifier.ready(status="up")
        assert await listener.recv(4096) == b"READY=1\nSTATUS=up"
        notifier.watchdog()
        assert await listener.recv(4096) == b"WATCHDOG=1"
        notifier.stopping()
        assert await listener.recv(4096) == b"STOPPING=1"
        notifier.close()


async def test_abstract_socket_name() -> None:
    name = f"paymentd-test-{uuid.uuid4().hex}"
    with trio.fail_after(5), _listener("\0" + name) as listener:
        notifier = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert await listener.recv(4096) == b"READY=1"
        notifier.close()


def test_no_socket_means_no_op_and_a_gone_socket_is_not_fatal(sock_path: str) -> None:
    quiet = SystemdNotifier({})
    assert not quiet.enabled
    assert not quiet.ready()
    assert quiet.watchdog_interval() is None
    # Nobody listening at the path (systemd went away): logged, not raised.
    with SystemdNotifier({"NOTIFY_SOCKET": sock_path}) as gone:
        assert not gone.ready()


def test_watchdog_interval_is_half_the_timeout_and_only_for_our_pid() -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000"}
    assert SystemdNotifier(env).watchdog_interval() == 15.0
    assert SystemdNotifier({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval() == 15.0
    assert (
        SystemdNotifier({**env, "WATCHDOG_PID": str(os.getpid() + 1)}).watchdog_interval() is None
    )
    assert SystemdNotifier({**env, "WATCHDOG_USEC": "junk"}).watchdog_interval() is None
    assert SystemdNotifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval() is None


async def test_watchdog_stops_pinging_while_unhealthy(
    sock_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    env = {"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "30000000"}  # WatchdogSec=30
    notifier = SystemdNotifier(env)
    healthy = True
    pings: list[float] = []

    async def receive(listener: trio.socket.SocketType) -> None:
        while True:
            assert await listener.recv(4096) == b"WATCHDOG=1"
            pings.append(trio.current_time())

    with trio.fail_after(1000), _listener(sock_path) as listener:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive, listener)
            t0 = trio.current_time()
            await nursery.start(watchdog_loop, notifier, lambda: healthy)
            await trio.sleep_until(t0 + 40)  # pings at 0, 15, 30
            healthy = False
            await trio.sleep_until(t0 + 100)  # none at 45 .. 90: systemd would restart us
            healthy = True
            await trio.sleep_until(t0 + 110)  # resumes at 105
            nursery.cancel_scope.cancel()
        notifier.close()
    assert [round(t - t0) for t in pings] == [0, 15, 30, 105]


async def test_watchdog_loop_returns_when_not_enabled() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(watchdog_loop, SystemdNotifier({}), lambda: True)
