"""A webhook receiver over real HTTP/1.1 (h11 on a trio socket), for tests, benches and
the demo: records every request and answers as its ``respond`` callback says (a status,
a slow or huge body, a redirect, or never).

Deliberately small and dependency-free (h11 comes with httpx): hypercorn would do, but
a bench of the sender should not measure a framework on the other side.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

import h11
import trio


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float  # trio.current_time() when the request was complete
    wall: dt.datetime


@dataclass
class Answer:
    status: int = 200
    body: bytes = b"ok"
    headers: list[tuple[str, str]] = field(default_factory=list)
    trickle_seconds: float = 0.0  # > 0: the body goes out a byte at a time, this far apart


Respond = Callable[[Received], Awaitable[Answer]]


async def _ok(_r: Received) -> Answer:
    return Answer()


class WebhookReceiver:
    def __init__(self, respond: Respond = _ok) -> None:
        self.respond = respond
        self.received: list[Received] = []
        self.port = 0
        self._changed = trio.Event()

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(
            partial(self._connection), listeners, task_status=_Started(task_status, self.port)
        )

    async def wait_for(self, count: int, path: str | None = None) -> list[Received]:
        """Until at least ``count`` requests (to ``path``) arrived; returns them."""
        while True:
            got = [r for r in self.received if path is None or r.path == path]
            if len(got) >= count:
                return got
            await self._changed.wait()

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request: h11.Request | None = None
                body = bytearray()
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                    elif isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    elif isinstance(event, h11.ConnectionClosed):
                        return
                assert request is not None
                received = Received(
                    request.method.decode(),
                    request.target.decode(),
                    {k.decode().lower(): v.decode() for k, v in request.headers},
                    bytes(body),
                    trio.current_time(),
                    dt.datetime.now(dt.UTC),
                )
                self.received.append(received)
                self._changed.set()
                self._changed = trio.Event()
                answer = await self.respond(received)
                headers = [*answer.headers, ("content-length", str(len(answer.body)))]
                await stream.send_all(
                    conn.send(h11.Response(status_code=answer.status, headers=headers))
                )
                if answer.body and answer.trickle_seconds > 0:
                    for i in range(len(answer.body)):
                        await stream.send_all(conn.send(h11.Data(data=answer.body[i : i + 1])))
                        await trio.sleep(answer.trickle_seconds)
                elif answer.body:
                    await stream.send_all(conn.send(h11.Data(data=answer.body)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return
        finally:
            await stream.aclose()


class _Started:
    """serve_listeners reports the listeners; callers want the port."""

    def __init__(self, inner: trio.TaskStatus[int], port: int) -> None:
        self._inner, self._port = inner, port

    def started(self, _value: object = None) -> None:
        self._inner.started(self._port)
