"""``X-Request-ID`` on every response, and bound to the log context while the request runs.

An ASGI middleware around the whole Quart app rather than ``before/after_request`` hooks:
it sees every response, Quart's own 404/405/413/500 problems and streamed bodies included,
and the log context it binds is inherited by every task Quart starts for the request.

A client's id is echoed when it is sane (1–128 printable ASCII characters, no spaces, so
it cannot forge log lines or headers); otherwise, or when absent, a fresh one is made.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from typing import Any, cast

from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGISendCallable,
    ASGISendEvent,
    Scope,
)

from daemon.platform import logcontext

HEADER = b"x-request-id"
_SANE = re.compile(rb"[\x21-\x7e]{1,128}")


def request_id(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The client's id when sane, else a new random one."""
    for name, value in headers:
        if name == HEADER:
            if _SANE.fullmatch(value):
                return bytes(value).decode("ascii")
            break
    return uuid.uuid4().hex


class RequestIdMiddleware:
    def __init__(self, app: ASGIFramework) -> None:
        self.app = app

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(scope["headers"])
        encoded = rid.encode("ascii")

        async def send_with_id(message: ASGISendEvent) -> None:
            if message["type"] == "http.response.start":
                start = cast(dict[str, Any], message)
                headers = [(k, v) for k, v in start["headers"] if k.lower() != HEADER]
                headers.append((HEADER, encoded))
                start["headers"] = headers
            await send(message)

        with logcontext.bind(request_id=rid):
            await self.app(scope, receive, send_with_id)
