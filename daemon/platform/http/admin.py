"""``/api/v1/*``: the admin API (task log, queues, live events) behind a Bearer token.

Consumes ``Deps``: the task log (``daemon.network.tasks``), PGMQ statistics
(``daemon.platform.queues``) and
the in-process ``EventBus``. Produces JSON documents (datetimes as ISO 8601, UUIDs as
strings), RFC 9457 problems for every error, and a ``text/event-stream`` of bus events.

Authentication is ``Authorization: Bearer <http.admin_token>`` compared in constant time;
an empty configured token disables the whole API (503), so it is never open by accident.
"""

from __future__ import annotations

import hmac
import logging
from contextlib import ExitStack, suppress
from types import TracebackType
from typing import Any

import trio
from quart import Blueprint, Response, request
from quart.wrappers.response import ResponseBody

from daemon.network import tasks
from daemon.platform.db import BIGINT_MAX
from daemon.platform.deps import Deps
from daemon.platform.events import Event, EventBus, Subscription, TooManySubscribers
from daemon.platform.http.health import queue_stats
from daemon.platform.http.problem import Problem, dumps, json_response

log = logging.getLogger(__name__)

TASK_STATES = ("queued", "running", "succeeded", "failed", "superseded")
MAX_LIMIT = 200
DEFAULT_LIMIT = 50
_LIST_PARAMS = frozenset({"state", "limit", "before_id"})
# A comment line this often keeps proxies and clients from timing an idle stream out.
KEEPALIVE_SECONDS = 15.0


def check_bearer(deps: Deps, authorization: str | None) -> None:
    """Raise a 401/503 ``Problem`` unless ``authorization`` carries the admin token."""
    expected = deps.config.http.admin_token
    if not expected:
        raise Problem(503, "admin API disabled: set http.admin_token")
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Problem(
            401,
            "send Authorization: Bearer <http.admin_token>",
            headers={"WWW-Authenticate": 'Bearer realm="paymentd"'},
        )
    # Bytes, because compare_digest refuses non-ASCII str and headers are user input.
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise Problem(
            401,
            "the bearer token is not valid",
            headers={"WWW-Authenticate": 'Bearer realm="paymentd", error="invalid_token"'},
        )


def _int_param(name: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise Problem(400, f"{name} must be an integer", field=name) from None
    if not low <= value <= high:
        raise Problem(400, f"{name} must be between {low} and {high}", field=name)
    return value


def parse_list_query(args: Any) -> tuple[str | None, int, int | None]:
    """``state``, ``limit`` and ``before_id`` from a query string; ``Problem(400)`` if bad."""
    unknown = sorted(set(args.keys()) - _LIST_PARAMS)
    if unknown:
        raise Problem(400, f"unknown query parameter {unknown[0]!r}", field=unknown[0])
    state = args.get("state")
    if state is not None and state not in TASK_STATES:
        raise Problem(400, f"state must be one of {', '.join(TASK_STATES)}", field="state")
    limit = DEFAULT_LIMIT
    if "limit" in args:
        limit = _int_param("limit", args["limit"], 1, MAX_LIMIT)
    before_id = None
    if "before_id" in args:
        before_id = _int_param("before_id", args["before_id"], 1, BIGINT_MAX)
    return state, limit, before_id


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
        self, bus: EventBus, shutdown: trio.Event, keepalive: float = KEEPALIVE_SECONDS
    ) -> None:
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
            return event.rendered(format_event)
        if self._shutdown.is_set() or self._receive.closed:
            raise StopAsyncIteration
        return b": keepalive\n\n"


def _task_not_found(task_id: int) -> Problem:
    return Problem(404, f"task {task_id} not found")


def blueprint(deps: Deps, shutdown: trio.Event) -> Blueprint:
    """The admin routes bound to ``deps``; ``shutdown`` ends open event streams."""
    bp = Blueprint("admin", __name__, url_prefix="/api/v1")

    @bp.before_request
    async def _authenticate() -> None:
        check_bearer(deps, request.headers.get("Authorization"))

    @bp.get("/tasks")
    async def list_tasks() -> Response:
        state, limit, before_id = parse_list_query(request.args)
        rows = await tasks.list_recent(deps.db, state=state, limit=limit, before_id=before_id)
        # Keyset pagination: pass next_before_id back as before_id for the next page.
        next_before_id = rows[-1]["id"] if len(rows) == limit else None
        return json_response({"tasks": rows, "next_before_id": next_before_id})

    @bp.get("/tasks/<int:task_id>")
    async def get_task(task_id: int) -> Response:
        if task_id > BIGINT_MAX:
            raise _task_not_found(task_id)
        task = await tasks.get(deps.db, task_id)
        if task is None:
            raise _task_not_found(task_id)
        return json_response(task)

    @bp.post("/tasks/<int:task_id>/retry")
    async def retry_task(task_id: int) -> Response:
        if task_id > BIGINT_MAX:
            raise _task_not_found(task_id)
        try:
            row = await tasks.retry(deps.db, task_id)
        except tasks.TaskNotFound:
            raise _task_not_found(task_id) from None
        except tasks.TaskNotRetryable as exc:
            raise Problem(409, str(exc), state=exc.state) from None
        log.info("task %d put back in the queue by an admin", task_id)
        deps.events.publish("task.retry_requested", task_id=task_id)
        return json_response(dict(row), status=202)

    @bp.get("/queues")
    async def list_queues() -> Response:
        stats = await queue_stats(deps)
        return json_response({"queues": stats})

    @bp.get("/events")
    async def events() -> Response:
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
