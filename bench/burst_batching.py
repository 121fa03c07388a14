"""A burst of reconnections after a billing run: batched per board vs one task per sequence.

The real daemon (in this process) against the OLT simulator (Huawei CLI, ``--latency``
seconds per command) and the SMS sink, on a throwaway PostgreSQL database. ``--n``
activation tasks (each a distinct suspended service with its own ONU and phone) are
created in one transaction, spread over ``--olts`` simulated OLTs, on ``--ports`` PON
ports of one board each; wall time runs from just before that commit until every task
is ``succeeded``. Then every ONU must read active on its simulator and every SMS must
have reached the sink.

Modes, measured in the same run against the same simulators and database, each with its
own daemon (a fresh OLT pool: both include one login per OLT):

* unbatched: ``olt.max_batch = 1``, one CLI sequence per task (as before batching): config,
  interface, ont activate, display ont info, quit, quit;
* batched: ``olt.max_batch = --batch`` (default: the config default): the device actor
  takes everything queued for it when it becomes free and runs each board's changes as
  one sequence (one read-back per port).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import _common
import trio
import trio_asyncio

from daemon.app import Running, run_daemon
from daemon.fakes import sms_sink
from daemon.network import devices as olt_store
from daemon.network import tasks
from daemon.network.olt import simulator
from daemon.network.olt.types import OnuRef
from daemon.platform.config import (
    Config,
    DaemonConfig,
    DatabaseConfig,
    HttpConfig,
    OltConfig,
    SecretsConfig,
    SmsConfig,
)
from daemon.platform.db import Database
from daemon.platform.secrets import keygen, load_keyring


@dataclass
class Job:
    service_id: int
    olt: str
    onu: OnuRef
    phone: str


def make_config(db_url: str, tmp: Path, sink_url: str, max_batch: int) -> Config:
    key_file = tmp / "secret.key"
    if not key_file.exists():
        keygen(key_file)
    return Config().replace(
        daemon=DaemonConfig(shutdown_grace_seconds=3, restart_backoff_min_seconds=0.1),
        database=DatabaseConfig(url=db_url),
        http=HttpConfig(port=0, admin_token="bench-admin"),
        secrets=SecretsConfig(key_file=str(key_file)),
        olt=OltConfig(connect_timeout_seconds=10, command_timeout_seconds=10, max_batch=max_batch),
        sms=SmsConfig(
            base_url=sink_url,
            username="sms-user",
            token="sms-token",
            sender="ISP",
            timeout_seconds=10,
        ),
    )


def seed(devices: list[simulator.SimDevice], n: int, ports: int, phase: int) -> list[Job]:
    """``n`` deactivated ONUs round-robin over the devices and their ports (board 0/1)."""
    jobs = []
    for i in range(n):
        dev = devices[i % len(devices)]
        k = i // len(devices)
        port, onu_id = k % ports, k // ports + 1
        onu = dev.onus.get((0, 1, port, onu_id)) or dev.add_onu(0, 1, port, onu_id)
        onu.active = False
        service_id = phase * 100_000 + i + 1  # distinct per phase: each gets its SMS
        jobs.append(Job(service_id, dev.name, OnuRef(0, 1, port, onu_id), f"+34 6{i:08d}"))
    return jobs


async def create_burst(db: Database, jobs: list[Job], phase: str) -> None:
    async with db.transaction() as tx:
        for j in jobs:
            await tasks.create(
                tx,
                dedupe_key=f"activate:service:{j.service_id}:bench:{phase}",
                webhook_uuid=None,
                action="activate",
                service_id=j.service_id,
                olt_name=j.olt,
                onu=str(j.onu),
                client_name=f"Client {j.service_id}",
                phone=j.phone,
            )


async def wait_done(db: Database, jobs: list[Job]) -> dict[str, int]:
    ids = [j.service_id for j in jobs]
    while True:
        row = await db.fetchrow(
            "SELECT count(*) FILTER (WHERE state = 'succeeded') AS ok,"
            " count(*) FILTER (WHERE state IN ('failed', 'superseded')) AS bad"
            " FROM reconnect_tasks WHERE service_id = ANY($1::bigint[])",
            ids,
        )
        if row["ok"] + row["bad"] >= len(jobs):
            return {"succeeded": row["ok"], "failed": row["bad"]}
        await trio.sleep(0.1)


async def run_phase(
    name: str,
    max_batch: int,
    jobs: list[Job],
    devices: list[simulator.SimDevice],
    ctx: dict[str, Any],
) -> dict[str, Any]:
    db: Database = ctx["db"]
    sink: sms_sink.SmsSink = ctx["sink"]
    cfg = make_config(ctx["db_url"], ctx["tmp"], ctx["sink_url"], max_batch)
    sent_before = len(sink.messages)
    logged = {d.name: len(d.command_log) for d in devices}
    async with trio.open_nursery() as nursery:
        with trio.fail_after(30):
            running: Running = await nursery.start(
                partial(run_daemon, cfg, env={}, handle_signals=False)
            )
        start = trio.current_time()
        await create_burst(db, jobs, name)
        with trio.fail_after(ctx["timeout"]):
            counts = await wait_done(db, jobs)
        wall = trio.current_time() - start
        with trio.move_on_after(30):  # the SMS go out just after their tasks
            await sink.wait_messages(sent_before + len(jobs), seconds=30)
        metrics = running.deps.metrics.registry
        sequences = metrics.get_sample_value("paymentd_olt_batch_size_count") or 0.0
        batched = metrics.get_sample_value("paymentd_olt_batch_size_sum") or 0.0
        busy = await db.fetchval(
            "SELECT count(*) FROM task_events e JOIN reconnect_tasks t ON t.id = e.task_id"
            " WHERE e.kind = 'device_busy' AND t.service_id = ANY($1::bigint[])",
            [j.service_id for j in jobs],
        )
        running.shutdown.set()
    by_name = {d.name: d for d in devices}
    not_active = [j for j in jobs if not by_name[j.olt].is_active(j.onu)]
    return {
        **counts,
        "wall": wall,
        "not_active": len(not_active),
        "sms": len(sink.messages) - sent_before,
        "commands": sum(len(d.command_log) - logged[d.name] for d in devices),
        "sequences": int(sequences),
        "alone": len(jobs) - int(batched),  # requests that ran in a sequence of their own
        "busy": busy,
    }


async def bench(args: argparse.Namespace, db_url: str, tmp: Path) -> int:
    sink = sms_sink.SmsSink(username="sms-user", token="sms-token", credits=10**6)
    devices = [
        simulator.SimDevice(f"olt-hw-{k}", "huawei", username="paymentd", password=f"pw-{k}")
        for k in range(args.olts)
    ]
    phases = [("unbatched", 1), ("batched", args.batch)]
    results: dict[str, dict[str, Any]] = {}
    async with trio_asyncio.open_loop(), trio.open_nursery() as world:
        await world.start(partial(simulator.serve, devices))
        sink_url = await world.start(sms_sink.serve, sink)
        async with Database.open(db_url, min_size=1, max_size=2) as db:
            box = load_keyring(make_config(db_url, tmp, sink_url, 1).secrets)
            for d in devices:
                await olt_store.add_device(
                    db, box, name=d.name, vendor=d.vendor, host="127.0.0.1", port=d.port,
                    username=d.username, password=d.password, host_key=d.public_host_key(),
                )  # fmt: skip
            ctx = {"db": db, "db_url": db_url, "tmp": tmp, "sink": sink, "sink_url": sink_url}
            ctx["timeout"] = args.timeout
            for i, (name, max_batch) in enumerate(phases):
                jobs = seed(devices, args.n, args.ports, i + 1)
                for d in devices:
                    d.latency = args.latency
                print(f"  {name} (olt.max_batch = {max_batch}) ...", file=sys.stderr, flush=True)
                results[name] = await run_phase(name, max_batch, jobs, devices, ctx)
                print(f"  {name}: {results[name]['wall']:.1f} s", file=sys.stderr, flush=True)
                for d in devices:  # the next daemon's sessions start from nothing
                    d.latency = 0.0
                await trio.sleep(0.5)
        world.cancel_scope.cancel()
    return report(args, phases, results)


def report(
    args: argparse.Namespace, phases: list[tuple[str, int]], results: dict[str, dict[str, Any]]
) -> int:
    print()
    print(
        f"burst_batching: {args.n} activation tasks in one transaction over {args.olts} simulated"
        f" Huawei OLT(s), {args.ports} PON port(s) of one board each, {args.latency:.3f} s per"
        " CLI command"
    )
    print(
        "wall = task commit -> every task succeeded; commands = CLI commands the simulators"
        " received (logins included); sequences = batched CLI sequences (the rest ran alone);"
        " busy = deferrals because a device queue was full"
    )
    print()
    rows = []
    for name, max_batch in phases:
        r = results[name]
        rows.append(
            [
                name,
                max_batch,
                r["succeeded"],
                r["failed"],
                f"{r['wall']:.2f}",
                f"{args.n / r['wall']:.1f}",
                r["commands"],
                r["sequences"],
                r["alone"],
                r["busy"],
                r["not_active"],
                r["sms"],
            ]
        )
    headers = ["mode", "max_batch", "ok", "failed", "wall s", "tasks/s", "commands"]
    headers += ["sequences", "alone", "busy", "not active", "sms"]
    print(_common.table(headers, rows))
    un, ba = results["unbatched"], results["batched"]
    good = all(
        r["succeeded"] == args.n and r["not_active"] == 0 and r["sms"] == args.n
        for r in results.values()
    )
    print()
    print(f"checks: every ONU confirmed active and every SMS sent in both modes: {good}")
    print(
        f"ratio unbatched/batched wall time: {_common.ratio(un['wall'], ba['wall'])}"
        f" (goal >= 4x); commands {_common.ratio(un['commands'], ba['commands'])}"
    )
    return 0 if good else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="reconnections in the burst (200)")
    parser.add_argument("--olts", type=int, default=2, help="simulated Huawei OLTs (2)")
    parser.add_argument("--ports", type=int, default=4, help="PON ports used per OLT (4)")
    parser.add_argument(
        "--latency", type=float, default=0.15, help="simulated seconds per CLI command (0.15)"
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=OltConfig().max_batch,
        help=f"olt.max_batch of the batched mode ({OltConfig().max_batch}, the default)",
    )
    parser.add_argument(
        "--timeout", type=float, default=300, help="max seconds per mode for the burst (300)"
    )
    args = parser.parse_args()
    _common.quiet()
    with _common.throwaway_database() as db_url, tempfile.TemporaryDirectory() as tmp:
        return trio.run(bench, args, db_url, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
