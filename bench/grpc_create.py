"""gRPC unary Create rate against the same creates over HTTP (the baseline, same run),
and create → client secret latency through the SQL entry point (``CALL
paymentd.create_payment_sync``) against HTTP ``Prefer: wait`` and gRPC ``wait_seconds``.

Rate: paymentd's two ingress actors in this process (``grpc_ingress.run`` and
``http_ingress.run`` on one pool of 10; no processor, so only the create path touches
the database: the idempotency claim, then the payment, its history row, its outbox
event, the queue message and the stored answer). Load from a separate process: for
gRPC, grpcio's asyncio client, ``--inflight`` concurrent calls on one channel (HTTP/2);
for HTTP, the same number of keep-alive HTTP/1.1 connections (bench/payments_create.py's
loader). Every create carries a fresh request id / Idempotency-Key. ``--warmup`` s
discarded, ``--seconds`` measured, sides alternating for ``--rounds`` on emptied tables.
Correctness: payments == finished keys == queue messages == OK answers (exit 1 if not).

Latency: the whole daemon (``run_daemon``, mock provider, the processor), ``--samples``
sequential creates per face, from this process: the time until the answer that carries
the client secret.

Run: ``python bench/grpc_create.py`` (``--seconds 5 --rounds 1`` for a short run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import _common
import httpx
import msgspec
import payments_create
import trio
import trio_asyncio

from daemon.actors import grpc_ingress, http_ingress
from daemon.app import Running, run_daemon
from daemon.platform.config import Config, GrpcConfig
from daemon.platform.db import Database
from daemon.platform.deps import Deps
from daemon.platform.events import EventBus
from daemon.platform.health import Health
from daemon.platform.metrics import Metrics

TOKEN = payments_create.TOKEN
MD = (("authorization", f"Bearer {TOKEN}"),)


# --------------------------------------------------------------------------- gRPC loader


async def _grpc_load(address: str, seconds: float, warmup: float, inflight: int) -> dict[str, Any]:
    import grpc

    from daemon.payments_grpc.gen import payments_pb2 as pb
    from daemon.payments_grpc.gen import payments_pb2_grpc as pb_grpc

    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + seconds
    latencies: list[float] = []
    last_done = measure_from
    ok = 0
    errors: dict[str, int] = {}
    run_id = uuid.uuid4().hex[:8]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.PaymentsStub(channel)

        async def caller(n: int) -> None:
            nonlocal last_done, ok
            i = 0
            while time.perf_counter() < stop_at:
                i += 1
                req = pb.CreatePaymentRequest(
                    request_id=f"{run_id}-{n}-{i}", amount=1000 + i, currency="EUR",
                    customer=f"cust-{n}", description="Fibra 300",
                    metadata={"order": f"{n}-{i}"},
                )  # fmt: skip
                t0 = time.perf_counter()
                try:
                    await stub.Create(req, metadata=MD, timeout=30)
                    good = True
                except grpc.aio.AioRpcError as exc:
                    good = False
                    errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                t1 = time.perf_counter()
                ok += good
                if t0 >= measure_from:
                    if good:
                        latencies.append(t1 - t0)
                    last_done = max(last_done, t1)

        await asyncio.gather(*(caller(n) for n in range(inflight)))
    return {"latencies": latencies, "seconds": last_done - measure_from, "ok": ok,
            "errors": errors}  # fmt: skip


async def run_loader(kind: str, target: str, a: argparse.Namespace, inflight: int) -> Any:
    cmd = [sys.executable, __file__, f"--loader-{kind}", target, "--seconds", str(a.seconds),
           "--warmup", str(a.warmup), "--inflight", str(inflight)]  # fmt: skip
    done = await trio.run_process(cmd, capture_stdout=True, check=True)
    return json.loads(done.stdout)


# --------------------------------------------------------------------------- server side


def config(url: str, tmp: Path) -> Config:
    cfg = payments_create.config(url, tmp)
    return cfg.replace(grpc=GrpcConfig(enabled=True, port=0))


async def rates(url: str, a: argparse.Namespace, tmp: Path) -> dict[tuple[str, int], list[Any]]:
    results: dict[tuple[str, int], list[Any]] = {}
    async with trio_asyncio.open_loop(), Database.open(url, min_size=2, max_size=10) as db:
        deps = Deps(config(url, tmp), db, Metrics(), EventBus(), Health())
        async with trio.open_nursery() as nursery:
            shutdown = trio.Event()
            base = await nursery.start(partial(http_ingress.run, deps, shutdown=shutdown))
            address = await nursery.start(partial(grpc_ingress.run, deps, shutdown=shutdown))
            for inflight in a.inflight:
                sides = [("grpc", address), ("http", base)]
                for r in range(a.rounds):
                    for kind, target in sides if r % 2 == 0 else sides[::-1]:
                        await db.execute(f"TRUNCATE {payments_create.TABLES} CASCADE")
                        await db.execute("CHECKPOINT")
                        out = await run_loader(kind, target, a, inflight)
                        rows = await db.fetchval("SELECT count(*) FROM payments")
                        keys = await db.fetchval(
                            "SELECT count(*) FROM idempotency_keys WHERE status = 'finished'"
                        )
                        queued = await db.fetchval("SELECT count(*) FROM pgmq.q_payments")
                        out["consistent"] = rows == keys == queued == out["ok"]
                        results.setdefault((kind, inflight), []).append(out)
            shutdown.set()
    return results


async def latencies(url: str, a: argparse.Namespace, tmp: Path) -> dict[str, list[float]]:
    import grpc

    from daemon.payments_grpc.gen import payments_pb2 as pb
    from daemon.payments_grpc.gen import payments_pb2_grpc as pb_grpc

    cfg = config(url, tmp)
    with trio.fail_after(30):  # the rate runs' payments would be a backlog for the processor
        await trio.run_process(["psql", url, "-qc", f"TRUNCATE {payments_create.TABLES} CASCADE"])
    out: dict[str, list[float]] = {"SQL create_payment_sync": [], "HTTP Prefer: wait": [],
                                   "gRPC wait_seconds": []}  # fmt: skip
    async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
        running: Running = await nursery.start(
            partial(run_daemon, cfg, env={}, handle_signals=False)
        )
        assert running.grpc_address is not None
        cfg = cfg.replace(
            payments=msgspec.structs.replace(cfg.payments, public_base_url=running.base_url)
        )
        channel = grpc.insecure_channel(running.grpc_address)
        stub = pb_grpc.PaymentsStub(channel)
        headers = {"Authorization": f"Bearer {TOKEN}", "Prefer": "wait=10"}
        async with (
            Database.open(url, min_size=1, max_size=2) as db,
            httpx.AsyncClient(base_url=running.base_url, timeout=30) as http,
        ):

            async def sql(i: int) -> str | None:
                row = await db.fetchrow(
                    "CALL paymentd.create_payment_sync(amount => $1, currency => 'EUR',"
                    " timeout_seconds => 3)",
                    500 + i,
                )
                return None if row is None else row["client_secret"]

            async def over_http(i: int) -> str | None:
                hdrs = {**headers, "Idempotency-Key": uuid.uuid4().hex}
                r = await http.post(
                    payments_create.PATH, json={"amount": 500 + i, "currency": "EUR"}, headers=hdrs
                )
                secret: str | None = r.json().get("client_secret")
                return secret

            async def over_grpc(i: int) -> str | None:
                req = pb.CreatePaymentRequest(
                    amount=500 + i, currency="EUR", request_id=uuid.uuid4().hex, wait_seconds=10
                )
                reply = await trio.to_thread.run_sync(
                    partial(stub.Create, req, metadata=MD, timeout=30)
                )
                return str(reply.client_secret) or None

            faces = list(zip(out, (sql, over_http, over_grpc), strict=True))
            for i in range(a.samples + 5):
                for name, face in faces if i % 2 == 0 else faces[::-1]:
                    t0 = time.perf_counter()
                    secret = await face(i)
                    t1 = time.perf_counter()
                    if not secret:
                        raise SystemExit(f"{name}: no client secret")
                    if i >= 5:  # warm-up
                        out[name].append(t1 - t0)
        channel.close()
        running.shutdown.set()
    return out


def summarize(runs: list[dict[str, Any]]) -> tuple[float, list[float], int, bool]:
    lat = [x for r in runs for x in r["latencies"]]
    seconds = sum(r["seconds"] for r in runs)
    errors = sum(sum(r["errors"].values()) for r in runs)
    return (
        (len(lat) / seconds if seconds else math.nan),
        lat,
        errors,
        all(r["consistent"] for r in runs),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--warmup", type=float, default=1.5)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--inflight", type=int, nargs="+", default=[1, 16])
    p.add_argument("--samples", type=int, default=40)
    p.add_argument("--loader-grpc", help=argparse.SUPPRESS)
    p.add_argument("--loader-http", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.loader_grpc:
        print(
            json.dumps(asyncio.run(_grpc_load(a.loader_grpc, a.seconds, a.warmup, a.inflight[0])))
        )
        return
    if a.loader_http:
        result = trio.run(payments_create._load, a.loader_http, a.seconds, a.warmup, a.inflight[0])
        print(json.dumps(result))
        return
    _common.quiet()
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    with _common.throwaway_database() as url:
        results = trio.run(rates, url, a, tmp)
        lat = trio.run(latencies, url, a, tmp)
    print(f"Create with a request id: {a.rounds} x {a.seconds:g} s per side and concurrency"
          f" (after {a.warmup:g} s warm-up)\n")  # fmt: skip
    rows = []
    ok = True
    by: dict[tuple[str, int], float] = {}
    for (kind, inflight), runs in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rps, lat_run, errors, consistent = summarize(runs)
        by[(kind, inflight)] = rps
        ok = ok and consistent and not errors
        rows.append([kind, inflight, f"{rps:.0f}", _common.ms(_common.percentile(lat_run, 50)),
                     _common.ms(_common.percentile(lat_run, 99)), errors,
                     "yes" if consistent else "NO"])  # fmt: skip
    print(
        _common.table(
            ["face", "in flight", "creates/s", "p50 ms", "p99 ms", "errors", "rows=keys=queued=ok"],
            rows,
        )
    )
    for inflight in a.inflight:
        print(
            f"gRPC / HTTP at {inflight} in flight:"
            f" {_common.ratio(by[('grpc', inflight)], by[('http', inflight)])}"
        )
    print(f"\ncreate -> client secret (mock provider, {a.samples} sequential per face):")
    lat_rows = []
    for name, values in lat.items():
        p50, p95 = _common.percentile(values, 50), _common.percentile(values, 95)
        lat_rows.append([name, _common.ms(p50), _common.ms(p95), _common.ms(max(values))])
    print(_common.table(["face", "p50 ms", "p95 ms", "max ms"], lat_rows))
    http50 = _common.percentile(lat["HTTP Prefer: wait"], 50)
    sql50 = _common.percentile(lat["SQL create_payment_sync"], 50)
    print(f"SQL / HTTP p50: {_common.ratio(sql50, http50)}")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
