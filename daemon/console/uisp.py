"""``/console/uisp``: stored UISP webhooks, their outcome, replay.

The list is ``uisp.webhooks.list_recent`` (newest first, by state, paged on
``received_at``); replay is ``wiring.replay_webhooks``, the same call as ``paymentd uisp
replay`` and ``POST /api/v1/uisp/webhooks/{uuid}/replay`` (a replay's tasks are new ones).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid

from quart import Blueprint, Response, render_template, request

from daemon import wiring
from daemon.console import guard, views
from daemon.console.context import Console
from daemon.platform.http.problem import Problem
from daemon.uisp import webhooks

log = logging.getLogger(__name__)

NAV = (("console.uisp_list", "UISP webhooks"),)
STATES: tuple[str, ...] = ("queued", "processed", "failed")
NOTICES: views.Notices = {
    "replayed": ("Webhook {uuid} is queued again (replay).", False),
}


def _before() -> dt.datetime | None:
    raw = request.args.get("before", "").strip()
    if not raw:
        return None
    try:
        when = dt.datetime.fromisoformat(raw)
        # In UTC here, as the driver would: 0001-01-01T00:00+01:00 falls off the calendar.
        return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
    except (ValueError, OverflowError):
        raise Problem(400, "before must be an ISO 8601 time (the Older link's)") from None


def register(bp: Blueprint, console: Console) -> None:
    deps = console.deps

    @bp.get("/uisp")
    async def uisp_list() -> str:
        state = views.text_arg("state", STATES)
        before = _before()
        rows = await webhooks.list_recent(
            deps.db, state=state, before=before, limit=views.PAGE_SIZE
        )
        older = rows[-1].received_at.isoformat() if len(rows) == views.PAGE_SIZE else None
        return await render_template(
            "console/uisp.html",
            webhooks=rows,
            states=STATES,
            filters={"state": state} if state else {},
            paged=before is not None,
            older=older,
            **views.notices(NOTICES, uuid=request.args.get("uuid", "")[:36]),
        )

    @bp.post("/uisp/<webhook_uuid>/replay")
    async def uisp_replay(webhook_uuid: str) -> Response:
        try:
            key = str(uuid.UUID(webhook_uuid))
        except ValueError:
            raise Problem(404, f"no stored webhook {webhook_uuid!r}") from None
        try:
            await wiring.replay_webhooks(deps.db, [key])
        except webhooks.WebhookNotFound:
            raise Problem(404, f"no stored webhook {key}") from None
        log.info("webhook %s replayed by %s", key, guard.current().who)
        deps.events.publish("webhook.replayed", uuid=key)
        return guard.redirect_to("console.uisp_list", notice="replayed", uuid=key)
