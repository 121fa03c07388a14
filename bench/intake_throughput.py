"""UISP webhook intake throughput and latency vs the PGMQ insert-notify throttle.

The daemon's own intake path on a throwaway PostgreSQL database: the HTTP ingress actor
(``daemon.actors.http_ingress.run``: hypercorn + Quart, ``POST /webhooks/uisp/<token>``,
one transaction = INSERT into ``uisp_webhooks`` + ``pgmq.send`` on ``uisp_events``) on a
pool sized like the daemon's, plus the listener actor (``daemon.actors.listener.run``) so
the notifications are really LISTENed to and received. No consumer runs: the queued events
stay queued, so nothing but intake touches the database (the full daemon's payment
processor would call UISP for every event; that is another benchmark).

Load comes from a separate process (this script with ``--loader``, so it does not share
the daemon's Python thread): ``--conns`` keep-alive HTTP/1.1 connections, each sending
the next request as soon as the previous answer arrived, every body a distinct UISP
``service.suspend_cancel`` event (fresh uuid4). ``--warmup`` s are discarded, then
``--seconds`` s are measured. Latency = request written -> response read, in the loader.

Modes, in the same run, on the same database and server process:

* ``no trigger`` - **the baseline**: ``pgmq.disable_notify_insert('uisp_events')``;
* ``throttle N ms`` for each ``--throttles`` value (default 0, 25, 100; 100 is the
  daemon's ``database.notify_throttle_ms``): ``pgmq.enable_notify_insert(queue, N)``.

Each mode runs ``--rounds`` times, in alternating order (forwards, then backwards), and
before each run the webhook table and the queue are truncated and a CHECKPOINT is
requested, so every run starts from the same empty tables.
Correctness: after each run, rows in ``uisp_webhooks`` == rows in the queue == 200
answers (warm-up included); the exit status is 1 if not, or if any request failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import _common
import trio
import trio_asyncio

from daemon.actors import http_ingress, listener
from daemon.platform import db as dbmod
from daemon.platform.config import Config, DatabaseConfig, HttpConfig, UispConfig
from daemon.platform.consumer import Wakeups
from daemon.platform.db import Database
from daemon.platform.deps import Deps
from daemon.platform.events import EventBus
from daemon.platform.health import Health
from daemon.platform.metrics import Metrics
from daemon.uisp.webhooks import QUEUE as UISP_QUEUE
from daemon.wiring import QUEUE_NAMES

Q = UISP_QUEUE
TOKEN = "bench-token"
DEFAULT_THROTTLE = DatabaseConfig().notify_throttle_ms


# --------------------------------------------------------------------------- loader


def _body(entity_id: int) -> bytes:
    """A UISP webhook body as UISP sends it (shared/reference/uisp.md), fresh uuid."""
    return json.dumps(
        {
            "uuid": str(uuid.uuid4()),
            "changeType": "unsuspend",
            "entity": "service",
            "entityId": entity_id,
            "eventName": "service.suspend_cancel",
            "extraData": {"entity": {"id": entity_id, "status": 1}, "entityBeforeEdit": None},
        }
    ).encode()


async def _load(url: str, seconds: float, warmup: float, conns: int) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path
    start = time.perf_counter()
    cpu0 = sum(os.times()[:2])
    measure_from = start + warmup
    stop_at = measure_from + seconds
    latencies: list[float] = []
    last_done = measure_from
    total_ok = 0
    errors: dict[str, int] = {}

    async def connection(n: int) -> None:
        nonlocal last_done, total_ok
        stream: trio.SocketStream | None = None
        buf = bytearray()
        i = 0
        while time.perf_counter() < stop_at:
            i += 1
            body = _body(100000 + n * 1000000 + i)
            request = (
                f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            t0 = time.perf_counter()
            try:
                if stream is None:
                    stream = await trio.open_tcp_stream(host, port)
                    buf.clear()
                await stream.send_all(request)
                status, close = await _common.read_response(stream, buf)
            except (OSError, ConnectionError, trio.BrokenResourceError) as exc:
                key = type(exc).__name__
                errors[key] = errors.get(key, 0) + 1
                if stream is not None:
                    await stream.aclose()
                stream = None
                await trio.sleep(0.01)
                continue
            t1 = time.perf_counter()
            if status == 200:
                total_ok += 1
            else:
                errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1
            if t0 >= measure_from:
                if status == 200:
                    latencies.append(t1 - t0)
                last_done = max(last_done, t1)
            if close:
                await stream.aclose()
                stream = None
        if stream is not None:
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        for n in range(conns):
            nursery.start_soon(connection, n)
    return {
        "latencies": latencies,
        "measured_seconds": last_done - measure_from,
        "total_ok": total_ok,
        "errors": errors,
        "cpu_seconds": sum(os.times()[:2]) - cpu0,
        "wall_seconds": time.perf_counter() - start,
    }


# --------------------------------------------------------------------------- server side


class CountingWakeups(Wakeups):
    """The daemon's ``Wakeups``, counting the insert notifications the listener got."""

    def __init__(self) -> None:
        super().__init__(QUEUE_NAMES)
        self.notified = 0

    def wake(self, queue: str, *, notified: bool = False) -> None:
        if notified and queue == Q:
            self.notified += 1
        super().wake(queue, notified=notified)


@dataclass
class Run:
    latencies: list[float]
    seconds: float
    ok: int
    errors: dict[str, int]
    rows: int
    queued: int
    notified: int
    server_cpu: float  # this process's CPU seconds / wall seconds of the run
    loader_cpu: float


@dataclass
class Mode:
    name: str
    throttle_ms: int | None  # None: no trigger
    runs: list[Run] = field(default_factory=list)

    @property
    def latencies(self) -> list[float]:
        return [x for r in self.runs for x in r.latencies]

    @property
    def rps(self) -> float:
        seconds = sum(r.seconds for r in self.runs)
        return len(self.latencies) / seconds if seconds else math.nan

    def check(self) -> bool:
        return all(r.rows == r.queued == r.ok and not r.errors for r in self.runs)


async def set_mode(admin: Any, mode: Mode) -> None:
    sql = [
        "TRUNCATE pgmq.q_uisp_events, uisp_webhooks CASCADE",
        "SELECT pgmq.disable_notify_insert('uisp_events')"
        if mode.throttle_ms is None
        else f"SELECT pgmq.enable_notify_insert('uisp_events', {mode.throttle_ms})",
    ]
    for stmt in sql:
        await dbmod.bridge(admin.execute, stmt)
    try:  # needs superuser or pg_checkpoint; without it, a checkpoint may land mid-run
        await dbmod.bridge(admin.execute, "CHECKPOINT")
    except Exception as exc:
        print(f"  CHECKPOINT refused ({exc}); continuing", file=sys.stderr)
    trigger = await dbmod.bridge(
        admin.fetchval,
        "SELECT count(*) FROM pg_trigger WHERE tgname = 'trigger_notify_queue_insert_listeners'"
        " AND tgrelid = 'pgmq.q_uisp_events'::regclass",
    )
    assert trigger == (0 if mode.throttle_ms is None else 1), (mode.name, trigger)


async def run_loader(args: argparse.Namespace, url: str) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--loader",
        url,
        "--seconds",
        str(args.seconds),
        "--warmup",
        str(args.warmup),
        "--conns",
        str(args.conns),
    ]
    proc = await trio.run_process(cmd, capture_stdout=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"loader exited with {proc.returncode}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


async def one_run(
    args: argparse.Namespace, admin: Any, wakeups: CountingWakeups, webhook_url: str, mode: Mode
) -> None:
    await set_mode(admin, mode)
    await trio.sleep(0.3)
    notified0 = wakeups.notified
    cpu0, wall0 = time.process_time(), time.perf_counter()
    out = await run_loader(args, webhook_url)
    cpu1, wall1 = time.process_time(), time.perf_counter()
    await trio.sleep(0.3)  # let the last notifications arrive
    rows = await dbmod.bridge(admin.fetchval, "SELECT count(*) FROM uisp_webhooks")
    queued = await dbmod.bridge(admin.fetchval, "SELECT count(*) FROM pgmq.q_uisp_events")
    run = Run(
        latencies=out["latencies"],
        seconds=out["measured_seconds"],
        ok=out["total_ok"],
        errors=out["errors"],
        rows=rows,
        queued=queued,
        notified=wakeups.notified - notified0,
        server_cpu=(cpu1 - cpu0) / (wall1 - wall0),
        loader_cpu=out["cpu_seconds"] / out["wall_seconds"],
    )
    mode.runs.append(run)
    print(
        f"  {mode.name}: {len(run.latencies) / run.seconds:.0f} req/s, "
        f"{run.ok} ok, {rows} rows, {queued} queued, {run.notified} notified, "
        f"errors {run.errors or 0}",
        file=sys.stderr,
        flush=True,
    )


async def bench(args: argparse.Namespace, url: str) -> int:
    cfg = Config().replace(
        database=DatabaseConfig(url=url),
        http=HttpConfig(host="127.0.0.1", port=0),
        uisp=UispConfig(webhook_token=TOKEN),
    )
    modes = [Mode("no trigger (baseline)", None)] + [
        Mode(f"throttle {t} ms" + (" (default)" if t == DEFAULT_THROTTLE else ""), t)
        for t in args.throttles
    ]
    async with trio_asyncio.open_loop():
        admin = await dbmod.connect(url)
        try:
            async with Database.open(
                url,
                min_size=cfg.database.pool_min,
                max_size=cfg.database.pool_max,
                command_timeout=cfg.database.command_timeout_seconds,
            ) as db:
                deps = Deps(cfg, db, Metrics(), EventBus(), Health(5, 60))
                wakeups = CountingWakeups()
                shutdown = trio.Event()
                async with trio.open_nursery() as nursery:
                    listen = listener.ListenerDeps(
                        url, QUEUE_NAMES, wakeups, deps.metrics, deps.events,
                        cfg.database.safety_poll_seconds, cfg.database.notify_throttle_ms,
                    )  # fmt: skip
                    await nursery.start(partial(listener.run, listen))
                    base_url = await nursery.start(
                        partial(http_ingress.run, deps, shutdown=shutdown)
                    )
                    webhook_url = f"{base_url}/webhooks/uisp/{TOKEN}"
                    for rnd in range(args.rounds):
                        order = modes if rnd % 2 == 0 else modes[::-1]
                        for mode in order:
                            await one_run(args, admin, wakeups, webhook_url, mode)
                    shutdown.set()  # the ingress drains and returns
                    await trio.sleep(0.5)
                    nursery.cancel_scope.cancel()  # the listener runs until cancelled
        finally:
            await dbmod.close_conn(admin)

    print()
    print(
        f"intake_throughput: {args.conns} keep-alive connections from a separate process, "
        f"distinct service.suspend_cancel webhooks; {args.rounds} x {args.seconds:g} s "
        f"measured per mode (after {args.warmup:g} s warm-up each)"
    )
    print(
        "server = http_ingress + listener actors, pool "
        f"{cfg.database.pool_min}-{cfg.database.pool_max}; latency = request written -> "
        "response read (ms); cpu = share of one core"
    )
    print()
    base = modes[0]
    rows = []
    for m in modes:
        lat = m.latencies
        rows.append(
            [
                m.name,
                len(lat),
                f"{m.rps:.0f}",
                " / ".join(f"{len(r.latencies) / r.seconds:.0f}" for r in m.runs),
                _common.ms(_common.percentile(lat, 50)),
                _common.ms(_common.percentile(lat, 99)),
                _common.ms(max(lat) if lat else math.nan),
                sum(sum(r.errors.values()) for r in m.runs),
                sum(r.notified for r in m.runs),
                f"{sum(r.server_cpu for r in m.runs) / len(m.runs):.0%}",
                f"{sum(r.loader_cpu for r in m.runs) / len(m.runs):.0%}",
                "ok" if m.check() else "MISMATCH",
                _common.ratio(m.rps, base.rps),
            ]
        )
    print(
        _common.table(
            [
                "mode",
                "n",
                "req/s",
                "per round",
                "p50",
                "p99",
                "max",
                "errors",
                "notifies",
                "server cpu",
                "loader cpu",
                "rows==200==queued",
                "vs baseline",
            ],
            rows,
        )
    )
    print()

    def p(m: Mode, q: float) -> float:
        return _common.percentile(m.latencies, q)

    parts = [
        f"{m.name.split(' (')[0]} {_common.ratio(m.rps, base.rps)} "
        f"(p50 {_common.ratio(p(m, 50), p(base, 50))}, p99 {_common.ratio(p(m, 99), p(base, 99))})"
        for m in modes[1:]
    ]
    by_t = {m.throttle_ms: m for m in modes}
    tail = ""
    if 0 in by_t and DEFAULT_THROTTLE in by_t and DEFAULT_THROTTLE != 0:
        d, z = by_t[DEFAULT_THROTTLE], by_t[0]
        tail = f"; throttle {DEFAULT_THROTTLE}/throttle 0 req/s {_common.ratio(d.rps, z.rps)}"
    print("ratios req/s vs no trigger: " + ", ".join(parts) + tail)
    bad = [m.name for m in modes if not m.check()]
    if bad:
        print(f"CHECK FAILED (errors, or rows != 200 answers != queued): {', '.join(bad)}")
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8, help="measured s per run (8)")
    parser.add_argument("--warmup", type=float, default=1, help="discarded s per run (1)")
    parser.add_argument("--conns", type=int, default=16, help="concurrent connections (16)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per mode (2)")
    parser.add_argument(
        "--throttles",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[0, 25, DEFAULT_THROTTLE],
        help=f"notify throttles in ms, comma-separated (0,25,{DEFAULT_THROTTLE})",
    )
    parser.add_argument("--loader", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loader:  # the load-generator subprocess
        result = trio.run(_load, args.loader, args.seconds, args.warmup, args.conns)
        json.dump(result, sys.stdout)
        return 0
    _common.quiet()
    with _common.throwaway_database() as url:
        return trio.run(bench, args, url)


if __name__ == "__main__":
    sys.exit(main())
