"""In-process event bus: live events for SSE subscribers (GET /api/v1/events).

Publishing never blocks and never fails: a slow subscriber loses events (and is told how
many through a ``dropped`` event) rather than slowing the workers. The bus is a live view
only; the durable record is in PostgreSQL.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import trio


@dataclass(frozen=True)
class Event:
    id: int
    kind: str  # e.g. webhook.received, task.queued, olt.command, task.succeeded, sms.sent
    at: float
    data: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "at": self.at, **self.data}


class _Subscriber:
    def __init__(self, send: trio.MemorySendChannel[Event]) -> None:
        self.send = send
        self.dropped = 0


class EventBus:
    def __init__(self, buffer: int = 256) -> None:
        self._buffer = buffer
        self._subscribers: set[_Subscriber] = set()
        self._ids = itertools.count(1)

    def publish(self, kind: str, **data: Any) -> Event:
        event = Event(next(self._ids), kind, time.time(), data)
        for sub in list(self._subscribers):
            try:
                if sub.dropped:
                    sub.send.send_nowait(
                        Event(next(self._ids), "dropped", time.time(), {"count": sub.dropped})
                    )
                    sub.dropped = 0
                sub.send.send_nowait(event)
            except trio.WouldBlock:
                sub.dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.discard(sub)
        return event

    @contextmanager
    def subscribe(self) -> Iterator[trio.MemoryReceiveChannel[Event]]:
        send, receive = trio.open_memory_channel[Event](self._buffer)
        sub = _Subscriber(send)
        self._subscribers.add(sub)
        try:
            with receive:
                yield receive
        finally:
            self._subscribers.discard(sub)
            send.close()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)
