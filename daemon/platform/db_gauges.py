"""Gauges read from the database at scrape time: open payments, webhook endpoints, jobs.

Consumes the database and ``Metrics``; produces ``paymentd_payments_open``,
``paymentd_payments_oldest_open_seconds``, ``paymentd_webhook_endpoints`` and the
``paymentd_job_*`` gauges. Called by ``/metrics`` (``daemon.platform.http.health``)
beside the queue gauges, and like them it reads what every process sharing the database
did: a payment stuck in ``unknown`` or a job nobody ran is a fact of the database, not
of one process's counters. Each query is small (grouped over indexed columns).
"""

from __future__ import annotations

from typing import get_args

from daemon.payments.states import PAYMENT_FINAL, PaymentStatus
from daemon.platform.db import Database
from daemon.platform.metrics import Metrics

OPEN_STATUSES: tuple[str, ...] = tuple(s for s in get_args(PaymentStatus) if s not in PAYMENT_FINAL)
ENDPOINT_STATES: tuple[str, ...] = ("healthy", "failing", "disabled", "operator_disabled")


async def refresh(db: Database, metrics: Metrics) -> None:
    """Set every gauge from the database; database errors propagate (stale beats wrong)."""
    await _payments(db, metrics)
    await _endpoints(db, metrics)
    await _jobs(db, metrics)


async def _payments(db: Database, metrics: Metrics) -> None:
    rows = await db.fetch(
        "SELECT status, count(*) AS n,"
        " extract(epoch FROM clock_timestamp() - min(updated_at))::float8 AS oldest"
        " FROM payments WHERE status = ANY($1::text[]) GROUP BY status",
        list(OPEN_STATUSES),
    )
    found = {r["status"]: r for r in rows}
    for status in OPEN_STATUSES:
        row = found.get(status)
        # Every open status is exported, 0 when none, so a rule sees it drop back to 0.
        metrics.payments_open.labels(status).set(row["n"] if row else 0)
        metrics.payments_oldest_open.labels(status).set(max(0.0, row["oldest"]) if row else 0.0)


async def _endpoints(db: Database, metrics: Metrics) -> None:
    row = await db.fetchrow(
        "SELECT count(*) FILTER (WHERE enabled AND failing_since IS NULL) AS healthy,"
        " count(*) FILTER (WHERE enabled AND failing_since IS NOT NULL) AS failing,"
        " count(*) FILTER (WHERE NOT enabled AND disabled_reason IS DISTINCT FROM 'operator')"
        " AS disabled,"
        " count(*) FILTER (WHERE NOT enabled AND disabled_reason = 'operator')"
        " AS operator_disabled"
        " FROM webhook_endpoints"
    )
    assert row is not None  # an aggregate without GROUP BY always has its row
    for state in ENDPOINT_STATES:
        metrics.webhook_endpoints.labels(state).set(row[state])


async def _jobs(db: Database, metrics: Metrics) -> None:
    if not metrics.declared_jobs:
        return
    rows = await db.fetch(
        # A job holding a live lease is running, not overdue (drift can take minutes).
        "SELECT name, CASE WHEN lease_until > clock_timestamp() THEN 0"
        " ELSE greatest(0, extract(epoch FROM clock_timestamp() - next_run_at)) END::float8"
        " AS overdue, last_error IS NOT NULL AS failed"
        " FROM scheduled_jobs WHERE name = ANY($1::text[])",
        sorted(metrics.declared_jobs),
    )
    for r in rows:
        metrics.job_overdue.labels(r["name"]).set(r["overdue"])
        metrics.job_last_failed.labels(r["name"]).set(1 if r["failed"] else 0)
