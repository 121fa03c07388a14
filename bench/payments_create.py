"""Payments created per second through the HTTP API with idempotency keys, against a
FastAPI + uvicorn + asyncpg peer doing the same durable insert; and create → client
secret latency with ``Prefer: wait`` on the mock provider.

Throughput: paymentd's HTTP ingress actor (``daemon.actors.http_ingress.run``: hypercorn
+ Quart, ``POST /api/v1/payments``: the idempotency claim, then one transaction with the
payment, its history row, its outbox event, the ``payments`` queue message and the
stored answer) on a pool of 10, in this process; the peer (``bench/payments_peer.py``,
the same statements, pool of 10) in its own process. No processor runs during this
part: nothing but the create path touches the database. Load comes from a separate
process (``--loader``): ``--conns`` keep-alive HTTP/1.1 connections, each sending the next
create as soon as the previous answer arrived, every one with a fresh Idempotency-Key.
``--warmup`` s are discarded, then ``--seconds`` s measured; each side runs ``--rounds``
times, alternating, on emptied tables. Correctness: rows in ``payments`` == stored keys
== 201 answers after every run (exit 1 if not, or on any failed request).

Latency: the whole daemon (``run_daemon``, mock provider, the processor consuming the
``payments`` queue), ``--samples`` creates one after another with ``Prefer: wait=10``;
the time from sending the create to the 201 that carries the client secret. The client
runs in the daemon's process (one CPU less for the daemon than in production).

Run: ``python bench/payments_create.py`` (needs the ``bench`` extra: fastapi, uvicorn).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import _common
import httpx
import trio
import trio_asyncio

from daemon.actors import http_ingress
from daemon.app import Running, run_daemon
from daemon.platform.config import (
    Config,
    DaemonConfig,
    DatabaseConfig,
    HttpConfig,
    PaymentsConfig,
    SecretsConfig,
)
from daemon.platform.db import Database
from daemon.platform.deps import Deps
from daemon.platform.events import EventBus
from daemon.platform.health import Health
from daemon.platform.metrics import Metrics
from daemon.platform.secrets import keygen

TOKEN = "bench-token"
PATH = "/api/v1/payments"
HERE = Path(__file__).resolve().parent


# --------------------------------------------------------------------------- loader


async def _load(url: str, seconds: float, warmup: float, conns: int) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + seconds
    latencies: list[float] = []
    last_done = measure_from
    ok = 0
    errors: dict[str, int] = {}
    run_id = uuid.uuid4().hex[:8]

    async def connection(n: int) -> None:
        nonlocal last_done, ok
        stream = await trio.open_tcp_stream(host, port)
        buf = bytearray()
        i = 0
        try:
            while time.perf_counter() < stop_at:
                i += 1
                body = json.dumps({
                    "amount": 1000 + i, "currency": "EUR", "customer": f"cust-{n}",
                    "description": "Fibra 300", "metadata": {"order": f"{n}-{i}"},
                }).encode()  # fmt: skip
                request = (
                    f"POST {PATH} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                    f"Authorization: Bearer {TOKEN}\r\nIdempotency-Key: {run_id}-{n}-{i}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode() + body
                t0 = time.perf_counter()
                await stream.send_all(request)
                status, _ = await _common.read_response(stream, buf)
                t1 = time.perf_counter()
                if status == 201:
                    ok += 1
                else:
                    errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1
                if t0 >= measure_from:
                    if status == 201:
                        latencies.append(t1 - t0)
                    last_done = max(last_done, t1)
        finally:
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        for n in range(conns):
            nursery.start_soon(connection, n)
    return {"latencies": latencies, "seconds": last_done - measure_from, "ok": ok,
            "errors": errors}  # fmt: skip


def loader_main(a: argparse.Namespace) -> None:
    result = trio.run(_load, a.loader, a.seconds, a.warmup, a.conns)
    print(json.dumps(result))


# --------------------------------------------------------------------------- server side


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def config(url: str, tmp: Path, port: int = 0) -> Config:
    key = tmp / "bench-secret.key"
    if not key.exists():
        keygen(key)
    return Config().replace(
        daemon=DaemonConfig(shutdown_grace_seconds=3),
        database=DatabaseConfig(url=url, pool_min=2, pool_max=10),
        http=HttpConfig(port=port, admin_token=TOKEN),
        secrets=SecretsConfig(key_file=str(key)),
        payments=PaymentsConfig(provider="mock"),
    )


TABLES = "payment_events, refunds, payments, events, idempotency_keys, pgmq.q_payments"


async def run_loader(url: str, a: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--loader", url, "--seconds", str(a.seconds),
           "--warmup", str(a.warmup), "--conns", str(a.conns)]  # fmt: skip
    done = await trio.run_process(cmd, capture_stdout=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


async def throughput(url: str, a: argparse.Namespace, tmp: Path) -> dict[str, list[dict[str, Any]]]:
    peer_port = free_port()
    peer = await trio.lowlevel.open_process(
        [sys.executable, str(HERE / "payments_peer.py"), "--port", str(peer_port), "--dsn", url,
         "--pool", "10"],
    )  # fmt: skip
    results: dict[str, list[dict[str, Any]]] = {"paymentd": [], "fastapi peer": []}
    try:
        async with trio_asyncio.open_loop(), Database.open(url, min_size=2, max_size=10) as db:
            cfg = config(url, tmp)
            deps = Deps(cfg, db, Metrics(), EventBus(), Health())
            async with trio.open_nursery() as nursery:
                shutdown = trio.Event()
                base = await nursery.start(partial(http_ingress.run, deps, shutdown=shutdown))
                peer_url = f"http://127.0.0.1:{peer_port}"
                async with httpx.AsyncClient() as probe:
                    with trio.fail_after(30):
                        while True:
                            try:
                                await probe.get(peer_url + "/docs")
                                break
                            except httpx.TransportError:
                                await trio.sleep(0.1)
                targets = [("paymentd", base), ("fastapi peer", peer_url)]
                for r in range(a.rounds):
                    for name, target in targets if r % 2 == 0 else targets[::-1]:
                        await db.execute(f"TRUNCATE {TABLES} CASCADE")
                        await db.execute("CHECKPOINT")
                        out = await run_loader(target, a)
                        rows = await db.fetchval("SELECT count(*) FROM payments")
                        keys = await db.fetchval(
                            "SELECT count(*) FROM idempotency_keys WHERE status = 'finished'"
                        )
                        queued = await db.fetchval("SELECT count(*) FROM pgmq.q_payments")
                        out["consistent"] = rows == keys == queued == out["ok"]
                        results[name].append(out)
                # The latency part starts from empty tables: no backlog for the processor.
                await db.execute(f"TRUNCATE {TABLES} CASCADE")
                shutdown.set()
    finally:
        peer.terminate()
        with trio.move_on_after(10):
            await peer.wait()
    return results


async def latency(url: str, a: argparse.Namespace, tmp: Path) -> list[float]:
    cfg = config(url, tmp)
    samples: list[float] = []
    async with trio.open_nursery() as nursery:
        running: Running = await nursery.start(
            partial(run_daemon, cfg, env={}, handle_signals=False)
        )
        headers = {"Authorization": f"Bearer {TOKEN}", "Prefer": "wait=10"}
        async with httpx.AsyncClient(base_url=running.base_url, timeout=30) as http:
            for i in range(a.samples + 5):
                t0 = time.perf_counter()
                hdrs = {**headers, "Idempotency-Key": uuid.uuid4().hex}
                r = await http.post(PATH, json={"amount": 500 + i, "currency": "EUR"}, headers=hdrs)
                t1 = time.perf_counter()
                if r.status_code != 201 or not r.json().get("client_secret"):
                    raise SystemExit(f"no client secret: {r.status_code} {r.text[:200]}")
                if i >= 5:  # warm-up
                    samples.append(t1 - t0)
        running.shutdown.set()
    return samples


def summarize(runs: list[dict[str, Any]]) -> tuple[float, list[float]]:
    lat = [x for r in runs for x in r["latencies"]]
    seconds = sum(r["seconds"] for r in runs)
    return (len(lat) / seconds if seconds else math.nan), lat


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--conns", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--samples", type=int, default=50)
    p.add_argument("--loader", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.loader:
        loader_main(a)
        return
    _common.quiet()
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    with _common.throwaway_database() as url:
        results = trio.run(throughput, url, a, tmp)
        lat = trio.run(latency, url, a, tmp)
    print(f"POST /api/v1/payments with Idempotency-Key: {a.conns} connections,"
          f" {a.rounds} x {a.seconds:g} s per side (after {a.warmup:g} s warm-up)\n")  # fmt: skip
    rows = []
    rates = {}
    ok = True
    for name, runs in results.items():
        rps, lat_run = summarize(runs)
        rates[name] = rps
        errors = sum(sum(r["errors"].values()) for r in runs)
        consistent = all(r["consistent"] for r in runs)
        ok = ok and consistent and not errors
        rows.append([name, f"{rps:.0f}", _common.ms(_common.percentile(lat_run, 50)),
                     _common.ms(_common.percentile(lat_run, 99)), errors,
                     "yes" if consistent else "NO"])  # fmt: skip
    print(
        _common.table(
            ["server", "creates/s", "p50 ms", "p99 ms", "errors", "rows=keys=queued=201s"], rows
        )
    )
    print(f"\npaymentd / peer: {_common.ratio(rates['paymentd'], rates['fastapi peer'])}\n")
    print(f"create -> client secret (Prefer: wait=10, mock provider, {len(lat)} sequential):"
          f" p50 {_common.ms(_common.percentile(lat, 50))} ms,"
          f" p95 {_common.ms(_common.percentile(lat, 95))} ms,"
          f" max {_common.ms(max(lat))} ms")  # fmt: skip
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
