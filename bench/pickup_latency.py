"""Enqueue -> pickup latency of the PGMQ consumer, LISTEN/NOTIFY vs polling.

The daemon's own pieces on a throwaway PostgreSQL database: ``daemon.platform.consumer.consume``
with real ``Wakeups``, woken either by ``daemon.actors.listener.run`` (LISTEN on the
queue's insert notifications, safety tick at its 300 s default) or, as the baseline, by a
plain loop that wakes the consumer every ``--poll`` seconds with no listener (what the old
system did, at 2 s). Messages are sent with ``pgmq.send`` on a separate connection.

Latency = time just before ``pgmq.send`` is called -> the consumer's handler starts (same
process, ``time.perf_counter``). The handler only archives the message.

Modes: listen at the daemon's notify throttle (100 ms) and at 0 ms; the daemon's consumer
without a listener, woken every ``--poll`` s (it still re-reads by itself after a handler
finishes and ``throttle`` after each wake-up); and the baseline proper, a plain loop that
every ``--poll`` s reads until the queue is empty and nothing else (the old system's shape).

Phases per mode: ``--n`` messages one at a time with random gaps (uniform 0..``--gap-ms``),
then a burst of ``--burst`` messages in one ``pgmq.send_batch``, timed until every handler
finished (archive done).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import _common
import trio
import trio_asyncio

from daemon.actors import listener
from daemon.platform import db as dbmod
from daemon.platform import queues
from daemon.platform.config import Config, DatabaseConfig
from daemon.platform.consumer import ConsumerSettings, Lease, Wakeups, consume
from daemon.platform.db import Database
from daemon.platform.deps import Deps
from daemon.platform.events import EventBus
from daemon.platform.health import Health
from daemon.platform.metrics import Metrics
from daemon.platform.queues import Message
from daemon.uisp.webhooks import QUEUE as UISP_QUEUE
from daemon.wiring import QUEUE_NAMES

Q = UISP_QUEUE


@dataclass
class Recorder:
    sent_at: dict[int, float] = field(default_factory=dict)
    started_at: dict[int, float] = field(default_factory=dict)
    handled: int = 0
    all_handled: trio.Event = field(default_factory=trio.Event)
    expect: int = 0

    def reset(self, expect: int) -> None:
        self.sent_at.clear()
        self.started_at.clear()
        self.handled = 0
        self.expect = expect
        self.all_handled = trio.Event()


def make_handler(db: Database, rec: Recorder) -> Callable[..., Awaitable[None]]:
    async def handler(msg: Message, lease: Lease | None = None) -> None:
        rec.started_at.setdefault(msg.message["seq"], time.perf_counter())
        await queues.archive(db, Q, msg.msg_id)
        rec.handled += 1
        if rec.handled >= rec.expect:
            rec.all_handled.set()

    return handler


async def poller(wakeups: Wakeups, every: float) -> None:
    while True:
        await trio.sleep(every)
        wakeups.wake(Q)


async def plain_poller(db: Database, handler: Callable[..., Awaitable[None]], every: float) -> None:
    """The old system's shape: every ``every`` s read until empty; no other wake-ups."""
    limiter = trio.CapacityLimiter(8)

    async def run(msg: Message) -> None:
        try:
            await handler(msg)
        finally:
            limiter.release_on_behalf_of(msg.msg_id)

    async with trio.open_nursery() as nursery:
        while True:
            await trio.sleep(every)
            while True:
                batch = await queues.read(db, Q, 60, 10)
                for msg in batch:
                    await limiter.acquire_on_behalf_of(msg.msg_id)
                    nursery.start_soon(run, msg)
                if len(batch) < 10:
                    break


@dataclass
class Result:
    mode: str
    latencies: list[float]
    send_rtt: list[float]
    burst_seconds: float
    burst_n: int


async def run_mode(
    mode: str, args: argparse.Namespace, url: str, sender: Any, throttle_ms: int
) -> Result:
    cfg = Config().replace(database=DatabaseConfig(url=url, notify_throttle_ms=throttle_ms))
    await dbmod.bridge(sender.execute, "SELECT pgmq.enable_notify_insert($1, $2)", Q, throttle_ms)
    rec = Recorder()
    rng = random.Random(42)
    async with Database.open(url, min_size=2, max_size=10) as db:
        metrics = Metrics()
        deps = Deps(cfg, db, metrics, EventBus(), Health(5, 60))
        wakeups = Wakeups(QUEUE_NAMES)
        stop = trio.Event()
        settings = ConsumerSettings(Q, lease_seconds=60, throttle_seconds=throttle_ms / 1000)
        async with trio.open_nursery() as nursery:
            if mode.startswith("listen"):
                listen = listener.ListenerDeps(
                    url, QUEUE_NAMES, wakeups, metrics, deps.events, 300.0, throttle_ms
                )
                await nursery.start(partial(listener.run, listen))
            elif mode.startswith("consumer"):
                nursery.start_soon(poller, wakeups, args.poll)
            if mode.startswith("plain"):
                nursery.start_soon(plain_poller, db, make_handler(db, rec), args.poll)
            else:
                await nursery.start(
                    partial(
                        consume,
                        db,
                        settings,
                        wakeups.receiver(Q),
                        make_handler(db, rec),
                        metrics,
                        stop=stop,
                    )
                )
            await trio.sleep(0.5)
            # One at a time, with small random gaps.
            rec.reset(args.n)
            rtt = []
            for seq in range(args.n):
                rec.sent_at[seq] = time.perf_counter()
                await dbmod.bridge(sender.fetchval, "SELECT pgmq.send($1, $2::jsonb)", Q,
                                   {"seq": seq})  # fmt: skip
                rtt.append(time.perf_counter() - rec.sent_at[seq])
                await trio.sleep(rng.uniform(0, args.gap_ms / 1000))
            with trio.fail_after(args.poll * 3 + 30):
                await rec.all_handled.wait()
            latencies = [rec.started_at[s] - rec.sent_at[s] for s in range(args.n)]
            # Burst: everything in one statement (one transaction, one notification).
            await trio.sleep(0.5)
            rec.reset(args.burst)
            t0 = time.perf_counter()
            await dbmod.bridge(
                sender.fetchval,
                "SELECT count(*) FROM pgmq.send_batch($1, $2::jsonb[])",
                Q,
                [{"seq": s} for s in range(args.burst)],
            )
            with trio.fail_after(args.poll * 3 + 60):
                await rec.all_handled.wait()
            burst_seconds = time.perf_counter() - t0
            stop.set()
            wakeups.wake_all()
            nursery.cancel_scope.cancel()
    print(f"  {mode}: done", file=sys.stderr, flush=True)
    return Result(mode, latencies, rtt, burst_seconds, args.burst)


async def bench(args: argparse.Namespace, url: str) -> int:
    results = []
    async with trio_asyncio.open_loop():
        sender = await dbmod.connect(url)
        try:
            modes = [
                (f"listen (throttle {args.throttle_ms} ms)", args.throttle_ms),
                ("listen (throttle 0 ms)", 0),
                (f"consumer, no listener, woken every {args.poll:g} s", args.throttle_ms),
                (f"plain poll loop every {args.poll:g} s", args.throttle_ms),
            ]
            for mode, throttle in modes:
                results.append(await run_mode(mode, args, url, sender, throttle))
        finally:
            await dbmod.close_conn(sender)

    print()
    print(
        f"pickup_latency: {args.n} single sends (gap uniform 0-{args.gap_ms:g} ms), "
        f"then a burst of {args.burst} in one pgmq.send_batch; handler = archive"
    )
    print("latency = before pgmq.send on a separate connection -> handler starts (ms)")
    print()
    rows = []
    for r in results:
        lat = r.latencies
        rows.append(
            [
                r.mode,
                len(lat),
                _common.ms(_common.percentile(lat, 50)),
                _common.ms(_common.percentile(lat, 99)),
                _common.ms(max(lat)),
                _common.ms(_common.percentile(r.send_rtt, 50)),
                f"{r.burst_seconds:.3f}",
                f"{r.burst_n / r.burst_seconds:.0f}",
            ]
        )
    print(
        _common.table(
            ["mode", "n", "p50", "p99", "max", "send rtt p50", "burst all s", "burst msg/s"], rows
        )
    )
    print()
    listen, listen0, woken, poll = results

    def p(r: Result, q: float) -> float:
        return _common.percentile(r.latencies, q)

    print(
        f"ratios poll/listen (throttle {args.throttle_ms} ms): p50 "
        f"{_common.ratio(p(poll, 50), p(listen, 50))}, p99 "
        f"{_common.ratio(p(poll, 99), p(listen, 99))}, burst time "
        f"{_common.ratio(poll.burst_seconds, listen.burst_seconds)}; "
        f"poll/listen (throttle 0): p50 {_common.ratio(p(poll, 50), p(listen0, 50))}; "
        f"consumer-woken-by-timer/listen: p50 {_common.ratio(p(woken, 50), p(listen, 50))}"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="single sends per mode (500)")
    parser.add_argument("--gap-ms", type=float, default=50, help="max random gap (50 ms)")
    parser.add_argument("--burst", type=int, default=1000, help="burst size (1000)")
    parser.add_argument("--poll", type=float, default=1.0, help="baseline poll interval (1 s)")
    parser.add_argument(
        "--throttle-ms",
        type=int,
        default=DatabaseConfig().notify_throttle_ms,
        help="notify throttle for the listen mode (the daemon's default)",
    )
    args = parser.parse_args()
    _common.quiet()
    with _common.throwaway_database() as url:
        return trio.run(bench, args, url)


if __name__ == "__main__":
    sys.exit(main())
