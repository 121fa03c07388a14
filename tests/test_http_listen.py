"""Starting the daemon on a port that is taken: one line naming the setting, exit 2."""

from __future__ import annotations

import json
import resource
import socket
import subprocess
import sys
from pathlib import Path

import trio

from daemon.platform import connlimit
from daemon.platform.config import (
    Config,
    DatabaseConfig,
    HttpConfig,
    SecretsConfig,
    SmsConfig,
    UispConfig,
    to_toml,
)
from daemon.platform.db import Database
from daemon.platform.secrets import keygen
from tests.http_fixtures import (
    ADMIN_TOKEN,
    WEBHOOK_PATH,
    WEBHOOK_TOKEN,
    make_deps,
    serving,
    uisp_event,
)

ROOT = Path(__file__).resolve().parent.parent


def test_a_port_in_use_fails_the_start_naming_http_port(db_url: str, tmp_path: Path) -> None:
    keygen(tmp_path / "secret.key")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = Config().replace(
            database=DatabaseConfig(url=db_url, pool_min=1, pool_max=2),
            http=HttpConfig(host="127.0.0.1", port=port),
            secrets=SecretsConfig(key_file=str(tmp_path / "secret.key")),
            sms=SmsConfig(provider="none"),
        )
        (tmp_path / "config.toml").write_text(to_toml(cfg))
        proc = subprocess.run(
            [sys.executable, "-m", "daemon.cli", "run", "--config", str(tmp_path / "config.toml")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("paymentd: error:")]
    assert errors == [
        f"paymentd: error: cannot listen on 127.0.0.1:{port} (http.host:http.port): the port is"
        " already in use by another process (another paymentd?); stop it or set http.port to a"
        " free port"
    ]
    # Everything else is the daemon's structured log (stderr is not a terminal), and
    # nothing in it is an error: the port is the one problem.
    levels = {json.loads(line)["level"] for line in lines if line not in errors}
    assert levels <= {"INFO", "WARNING"}, proc.stderr


async def http_get(
    port: int, path: str, method: str = "GET", body: bytes = b""
) -> tuple[int, bytes]:
    """One request on a fresh connection; (status, body)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        head = f"{method} {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n"
        if body:
            head += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        await stream.send_all(head.encode() + b"\r\n" + body)
        # hypercorn keeps the socket open after a "connection: close" answer: read by
        # content-length rather than to EOF.
        data = b""
        while b"\r\n\r\n" not in data or len(data) < _expected_length(data):
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    if not status_line:
        return 0, b""  # closed without an answer
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def _expected_length(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value)
    return len(data)


async def open_event_stream(port: int) -> trio.SocketStream:
    """A client with real traffic: an SSE subscriber, once the server has answered it."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(
        f"GET /api/v1/events HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {ADMIN_TOKEN}"
        "\r\n\r\n".encode()
    )
    data = b""
    while b": subscribed" not in data:
        data += await stream.receive_some(65536)
    return stream


async def test_past_the_connection_cap_new_clients_get_503_but_probes_and_webhooks_pass(
    db: Database,
) -> None:
    deps = make_deps(db, http=HttpConfig(port=0, admin_token=ADMIN_TOKEN, max_connections=4))
    with trio.fail_after(30):
        async with serving(deps) as client:
            port = int(str(client.base_url).rsplit(":", 1)[1].rstrip("/"))
            busy = [await open_event_stream(port) for _ in range(4)]
            try:
                status, body = await http_get(port, "/metrics")
                assert status == 503
                assert json.loads(body)["detail"] == "too many connections"
                # Probes and webhooks still get through, on the reserved slots.
                assert (await http_get(port, "/healthz"))[0] == 200
                hook = json.dumps(uisp_event()).encode()
                assert (await http_get(port, WEBHOOK_PATH, "POST", hook))[0] == 200
            finally:
                for stream in busy:
                    await stream.aclose()
            # Once those clients are gone, everyone is served again.
            while (await http_get(port, "/metrics"))[0] == 503:  # noqa: ASYNC110
                await trio.sleep(0.05)
            assert (await http_get(port, "/metrics"))[0] == 200


async def test_at_the_cap_a_connection_that_sent_nothing_makes_room(db: Database) -> None:
    deps = make_deps(db, http=HttpConfig(port=0, admin_token=ADMIN_TOKEN, max_connections=4))
    with trio.fail_after(30):
        async with serving(deps) as client:
            port = int(str(client.base_url).rsplit(":", 1)[1].rstrip("/"))
            silent = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(4)]
            busy = await open_event_stream(port)  # the fifth: one silent one had to go
            closed_by_server = trio.Event()

            async def watch(stream: trio.SocketStream) -> None:
                if await stream.receive_some(1) == b"":
                    closed_by_server.set()

            try:
                # Well before hypercorn's own keep_alive_timeout (5 s) would close them.
                with trio.fail_after(3):
                    async with trio.open_nursery() as nursery:
                        for stream in silent:
                            nursery.start_soon(watch, stream)
                        await closed_by_server.wait()
                        nursery.cancel_scope.cancel()
                assert (await http_get(port, "/metrics"))[0] == 200
            finally:
                for stream in [*silent, busy]:
                    await stream.aclose()


def test_the_cap_fits_under_the_open_file_limit() -> None:
    assert connlimit.connection_cap(1024, 1024) == 1024 - 128 - 16
    assert connlimit.connection_cap(100, 65536) == 100


def test_the_soft_open_file_limit_is_raised_to_the_hard_one() -> None:
    script = (
        "import resource\n"
        "from daemon.platform.connlimit import raise_fd_limit\n"
        "_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "print(raise_fd_limit() == hard == resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert out.stdout.strip() == "True", out.stderr


def _low_fd_limit() -> None:
    # In the daemon's child process only: an fd limit a test can exhaust quickly.
    resource.setrlimit(resource.RLIMIT_NOFILE, (FLOOD_FD_LIMIT, FLOOD_FD_LIMIT))


FLOOD_FD_LIMIT = 400


async def answered(port: int, path: str, method: str = "GET", body: bytes = b"") -> int:
    """The first answer that is not a refusal (the reserved slots can be busy for a moment
    while the flood's own connections are being looked at). A refusal is the cap's 503,
    or, past ``MAX_REFUSING`` refusals at once, a close without an answer."""
    while True:
        try:
            status = (await http_get(port, path, method, body))[0]
        except trio.BrokenResourceError:
            status = 0  # reset by the close of a refused connection
        if status not in (0, 503):
            return status
        await trio.sleep(0.1)


async def test_a_flood_of_stalled_connections_leaves_healthz_and_webhooks_answering(
    db_url: str, tmp_path: Path
) -> None:
    """The issue's scenario: more stalled clients than the process has file descriptors.

    Each sends one byte and stops (so hypercorn's keep-alive timer never closes it).
    Before the cap, accept() failed with EMFILE from then on and nothing was answered.
    """
    keygen(tmp_path / "secret.key")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = Config().replace(
        database=DatabaseConfig(url=db_url, pool_min=1, pool_max=2),
        http=HttpConfig(host="127.0.0.1", port=port, admin_token=ADMIN_TOKEN),
        uisp=UispConfig(webhook_token=WEBHOOK_TOKEN),
        secrets=SecretsConfig(key_file=str(tmp_path / "secret.key")),
        sms=SmsConfig(provider="none"),
    )
    (tmp_path / "config.toml").write_text(to_toml(cfg))
    command = [sys.executable, "-m", "daemon.cli", "run", "--config", str(tmp_path / "config.toml")]
    log = (tmp_path / "daemon.log").open("wb")
    proc = await trio.lowlevel.open_process(
        command, cwd=ROOT, stdout=log, stderr=log, preexec_fn=_low_fd_limit
    )
    stalled: list[trio.SocketStream] = []
    try:
        with trio.fail_after(40):
            while True:
                try:
                    if (await http_get(port, "/healthz"))[0] == 200:
                        break
                except OSError:
                    await trio.sleep(0.1)
            for _ in range(FLOOD_FD_LIMIT + 100):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(b"G")
                stalled.append(stream)
            assert await answered(port, "/healthz") == 200
            hook = json.dumps(uisp_event()).encode()
            assert await answered(port, WEBHOOK_PATH, "POST", hook) == 200
            for stream in stalled:
                await stream.aclose()
            stalled.clear()
            assert await answered(port, "/metrics") == 200
    finally:
        for stream in stalled:
            await stream.aclose()
        proc.terminate()
        with trio.fail_after(20):
            await proc.wait()
        log.close()
    text = (tmp_path / "daemon.log").read_text()
    assert "HTTP connection cap reached" in text
    assert "EMFILE" not in text
    assert WEBHOOK_TOKEN not in text
