"""``GET /console/events``: the event bus as Server-Sent Events, for the overview's feed.

The admin stream's machinery (``admin.EventStream``: subscribe before the first byte,
keepalives, ends on shutdown or disconnect) with the console's session instead of a
Bearer token, which an ``EventSource`` cannot send. Messages carry no ``event:`` line,
so the page's one ``onmessage`` handler sees every kind.

A stream lives no longer than its session: it ends when the session expires, and within
``RECHECK_SECONDS`` of the session ending otherwise (sign-out, operator disabled or its
password changed, admin token changed). The browser's reconnect then gets a 401.
"""

from __future__ import annotations

import datetime as dt
from types import TracebackType

import trio
from quart import Blueprint, Response, request
from quart.wrappers.response import ResponseBody

from daemon.console import accounts, guard
from daemon.console.context import Console
from daemon.platform.deps import Deps
from daemon.platform.events import Event
from daemon.platform.http.admin import KEEPALIVE_SECONDS, EventStream
from daemon.platform.http.problem import Problem, dumps

# How often an open stream asks whether its session still exists (one indexed lookup).
RECHECK_SECONDS = KEEPALIVE_SECONDS


def format_console(event: Event) -> bytes:
    return f"id: {event.id}\ndata: {dumps(event.as_json())}\n\n".encode()


class SessionStream(ResponseBody):
    """An ``EventStream`` that ends with the session it was opened under."""

    def __init__(self, inner: EventStream, deps: Deps, token: str, expires_at: dt.datetime):
        self._inner = inner
        self._deps = deps
        self._token = token
        left = (expires_at - dt.datetime.now(dt.UTC)).total_seconds()
        self._expires = trio.current_time() + left
        self._recheck_at = trio.current_time() + RECHECK_SECONDS

    async def __aenter__(self) -> SessionStream:
        await self._inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._inner.__aexit__(exc_type, exc_value, tb)

    def __aiter__(self) -> SessionStream:
        return self

    async def __anext__(self) -> bytes:
        now = trio.current_time()
        if now >= self._expires:
            raise StopAsyncIteration
        if now >= self._recheck_at:
            self._recheck_at = now + RECHECK_SECONDS
            admin_token = self._deps.config.http.admin_token.reveal()
            if await accounts.find_session(self._deps.db, self._token, admin_token) is None:
                raise StopAsyncIteration
        # A memory channel's receive is cancel-safe: stopping the wait loses no event.
        with trio.move_on_at(min(self._expires, self._recheck_at)):
            return await self._inner.__anext__()
        return b": keepalive\n\n"


def register(bp: Blueprint, console: Console) -> None:
    deps = console.deps

    @bp.get("/events")
    async def events() -> Response:
        if deps.events.full:
            raise Problem(503, "too many event stream subscribers; try again later")
        stream = SessionStream(
            EventStream(deps.events, console.shutdown, render=format_console),
            deps,
            request.cookies.get(guard.COOKIE, ""),
            guard.current().expires_at,
        )
        response = Response(stream, mimetype="text/event-stream")
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Accel-Buffering"] = "no"
        response.timeout = None
        return response
