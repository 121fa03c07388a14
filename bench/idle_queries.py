"""Idle query rate of the full daemon, extrapolated to a day at the default safety poll.

Runs the real daemon (``run_daemon``) with no work at all on a throwaway database, with
``database.safety_poll_seconds = --tick`` so several safety ticks happen in ``--seconds``,
and counts what it sends to PostgreSQL in that window (start-up excluded) two ways:

* client side (primary, exact): asyncpg's ``Connection.execute`` (simple-protocol, no
  arguments) and ``Connection._execute`` (every extended-protocol statement: fetch*,
  execute with arguments) are wrapped in this process, so every statement the daemon's
  pool and listener issue is counted, with its SQL text -- including asyncpg's own
  connection-reset query when a pooled connection is released;
* server side (cross-check): ``xact_commit + xact_rollback`` of the daemon's database in
  ``pg_stat_database``, read from a connection to another database (so the probe adds
  nothing). One transaction per autocommit statement; a multi-statement simple query
  counts once. Stats are flushed by backends within about a second, hence the settling.

``pg_stat_statements`` is not used: it needs ``shared_preload_libraries`` and a server
restart.

Extrapolation: statements within 1 s after each listener tick (its one statement,
``daemon.platform.queues.readable_sql(QUEUE_NAMES)``) belong to
that tick; everything else is background. At the default ``safety_poll_seconds`` (300):
    per_day = per_tick * 86400 / 300 + background_per_second * 86400
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import _common
import asyncpg
import psycopg
import trio

from daemon.app import Running, run_daemon
from daemon.platform.config import (
    Config,
    DaemonConfig,
    DatabaseConfig,
    HttpConfig,
    SecretsConfig,
    SmsConfig,
)
from daemon.platform.queues import readable_sql
from daemon.platform.secrets import keygen
from daemon.wiring import QUEUE_NAMES

TICK_SQL = readable_sql(QUEUE_NAMES)  # the listener's one statement per safety tick
DEFAULT_TICK = DatabaseConfig().safety_poll_seconds
OLD_POLL_SECONDS = 2.0  # the old system: one queue query every 2 s, day and night
OLD_DOCUMENTED_PER_DAY = 40  # its fallback: every 15 min, 8:00-18:00 only (10 h * 4)

statements: list[tuple[float, str]] = []


def _instrument() -> None:
    execute = asyncpg.connection.Connection.execute
    _execute = asyncpg.connection.Connection._execute

    async def counted_execute(self: Any, query: str, *args: Any, **kw: Any) -> Any:
        if not args:  # with arguments it goes through _execute, counted there
            statements.append((time.monotonic(), query))
        return await execute(self, query, *args, **kw)

    async def counted__execute(self: Any, query: str, *args: Any, **kw: Any) -> Any:
        statements.append((time.monotonic(), query))
        return await _execute(self, query, *args, **kw)

    asyncpg.connection.Connection.execute = counted_execute  # type: ignore[method-assign]
    asyncpg.connection.Connection._execute = counted__execute  # type: ignore[method-assign]


def server_xacts(admin_url: str, dbname: str) -> int:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
            (dbname,),
        ).fetchone()
    assert row is not None
    return int(row[0])


async def bench(args: argparse.Namespace, url: str, tmp: Path) -> dict[str, Any]:
    key_file = tmp / "secret.key"
    keygen(key_file)
    cfg = Config().replace(
        daemon=DaemonConfig(shutdown_grace_seconds=3),
        database=DatabaseConfig(url=url, safety_poll_seconds=args.tick),
        http=HttpConfig(port=0),
        secrets=SecretsConfig(key_file=str(key_file)),
        sms=SmsConfig(provider="none"),
    )
    admin_url, dbname = _common.server_url(), urlsplit(url).path.lstrip("/")
    async with trio.open_nursery() as nursery:
        with trio.fail_after(30):
            running: Running = await nursery.start(
                partial(run_daemon, cfg, env={}, handle_signals=False)
            )
        await trio.sleep(2)  # start-up queries done, stats flushed
        x0 = await trio.to_thread.run_sync(server_xacts, admin_url, dbname)
        t0, i0 = time.monotonic(), len(statements)
        print(f"  idle for {args.seconds:g} s ...", file=sys.stderr, flush=True)
        await trio.sleep(args.seconds)
        t1, i1 = time.monotonic(), len(statements)
        await trio.sleep(2)  # let the backends flush their stats (statements after t1 rare)
        x1 = await trio.to_thread.run_sync(server_xacts, admin_url, dbname)
        i2 = len(statements)  # the server window ends about here (stats lag ~1 s)
        running.shutdown.set()
    window = statements[i0:i1]
    return {
        "window": window,
        "seconds": t1 - t0,
        "ticks": sum(1 for _, sql in window if sql == TICK_SQL),
        "server": x1 - x0,
        "client_to_x1": i2 - i0,
    }


def report(args: argparse.Namespace, r: dict[str, Any]) -> None:
    window: list[tuple[float, str]] = r["window"]
    seconds, ticks = r["seconds"], r["ticks"]
    pings = [t for t, sql in window if sql == TICK_SQL]
    in_tick = [s for s in window if any(p <= s[0] < p + 1.0 for p in pings)]
    background = len(window) - len(in_tick)
    per_tick = len(in_tick) / ticks if ticks else float("nan")
    bg_rate = background / seconds
    per_day_default = per_tick * 86400 / DEFAULT_TICK + bg_rate * 86400
    per_day_measured = len(window) / seconds * 86400
    old_2s = 86400 / OLD_POLL_SECONDS

    print()
    print(
        f"idle_queries: full daemon idle for {seconds:.1f} s, "
        f"database.safety_poll_seconds = {args.tick:g}"
    )
    print()
    print(
        _common.table(
            ["what", "count"],
            [
                ["safety ticks in window", ticks],
                ["statements (client side, asyncpg)", len(window)],
                ["  of which within 1 s of a tick", len(in_tick)],
                ["  background (not tick-related)", background],
                ["transactions (server, pg_stat_database)", r["server"]],
                ["client statements, window + 2 s settle", r["client_to_x1"]],
                ["statements per tick", f"{per_tick:.1f}"],
            ],
        )
    )
    print()
    print("statements per tick by SQL (client side, whole window / ticks):")
    by_sql = Counter(" ".join(sql.split())[:90] for _, sql in window)
    print(
        _common.table(
            ["per tick", "sql"],
            [[f"{n / max(ticks, 1):.1f}", sql] for sql, n in by_sql.most_common()],
            left=(1,),
        )
    )
    print()
    print(f"measured rate at tick {args.tick:g} s: {per_day_measured:,.0f} statements/day")
    print(
        f"extrapolated at the default {DEFAULT_TICK:g} s: per_day = {per_tick:.1f} * 86400 / "
        f"{DEFAULT_TICK:g} + {bg_rate:.4f}/s * 86400 = {per_day_default:,.0f} statements/day"
    )
    print(
        f"old system: 2 s polling = 86400 / 2 = {old_2s:,.0f}/day; documented fallback "
        f"~{OLD_DOCUMENTED_PER_DAY}/day (15 min, 8:00-18:00 only, nothing at night)"
    )
    print(
        f"ratios: new(default)/old-2s-poll {per_day_default / old_2s:.4f} "
        f"({old_2s / per_day_default:.0f}x fewer); new(default)/old-documented-40 "
        f"{per_day_default / OLD_DOCUMENTED_PER_DAY:.1f}x; "
        "server xacts/client statements (window + settle) "
        f"{r['server'] / max(r['client_to_x1'], 1):.2f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60, help="idle window (60 s)")
    parser.add_argument("--tick", type=float, default=5, help="safety_poll_seconds (5 s)")
    args = parser.parse_args()
    _common.quiet()
    _instrument()
    with _common.throwaway_database() as url, tempfile.TemporaryDirectory() as tmp:
        result = trio.run(bench, args, url, Path(tmp))
    report(args, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
