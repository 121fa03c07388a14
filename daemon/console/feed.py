"""``GET /console/events``: the event bus as Server-Sent Events, for the overview's feed.

The admin stream's machinery (``admin.EventStream``: subscribe before the first byte,
keepalives, ends on shutdown or disconnect) with the console's session instead of a
Bearer token, which an ``EventSource`` cannot send. Messages carry no ``event:`` line,
so the page's one ``onmessage`` handler sees every kind.
"""

from __future__ import annotations

from quart import Blueprint, Response

from daemon.console.context import Console
from daemon.platform.events import Event
from daemon.platform.http.admin import EventStream
from daemon.platform.http.problem import Problem, dumps


def format_console(event: Event) -> bytes:
    return f"id: {event.id}\ndata: {dumps(event.as_json())}\n\n".encode()


def register(bp: Blueprint, console: Console) -> None:
    deps = console.deps

    @bp.get("/events")
    async def events() -> Response:
        if deps.events.full:
            raise Problem(503, "too many event stream subscribers; try again later")
        stream = EventStream(deps.events, console.shutdown, render=format_console)
        response = Response(stream, mimetype="text/event-stream")
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Accel-Buffering"] = "no"
        response.timeout = None
        return response
