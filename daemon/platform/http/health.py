"""Open operational routes: ``/healthz``, ``/readyz`` and ``/metrics``.

Consumes ``Deps``: the supervisor's ``Health`` view of the actors, the database (a
``SELECT 1`` and PGMQ queue statistics) and the Prometheus registry. Produces JSON for the
probes (a problem document when not ready) and the Prometheus text exposition.

These routes need no token: a load balancer, systemd helper or Prometheus must reach
them, so they reveal nothing beyond actor names, states and queue sizes. What went wrong
(a database error, an actor's last error) goes to the log, never into the answer.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Literal

import trio
from pydantic import BaseModel
from quart import Blueprint, Response

from daemon.network import drift
from daemon.platform import db_gauges, queues
from daemon.platform.deps import Deps
from daemon.platform.http import schema
from daemon.platform.http.problem import json_response, problem
from daemon.platform.metrics import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

# /readyz must answer well inside a probe's timeout even when PostgreSQL hangs.
READY_DB_TIMEOUT_SECONDS = 2.0
# A scrape refreshes the queue (and drift) gauges at most this often and waits this long for them:
# Prometheus may scrape often, and a slow database must not make the scrape fail.
METRICS_REFRESH_INTERVAL_SECONDS = 5.0
METRICS_REFRESH_TIMEOUT_SECONDS = 1.0


async def queue_stats(deps: Deps) -> list[dict[str, Any]]:
    """Depth, oldest message age and total count of every queue; updates the gauges too.

    Database errors propagate (the admin route turns them into a 503 problem).
    """
    result = []
    dead = await queues.count_dead(deps.db)
    for name in deps.queue_names:
        deps.metrics.dead_letters.labels(name).set(dead.get(name, 0))
        stats = await queues.stats(deps.db, name)
        deps.metrics.queue_depth.labels(name).set(stats.depth)
        # An empty queue has no oldest message; 0 reads right on a dashboard.
        deps.metrics.queue_oldest_age.labels(name).set(stats.oldest_age_seconds or 0.0)
        result.append(dataclasses.asdict(stats))
    return result


class Alive(BaseModel):
    status: Literal["ok"]


class ActorState(BaseModel):
    state: str


class HealthView(BaseModel):
    ready: bool
    status: str
    actors: dict[str, ActorState]


class Ready(BaseModel):
    """Every actor runs and the database answers."""

    status: Literal["ready"]
    database: Literal["ok"]
    health: HealthView


class NotReady(schema.ProblemDocument):
    """Some actor is not running, or the database did not answer in time."""

    database: Literal["ok", "unavailable"]
    health: HealthView


class MetricsText(BaseModel):
    """The Prometheus text exposition format."""


def public_health(deps: Deps) -> dict[str, Any]:
    """The supervisor's view without restarts or last errors: those stay in the log."""
    snapshot = deps.health.snapshot()
    actors = {name: {"state": actor["state"]} for name, actor in snapshot["actors"].items()}
    return {"ready": snapshot["ready"], "status": snapshot["status"], "actors": actors}


async def database_check(deps: Deps, within: float = READY_DB_TIMEOUT_SECONDS) -> str | None:
    """None when ``SELECT 1`` answers within ``within`` seconds, else what went wrong."""
    with trio.move_on_after(within):
        try:
            value = await deps.db.fetchval("SELECT 1")
        except Exception as exc:  # any failure means "not ready"; say which
            return f"{type(exc).__name__}: {exc}"
        return None if value == 1 else f"SELECT 1 returned {value!r}"
    return f"no answer within {within:g} s"


def blueprint(deps: Deps) -> Blueprint:
    """The probe and metrics routes bound to ``deps``."""
    bp = Blueprint("health", __name__)
    # trio.current_time() of the last gauge refresh, shared by this app's scrapes.
    last_refresh: list[float] = [-float("inf")]

    @bp.get("/healthz")
    @schema.declare(responses={200: Alive})
    async def healthz() -> Response:
        """Liveness: the process and its event loop are serving."""
        return json_response({"status": "ok"})

    @bp.get("/readyz")
    @schema.declare(responses={200: Ready, 503: NotReady})
    async def readyz() -> Response:
        """Readiness: every actor runs and the database answers within 2 s."""
        ready = deps.health.ready
        db_error = await database_check(deps)
        view = public_health(deps)
        if ready and db_error is None:
            return json_response({"status": "ready", "database": "ok", "health": view})
        reasons = []
        if not ready:
            reasons.append(f"actors: {view['status']}")
        if db_error is not None:
            # The error text can name hosts, roles and databases: the log gets it, an
            # unauthenticated probe does not.
            log.warning("/readyz: database check failed: %s", db_error)
            reasons.append("database: unavailable")
        # Extension member "health" rather than the snapshot's keys at the top level:
        # its "status" (a text line) would clash with the problem's numeric "status".
        database = "ok" if db_error is None else "unavailable"
        return problem(503, "not ready; " + "; ".join(reasons), database=database, health=view)

    @bp.get("/metrics")
    @schema.declare(responses={200: MetricsText}, media_types={200: CONTENT_TYPE_LATEST})
    async def metrics() -> Response:
        """Prometheus metrics: webhooks, queues, actors, restarts."""
        now = trio.current_time()
        if now - last_refresh[0] >= METRICS_REFRESH_INTERVAL_SECONDS:
            last_refresh[0] = now
            with trio.move_on_after(METRICS_REFRESH_TIMEOUT_SECONDS):
                try:
                    await queue_stats(deps)
                except Exception as exc:  # stale gauges beat a failed scrape
                    log.warning("queue gauges not refreshed: %s", exc)
                try:
                    # From the database: 'paymentd network reconcile' is another process.
                    await drift.restore_metrics(deps.db, deps.metrics)
                except Exception as exc:
                    log.warning("drift gauges not refreshed: %s", exc)
                try:
                    await db_gauges.refresh(deps.db, deps.metrics)
                except Exception as exc:
                    log.warning("payment, endpoint and job gauges not refreshed: %s", exc)
        return Response(
            deps.metrics.render(), status=200, headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    return bp
