"""End-to-end reconnection latency: payment in UISP -> ONU active -> SMS accepted.

The real daemon (in this process) against the fake UISP, the SMS sink and the OLT
simulator (Huawei CLI, ``--latency`` seconds per command), on a throwaway PostgreSQL
database. Each reconnection is a distinct suspended client with its own ONU, spread over
``--olts`` simulated OLTs. Latency is measured from just before ``fake.record_payment``
(UISP posts payment.add, service.edit and service.suspend_cancel) until the SMS sink
accepted that client's SMS.

Modes, measured in the same run against the same daemon:

* warm: the OLT pool as built (default ``olt.idle_close_seconds``, 300 s): one SSH session
  per device, logged in once, reused by every task.
* cold: a new SSH session (connect, login, set-up) per task. ``idle_close_seconds=0`` cannot
  express this (a probe at start shows what it does), so the pool's ``execute`` is wrapped:
  per device, one task at a time runs ``execute`` and then ``pool.forget(device)``, so the
  next task's request goes to a fresh device actor that logs in again (after the previous
  session logged out: still one session per device at a time, as the pool guarantees).

Each mode runs sequentially (one reconnection at a time, waiting for its SMS) and as a
burst (all N payments at once). Every phase starts without an open session.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import _common
import trio
import trio_asyncio

from daemon.actors.olt_pool import OltPool, OltPoolSettings
from daemon.app import Running, run_daemon
from daemon.fakes import sms_sink, uisp_server
from daemon.network import devices as olt_store
from daemon.network.olt import simulator
from daemon.network.olt.types import OltError, OnuRef
from daemon.platform.config import (
    Config,
    DaemonConfig,
    DatabaseConfig,
    HttpConfig,
    OltConfig,
    SecretsConfig,
    SmsConfig,
    UispConfig,
)
from daemon.platform.db import Database
from daemon.platform.events import EventBus
from daemon.platform.metrics import Metrics
from daemon.platform.secrets import SecretBox, keygen, load_keyring

WEBHOOK_TOKEN = "bench-hook"
PHASES = ("warm sequential", "cold sequential", "warm burst", "cold burst")


@dataclass
class Client:
    client_id: int
    msisdn: str
    olt: str
    onu: str


class Arrivals:
    """When the SMS sink accepted a message, per MSISDN (trio clock)."""

    def __init__(self, sink: sms_sink.SmsSink) -> None:
        self.sink = sink
        self.at: dict[str, float] = {}
        self._changed = trio.Event()

    async def run(self) -> None:
        seen = 0
        while True:
            await self.sink.wait_messages(seen + 1)
            now = trio.current_time()
            for m in self.sink.messages[seen:]:
                self.at.setdefault(m["msisdn"], now)
            seen = len(self.sink.messages)
            self._changed.set()
            self._changed = trio.Event()

    async def wait(self, msisdns: list[str], seconds: float) -> None:
        with trio.fail_after(seconds):
            while not all(m in self.at for m in msisdns):
                await self._changed.wait()


class ColdSwitch:
    """Wraps ``pool.execute``: in cold mode every task gets its own SSH session."""

    def __init__(self, pool: OltPool) -> None:
        self.pool = pool
        self.cold = False
        self._execute = pool.execute
        self._locks: dict[str, trio.Lock] = defaultdict(trio.Lock)
        pool.execute = self.execute  # type: ignore[method-assign]

    async def execute(self, device: str, onu: OnuRef, action: Any) -> Any:
        if not self.cold:
            return await self._execute(device, onu, action)
        async with self._locks[device]:
            try:
                return await self._execute(device, onu, action)
            finally:
                self.pool.forget(device)  # the next request starts a new actor + session


def seed(
    fake: uisp_server.FakeUisp, devices: list[simulator.SimDevice], count: int
) -> list[Client]:
    clients = []
    for i in range(count):
        dev = devices[i % len(devices)]
        n = i // len(devices)
        port, onu_id = n // 100, n % 100 + 1
        dev.add_onu(0, 1, port, onu_id, active=False)
        onu = f"0/1/{port}:{onu_id}"
        phone = f"+34 6{i:08d}"
        c = fake.add_client(f"Client{i}", "Bench", phone)
        s = fake.add_service(c["id"], "Fibra", olt=dev.name, onu=onu)
        inv = fake.add_invoice(c["id"], 30.0, due_in_days=-10)
        fake.suspend_for_invoices(s["id"], [inv["id"]])
        clients.append(Client(c["id"], "346" + f"{i:08d}", dev.name, onu))
    return clients


def make_config(db_url: str, tmp: Path, fake_url: str, sink_url: str) -> Config:
    key_file = tmp / "secret.key"
    keygen(key_file)
    return Config().replace(
        daemon=DaemonConfig(shutdown_grace_seconds=3, restart_backoff_min_seconds=0.1),
        database=DatabaseConfig(url=db_url),  # defaults: pool 2-10, notify throttle 100 ms
        http=HttpConfig(port=0, admin_token="bench-admin"),
        uisp=UispConfig(base_url=fake_url, app_key="app-key", webhook_token=WEBHOOK_TOKEN),
        # idle_close_seconds left at its default (300 s): the warm pool as built.
        secrets=SecretsConfig(key_file=str(key_file)),
        olt=OltConfig(connect_timeout_seconds=10, command_timeout_seconds=10),
        sms=SmsConfig(
            base_url=sink_url,
            username="sms-user",
            token="sms-token",
            sender="ISP",
            timeout_seconds=10,
        ),
    )


async def register(db: Database, box: SecretBox, devices: list[simulator.SimDevice]) -> None:
    for d in devices:
        await olt_store.add_device(
            db, box, name=d.name, vendor=d.vendor, host="127.0.0.1", port=d.port,
            username=d.username, password=d.password, host_key=d.public_host_key(),
        )  # fmt: skip


async def probe_idle_close_zero(
    db: Database, box: SecretBox, cfg: OltConfig, dev: simulator.SimDevice
) -> str:
    """What the pool does with ``idle_close_seconds = 0`` (one request, 10 s cap)."""
    settings = OltPoolSettings(
        connect_timeout=cfg.connect_timeout_seconds,
        command_timeout=cfg.command_timeout_seconds,
        idle_close=0,
        breaker_failures=cfg.breaker_failures,
        breaker_reset=cfg.breaker_reset_seconds,
        known_hosts=None,
    )
    pool = OltPool(settings, partial(olt_store.load_spec, db, box), Metrics(), EventBus())
    before = dev.sessions_opened
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        try:
            with trio.fail_after(10):
                await pool.test_device(dev.name)
            outcome = "ok"
        except (OltError, trio.TooSlowError) as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        nursery.cancel_scope.cancel()
    return f"{outcome} (SSH sessions opened: {dev.sessions_opened - before})"


STAGES = ("webhook->task", "task queued", "task running", "->sms sent")


async def stage_seconds(db: Database, onus: list[str]) -> dict[str, list[float]]:
    """Per-stage durations from the rows' timestamps (server clock, per transaction)."""
    rows = await db.fetch(
        "SELECT extract(epoch FROM t.created_at - w.received_at)::float8 AS a,"
        " extract(epoch FROM t.started_at - t.created_at)::float8 AS b,"
        " extract(epoch FROM t.finished_at - t.started_at)::float8 AS c,"
        " extract(epoch FROM s.sent_at - t.finished_at)::float8 AS d"
        " FROM reconnect_tasks t JOIN uisp_webhooks w ON w.uuid = t.webhook_uuid"
        " JOIN sms_messages s ON s.task_id = t.id"
        " WHERE t.onu || '@' || t.olt_name = ANY($1::text[]) AND t.state = 'succeeded'",
        onus,
    )
    return {
        name: [r[k] for r in rows if r[k] is not None]
        for name, k in zip(STAGES, "abcd", strict=True)
    }


async def run_phase(
    name: str,
    clients: list[Client],
    fake: uisp_server.FakeUisp,
    arrivals: Arrivals,
    wait_seconds: float,
) -> tuple[list[float], float]:
    """Latencies (s) per reconnection and the phase's wall time."""
    start = trio.current_time()
    latencies: list[float] = []
    if name.endswith("sequential"):
        for c in clients:
            t0 = trio.current_time()
            await fake.record_payment(c.client_id, 30.0)
            await arrivals.wait([c.msisdn], wait_seconds)
            latencies.append(arrivals.at[c.msisdn] - t0)
    else:
        async with trio.open_nursery() as nursery:
            for c in clients:
                nursery.start_soon(fake.record_payment, c.client_id, 30.0)
        await arrivals.wait([c.msisdn for c in clients], wait_seconds)
        latencies = [arrivals.at[c.msisdn] - start for c in clients]
    return latencies, trio.current_time() - start


async def bench(args: argparse.Namespace, db_url: str, tmp: Path) -> int:
    fake = uisp_server.FakeUisp(app_key="app-key")
    sink = sms_sink.SmsSink(username="sms-user", token="sms-token", credits=10**6)
    devices = [
        simulator.SimDevice(f"olt-hw-{k}", "huawei", username="paymentd", password=f"pw-{k}")
        for k in range(args.olts)
    ]
    clients = seed(fake, devices, args.n * len(PHASES))
    by_phase = {p: clients[i * args.n : (i + 1) * args.n] for i, p in enumerate(PHASES)}
    results: dict[str, dict[str, Any]] = {}
    async with trio_asyncio.open_loop(), trio.open_nursery() as world:
        await world.start(partial(simulator.serve, devices))
        fake_url = await world.start(uisp_server.serve, fake)
        sink_url = await world.start(sms_sink.serve, sink)
        arrivals = Arrivals(sink)
        world.start_soon(arrivals.run)
        cfg = make_config(db_url, tmp, fake_url, sink_url)
        box = load_keyring(cfg.secrets)
        async with Database.open(db_url, min_size=1, max_size=2) as db:
            await register(db, box, devices)
            probe = await probe_idle_close_zero(db, box, cfg.olt, devices[0])
            await trio.sleep(0.5)
            for d in devices:  # the probe ran without latency; the benchmark runs with it
                d.latency = args.latency

            with trio.fail_after(30):
                running: Running = await world.start(
                    partial(run_daemon, cfg, env={}, handle_signals=False)
                )
            fake.webhook_url = f"{running.base_url}/webhooks/uisp/{WEBHOOK_TOKEN}"
            switch = ColdSwitch(running.pool)
            for phase in PHASES:
                switch.cold = phase.startswith("cold")
                for d in devices:  # every phase starts without an open session
                    running.pool.forget(d.name)
                await trio.sleep(1 + 3 * args.latency)  # let forgotten sessions log out
                opened = {d.name: d.sessions_opened for d in devices}
                latencies, wall = await run_phase(
                    phase, by_phase[phase], fake, arrivals, args.timeout
                )
                results[phase] = {
                    "lat": latencies,
                    "wall": wall,
                    "sessions": {d.name: d.sessions_opened - opened[d.name] for d in devices},
                }
                print(f"  {phase}: done in {wall:.1f} s", file=sys.stderr, flush=True)
            await trio.sleep(1)  # the last SMS rows commit 'sent' just after the sink answered
            for phase in PHASES:
                onus = [f"{c.onu}@{c.olt}" for c in by_phase[phase]]
                results[phase]["stages"] = await stage_seconds(db, onus)
            not_active = [
                c
                for c in clients
                if not next(d for d in devices if d.name == c.olt).is_active(OnuRef.parse(c.onu))
            ]
            peak = {d.name: d.peak_sessions for d in devices}
            running.shutdown.set()
        world.cancel_scope.cancel()

    report(args, results, probe, peak, len(sink.messages), len(not_active))
    return 0 if not not_active and len(sink.messages) == len(clients) else 1


def report(
    args: argparse.Namespace,
    results: dict[str, dict[str, Any]],
    probe: str,
    peak: dict[str, int],
    sms: int,
    not_active: int,
) -> None:
    print()
    print(
        f"reconnect_latency: N={args.n} per phase, {args.olts} simulated Huawei OLT(s), "
        f"{args.latency:.3f} s per CLI command"
    )
    print(f"probe: olt.idle_close_seconds = 0 -> {probe}")
    print(
        "cold mode = pool.execute wrapped: per device one task at a time, then "
        "pool.forget(device) (new SSH session + login per task)"
    )
    print("latency = record_payment() in the fake UISP -> SMS accepted by the sink (ms)")
    print(
        "stages (p50, ms, from row timestamps): webhook->task = suspend_cancel stored -> task"
        " row; task queued = -> handler starts; task running = OLT work incl. waiting for the"
        " device actor; ->sms sent = -> provider accepted"
    )
    print()
    rows = []
    for phase, r in results.items():
        lat = r["lat"]
        rows.append(
            [
                phase,
                len(lat),
                _common.ms(_common.percentile(lat, 50)),
                _common.ms(_common.percentile(lat, 90)),
                _common.ms(max(lat) if lat else math.nan),
                *(_common.ms(_common.percentile(r["stages"][st], 50)) for st in STAGES),
                f"{r['wall']:.2f}",
                " ".join(f"{k}={v}" for k, v in r["sessions"].items()),
            ]
        )
    print(
        _common.table(
            [
                "mode",
                "n",
                "p50",
                "p90",
                "max",
                *(f"{st} p50" for st in STAGES),
                "wall s",
                "sessions_opened",
            ],
            rows,
        )
    )
    print()
    print(
        f"checks: {sms} SMS accepted, {not_active} ONU(s) not active at the end, "
        f"peak concurrent sessions per OLT {peak}"
    )

    def r50(phase: str, p: int = 50) -> float:
        return _common.percentile(results[phase]["lat"], p)

    print(
        "ratios cold/warm: sequential p50 "
        f"{_common.ratio(r50('cold sequential'), r50('warm sequential'))}, "
        f"p90 {_common.ratio(r50('cold sequential', 90), r50('warm sequential', 90))}; "
        f"burst p50 {_common.ratio(r50('cold burst'), r50('warm burst'))}, "
        f"max {_common.ratio(max(results['cold burst']['lat']), max(results['warm burst']['lat']))}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="reconnections per phase (20)")
    parser.add_argument(
        "--latency", type=float, default=0.15, help="simulated seconds per CLI command (0.15)"
    )
    parser.add_argument("--olts", type=int, default=2, help="simulated Huawei OLTs (2)")
    parser.add_argument(
        "--timeout", type=float, default=60, help="max seconds to wait for SMS per phase step"
    )
    args = parser.parse_args()
    _common.quiet()
    with _common.throwaway_database() as db_url, tempfile.TemporaryDirectory() as tmp:
        return trio.run(bench, args, db_url, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
