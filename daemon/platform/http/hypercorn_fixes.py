"""One fix to hypercorn 0.18, applied when ``daemon.platform.http`` is imported.

HTTP/2 (cleartext, prior knowledge: any client can ask for it) crashed the whole HTTP
ingress actor: when a route answers before the request body is complete (a 404, 405, 401
or 413), hypercorn forgets the stream, and the next DATA frame for it raises ``KeyError``
in ``H2Protocol._handle_events``. On trio that exception leaves the connection's task
group and then ``serve()`` itself, so one request ends every connection. The
``StreamEnded`` branch beside it already ignores a forgotten stream; this does the same
for ``DataReceived``, still handing the flow-control window back so the connection's
other streams are not starved. Upstream: pgjones/hypercorn PRs #312/#334/#365 (open).
Drop this module once the pinned hypercorn has that fix.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import h2.events
from hypercorn.protocol.h2 import H2Protocol

_PATCHED = "_paymentd_ignores_data_for_closed_streams"


def apply() -> None:
    if getattr(H2Protocol, _PATCHED, False):
        return
    original: Callable[[Any, list[h2.events.Event]], Awaitable[None]] = H2Protocol._handle_events

    async def _handle_events(self: Any, events: list[h2.events.Event]) -> None:
        # One event at a time: a stream can be forgotten by an earlier event of the batch.
        for event in events:
            if isinstance(event, h2.events.DataReceived) and event.stream_id not in self.streams:
                self.connection.acknowledge_received_data(
                    event.flow_controlled_length, event.stream_id
                )
                continue
            await original(self, [event])

    H2Protocol._handle_events = _handle_events  # type: ignore[method-assign]
    setattr(H2Protocol, _PATCHED, True)
