"""The daemon as systemd runs it: a real subprocess, the notify protocol, signals, SIGKILL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from daemon import wiring
from daemon.network.olt.types import OnuRef
from daemon.platform.config import to_toml
from tests.flow_harness import WEBHOOK_TOKEN, World, make_config, register, world

ROOT = Path(__file__).resolve().parent.parent
ANA_ONU = OnuRef(0, 1, 3, 7)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Notifications:
    """The systemd side of NOTIFY_SOCKET: a unix datagram socket we read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.seen: list[str] = []

    async def bind(self) -> None:
        await self.sock.bind(str(self.path))

    async def wait_for(self, line: str, seconds: float = 30) -> None:
        with trio.fail_after(seconds):
            while not any(line in msg.splitlines() for msg in self.seen):
                data = await self.sock.recv(4096)
                self.seen.append(data.decode())


@pytest.fixture
async def notify_sockets() -> AsyncIterator[list[Notifications]]:
    made: list[Notifications] = []
    yield made
    for n in made:
        n.sock.close()


@pytest.fixture
async def w(db_url: str, tmp_path: Path, aio_loop: None) -> AsyncIterator[World]:
    async with world(db_url, tmp_path) as running_world:
        yield running_world


@contextmanager
def daemon_process(config: Path, notify: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "NOTIFY_SOCKET": str(notify), "WATCHDOG_USEC": "2000000"}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", "run", "--config", str(config)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


async def wait_exit(proc: subprocess.Popen[bytes], seconds: float) -> int:
    with trio.fail_after(seconds):
        while proc.poll() is None:  # noqa: ASYNC110 - polls another process
            await trio.sleep(0.05)
    return proc.returncode


async def listen(made: list[Notifications], path: Path) -> Notifications:
    notifications = Notifications(path)
    made.append(notifications)
    await notifications.bind()
    return notifications


async def start(
    w: World, tmp: Path, port: int, made: list[Notifications]
) -> tuple[Path, Path, Notifications]:
    cfg = make_config(w.db_url, tmp, w.fake_url, w.sink_url, port=port)
    config = tmp / "config.toml"
    config.write_text(to_toml(cfg))
    if not await w.db.fetchval("SELECT count(*) FROM olt_devices"):
        await register(w.db_url, cfg, list(w.devices.values()))
    notifications = await listen(made, tmp / "notify-1.sock")
    w.fake.webhook_url = f"http://127.0.0.1:{port}/webhooks/uisp/{WEBHOOK_TOKEN}"
    return config, tmp / "daemon.log", notifications


async def test_sigkill_mid_task_then_restart_completes_it_with_exactly_one_sms(
    w: World, tmp_path: Path, notify_sockets: list[Notifications]
) -> None:
    hw = w.devices["olt-hw"]
    port = free_port()
    config, log, notify = await start(w, tmp_path, port, notify_sockets)
    with daemon_process(config, notify.path, log) as proc:
        await notify.wait_for("READY=1")
        hw.latency = 0.3  # slow enough to kill it in the middle of the OLT conversation
        await w.fake.record_payment(1, 30.0)
        with trio.fail_after(30):
            while not any(c.startswith("ont activate") for c in hw.command_log):  # noqa: ASYNC110
                await trio.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        assert await wait_exit(proc, 10) == -signal.SIGKILL
    [task] = [dict(r) for r in await w.db.fetch("SELECT * FROM reconnect_tasks")]
    assert task["state"] == "running"
    assert w.sink.messages == []

    hw.latency = 0.0
    notify2 = await listen(notify_sockets, tmp_path / "notify-2.sock")
    with daemon_process(config, notify2.path, log) as proc:
        await notify2.wait_for("READY=1")
        await w.sink.wait_messages(1)
        with trio.fail_after(15):
            while (await w.db.fetchval("SELECT state FROM reconnect_tasks")) != "succeeded":  # noqa: ASYNC110
                await trio.sleep(0.05)
        await trio.sleep(1.0)  # anything extra the daemon might (wrongly) send
        proc.send_signal(signal.SIGTERM)
        assert await wait_exit(proc, 20) == 0
    rows = [dict(r) for r in await w.db.fetch("SELECT * FROM reconnect_tasks")]
    assert len(rows) == 1
    assert rows[0]["state"] == "succeeded" and rows[0]["attempts"] == 2
    assert hw.is_active(ANA_ONU)
    assert len(w.sink.messages) == 1
    assert await w.db.fetchval("SELECT count(*) FROM sms_messages WHERE state = 'sent'") == 1


async def test_systemd_notify_readiness_watchdog_and_graceful_sigterm(
    w: World, tmp_path: Path, notify_sockets: list[Notifications]
) -> None:
    config, log, notify = await start(w, tmp_path, free_port(), notify_sockets)
    with daemon_process(config, notify.path, log) as proc:
        await notify.wait_for("READY=1")
        lines = [line for m in notify.seen for line in m.splitlines()]
        # One consumer per declared queue, plus the listener, the scheduler, the webhook
        # dispatcher, the OLT pool and the HTTP ingress.
        actors = len(wiring.QUEUES) + 5
        assert f"STATUS={actors}/{actors} actors running" in lines
        await notify.wait_for("WATCHDOG=1", seconds=5)
        proc.send_signal(signal.SIGTERM)
        await notify.wait_for("STOPPING=1")
        assert await wait_exit(proc, 20) == 0
    assert "Traceback" not in log.read_text()


async def test_a_second_daemon_on_the_same_database_exits_with_a_clear_message(
    w: World, tmp_path: Path, notify_sockets: list[Notifications]
) -> None:
    config, log, notify = await start(w, tmp_path, free_port(), notify_sockets)
    with daemon_process(config, notify.path, log):
        await notify.wait_for("READY=1")
        second = tmp_path / "second.toml"
        second.write_text(
            config.read_text().replace(f"port = {_port_of(config)}", f"port = {free_port()}")
        )
        proc = await trio.to_thread.run_sync(
            lambda: subprocess.run(
                [sys.executable, "-m", "daemon.cli", "run", "--config", str(second)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
        )
    assert proc.returncode == 2
    assert "another paymentd is already running against this database" in proc.stderr
    assert "Traceback" not in proc.stderr


def _port_of(config: Path) -> int:
    for line in config.read_text().splitlines():
        if line.startswith("port = "):
            return int(line.split("=")[1])
    raise AssertionError("no port in config")
