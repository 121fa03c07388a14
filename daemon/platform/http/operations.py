"""Admin routes for what did not go through: dead letters, UISP webhooks, periodic jobs.

``GET /api/v1/queues/failed``, ``POST /api/v1/queues/failed/<id>/replay``,
``GET /api/v1/uisp/webhooks``, ``POST /api/v1/uisp/webhooks/<uuid>/replay``,
``GET /api/v1/jobs``. Same Bearer authentication as the rest of ``/api/v1``.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator
from quart import Blueprint
from quart_schema import validate_querystring, validate_response

from daemon import wiring
from daemon.platform import auth, queues, scheduler
from daemon.platform.db import BIGINT_MAX
from daemon.platform.deps import Deps
from daemon.platform.http import schema
from daemon.platform.http.admin import AUTH_PROBLEMS, MAX_LIMIT, Shape
from daemon.platform.http.problem import Problem
from daemon.platform.queues import DeadLetter
from daemon.platform.scheduler import JobState
from daemon.uisp import webhooks
from daemon.uisp.webhooks import Webhook


class FailedQuery(Shape):
    """``queue`` is added per daemon (``failed_query``): its queues are known at start."""

    model_config = ConfigDict(extra="forbid")

    queue: str | None = None
    all: bool = Field(False, description="also list the dead letters already replayed")
    limit: int = Field(50, ge=1, le=MAX_LIMIT)

    @field_validator("all", mode="before")
    @classmethod
    def _bare_flag(cls, value: Any) -> Any:
        return True if value == "" else value  # ?all works as well as ?all=true


class FailedList(Shape):
    # The store's own row types: pydantic validates and documents dataclasses as they are.
    failed: list[DeadLetter]


class Replayed(Shape):
    replayed: DeadLetter


class WebhookQuery(Shape):
    model_config = ConfigDict(extra="forbid")

    state: webhooks.State | None = None
    limit: int = Field(50, ge=1, le=MAX_LIMIT)


class WebhookList(Shape):
    webhooks: list[Webhook]


class WebhookReplayed(Shape):
    webhook: Webhook


class Jobs(Shape):
    jobs: list[JobState]


def failed_query(queue_names: Sequence[str]) -> type[FailedQuery]:
    """``FailedQuery`` whose ``queue`` is one of these names (so the document lists them)."""
    names: Any = Literal[tuple(queue_names)]
    return create_model(
        "FailedQuery",
        __base__=FailedQuery,
        queue=(names | None, Field(None, description="one of the daemon's queues")),
    )


def blueprint(deps: Deps) -> Blueprint:
    bp = Blueprint("operations", __name__, url_prefix="/api/v1")
    query_model = failed_query(deps.queue_names)
    auth.Guard(deps).protect(bp, auth.ADMIN)
    not_found: dict[int, type[BaseModel]] = {404: schema.ProblemDocument, **AUTH_PROBLEMS}

    @bp.get("/queues/failed")
    @schema.declare(responses={400: schema.ProblemDocument, **AUTH_PROBLEMS})
    @validate_querystring(query_model)
    @validate_response(FailedList)
    async def list_failed(query_args: FailedQuery) -> dict[str, Any]:
        """Dead letters, newest first (the unreplayed ones unless ``all``)."""
        rows = await queues.list_dead(
            deps.db,
            queue=query_args.queue,
            include_replayed=query_args.all,
            limit=query_args.limit,
        )
        return {"failed": rows}

    @bp.post("/queues/failed/<int:dead_id>/replay")
    @schema.declare(responses=not_found)
    @validate_response(Replayed, 202)
    async def replay_failed(dead_id: int) -> tuple[dict[str, Any], int]:
        """Send a dead letter again, after its queue's reset."""
        if dead_id > BIGINT_MAX:
            raise Problem(404, f"no dead letter {dead_id} waiting for a replay")
        try:
            [dead] = await wiring.replay_dead(deps.db, [dead_id])
        except queues.DeadLetterNotFound:
            raise Problem(404, f"no dead letter {dead_id} waiting for a replay") from None
        deps.events.publish("queue.replayed", queue=dead.queue, dead_letter=dead.id)
        return {"replayed": dataclasses.asdict(dead)}, 202

    @bp.get("/uisp/webhooks")
    @schema.declare(responses={400: schema.ProblemDocument, **AUTH_PROBLEMS})
    @validate_querystring(WebhookQuery)
    @validate_response(WebhookList)
    async def list_webhooks(query_args: WebhookQuery) -> dict[str, Any]:
        """Stored UISP webhooks, newest first."""
        rows = await webhooks.list_recent(deps.db, state=query_args.state, limit=query_args.limit)
        return {"webhooks": rows}

    @bp.post("/uisp/webhooks/<webhook_uuid>/replay")
    @schema.declare(responses=not_found)
    @validate_response(WebhookReplayed, 202)
    async def replay_webhook(webhook_uuid: str) -> tuple[dict[str, Any], int]:
        """Run a stored webhook again (a new task if it asks for one)."""
        try:
            key = str(uuid.UUID(webhook_uuid))
        except ValueError:
            raise Problem(404, f"no stored webhook {webhook_uuid!r}") from None
        try:
            [hook] = await wiring.replay_webhooks(deps.db, [key])
        except webhooks.WebhookNotFound:
            raise Problem(404, f"no stored webhook {key}") from None
        deps.events.publish("webhook.replayed", uuid=key)
        return {"webhook": dataclasses.asdict(hook)}, 202

    @bp.get("/jobs")
    @schema.declare(responses=AUTH_PROBLEMS)
    @validate_response(Jobs)
    async def list_jobs() -> dict[str, Any]:
        """The periodic jobs and how their last runs went."""
        return {"jobs": await scheduler.states(deps.db)}

    return bp
