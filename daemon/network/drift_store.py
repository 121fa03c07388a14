"""The drift store: reconciliation runs, the drift rows of the latest one, ONU check times.

Owns every statement on ``drift_runs``, ``drift_items`` and ``drift_onu_checks``; what
drift asks of the task log is in ``network/tasks.py``, which owns that table. A run's
rows are written with its outcome in one transaction, and the rows of older runs are
dropped then: the admin API and the metrics always read one whole run; so are the check
times of ONUs that run no longer found mapped (only a finished run prunes them: a failed
one may have listed UISP only in part).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass, fields
from typing import Any, Literal

from daemon.platform.db import Database, Executor

Kind = Literal[
    "uisp_vs_paymentd",  # UISP's state is not what paymentd last applied (a lost webhook)
    "olt_vs_paymentd",  # the device is not in the state paymentd applied (edited by hand)
    "olt_vs_uisp",  # paymentd never applied this ONU, and the device disagrees with UISP
    "onu_missing",  # the mapping names an ONU the device does not have
    "olt_unknown",  # the mapping names an OLT that is not configured
    "bad_mapping",  # the mapping's ONU location does not parse
]
KINDS: tuple[str, ...] = Kind.__args__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class DriftItem:
    service_id: int
    kind: str
    uisp_state: str | None
    applied_state: str | None
    olt_state: str | None
    olt_name: str | None
    onu: str | None
    detail: str = ""
    task_id: int | None = None


@dataclass(frozen=True)
class DriftRun:
    id: int
    mode: str
    trigger: str
    state: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    services: int
    skipped: int
    device_reads: int
    read_errors: int
    drifts: int
    tasks_queued: int
    error: str | None


@dataclass
class Counts:
    services: int = 0
    skipped: int = 0
    device_reads: int = 0
    read_errors: int = 0
    tasks_queued: int = 0


_RUN_COLUMNS = ", ".join(f.name for f in fields(DriftRun))
_ITEM_COLUMNS = [f.name for f in fields(DriftItem)]


def _run(row: Any) -> DriftRun:
    return DriftRun(**{name: row[name] for name in DriftRun.__dataclass_fields__})


async def start_run(db: Database, mode: str, trigger: str) -> int:
    """A new run. Runs happen under the ``drift`` job's lease, one at a time, so a run
    still ``running`` here was cut short (the process died): it is marked failed."""
    async with db.transaction() as tx:
        await tx.execute(
            "UPDATE drift_runs SET state = 'failed', finished_at = now(),"
            " error = 'interrupted (the process stopped during the run)'"
            " WHERE state = 'running'"
        )
        run_id: int = await tx.fetchval(
            "INSERT INTO drift_runs (mode, trigger) VALUES ($1, $2) RETURNING id", mode, trigger
        )
    return run_id


async def finish_run(
    db: Database,
    run_id: int,
    counts: Counts,
    items: Sequence[DriftItem],
    mapped: Iterable[tuple[str, str]] = (),
) -> None:
    """Record the run's outcome and its rows; drop the rows of every older run, and the
    check times of ONUs no service maps any more: ``mapped`` is every ``(olt_name, onu)``
    this run listed from UISP (whether read or not), so an ONU whose service ended or
    moved does not stay in ``drift_onu_checks`` for ever."""
    keep = sorted(set(mapped))
    async with db.transaction() as tx:
        if items:
            columns = list(zip(*(astuple(i) for i in items), strict=True))
            await tx.execute(
                f"INSERT INTO drift_items (run_id, {', '.join(_ITEM_COLUMNS)})"
                " SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[],"
                " $6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[])",
                run_id,
                *(list(c) for c in columns),
            )
        await tx.execute(
            "UPDATE drift_runs SET state = 'finished', finished_at = now(), services = $2,"
            " skipped = $3, device_reads = $4, read_errors = $5, drifts = $6,"
            " tasks_queued = $7 WHERE id = $1",
            run_id,
            counts.services,
            counts.skipped,
            counts.device_reads,
            counts.read_errors,
            len(items),
            counts.tasks_queued,
        )
        await tx.execute("DELETE FROM drift_items WHERE run_id < $1", run_id)
        await tx.execute(
            "DELETE FROM drift_onu_checks c WHERE NOT EXISTS (SELECT FROM"
            " unnest($1::text[], $2::text[]) AS m(olt_name, onu)"
            " WHERE m.olt_name = c.olt_name AND m.onu = c.onu)",
            [k[0] for k in keep],
            [k[1] for k in keep],
        )


async def fail_run(db: Executor, run_id: int, error: str) -> None:
    await db.execute(
        "UPDATE drift_runs SET state = 'failed', finished_at = now(), error = $2 WHERE id = $1",
        run_id,
        error,
    )


async def latest(db: Executor) -> tuple[DriftRun, list[DriftItem]] | None:
    """The latest finished run and its drift rows (by service), or None before the first."""
    row = await db.fetchrow(
        f"SELECT {_RUN_COLUMNS} FROM drift_runs WHERE state = 'finished' ORDER BY id DESC LIMIT 1"
    )
    if row is None:
        return None
    items = await db.fetch(
        f"SELECT {', '.join(_ITEM_COLUMNS)} FROM drift_items WHERE run_id = $1"
        " ORDER BY service_id, id",
        row["id"],
    )
    return _run(row), [DriftItem(**{k: r[k] for k in _ITEM_COLUMNS}) for r in items]


async def last_runs(db: Executor, limit: int = 10) -> list[DriftRun]:
    rows = await db.fetch(f"SELECT {_RUN_COLUMNS} FROM drift_runs ORDER BY id DESC LIMIT $1", limit)
    return [_run(r) for r in rows]


# -- ONU check times ----------------------------------------------------------------


async def check_times(db: Executor, olt_name: str) -> dict[str, dt.datetime]:
    rows = await db.fetch(
        "SELECT onu, checked_at FROM drift_onu_checks WHERE olt_name = $1", olt_name
    )
    return {r["onu"]: r["checked_at"] for r in rows}


async def record_checks(db: Executor, olt_name: str, checks: Iterable[tuple[str, str]]) -> None:
    """``(onu, state)`` pairs read from ``olt_name`` just now."""
    pairs = list(checks)
    if not pairs:
        return
    await db.execute(
        "INSERT INTO drift_onu_checks (olt_name, onu, checked_at, state)"
        " SELECT $1, onu, now(), state FROM unnest($2::text[], $3::text[]) AS c(onu, state)"
        " ON CONFLICT (olt_name, onu) DO UPDATE"
        " SET checked_at = EXCLUDED.checked_at, state = EXCLUDED.state",
        olt_name,
        [p[0] for p in pairs],
        [p[1] for p in pairs],
    )
