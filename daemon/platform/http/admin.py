"""``/api/v1/*``: the admin API (task log, queues, live events) behind the ``admin`` scope.

Consumes ``Deps``: the task log (``daemon.network.tasks``), PGMQ statistics
(``daemon.platform.queues``) and
the in-process ``EventBus``. Produces JSON documents (datetimes as ISO 8601, UUIDs as
strings) shaped by the models below (``/openapi.json`` is generated from them, and each
answer is validated against them), RFC 9457 problems for every error, and a
``text/event-stream`` of bus events.

Authentication (``daemon.platform.auth``): ``Authorization: Bearer <http.admin_token>``
or an API key with the ``admin`` scope; with an empty admin token only API keys get in.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Callable
from contextlib import ExitStack, suppress
from types import TracebackType
from typing import Any, Literal

import trio
from pydantic import BaseModel, ConfigDict, Field
from quart import Blueprint, Response
from quart.wrappers.response import ResponseBody
from quart_schema import validate_querystring, validate_response

from daemon.network import tasks
from daemon.platform import auth
from daemon.platform.db import BIGINT_MAX
from daemon.platform.deps import Deps
from daemon.platform.events import Event, EventBus, Subscription, TooManySubscribers
from daemon.platform.http import schema
from daemon.platform.http.health import queue_stats
from daemon.platform.http.problem import Problem, dumps
from daemon.platform.queues import QueueStats

log = logging.getLogger(__name__)

TaskState = tasks.State
MAX_LIMIT = 200
DEFAULT_LIMIT = 50
# A comment line this often keeps proxies and clients from timing an idle stream out.
KEEPALIVE_SECONDS = 15.0


class TaskQuery(BaseModel):
    """``GET /api/v1/tasks``: newest first, a page at a time (keyset on ``before_id``)."""

    model_config = ConfigDict(extra="forbid")

    state: TaskState | None = None
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)
    before_id: int | None = Field(
        None, ge=1, le=BIGINT_MAX, description="next_before_id of the previous page"
    )


class Shape(BaseModel):
    """Answers built from the stores' dataclasses (``daemon.network.tasks``) as they are."""

    model_config = ConfigDict(from_attributes=True)


class Task(Shape):
    """One reconnection (or disconnection) and where it stands."""

    id: int
    dedupe_key: str
    webhook_uuid: uuid.UUID | None
    action: Literal["activate", "deactivate"]
    client_id: int | None
    client_name: str | None
    phone: str | None
    service_id: int
    service_name: str | None
    olt_name: str
    onu: str
    notify: bool = Field(
        description="false: an activation that only corrects the network (a drift fix) "
        "sends no reconnection SMS"
    )
    state: TaskState
    attempts: int
    last_error: str | None
    olt_output: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    updated_at: dt.datetime


class TaskEvent(Shape):
    at: dt.datetime
    kind: str
    detail: Any


class Sms(Shape):
    id: int
    phone: str
    state: Literal["queued", "sending", "sent", "failed", "skipped"]
    attempts: int
    last_error: str | None
    provider: str | None
    provider_ref: str | None
    created_at: dt.datetime
    sent_at: dt.datetime | None


class TaskDetail(Task):
    """A task with its timeline and its SMS (if one was sent or queued)."""

    events: list[TaskEvent]
    sms: Sms | None


class TaskPage(Shape):
    tasks: list[Task]
    next_before_id: int | None = Field(description="pass as before_id for the next page")


class Queues(Shape):
    queues: list[QueueStats]


class RetryRefused(schema.ProblemDocument):
    """Only a failed task can be retried; ``state`` says where it is."""

    state: str


class EventMessage(BaseModel):
    """Each SSE message: ``id``, ``event`` (the kind) and this object as its ``data`` line."""

    model_config = ConfigDict(extra="allow")

    id: int
    kind: str
    at: dt.datetime


# Every admin operation can answer these.
AUTH_PROBLEMS: dict[int, type[BaseModel]] = {
    401: schema.ProblemDocument,
    403: schema.ProblemDocument,
    503: schema.ProblemDocument,
}


def format_event(event: Event) -> bytes:
    """One SSE message: ``id``, ``event`` (the kind) and the event as one JSON ``data`` line."""
    return f"id: {event.id}\nevent: {event.kind}\ndata: {dumps(event.as_json())}\n\n".encode()


async def _cancel_when_set(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


class EventStream(ResponseBody):
    """The body of ``GET /api/v1/events``: bus events as Server-Sent Events.

    Subscribes on entering (Quart enters the body after sending the headers) and sends a
    ``: subscribed`` comment first, so a client knows from the first bytes that nothing
    published afterwards can be missed. Then each event, or ``: keepalive`` after
    ``keepalive`` seconds of silence. Ends when the daemon shuts down (``shutdown`` set)
    and, via quart-trio cancelling the response task, when the client disconnects; either
    way the subscription is released in ``__aexit__``.
    """

    def __init__(
        self,
        bus: EventBus,
        shutdown: trio.Event,
        keepalive: float = KEEPALIVE_SECONDS,
        render: Callable[[Event], bytes] = format_event,
    ) -> None:
        self._render = render
        self._bus = bus
        self._shutdown = shutdown
        self._keepalive = keepalive
        self._stack = ExitStack()
        self._receive: Subscription | None = None
        self._greeted = False

    async def __aenter__(self) -> EventStream:
        # The route refused with 503 when full; losing a race to the last slot ends the
        # stream at once instead.
        with suppress(TooManySubscribers):
            self._receive = self._stack.enter_context(self._bus.subscribe())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.close()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> bytes:
        if self._receive is None or self._shutdown.is_set():
            raise StopAsyncIteration
        if not self._greeted:
            self._greeted = True
            return b": subscribed\n\n"
        event: Event | None = None
        with trio.move_on_after(self._keepalive):
            # The nursery lives inside this call only (never across a yield to Quart), so
            # the cancel scopes nest properly; its watcher stops the wait on shutdown.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_when_set, self._shutdown, nursery.cancel_scope)
                with suppress(trio.EndOfChannel):
                    event = await self._receive.receive()
                nursery.cancel_scope.cancel()
        if event is not None:
            return event.rendered(self._render)
        if self._shutdown.is_set() or self._receive.closed:
            raise StopAsyncIteration
        return b": keepalive\n\n"


def _task_not_found(task_id: int) -> Problem:
    return Problem(404, f"task {task_id} not found")


def blueprint(deps: Deps, shutdown: trio.Event) -> Blueprint:
    """The admin routes bound to ``deps``; ``shutdown`` ends open event streams."""
    bp = Blueprint("admin", __name__, url_prefix="/api/v1")
    auth.Guard(deps).protect(bp, auth.ADMIN)

    @bp.get("/tasks")
    @schema.declare(responses={400: schema.ProblemDocument, **AUTH_PROBLEMS})
    @validate_querystring(TaskQuery)
    @validate_response(TaskPage)
    async def list_tasks(query_args: TaskQuery) -> dict[str, Any]:
        """The task log, newest first."""
        limit = query_args.limit
        rows = await tasks.list_recent(
            deps.db, state=query_args.state, limit=limit, before_id=query_args.before_id
        )
        # Keyset pagination: pass next_before_id back as before_id for the next page.
        next_before_id = rows[-1].id if len(rows) == limit else None
        return {"tasks": rows, "next_before_id": next_before_id}

    @bp.get("/tasks/<int:task_id>")
    @schema.declare(responses={404: schema.ProblemDocument, **AUTH_PROBLEMS})
    @validate_response(TaskDetail)
    async def get_task(task_id: int) -> dict[str, Any]:
        """One task with its events and SMS."""
        if task_id > BIGINT_MAX:
            raise _task_not_found(task_id)
        task = await tasks.get(deps.db, task_id)
        if task is None:
            raise _task_not_found(task_id)
        return task.as_json()

    @bp.post("/tasks/<int:task_id>/retry")
    @schema.declare(responses={404: schema.ProblemDocument, 409: RetryRefused, **AUTH_PROBLEMS})
    @validate_response(Task, 202)
    async def retry_task(task_id: int) -> tuple[dict[str, Any], int]:
        """Put a failed task back in the queue (attempts start again from 0)."""
        if task_id > BIGINT_MAX:
            raise _task_not_found(task_id)
        try:
            row = await tasks.retry(deps.db, task_id)
        except tasks.TaskNotFound:
            raise _task_not_found(task_id) from None
        except tasks.TaskNotRetryable as exc:
            raise Problem(409, str(exc), state=exc.state) from None
        log.info("task %d put back in the queue by %s", task_id, auth.current_principal())
        deps.events.publish("task.retry_requested", task_id=task_id)
        return dataclasses.asdict(row), 202

    @bp.get("/queues")
    @schema.declare(responses=AUTH_PROBLEMS)
    @validate_response(Queues)
    async def list_queues() -> dict[str, Any]:
        """Depth, oldest message age and total count of every queue."""
        return {"queues": await queue_stats(deps)}

    @bp.get("/events")
    @schema.declare(
        responses={200: EventMessage, **AUTH_PROBLEMS},
        media_types={200: "text/event-stream"},
    )
    async def events() -> Response:
        """Live events (webhooks, tasks, SMS) as Server-Sent Events."""
        if deps.events.full:
            raise Problem(503, "too many event stream subscribers; try again later")
        stream = EventStream(deps.events, shutdown)
        response = Response(stream, mimetype="text/event-stream")
        response.headers["Cache-Control"] = "no-store"
        # Tells nginx-style proxies not to buffer the stream.
        response.headers["X-Accel-Buffering"] = "no"
        # The stream lives as long as the client listens; no response timeout.
        response.timeout = None
        return response

    return bp
