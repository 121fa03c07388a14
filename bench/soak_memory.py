"""Memory held per request: RSS and live objects by type over tens of thousands of requests.

The daemon's HTTP side on a throwaway PostgreSQL database: the HTTP ingress actor
(``daemon.actors.http_ingress.run``: hypercorn + Quart) on a pool sized like the daemon's.
Load comes from a separate process (this script with ``--loader``): ``--conns``
connections, each sending a mix of good and bad requests in turn —

- a new UISP webhook (200, one INSERT + ``pgmq.send``), and the same one again (duplicate);
- a webhook with a wrong token (404), malformed JSON (400), a wrong Content-Type;
- ``/healthz``, ``/readyz``, an admin call without a token (401) and with one (200);

and every ``--reopen``-th request on a fresh connection (so socket streams come and go).

After ``--warmup`` requests (caches, pools and lazily created objects settle) the server
process takes a baseline — ``gc.collect()``, RSS from ``/proc/self/statm``, and counts of
live objects by type: ``asyncio.TimerHandle`` (asyncio timers, e.g. asyncpg's idle timer),
``contextvars.Context`` (each timer holds one), trio socket streams, hypercorn's
``EventWrapper`` — then samples them again after each of ``--phases`` phases of
``--requests`` requests. Printed: each sample and its ratio to the baseline of the same run.

Exit status 1 if growth is not flat: any tracked type above max(1.5 x baseline,
baseline + 200) at the end, RSS above 1.25 x baseline + 8 MB, or any request failing.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import time
import uuid
from collections import Counter
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import _common
import trio
import trio_asyncio

from daemon.actors import http_ingress
from daemon.platform.config import Config, DatabaseConfig, HttpConfig, UispConfig
from daemon.platform.db import Database
from daemon.platform.deps import Deps
from daemon.platform.events import EventBus
from daemon.platform.health import Health
from daemon.platform.metrics import Metrics

TOKEN = "soak-token"
ADMIN = "soak-admin"

# --------------------------------------------------------------------------- loader


def _webhook(entity_id: int, event_uuid: str) -> bytes:
    return json.dumps(
        {
            "uuid": event_uuid,
            "changeType": "unsuspend",
            "entity": "service",
            "entityId": entity_id,
            "eventName": "service.suspend_cancel",
            "extraData": {"entity": {"id": entity_id, "status": 1}, "entityBeforeEdit": None},
        }
    ).encode()


def _requests(n: int) -> list[tuple[str, str, dict[str, str], bytes, set[int]]]:
    """One round of the mix: (method, path, headers, body, acceptable statuses)."""
    hook = f"/webhooks/uisp/{TOKEN}"
    body = _webhook(n, str(uuid.uuid4()))
    js = {"Content-Type": "application/json"}
    return [
        ("POST", hook, js, body, {200}),
        ("POST", hook, js, body, {200}),  # duplicate
        ("POST", "/webhooks/uisp/wrong-token", js, body, {404}),
        ("POST", hook, js, b'{"uuid": ', {400}),
        ("POST", hook, {"Content-Type": "text/plain"}, body, {200, 400, 415}),
        ("GET", "/healthz", {}, b"", {200}),
        ("GET", "/readyz", {}, b"", {200, 503}),
        ("GET", "/api/v1/tasks", {}, b"", {401}),
        ("GET", "/api/v1/tasks?limit=5", {"Authorization": f"Bearer {ADMIN}"}, b"", {200}),
    ]


async def _load(url: str, total: int, conns: int, reopen: int, offset: int) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    done = 0
    statuses: Counter[str] = Counter()
    unexpected: Counter[str] = Counter()

    async def connection(n: int) -> None:
        nonlocal done
        stream: trio.SocketStream | None = None
        buf = bytearray()
        sent = 0
        round_no = 0
        while done < total:
            round_no += 1
            for method, path, headers, body, ok in _requests(offset + n * 10_000_000 + round_no):
                if done >= total:
                    break
                done += 1
                sent += 1
                if stream is None:
                    stream = await trio.open_tcp_stream(host, port)
                    buf.clear()
                lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
                lines += [f"{k}: {v}" for k, v in headers.items()]
                lines.append(f"Content-Length: {len(body)}")
                await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
                status, close = await _common.read_response(stream, buf)
                statuses[str(status)] += 1
                if status not in ok:
                    unexpected[f"{method} {path.split('/')[1]} -> {status}"] += 1
                if close or sent % reopen == 0:
                    await stream.aclose()
                    stream = None
        if stream is not None:
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        for n in range(conns):
            nursery.start_soon(connection, n)
    return {"statuses": dict(statuses), "unexpected": dict(unexpected)}


# --------------------------------------------------------------------------- server side

TRACKED = (
    "TimerHandle",
    "Handle",
    "Context",
    "SocketStream",
    "EventWrapper",
    "Future",
    "Task",
)


def sample() -> dict[str, float]:
    gc.collect()
    counts: Counter[str] = Counter(type(o).__name__ for o in gc.get_objects())
    with open("/proc/self/statm") as f:
        rss_pages = int(f.read().split()[1])
    out: dict[str, float] = {"rss_mb": rss_pages * os.sysconf("SC_PAGE_SIZE") / 2**20}
    out["objects"] = sum(counts.values())
    for name in TRACKED:
        out[name] = counts.get(name, 0)
    if os.environ.get("SOAK_DEBUG"):
        import asyncio

        timers: Counter[str] = Counter()
        for o in gc.get_objects():
            if isinstance(o, asyncio.TimerHandle):
                cb = o._callback
                timers[f"{getattr(cb, '__qualname__', cb)} cancelled={o.cancelled()}"] += 1
        print(timers.most_common(8), file=sys.stderr)
    return out


async def run_loader(args: argparse.Namespace, url: str, total: int, offset: int) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--loader",
        url,
        "--requests",
        str(total),
        "--conns",
        str(args.conns),
        "--reopen",
        str(args.reopen),
        "--offset",
        str(offset),
    ]
    proc = await trio.run_process(cmd, capture_stdout=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"loader exited with {proc.returncode}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def verdict(base: dict[str, float], last: dict[str, float]) -> list[str]:
    problems = []
    for name in TRACKED:
        limit = max(1.5 * base[name], base[name] + 200)
        if last[name] > limit:
            problems.append(f"{name}: {base[name]:.0f} -> {last[name]:.0f} (limit {limit:.0f})")
    if last["rss_mb"] > 1.25 * base["rss_mb"] + 8:
        problems.append(f"RSS: {base['rss_mb']:.1f} MB -> {last['rss_mb']:.1f} MB")
    return problems


async def bench(args: argparse.Namespace, url: str) -> int:
    cfg = Config().replace(
        database=DatabaseConfig(url=url),
        http=HttpConfig(host="127.0.0.1", port=0, admin_token=ADMIN),
        uisp=UispConfig(webhook_token=TOKEN),
    )
    failures: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    samples: list[tuple[str, dict[str, float]]] = []
    started = time.perf_counter()
    async with (
        trio_asyncio.open_loop(),
        Database.open(
            url,
            min_size=cfg.database.pool_min,
            max_size=cfg.database.pool_max,
            command_timeout=cfg.database.command_timeout_seconds,
        ) as db,
    ):
        deps = Deps(cfg, db, Metrics(), EventBus(), Health(5, 60))
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            base_url = await nursery.start(partial(http_ingress.run, deps, shutdown=shutdown))
            for phase in range(args.phases + 1):
                total = args.warmup if phase == 0 else args.requests
                out = await run_loader(args, base_url, total, phase)
                failures.update(out["unexpected"])
                statuses.update(out["statuses"])
                await trio.sleep(0.5)  # let closed connections finish closing
                label = "baseline" if phase == 0 else f"+{phase * args.requests:,}"
                samples.append((label, sample()))
                print(f"  {label}: {samples[-1][1]}", file=sys.stderr, flush=True)
            shutdown.set()
    elapsed = time.perf_counter() - started

    base = samples[0][1]
    print()
    print(
        f"soak_memory: {args.phases} x {args.requests:,} mixed requests (after {args.warmup:,}"
        f" warm-up) from a separate process, {args.conns} connections, a new connection"
        f" every {args.reopen} requests; {elapsed:.0f} s"
    )
    print(f"answers: {dict(sorted(statuses.items()))}")
    print()
    cols = ["rss_mb", "objects", *TRACKED]
    rows = []
    for label, s in samples:
        rows.append([label] + [f"{s[c]:.1f}" if c == "rss_mb" else f"{s[c]:.0f}" for c in cols])
    rows.append(["end / baseline"] + [_common.ratio(samples[-1][1][c], base[c]) for c in cols])
    print(_common.table(["sample", *cols], rows))
    problems = verdict(base, samples[-1][1])
    if failures:
        problems.append(f"unexpected answers: {dict(failures)}")
    print()
    print("check: " + ("flat" if not problems else "NOT FLAT: " + "; ".join(problems)))
    return 1 if problems else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=10_000, help="requests per phase")
    p.add_argument("--phases", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3_000)
    p.add_argument("--conns", type=int, default=16)
    p.add_argument("--reopen", type=int, default=20, help="a new connection every N requests")
    p.add_argument("--loader", metavar="URL", help=argparse.SUPPRESS)
    p.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.loader:
        out = trio.run(_load, args.loader, args.requests, args.conns, args.reopen, args.offset)
        print(json.dumps(out))
        return 0
    _common.quiet()
    # The bad requests are meant: their one WARNING line each would drown the table.
    logging.getLogger("daemon.uisp.intake").setLevel(logging.ERROR)
    with _common.throwaway_database() as url:
        return trio.run(bench, args, url)


if __name__ == "__main__":
    sys.exit(main())
