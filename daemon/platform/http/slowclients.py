"""Bounded reads for slow clients (defect 19), without a read timeout that would cut SSE.

What bounds what:

- headers: hypercorn closes a connection that is idle (no complete request yet) after
  ``keep_alive_timeout`` and refuses headers over ``h11_max_incomplete_size``; both are
  set explicitly in ``daemon.actors.http_ingress``;
- a body a route reads: Quart's ``BODY_TIMEOUT`` (``BODY_TIMEOUT_SECONDS``; 408 problem);
- a body nobody reads (404, 405, 401, any answer given before the body has arrived):
  hypercorn closes the connection once the answer is sent, because the rest of the body
  can only be discarded. But it does so from the app's task, which quart-trio cancels as
  soon as the answer is out (hypercorn 0.18, quart-trio 0.12): the close is cancelled at
  its first checkpoint, the socket stays open, and a client trickling "the rest" of a
  large announced body kept it open for ever. ``ShieldFinalSend`` shields the last send
  of each answer so that close completes (bounded by ``FINAL_SEND_SECONDS``).

The established SSE stream is the one exemption: it sends for as long as the client
listens, and a listening client sends nothing, which is why there is no read timeout.
"""

from __future__ import annotations

import trio
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGISendCallable,
    ASGISendEvent,
    Scope,
)

# UISP gives up after 10 s; a 1 MiB body on any working link arrives well within that.
BODY_TIMEOUT_SECONDS = 10
# The last chunk of an answer and the close behind it; hypercorn itself shields the
# socket writes, this bounds the wait for a client that stopped reading.
FINAL_SEND_SECONDS = 10.0


class ShieldFinalSend:
    def __init__(self, app: ASGIFramework) -> None:
        self.app = app

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_final_shielded(message: ASGISendEvent) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                with trio.move_on_after(FINAL_SEND_SECONDS, shield=True):
                    await send(message)
            else:
                await send(message)

        await self.app(scope, receive, send_final_shielded)
