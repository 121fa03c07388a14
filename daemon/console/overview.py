"""``GET /console/``: the overview an operator opens first.

Actor health (the supervisor's ``Health``), queue depths and oldest message ages (PGMQ
metrics), OLT sessions and breakers (the OLT pool), the last failures (tasks, UISP
webhooks, outbound deliveries, dead letters) and the live event feed (``feed``).

Every query is bounded and indexed (the newest few failures, per-queue metrics): the
page costs the same with ten thousand tasks as with none (``bench/console_overview.py``).
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, render_template

from daemon.console.context import Console
from daemon.network import devices, tasks
from daemon.platform import queues
from daemon.platform.http.health import queue_stats
from daemon.uisp import webhooks
from daemon.webhooks import deliveries

NAV = (("console.overview", "Overview"),)
FAILURES_SHOWN = 5


async def gather(console: Console) -> dict[str, Any]:
    deps = console.deps
    db = deps.db
    pool = console.pool
    return {
        "health": deps.health.snapshot(),
        "queues": await queue_stats(deps),
        "devices": await devices.list_devices(db),
        "olt_status": None if pool is None else pool.status(),
        "failed_tasks": await tasks.list_recent(db, state="failed", limit=FAILURES_SHOWN),
        "failed_webhooks": await webhooks.list_recent(db, state="failed", limit=FAILURES_SHOWN),
        "failed_deliveries": await deliveries.list_deliveries(
            db, state="failed", limit=FAILURES_SHOWN
        ),
        "dead_letters": await queues.list_dead(db, limit=FAILURES_SHOWN),
    }


def register(bp: Blueprint, console: Console) -> None:
    @bp.get("/")
    async def overview() -> str:
        return await render_template("console/overview.html", **await gather(console))
