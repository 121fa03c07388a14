"""Admin routes for what did not go through: dead letters, UISP webhooks, periodic jobs.

``GET /api/v1/queues/failed``, ``POST /api/v1/queues/failed/<id>/replay``,
``GET /api/v1/uisp/webhooks``, ``POST /api/v1/uisp/webhooks/<uuid>/replay``,
``GET /api/v1/jobs``. Same Bearer authentication as the rest of ``/api/v1``.
"""

from __future__ import annotations

import uuid

from quart import Blueprint, Response, request

from daemon import wiring
from daemon.platform import queues, scheduler
from daemon.platform.db import BIGINT_MAX
from daemon.platform.deps import Deps
from daemon.platform.http.admin import check_bearer
from daemon.platform.http.problem import Problem, json_response
from daemon.uisp import webhooks


def _limit() -> int:
    raw = request.args.get("limit", "50")
    if not raw.isdigit() or not 1 <= int(raw) <= 200:
        raise Problem(400, "limit must be an integer between 1 and 200", field="limit")
    return int(raw)


def blueprint(deps: Deps) -> Blueprint:
    bp = Blueprint("operations", __name__, url_prefix="/api/v1")

    @bp.before_request
    async def _authenticate() -> None:
        check_bearer(deps, request.headers.get("Authorization"))

    @bp.get("/queues/failed")
    async def list_failed() -> Response:
        queue = request.args.get("queue")
        if queue is not None and queue not in deps.queue_names:
            raise Problem(400, f"queue must be one of {', '.join(deps.queue_names)}", field="queue")
        rows = await queues.list_dead(
            deps.db, queue=queue, include_replayed="all" in request.args, limit=_limit()
        )
        return json_response({"failed": rows})

    @bp.post("/queues/failed/<int:dead_id>/replay")
    async def replay_failed(dead_id: int) -> Response:
        if dead_id > BIGINT_MAX:
            raise Problem(404, f"no dead letter {dead_id} waiting for a replay")
        try:
            dead = await wiring.replay_dead(deps.db, dead_id)
        except queues.DeadLetterNotFound:
            raise Problem(404, f"no dead letter {dead_id} waiting for a replay") from None
        deps.events.publish("queue.replayed", queue=dead.queue, dead_letter=dead.id)
        return json_response({"replayed": dead}, status=202)

    @bp.get("/uisp/webhooks")
    async def list_webhooks() -> Response:
        state = request.args.get("state")
        if state is not None and state not in webhooks.STATES:
            raise Problem(400, f"state must be one of {', '.join(webhooks.STATES)}", field="state")
        rows = await webhooks.list_recent(deps.db, state=state, limit=_limit())
        return json_response({"webhooks": rows})

    @bp.post("/uisp/webhooks/<webhook_uuid>/replay")
    async def replay_webhook(webhook_uuid: str) -> Response:
        try:
            key = str(uuid.UUID(webhook_uuid))
        except ValueError:
            raise Problem(404, f"no stored webhook {webhook_uuid!r}") from None
        try:
            [hook] = await wiring.replay_webhooks(deps.db, [key])
        except webhooks.WebhookNotFound:
            raise Problem(404, f"no stored webhook {key}") from None
        deps.events.publish("webhook.replayed", uuid=key)
        return json_response({"webhook": hook}, status=202)

    @bp.get("/jobs")
    async def list_jobs() -> Response:
        return json_response({"jobs": await scheduler.states(deps.db)})

    return bp
