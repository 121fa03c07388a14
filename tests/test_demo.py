"""``paymentd demo`` as a user runs it: a real subprocess, killed the hard way, run again."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.test_daemon_process import free_port

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


class Demo:
    """One ``paymentd demo`` process and what it printed so far."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.out = ""

    async def wait_for(self, text: str, seconds: float = 90) -> None:
        assert self.proc.stdout is not None
        with trio.fail_after(seconds):
            while text not in self.out:
                chunk = await self.proc.stdout.receive_some(65536)
                if not chunk:
                    raise AssertionError(f"demo exited before printing {text!r}:\n{self.out}")
                self.out += chunk.decode()

    async def drain(self) -> None:
        assert self.proc.stdout is not None
        while chunk := await self.proc.stdout.receive_some(65536):
            self.out += chunk.decode()

    def webhook(self) -> tuple[str, dict[str, object]]:
        url = re.search(r"curl -sS -X POST (\S+/webhooks/uisp/\S+)", self.out)
        body = re.search(r"-d '(\{\"uuid\".*\})'", self.out)
        assert url and body, self.out
        return url.group(1), json.loads(body.group(1))

    def sink_url(self) -> str:
        m = re.search(r"curl -sS (\S+)/_sink/messages", self.out)
        assert m, self.out
        return m.group(1)


@pytest.fixture
def demo_dir() -> Iterator[Path]:
    """A ``--dir`` outside pytest's tmp_path. As root, pgserver runs the embedded PostgreSQL
    as its own ``pgserver`` user and opens the path's parents to it (o+rx); but any pytest
    that starts meanwhile (another xdist worker's nested run, another run on the machine)
    takes /tmp/pytest-of-root back to 0700, and the server's next file access fails with
    "Permission denied"."""
    root = Path(tempfile.mkdtemp(prefix="paymentd-demo-"))
    try:
        yield root / "demo"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def demos(demo_dir: Path) -> AsyncIterator[list[Demo]]:
    # Takes demo_dir so that the demos are stopped before their directory is removed.
    started: list[Demo] = []
    yield started
    for d in started:
        if d.proc.returncode is None:
            d.proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(30):
                await d.proc.wait()
        if d.proc.returncode is None:
            d.proc.kill()
            await d.proc.wait()


async def start_demo(demos: list[Demo], directory: Path, port: int, *extra: str) -> Demo:
    proc = await trio.lowlevel.open_process(
        [
            *(sys.executable, "-m", "daemon.cli", "demo"),
            *("--dir", str(directory), "--port", str(port), *extra),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    demo = Demo(proc)
    demos.append(demo)
    await demo.wait_for("Live events follow")
    return demo


def postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])


def running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    # A stopped postmaster is an orphan; until init reaps it, it is a zombie ("Z").
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def wait_gone(pid: int, seconds: float = 15) -> None:
    # pg_ctl stop returns once postmaster.pid is removed; the process exits just after.
    with trio.fail_after(seconds):
        while running(pid):  # noqa: ASYNC110 - another process; nothing to wait on
            await trio.sleep(0.1)


def postgres_processes(pgdata: Path) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True)
    return [line for line in ps.stdout.splitlines() if str(pgdata) in line]


async def deliver_and_wait_for_sms(demo: Demo) -> list[object]:
    url, body = demo.webhook()
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.post(url, json=body)
        assert resp.status_code == 200, resp.text
        with trio.fail_after(60):
            while True:
                messages: list[object] = (
                    await http.get(f"{demo.sink_url()}/_sink/messages")
                ).json()
                if messages:
                    return messages
                await trio.sleep(0.2)


async def test_a_killed_demo_is_followed_by_a_working_one_and_nothing_leaks(
    demo_dir: Path, demos: list[Demo]
) -> None:
    directory = demo_dir
    pgdata = directory / "pg"
    first = await start_demo(demos, directory, free_port())
    await deliver_and_wait_for_sms(first)
    leaked = postmaster_pid(pgdata)
    first.proc.kill()  # SIGKILL: no clean-up runs; its PostgreSQL keeps running
    await first.proc.wait()
    assert running(leaked)

    second = await start_demo(demos, directory, free_port())
    assert f"reusing its PostgreSQL (pid {leaked})" in second.out
    # State is reset: Carla is suspended again, so her reconnection sends an SMS again.
    messages = await deliver_and_wait_for_sms(second)
    assert len(messages) == 1, messages

    second.proc.send_signal(signal.SIGHUP)  # the terminal closed
    with trio.fail_after(60):
        await second.drain()
        await second.proc.wait()
    assert "embedded PostgreSQL stopped" in second.out, second.out
    await wait_gone(leaked)
    assert postgres_processes(pgdata) == []


async def test_a_second_demo_on_the_same_directory_is_refused_in_one_line(
    demo_dir: Path, demos: list[Demo]
) -> None:
    directory = demo_dir
    await start_demo(demos, directory, free_port())
    with trio.fail_after(60):
        proc = await trio.run_process(
            [sys.executable, "-m", "daemon.cli", "demo", "--dir", str(directory)],
            cwd=ROOT,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    err = proc.stderr.decode()
    assert proc.returncode == 2
    assert err.strip().splitlines() == [
        f"paymentd: error: another paymentd demo is running with --dir {directory.resolve()}; "
        "stop it or use another --dir"
    ], err


async def test_the_suspend_scenario_switches_an_onu_off(demo_dir: Path, demos: list[Demo]) -> None:
    demo = await start_demo(demos, demo_dir, free_port(), "--scenario", "suspend")
    await demo.wait_for("state=deactivated")
    assert "scenario suspend: UISP suspends Bruno's service (id 2)" in demo.out
    assert "olt=olt-huawei-1 onu=0/1/0:2 action=deactivate" in demo.out


async def test_the_printed_suspend_curl_works_as_pasted(demo_dir: Path, demos: list[Demo]) -> None:
    demo = await start_demo(demos, demo_dir, free_port())
    m = re.search(
        r"curl -sS -X PATCH (\S+) -d '\{\}' \\\n\s+-H 'X-Auth-App-Key: ([^']+)'", demo.out
    )
    assert m, demo.out
    url, key = m.groups()
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.patch(url, headers={"X-Auth-App-Key": key}, json={})
    assert r.status_code == 200, r.text
    await demo.wait_for("state=deactivated")


async def test_the_printed_card_payment_curl_reconnects_ana_with_one_sms(
    demo_dir: Path, demos: list[Demo]
) -> None:
    demo = await start_demo(demos, demo_dir, free_port())
    await demo.wait_for("Watch the payment:")
    await demo.wait_for("/events\n\n")
    m = re.search(r"curl -sS -X POST (\S+/mock/pay/\S+/pay)\n", demo.out)
    assert m, demo.out
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(m.group(1))
        assert r.status_code == 200, r.text
        with trio.fail_after(60):
            while not (messages := (await http.get(f"{demo.sink_url()}/_sink/messages")).json()):  # noqa: ASYNC110 - another process
                await trio.sleep(0.2)
    assert len(messages) == 1 and "Ana" in str(messages[0]), messages
    await demo.wait_for("onu=0/1/0:1")


async def test_the_printed_shop_pays_through_the_embeddable_checkout(
    tmp_path: Path, demos: list[Demo]
) -> None:
    demo = await start_demo(demos, tmp_path / "demo", free_port())
    await demo.wait_for("press Pay: the shop")
    m = re.search(r"\n  (http://127\.0\.0\.1:[0-9]+)/\n", demo.out)
    key = re.search(r"publishable key (pk_[0-9a-f]{24})", demo.out)
    assert m and key, demo.out
    shop = m.group(1)
    async with httpx.AsyncClient(timeout=10) as http:
        page = (await http.get(f"{shop}/")).text
        daemon = re.search(r'<script src="(http://[^"]+)/paymentd.js">', page)
        assert daemon and key.group(1) in page, page
        assert daemon.group(1) != shop  # another origin
        order = (await http.post(f"{shop}/orders")).json()
        link = await http.post(
            f"{daemon.group(1)}/checkout-links",
            json={"publishable_key": key.group(1), "payment_id": order["payment_id"]},
            headers={"Origin": shop},
        )
        assert link.status_code == 200, link.text
        checkout = await http.get(daemon.group(1) + link.json()["path"])
        assert "30.00 EUR" in checkout.text
        assert f"frame-ancestors {shop}" in checkout.headers["content-security-policy"]
