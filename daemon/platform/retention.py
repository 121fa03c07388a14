"""Retention: delete what is older than the configured time, in small batches.

Each capability says what it keeps and how old rows are judged (``Target``); the
composition root lists them (``daemon.wiring``) and the scheduler runs ``prune``
periodically. Small batches keep each DELETE short (no long locks, no huge WAL burst);
a run stops after ``max_batches`` per table and carries on at the next run.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import trio
import trio.lowlevel

from daemon.platform.db import Database
from daemon.platform.metrics import Metrics

log = logging.getLogger(__name__)

_IDENT = re.compile(r"^[a-z_][a-z0-9_.]*$")


@dataclass(frozen=True)
class Target:
    table: str  # e.g. "task_events" or "pgmq.a_sms"
    time_column: str  # rows whose value is older than the cut-off go
    condition: str = "TRUE"  # extra SQL condition (e.g. never a webhook still queued)

    def __post_init__(self) -> None:
        if not (_IDENT.fullmatch(self.table) and _IDENT.fullmatch(self.time_column)):
            raise ValueError(f"bad retention target {self.table}.{self.time_column}")


async def prune(
    db: Database,
    targets: Sequence[Target],
    *,
    keep_days: float,
    batch_size: int,
    metrics: Metrics,
    max_batches: int = 100,
) -> dict[str, int]:
    """Delete rows older than ``keep_days``; returns how many per table."""
    pruned: dict[str, int] = {}
    for t in targets:
        total = 0
        for _ in range(max_batches):
            status = await db.execute(
                f"DELETE FROM {t.table} WHERE ctid IN (SELECT ctid FROM {t.table}"
                f" WHERE {t.time_column} < now() - make_interval(days => $1::int)"
                f" AND ({t.condition}) LIMIT $2)",
                int(keep_days),
                batch_size,
            )
            deleted = int(status.split()[-1])
            total += deleted
            if deleted < batch_size:
                break
            await trio.lowlevel.checkpoint()  # let the rest of the daemon breathe between batches
        pruned[t.table] = total
        if total:
            metrics.retention_pruned.labels(t.table).inc(total)
    if any(pruned.values()):
        log.info("retention: pruned %s", ", ".join(f"{k}={v}" for k, v in pruned.items() if v))
    return pruned
