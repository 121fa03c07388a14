"""The console overview's time to first byte and to fully rendered, with 10,000 tasks and
10,000 payments in the database against an empty database (the baseline, same run).

Two throwaway databases, each behind its own HTTP ingress in this process (the real
``http_ingress`` actor and the console blueprint; ``Health`` filled with the daemon's
actor names as the supervisor would). The "full" one gets ``--tasks`` reconnection tasks
(1 % failed with an error and OLT output, the rest succeeded or superseded), as many
stored UISP webhooks behind them (1 % failed) and ``--payments`` payments, then ANALYZE.
Samples alternate between the two servers so machine noise hits both alike.

Per sample, two measurements of ``GET /console/``, signed in:
- httpx (keep-alive): time to the response headers (TTFB) and to the last body byte;
- headless Chromium (selenium): the page's Navigation Timing entry — ``responseStart``
  (TTFB as the browser sees it) and ``loadEventEnd`` (HTML parsed, CSS and the deferred
  feed script loaded and run: the page is fully rendered; the live feed's stream stays
  open and does not hold the load event).

The two servers are reached as ``127.0.0.1`` and ``localhost`` so the browser keeps one
session cookie for each (cookies ignore ports). Run: ``nice -n 10 python
bench/console_overview.py`` (~1 min; ``--samples 10`` for a short run).
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
from typing import Any

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
from tests.browser import Browser, _start_driver, available
from tests.console_fixtures import OPERATOR, PASSWORD, browser_sign_in, sign_in

ACTORS = (
    "olt_pool",
    "listener",
    "consumer:uisp_events",
    "consumer:reconnect",
    "consumer:sms",
    "consumer:event_fanout",
    "consumer:payments",
    "consumer:stripe_events",
    "webhook_dispatcher",
    "scheduler",
    "http_ingress",
)

NAVIGATION = """
const n = performance.getEntriesByType('navigation')[0];
return [n.responseStart, n.loadEventEnd];
"""


@dataclass
class Side:
    name: str
    base_url: str
    client: httpx.AsyncClient
    ttfb: list[float] = field(default_factory=list)
    body: list[float] = field(default_factory=list)
    chrome_ttfb: list[float] = field(default_factory=list)
    chrome_load: list[float] = field(default_factory=list)


async def fill(db: Database, n_tasks: int, n_payments: int) -> None:
    """Bulk rows in a few statements (the bench measures the page, not the inserts)."""
    await db.execute(
        """
        INSERT INTO uisp_webhooks (uuid, event_name, entity, entity_id, change_type, body,
                                   state, outcome, last_error, processed_at)
        SELECT md5('hook' || g)::uuid, 'service.suspend_cancel', 'service', g, 'unsuspend',
               '{}'::jsonb, CASE WHEN g % 100 = 0 THEN 'failed' ELSE 'processed' END,
               'task created', CASE WHEN g % 100 = 0 THEN 'UISP unreachable' END, now()
        FROM generate_series(1, $1) g
        """,
        n_tasks,
    )
    await db.execute(
        """
        INSERT INTO reconnect_tasks (dedupe_key, webhook_uuid, action, client_id, client_name,
                                     phone, service_id, service_name, olt_name, onu, state,
                                     attempts, last_error, olt_output, started_at, finished_at)
        SELECT 'activate:service:' || g || ':webhook:' || md5('hook' || g),
               md5('hook' || g)::uuid, 'activate', g, 'Client ' || g, '+34600000000', g,
               'Fibra', 'olt-' || (g % 4), '0/1/3:' || (g % 128),
               CASE WHEN g % 100 = 0 THEN 'failed' WHEN g % 20 = 0 THEN 'superseded'
                    ELSE 'succeeded' END,
               1, CASE WHEN g % 100 = 0 THEN 'Failure: The ONT does not exist' END,
               repeat('display ont info 0 1 3 7' || chr(10), 20), now(), now()
        FROM generate_series(1, $1) g
        """,
        n_tasks,
    )
    await db.execute(
        """
        INSERT INTO payments (id, status, amount, currency, amount_captured, method, kind,
                              capture_method, description, created_by, provider, expires_at)
        SELECT 'pay_' || lpad(to_hex(g), 24, '0'),
               CASE WHEN g % 50 = 0 THEN 'failed' ELSE 'succeeded' END, 3000, 'EUR',
               CASE WHEN g % 50 = 0 THEN 0 ELSE 3000 END, 'intent', 'one_time', 'automatic',
               'Invoice ' || g, 'bench', 'mock', now() + interval '1 day'
        FROM generate_series(1, $1) g
        """,
        n_payments,
    )
    await db.execute("ANALYZE")


@asynccontextmanager
async def side(
    name: str, url: str, host: str, nursery: trio.Nursery, stop: trio.Event
) -> AsyncIterator[tuple[Side, Database]]:
    async with Database.open(url, min_size=1, max_size=4) as db:
        config = Config().replace(http=HttpConfig(port=0, admin_token="bench-token"))
        health = Health()
        for actor in ACTORS:
            health.set_state(actor, "running")
        deps = Deps(config, db, Metrics(), EventBus(), health)
        await accounts.add_operator(db, OPERATOR, PASSWORD)
        base_url: str = await nursery.start(partial(http_ingress.run, deps, shutdown=stop))
        base_url = base_url.replace("127.0.0.1", host)
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            await sign_in(client)
            yield Side(name, base_url, client), db


async def sample(s: Side, browser: Browser) -> None:
    start = time.perf_counter()
    async with s.client.stream("GET", "/console/") as r:
        s.ttfb.append(time.perf_counter() - start)
        await r.aread()
        s.body.append(time.perf_counter() - start)
    assert r.status_code == 200, r.status_code
    assert b'data-actor="consumer:reconnect"' in r.content
    await browser.get(f"{s.base_url}/console/")
    response_start, load_end = await browser.script(NAVIGATION)
    s.chrome_ttfb.append(response_start / 1000)
    s.chrome_load.append(load_end / 1000)


async def bench(args: argparse.Namespace) -> int:
    reason = available()
    if reason is not None:
        print(f"needs Chromium: {reason}", file=sys.stderr)
        return 2
    with ExitStack() as stack:
        empty_url = stack.enter_context(_common.throwaway_database())
        full_url = stack.enter_context(_common.throwaway_database())
        async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
            stop = trio.Event()
            driver = await trio.to_thread.run_sync(_start_driver, 1280, 900)
            browser = Browser(driver)
            try:
                async with (
                    side("empty", empty_url, "127.0.0.1", nursery, stop) as (empty, _),
                    side("full", full_url, "localhost", nursery, stop) as (full, full_db),
                ):
                    print(f"filling: {args.tasks} tasks, {args.payments} payments", file=sys.stderr)
                    t0 = time.perf_counter()
                    await fill(full_db, args.tasks, args.payments)
                    print(f"filled in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
                    for s in (empty, full):
                        await browser_sign_in(browser, s.base_url)
                    for i in range(args.warmup + args.samples):
                        for s in (empty, full) if i % 2 == 0 else (full, empty):
                            await sample(s, browser)
                        if i == args.warmup - 1:
                            for s in (empty, full):
                                s.ttfb.clear()
                                s.body.clear()
                                s.chrome_ttfb.clear()
                                s.chrome_load.clear()
                    report(empty, full, args)
            finally:
                await trio.to_thread.run_sync(driver.quit)
                stop.set()
    return 0


def report(empty: Side, full: Side, args: argparse.Namespace) -> None:
    metrics: list[tuple[str, str]] = [
        ("httpx TTFB", "ttfb"),
        ("httpx full body", "body"),
        ("Chromium responseStart (TTFB)", "chrome_ttfb"),
        ("Chromium loadEventEnd (rendered)", "chrome_load"),
    ]
    rows: list[list[Any]] = []
    for label, attr in metrics:
        e, f = getattr(empty, attr), getattr(full, attr)
        e50, f50 = statistics.median(e), statistics.median(f)
        rows.append(
            [
                label,
                _common.ms(e50),
                _common.ms(_common.percentile(e, 95)),
                _common.ms(f50),
                _common.ms(_common.percentile(f, 95)),
                _common.ratio(f50, e50),
            ]
        )
    print(
        f"GET /console/ — {args.samples} samples per side (after {args.warmup} warm-up),"
        f" full = {args.tasks} tasks + {args.tasks} UISP webhooks + {args.payments} payments"
    )
    print(
        _common.table(
            ["metric", "empty p50 ms", "empty p95", "full p50 ms", "full p95", "full/empty p50"],
            rows,
        )
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=10_000)
    p.add_argument("--payments", type=int, default=10_000)
    p.add_argument("--samples", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args()
    _common.quiet()
    return trio.run(bench, args)


if __name__ == "__main__":
    sys.exit(main())
