"""systemd socket activation: the daemon serves on the socket it inherits, and a restart
under load loses no webhook; the unit files pass ``systemd-analyze verify``."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from daemon.actors import http_ingress
from daemon.platform import listenfds
from daemon.platform.config import HttpConfig
from daemon.platform.connlimit import ConnectionCap
from daemon.platform.db import Database
from daemon.platform.listenfds import InheritedSocketError
from tests.http_fixtures import ADMIN_TOKEN, WEBHOOK_PATH, make_deps, serving, uisp_event
from tests.restart_load import DAEMON, restart_under_load, write_config
from tests.socket_activation import listening_socket, spawn
from tests.test_http_listen import http_get, open_event_stream

ROOT = Path(__file__).resolve().parent.parent


async def test_restarting_under_load_answers_and_stores_every_webhook(
    db: Database, db_url: str, tmp_path: Path
) -> None:
    """The issue's scenario: ``systemctl restart`` (SIGTERM, then a new process on the
    same socket) twice while four clients keep posting distinct webhooks."""
    log = (tmp_path / "daemon.log").open("ab")
    with listening_socket() as sock, listening_socket() as taken:
        # http.port names a port that is in use: binding it would fail the start, so every
        # answer below came through systemd's socket.
        config = write_config(tmp_path, db_url, port=taken.getsockname()[1])
        port = sock.getsockname()[1]

        def start() -> subprocess.Popen[bytes]:
            return spawn(sock, [*DAEMON, "--config", str(config)], stdout=log, stderr=log)

        try:
            outcomes, codes = await restart_under_load(start, port, restarts=2)
        finally:
            log.close()
    text = (tmp_path / "daemon.log").read_text()
    assert codes == [0, 0, 0], text
    assert not outcomes.failures, (outcomes.failures, text)
    assert set(outcomes.answered.values()) == {200}
    assert len(outcomes.answered) == outcomes.sent > 60
    stored = {str(r["uuid"]) for r in await db.fetch("SELECT uuid FROM uisp_webhooks")}
    assert stored == set(outcomes.answered)
    assert "Traceback" not in text


async def test_without_a_socket_from_systemd_the_daemon_binds_itself(
    db_url: str, tmp_path: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = write_config(tmp_path, db_url, port)
    # LISTEN_* meant for another process (our parent was socket-activated): not ours.
    env = {**os.environ, "LISTEN_FDS": "1", "LISTEN_PID": "1"}
    with (tmp_path / "daemon.log").open("ab") as log:
        proc = subprocess.Popen(  # noqa: ASYNC220 - started once, polled over HTTP
            [*DAEMON, "--config", str(config)], cwd=ROOT, env=env, stdout=log, stderr=log
        )
    try:
        with trio.fail_after(60):
            while True:
                try:
                    if (await http_get(port, "/healthz"))[0] == 200:
                        break
                except OSError:
                    await trio.sleep(0.1)
        hook = json.dumps(uisp_event()).encode()
        assert (await http_get(port, WEBHOOK_PATH, "POST", hook))[0] == 200
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode == 0


async def test_the_connection_cap_applies_on_the_inherited_socket(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process: our listening socket stands in for descriptor 3."""
    with listening_socket() as sock:
        monkeypatch.setattr(listenfds, "SD_LISTEN_FDS_START", sock.fileno())
        monkeypatch.setenv("LISTEN_FDS", "1")
        monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
        deps = make_deps(db, http=HttpConfig(port=0, admin_token=ADMIN_TOKEN, max_connections=2))
        with trio.fail_after(30):
            async with serving(deps) as client:
                port = int(str(client.base_url).rsplit(":", 1)[1].rstrip("/"))
                assert port == sock.getsockname()[1]  # not a port of its own
                busy = [await open_event_stream(port) for _ in range(2)]
                try:
                    assert (await http_get(port, "/metrics"))[0] == 503
                    assert (await http_get(port, "/healthz"))[0] == 200  # a reserved slot
                finally:
                    for stream in busy:
                        await stream.aclose()
        # The ingress closed only its duplicate: the socket still listens.
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1


async def test_a_connection_accepted_just_before_the_shutdown_is_still_answered(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hypercorn closes connections it thinks idle the moment it shuts down; one that was
    accepted but whose request had not arrived yet would be dropped without an answer."""
    deps = make_deps(db)
    shutdown = trio.Event()
    accepted = trio.Event()  # a condition, not a guess at how long accepting takes
    admit = ConnectionCap.admit

    async def admitted(cap: ConnectionCap, stream: trio.SocketStream) -> Any:
        accepted.set()
        return await admit(cap, stream)

    monkeypatch.setattr(ConnectionCap, "admit", admitted)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            base_url = await nursery.start(partial(http_ingress.run, deps, shutdown=shutdown))
            port = int(base_url.rsplit(":", 1)[1])
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await accepted.wait()  # the server accepted it
            shutdown.set()
            await trio.sleep(0.1)  # the request arrives after the shutdown began
            body = json.dumps(uisp_event()).encode()
            await stream.send_all(
                f"POST {WEBHOOK_PATH} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            answer = b""
            while b"\r\n" not in answer and (chunk := await stream.receive_some(4096)):
                answer += chunk
            await stream.aclose()
    assert answer.startswith(b"HTTP/1.1 200 "), answer


def test_an_inherited_descriptor_that_is_not_a_listening_socket_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid())}
    with socket.socket() as unbound:
        monkeypatch.setattr(listenfds, "SD_LISTEN_FDS_START", unbound.fileno())
        with pytest.raises(InheritedSocketError, match="not a listening stream socket"):
            listenfds.listening_sockets(env)
    with pytest.raises(InheritedSocketError, match="not a number"):
        listenfds.inherited_fds({"LISTEN_FDS": "x", "LISTEN_PID": str(os.getpid())})
    assert listenfds.inherited_fds({"LISTEN_FDS": "1", "LISTEN_PID": "1"}) == []
    assert listenfds.inherited_fds({}) == []


SYSTEMD = ROOT / "systemd"
INSTALLED = "/opt/paymentd/.venv/bin/paymentd"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_the_unit_files_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """``verify`` checks that ExecStart= binaries exist: the units name the installed path
    (/opt/paymentd, systemd/README.md), which this machine does not have. So the units are
    verified as they are (the missing binary must be the only complaint), and once more
    with that one path pointed at this checkout's ``paymentd`` (nothing else changed)."""
    units = ["paymentd.socket", "paymentd.service"]
    as_shipped = _verify(SYSTEMD, units)
    complaints = as_shipped.stdout.splitlines() + as_shipped.stderr.splitlines()
    assert complaints and all(f"Command {INSTALLED} is not executable" in c for c in complaints)

    here = Path(sys.executable).with_name("paymentd")
    assert here.exists(), "pip install -e . provides the paymentd script"
    for unit in units:
        text = (SYSTEMD / unit).read_text()
        (tmp_path / unit).write_text(text.replace(INSTALLED, str(here)))
    proc = _verify(tmp_path, units)
    assert proc.returncode == 0 and not proc.stdout and not proc.stderr, proc.stderr


def test_the_service_uses_the_socket_and_the_socket_listens_where_the_daemon_would() -> None:
    service = (SYSTEMD / "paymentd.service").read_text()
    socket_unit = (SYSTEMD / "paymentd.socket").read_text()
    assert "Requires=paymentd.socket" in service
    assert "ListenStream=127.0.0.1:8080" in socket_unit  # http.host:http.port's defaults
    default = HttpConfig()
    assert (default.host, default.port) == ("127.0.0.1", 8080)


def _verify(where: Path, units: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", *units],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=60,
    )
