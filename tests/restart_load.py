"""Restart a real daemon process while clients keep posting UISP webhooks.

Shared by ``tests/test_socket_activation.py`` (every webhook answered and stored) and
``bench/restart_under_load.py`` (how many connections a restart refuses, with and without
socket activation). Each webhook goes on a fresh connection (``connection: close``), as
UISP sends them, and counts as exactly one outcome: ``200`` or what went wrong.
"""

from __future__ import annotations

import errno
import json
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from daemon.platform.config import (
    Config,
    DaemonConfig,
    DatabaseConfig,
    HttpConfig,
    SecretsConfig,
    SmsConfig,
    UispConfig,
    to_toml,
)
from daemon.platform.secrets import keygen
from tests.http_fixtures import WEBHOOK_PATH, WEBHOOK_TOKEN, uisp_event

ROOT = Path(__file__).resolve().parent.parent
DAEMON = [sys.executable, "-m", "daemon.cli", "run"]
# A request waits this long for an answer: longer than a restart, as UISP's 10 s would be
# on an idle machine (two busy cores start Python more slowly).
ANSWER_SECONDS = 60.0


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_config(tmp: Path, db_url: str, port: int) -> Path:
    """A daemon config: intake only matters; UISP points at a closed port (retries quietly)."""
    key = tmp / "secret.key"
    if not key.exists():
        keygen(key)
    cfg = Config().replace(
        daemon=DaemonConfig(shutdown_grace_seconds=5, log_level="error"),
        database=DatabaseConfig(url=db_url, pool_min=1, pool_max=4),
        http=HttpConfig(host="127.0.0.1", port=port),
        uisp=UispConfig(
            base_url=f"http://127.0.0.1:{closed_port()}/crm/api/v1.0",
            app_key="k",
            webhook_token=WEBHOOK_TOKEN,
        ),
        secrets=SecretsConfig(key_file=str(key)),
        sms=SmsConfig(provider="none"),
    )
    path = tmp / "config.toml"
    path.write_text(to_toml(cfg))
    return path


@dataclass
class Outcomes:
    answered: dict[str, int] = field(default_factory=dict)  # uuid -> HTTP status
    failures: Counter[str] = field(default_factory=Counter)  # what happened instead
    sent: int = 0
    since_start: int = 0  # answers since the last (re)start
    slowest: float = 0.0  # seconds, connect to status line
    progress: trio.Event = field(default_factory=trio.Event)

    @property
    def ok(self) -> list[str]:
        return [u for u, status in self.answered.items() if status == 200]

    @property
    def refused(self) -> int:
        return sum(self.failures.values()) + sum(s != 200 for s in self.answered.values())

    def record(self, uuid: str, outcome: int | str) -> None:
        if isinstance(outcome, int):
            self.answered[uuid] = outcome
            self.since_start += 1
            self.progress.set()
            self.progress = trio.Event()
        else:
            self.failures[outcome] += 1


async def post_once(port: int, body: bytes) -> int | str:
    """The status of one POST on a fresh connection, or the name of what went wrong."""
    sock = trio.socket.socket()
    try:
        await sock.connect(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        return "connection refused" if exc.errno == errno.ECONNREFUSED else f"connect: {exc}"
    async with trio.SocketStream(sock) as stream:
        head = (
            f"POST {WEBHOOK_PATH} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        )
        try:
            await stream.send_all(head.encode() + body)
            data = b""
            with trio.fail_after(ANSWER_SECONDS):
                while b"\r\n" not in data:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        break
                    data += chunk
        except trio.TooSlowError:
            return "no answer in time"
        except (trio.BrokenResourceError, OSError):
            return "reset without an answer"
        if not data:
            return "closed without an answer"
    return int(data.split(b" ", 2)[1])


async def post_continuously(
    port: int, outcomes: Outcomes, stop: trio.Event, interval: float
) -> None:
    """One client: a distinct payment.add webhook every ``interval`` seconds (or as soon
    as the previous one is answered, if that takes longer), never retried, until ``stop``."""
    n = 0
    next_at = trio.current_time()
    while not stop.is_set():
        n += 1
        event = uisp_event("payment.add", n, change_type="insert", entity="payment")
        outcomes.sent += 1
        began = trio.current_time()
        outcomes.record(event["uuid"], await post_once(port, json.dumps(event).encode()))
        outcomes.slowest = max(outcomes.slowest, trio.current_time() - began)
        next_at = max(next_at + interval, trio.current_time())
        await trio.sleep_until(next_at)


async def wait_answers(
    outcomes: Outcomes, count: int, proc: subprocess.Popen[bytes], seconds: float = 120
) -> None:
    """Until ``count`` answers since the last (re)start; the daemon must stay up meanwhile."""
    with trio.fail_after(seconds):
        while outcomes.since_start < count:
            with trio.move_on_after(0.5):
                await outcomes.progress.wait()
            if proc.poll() is not None:
                raise AssertionError(f"the daemon exited with status {proc.returncode}")


async def stop_process(proc: subprocess.Popen[bytes], seconds: float = 30) -> int:
    """SIGTERM, as ``systemctl stop`` sends it, and wait for the exit."""
    proc.send_signal(signal.SIGTERM)
    with trio.fail_after(seconds):
        while proc.poll() is None:  # noqa: ASYNC110 - polls another process
            await trio.sleep(0.02)
    return proc.returncode


async def restart_under_load(
    start: Callable[[], subprocess.Popen[bytes]],
    port: int,
    *,
    restarts: int,
    clients: int = 4,
    interval: float = 0.02,
    answers_between: int = 20,
) -> tuple[Outcomes, list[int]]:
    """Start the daemon, then ``restarts`` times: wait for some answers, stop it, start it
    again (like ``systemctl restart``), while ``clients`` clients each post a webhook
    every ``interval`` seconds. Returns the outcomes and the daemons' exit statuses."""
    outcomes = Outcomes()
    stop = trio.Event()
    codes: list[int] = []
    proc = start()
    try:
        async with trio.open_nursery() as nursery:
            for _ in range(clients):
                nursery.start_soon(post_continuously, port, outcomes, stop, interval)
            for _ in range(restarts):
                await wait_answers(outcomes, answers_between, proc)
                codes.append(await stop_process(proc))
                outcomes.since_start = 0
                proc = start()
            await wait_answers(outcomes, answers_between, proc)
            stop.set()
        codes.append(await stop_process(proc))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return outcomes, codes
