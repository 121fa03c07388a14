"""Drift reconciliation duration: ``--services`` UISP services against the fake UISP and
the OLT simulator, on a throwaway PostgreSQL database.

Every service has an ONU on one of ``--olts`` simulated OLTs (Huawei and ZTE, alternating)
and a succeeded task in the task log; ``--drift`` of them are suspended in UISP behind
paymentd's back (a lost webhook) and as many ONUs are switched off by hand on the device.
``drift.reconcile`` runs on a real ``OltPool`` (warm sessions, one per device), the real
UISP client (paged list, ``--page-size``) and the real task-log queries. Phases, in the
same run, each checking that it found exactly the seeded drift:

* ``uisp+tasks``: the baseline, no device reads (``device_reads_per_run = 0``);
* ``+reads``: every ONU's state read from its device, no simulated latency: what the
  comparison costs on top of the baseline (SSH, CLI parsing, the ONU check table);
* ``+reads @L``: ``--budget`` reads per OLT with ``--latency`` seconds per CLI command (a
  read is one command): the per-read cost on a realistic device; the time for reading
  every ONU at that latency is extrapolated from it (printed as such, not measured).

The per-OLT rate limit is lifted (``device_reads_per_second`` very high) so the numbers
are the work itself; the production default (2 reads/s per OLT) is printed as what it
implies.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import _common
import trio
import trio_asyncio

from daemon import wiring
from daemon.fakes import uisp_server
from daemon.network import devices as olt_store
from daemon.network import drift
from daemon.network.olt import simulator
from daemon.network.olt.types import OnuRef
from daemon.platform.config import Config, DatabaseConfig, DriftConfig, SecretsConfig, UispConfig
from daemon.platform.db import Database
from daemon.platform.deps import Deps
from daemon.platform.events import EventBus
from daemon.platform.health import Health
from daemon.platform.metrics import Metrics
from daemon.platform.secrets import keygen, load_keyring
from daemon.uisp.client import UispClient

ONUS_PER_PORT = 125


def make_devices(olts: int) -> list[simulator.SimDevice]:
    devices = []
    for k in range(olts):
        vendor = "huawei" if k % 2 == 0 else "zte"
        devices.append(
            simulator.SimDevice(
                f"olt-{vendor}-{k}", vendor, username="paymentd", password=f"pw-{k}"
            )
        )
    return devices


def seed(
    fake: uisp_server.FakeUisp, devices: list[simulator.SimDevice], count: int, drifted: int
) -> list[tuple[int, str, str]]:
    """(service id, olt, onu) per service; all active and applied active, both in sync."""
    rows = []
    for i in range(count):
        dev = devices[i % len(devices)]
        n = i // len(devices)
        port, onu_id = n // ONUS_PER_PORT, n % ONUS_PER_PORT + 1
        dev.add_onu(0, 1, port, onu_id, active=True)
        onu = f"0/1/{port}:{onu_id}"
        client = fake.add_client(f"Client{i}", "Bench", f"+34 6{i:08d}")
        service = fake.add_service(client["id"], "Fibra", olt=dev.name, onu=onu)
        rows.append((service["id"], dev.name, onu))
    # A lost suspension webhook: UISP suspended, paymentd applied active, OLT active.
    for sid, _, _ in rows[:drifted]:
        fake.services[sid]["status"] = 3
    # Switched off by hand on the OLT: UISP active, paymentd applied active, OLT off.
    for _, olt, onu in rows[drifted : 2 * drifted]:
        next(d for d in devices if d.name == olt).set_active(OnuRef.parse(onu), False)
    return rows


async def bench(args: argparse.Namespace, db_url: str, tmp: Path) -> int:
    fake = uisp_server.FakeUisp(app_key="app-key")
    devices = make_devices(args.olts)
    services = seed(fake, devices, args.services, args.drift)
    key_file = tmp / "secret.key"
    keygen(key_file)
    results: list[tuple[str, float, drift.Report]] = []
    async with trio_asyncio.open_loop(), trio.open_nursery() as world:
        await world.start(partial(simulator.serve, devices))
        fake_url = await world.start(uisp_server.serve, fake)
        cfg = Config().replace(
            database=DatabaseConfig(url=db_url),
            uisp=UispConfig(base_url=fake_url, app_key="app-key"),
            secrets=SecretsConfig(key_file=str(key_file)),
        )
        box = load_keyring(cfg.secrets)
        async with Database.open(db_url, min_size=1, max_size=4) as db:
            for d in devices:
                await olt_store.add_device(
                    db, box, name=d.name, vendor=d.vendor, host="127.0.0.1", port=d.port,
                    username=d.username, password=d.password, host_key=d.public_host_key(),
                )  # fmt: skip
            await db.execute(
                "INSERT INTO reconnect_tasks (dedupe_key, action, service_id, olt_name, onu,"
                " state, finished_at) SELECT 'bench:' || s, 'activate', s, o, u, 'succeeded',"
                " now() FROM unnest($1::bigint[], $2::text[], $3::text[]) AS t(s, o, u)",
                [s for s, _, _ in services],
                [o for _, o, _ in services],
                [u for _, _, u in services],
            )
            deps = Deps(cfg, db, Metrics(), EventBus(), Health())
            pool = wiring.make_pool(deps, box)
            await world.start(pool.run)
            async with UispClient.from_config(cfg.uisp) as client:
                per_olt = -(-args.services // args.olts)
                # Unmeasured: the first HTTP connection and first-time code paths.
                warm = DriftConfig(page_size=args.page_size, device_reads_per_run=0)
                await drift.reconcile(
                    drift.DriftDeps(db, client, pool, cfg.uisp, warm, deps.metrics, deps.events),
                    fix=False,
                    trigger="bench",
                )
                phases = [
                    ("uisp+tasks", 0, 0, 0.0),
                    ("+reads", per_olt, 2 * args.drift, 0.0),
                    (f"+reads @{args.latency:g}s", args.budget, None, args.latency),
                ]
                for name, budget, want_drift, latency in phases:
                    for d in devices:
                        d.latency = latency
                    drift_cfg = DriftConfig(
                        page_size=args.page_size,
                        device_reads_per_run=budget,
                        device_reads_per_second=1e6,
                    )
                    p = drift.DriftDeps(
                        db, client, pool, cfg.uisp, drift_cfg, deps.metrics, deps.events
                    )
                    # Sessions are logged in before the first measured phase.
                    if name == "+reads":
                        for d in devices:
                            await pool.onu_state(d.name, OnuRef(*next(iter(d.onus))))
                    print(f"  {name} ...", file=sys.stderr, flush=True)
                    started = time.monotonic()
                    report = await drift.reconcile(p, fix=False, trigger="bench")
                    seconds = time.monotonic() - started
                    results.append((name, seconds, report))
                    found = len(report.items)
                    # The baseline sees only the lost webhooks; the full read sees both
                    # kinds; the budgeted one sees whatever its reads happen to cover.
                    expected = args.drift if budget == 0 else want_drift
                    if expected is not None and found != expected:
                        print(f"{name}: found {found} drift(s), seeded {expected}", file=sys.stderr)
                        return 1
        world.cancel_scope.cancel()
    report_table(args, results)
    return 0


def report_table(args: argparse.Namespace, results: list[tuple[str, float, drift.Report]]) -> None:
    base = results[0][1]
    print()
    print(
        f"reconcile_duration: {args.services} services on {args.olts} simulated OLT(s) "
        f"(Huawei/ZTE), UISP page size {args.page_size}, {2 * args.drift} seeded drift(s)"
    )
    rows = []
    for name, seconds, r in results:
        reads = r.counts.device_reads
        rows.append(
            [
                name,
                r.counts.services,
                reads,
                len(r.items),
                f"{seconds:.2f}",
                f"{seconds / max(r.counts.services, 1) * 1000:.2f}",
                "-" if reads == 0 else f"{(seconds - base) / reads * 1000:.1f}",
                _common.ratio(seconds, base),
            ]
        )
    headers = ["phase", "services", "reads", "drift", "seconds", "ms/service",
               "ms/read over baseline", "vs baseline"]  # fmt: skip
    print(_common.table(headers, rows))
    _, slow_s, slow = results[-1]
    if slow.counts.device_reads:
        per_read = (slow_s - base) / slow.counts.device_reads * args.olts  # one OLT's reads
        per_olt = -(-args.services // args.olts)
        print(
            f"\nextrapolated (not measured): reading every ONU at {args.latency:g} s/command "
            f"~ {base + per_read * per_olt:.0f} s ({per_olt} reads per OLT, OLTs in parallel)"
        )
    default = DriftConfig()
    print(
        f"production defaults: at most {default.device_reads_per_run} reads per OLT per run at "
        f"{default.device_reads_per_second:g}/s -> >= "
        f"{default.device_reads_per_run / default.device_reads_per_second:.0f} s of device "
        "reads per run, least recently checked ONUs first"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=2000)
    ap.add_argument("--olts", type=int, default=2)
    ap.add_argument("--drift", type=int, default=20, help="of each kind")
    ap.add_argument("--page-size", type=int, default=500)
    ap.add_argument("--latency", type=float, default=0.15, help="s per CLI command, last phase")
    ap.add_argument("--budget", type=int, default=50, help="reads per OLT in the last phase")
    args = ap.parse_args()
    _common.quiet()
    with _common.throwaway_database() as db_url, tempfile.TemporaryDirectory() as tmp:
        return trio.run(bench, args, db_url, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
