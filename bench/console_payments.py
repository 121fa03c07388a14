"""The console's payment pages with 10,000 payments in the database against a database
holding one page of them (60, the baseline; same run): does a page's time grow with the
table?

Two throwaway databases, each behind its own HTTP ingress in this process (the real
``http_ingress`` actor and the console blueprint), signed in over httpx (keep-alive).
Both get the same kind of rows (2 % failed, customers ``c0``…``c99``, every 10th payment
with a refund and its events); the full one ``--payments`` of them, then ANALYZE. Per
sample, for each page: time to the response headers (TTFB) and to the last body byte.
Samples alternate between the two servers so machine noise hits both alike.

Pages: the list's first page, the list filtered by status (failed) and by customer, a
cursor page deep in the list (the full side's 100th page; the baseline's second), and
one payment's page (amounts, history, refunds). The list and the payment page render the
same rows on both sides, so their ratio is the table's size alone; a filter or deep
cursor renders 1-10 rows on the baseline and 50 on the full side, so theirs also holds
the extra rows' rendering (a cost per row, not per table row).

Run: ``nice -n 10 python bench/console_payments.py`` (~30 s; ``--samples 10`` shorter).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import _common
import httpx
import trio
import trio_asyncio

from daemon.actors import http_ingress
from daemon.console import accounts
from daemon.platform.config import Config, HttpConfig
from daemon.platform.db import Database
from daemon.platform.deps import Deps
from daemon.platform.events import EventBus
from daemon.platform.health import Health
from daemon.platform.metrics import Metrics
from tests.console_fixtures import OPERATOR, PASSWORD, sign_in

PAGES = ("list", "status=failed", "customer=c7", "deep cursor", "payment")


@dataclass
class Side:
    name: str
    client: httpx.AsyncClient
    paths: dict[str, str] = field(default_factory=dict)
    ttfb: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PAGES})
    body: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PAGES})


async def fill(db: Database, n: int) -> None:
    """Bulk rows in a few statements (the bench measures the pages, not the inserts)."""
    await db.execute(
        """
        INSERT INTO payments (id, status, amount, currency, amount_captured, amount_refunded,
                              method, kind, capture_method, description, customer,
                              created_by, provider, expires_at)
        SELECT 'pay_' || lpad(to_hex(g), 24, '0'),
               CASE WHEN g % 50 = 0 THEN 'failed' ELSE 'succeeded' END, 3000, 'EUR',
               CASE WHEN g % 50 = 0 THEN 0 ELSE 3000 END,
               CASE WHEN g % 10 = 1 THEN 500 ELSE 0 END, 'intent', 'one_time', 'automatic',
               'Invoice ' || g, 'c' || (g % 100), 'bench', 'mock', now() + interval '1 day'
        FROM generate_series(1, $1) g
        """,
        n,
    )
    await db.execute(
        """
        INSERT INTO refunds (id, payment_id, status, amount, currency, reason, created_by)
        SELECT 'rf_' || lpad(to_hex(g), 24, '0'), 'pay_' || lpad(to_hex(g), 24, '0'),
               'succeeded', 500, 'EUR', 'outage', 'bench'
        FROM generate_series(1, $1) g WHERE g % 10 = 1
        """,
        n,
    )
    await db.execute(
        """
        INSERT INTO payment_events (payment_id, kind, from_status, to_status, actor)
        SELECT 'pay_' || lpad(to_hex(g), 24, '0'), k.kind, k.f, k.t, 'bench'
        FROM generate_series(1, $1) g,
             (VALUES ('created', NULL, 'created'), ('status', 'created', 'pending'),
                     ('status', 'pending', 'succeeded')) AS k(kind, f, t)
        """,
        n,
    )
    await db.execute("ANALYZE")


@asynccontextmanager
async def side(
    name: str, url: str, n: int, nursery: trio.Nursery, stop: trio.Event
) -> AsyncIterator[Side]:
    async with Database.open(url, min_size=1, max_size=4) as db:
        await fill(db, n)
        config = Config().replace(http=HttpConfig(port=0, admin_token="bench-token"))
        deps = Deps(config, db, Metrics(), EventBus(), Health())
        await accounts.add_operator(db, OPERATOR, PASSWORD)
        base_url: str = await nursery.start(partial(http_ingress.run, deps, shutdown=stop))
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            await sign_in(client)
            s = Side(name, client)
            deep = await db.fetchval(
                "SELECT seq FROM payments ORDER BY seq DESC OFFSET $1 LIMIT 1", min(n - 10, 99 * 50)
            )
            s.paths = {
                "list": "/console/payments",
                "status=failed": "/console/payments?status=failed",
                "customer=c7": "/console/payments?customer=c7",
                "deep cursor": f"/console/payments?cursor={deep}",
                "payment": "/console/payments/pay_" + f"{1:x}".rjust(24, "0"),
            }
            yield s


async def sample(s: Side) -> None:
    for page, path in s.paths.items():
        start = time.perf_counter()
        async with s.client.stream("GET", path) as r:
            s.ttfb[page].append(time.perf_counter() - start)
            await r.aread()
            s.body[page].append(time.perf_counter() - start)
        assert r.status_code == 200, (path, r.status_code)


async def bench(args: argparse.Namespace) -> int:
    with ExitStack() as stack:
        small_url = stack.enter_context(_common.throwaway_database())
        full_url = stack.enter_context(_common.throwaway_database())
        async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
            stop = trio.Event()
            try:
                async with (
                    side("small", small_url, 60, nursery, stop) as small,
                    side("full", full_url, args.payments, nursery, stop) as full,
                ):
                    for i in range(args.warmup + args.samples):
                        for s in (small, full) if i % 2 == 0 else (full, small):
                            await sample(s)
                        if i == args.warmup - 1:
                            for s in (small, full):
                                for lists in (s.ttfb, s.body):
                                    for values in lists.values():
                                        values.clear()
                    report(small, full, args)
            finally:
                stop.set()
    return 0


def report(small: Side, full: Side, args: argparse.Namespace) -> None:
    rows = []
    for page in PAGES:
        for label, attr in (("TTFB", "ttfb"), ("full body", "body")):
            e, f = getattr(small, attr)[page], getattr(full, attr)[page]
            e50, f50 = statistics.median(e), statistics.median(f)
            rows.append(
                [
                    f"{page} {label}",
                    _common.ms(e50),
                    _common.ms(f50),
                    _common.ms(_common.percentile(f, 95)),
                    _common.ratio(f50, e50),
                ]
            )
    print(
        f"console payment pages — {args.samples} samples per side (after {args.warmup}"
        f" warm-up); small = 60 payments, full = {args.payments}"
    )
    print(
        _common.table(["page", "small p50 ms", "full p50 ms", "full p95", "full/small p50"], rows)
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--payments", type=int, default=10_000)
    p.add_argument("--samples", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args()
    _common.quiet()
    return trio.run(bench, args)


if __name__ == "__main__":
    sys.exit(main())
