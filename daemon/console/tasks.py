"""``/console/tasks``: the reconnection task log, one task's history, retry.

The list filters by state, service and OLT and pages by keyset (``before_id``, as the
admin API does) through ``network.tasks.list_recent``; the detail is ``tasks.get`` (history,
SMS, the OLT's output); retry is ``tasks.retry``, the same call as ``paymentd tasks retry``
and ``POST /api/v1/tasks/{id}/retry``, recorded in the task's history as the console user.
"""

from __future__ import annotations

import logging
from typing import Any

from quart import Blueprint, Response, render_template

from daemon.console import guard, views
from daemon.console.context import Console
from daemon.network import tasks
from daemon.platform.db import BIGINT_MAX
from daemon.platform.http.problem import Problem

log = logging.getLogger(__name__)

NAV = (("console.tasks_list", "Tasks"),)
STATES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "superseded")
NOTICES: views.Notices = {
    "retried": ("Task {id} is queued again.", False),
    "not_retryable": ("Task {id} is {state}: only a failed task can be retried.", True),
}


def register(bp: Blueprint, console: Console) -> None:
    deps = console.deps

    @bp.get("/tasks")
    async def tasks_list() -> str:
        state = views.text_arg("state", STATES)
        service_id = views.int_arg("service_id")
        olt = views.text_arg("olt")
        before_id = views.int_arg("before_id")
        rows = await tasks.list_recent(
            deps.db,
            state=state,
            service_id=service_id,
            olt_name=olt,
            before_id=before_id,
            limit=views.PAGE_SIZE,
        )
        filters: dict[str, Any] = {
            k: v for k, v in {"state": state, "service_id": service_id, "olt": olt}.items() if v
        }
        next_before = rows[-1].id if len(rows) == views.PAGE_SIZE else None
        return await render_template(
            "console/tasks.html",
            tasks=rows,
            states=STATES,
            filters=filters,
            paged=before_id is not None,
            next_before=next_before,
        )

    @bp.get("/tasks/<int:task_id>")
    async def task_detail(task_id: int) -> str:
        detail = await tasks.get(deps.db, task_id) if task_id <= BIGINT_MAX else None
        if detail is None:
            raise Problem(404, f"task {task_id} not found")
        return await render_template(
            "console/task.html",
            detail=detail,
            task=detail.task,
            **views.notices(NOTICES, id=task_id, state=detail.task.state),
        )

    @bp.post("/tasks/<int:task_id>/retry")
    async def task_retry(task_id: int) -> Response:
        if task_id > BIGINT_MAX:
            raise Problem(404, f"task {task_id} not found")
        who = guard.current().who
        try:
            await tasks.retry(deps.db, task_id, by=who)
        except tasks.TaskNotFound:
            raise Problem(404, f"task {task_id} not found") from None
        except tasks.TaskNotRetryable:
            return guard.redirect_to("console.task_detail", task_id=task_id, notice="not_retryable")
        log.info("task %d put back in the queue by %s", task_id, who)
        deps.events.publish("task.retry_requested", task_id=task_id)
        return guard.redirect_to("console.task_detail", task_id=task_id, notice="retried")
