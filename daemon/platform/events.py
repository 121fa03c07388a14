"""In-process event bus: live events for SSE subscribers (GET /api/v1/events).

Publishing costs the producer the same whatever the number of subscribers: the event is
appended to one shared ring buffer (a ``deque`` with a sequence number) and, if some
subscribers are parked waiting, two of them are woken; each woken subscriber wakes two
more (a wake-up tree over that generation's parking lot). Each subscriber reads the ring at
its own pace; one that fell behind by more than the ring holds skips to the oldest event
still there and is told how many it missed (a ``dropped`` event), so a slow subscriber is
never waited for and never holds memory. At most ``max_subscribers`` at once: past that
``subscribe()`` raises ``TooManySubscribers`` (the SSE route answers 503).

The bus is a live view only; the durable record is in PostgreSQL.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

RING_SIZE = 1024
MAX_SUBSCRIBERS = 100
# How many parked subscribers a publish (and then each woken subscriber) wakes.
WAKE_FANOUT = 2


class TooManySubscribers(Exception):
    """Every subscriber slot is taken."""


@dataclass(frozen=True)
class Event:
    id: int
    kind: str  # e.g. webhook.received, task.queued, olt.command, task.succeeded, sms.sent
    at: float
    data: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "at": self.at, **self.data}

    def rendered(self, render: Callable[[Event], bytes]) -> bytes:
        """``render(self)``, computed once per event and renderer however many
        subscribers send it (the admin stream and the console's format it differently)."""
        cache: dict[Callable[[Event], bytes], bytes] | None = self.__dict__.get("_rendered")
        if cache is None:
            cache = {}
            object.__setattr__(self, "_rendered", cache)  # a cache, not a field
        cached = cache.get(render)
        if cached is None:
            cached = cache[render] = render(self)
        return cached


class Subscription:
    """One subscriber's cursor into the bus: ``receive()``, ``receive_nowait()``, ``async for``."""

    def __init__(self, bus: EventBus) -> None:
        self._bus = bus
        self._next_id = bus._last_id + 1  # only what is published from now on
        self.closed = False
        self.missed = 0  # events skipped in all because this subscriber fell behind

    def _take(self) -> Event | None:
        ring = self._bus._ring
        if self.closed:
            raise trio.ClosedResourceError("subscription closed")
        if not ring or self._next_id > ring[-1].id:
            return None
        first = ring[0].id
        if self._next_id < first:
            count = first - self._next_id
            self.missed += count
            self._next_id = first
            return Event(first - 1, "dropped", time.time(), {"count": count})
        event = ring[self._next_id - first]
        self._next_id += 1
        return event

    def receive_nowait(self) -> Event:
        event = self._take()
        if event is None:
            raise trio.WouldBlock
        return event

    async def receive(self) -> Event:
        while True:
            event = self._take()
            if event is not None:
                await trio.lowlevel.checkpoint()
                return event
            lot = self._bus._parked
            await lot.park()
            # The producer woke two; each woken subscriber wakes two more from the same
            # generation, so a publish costs O(1) and everyone is up in log2(n) rounds.
            # Subscribers parking later use the next generation's lot: no wake-up cycles.
            lot.unpark(count=WAKE_FANOUT)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        return await self.receive()


class EventBus:
    def __init__(self, ring_size: int = RING_SIZE, max_subscribers: int = MAX_SUBSCRIBERS) -> None:
        self._ring: deque[Event] = deque(maxlen=ring_size)
        self._ids = itertools.count(1)
        self._last_id = 0
        self._parked = trio.lowlevel.ParkingLot()
        self._subscribers: set[Subscription] = set()
        self.max_subscribers = max_subscribers

    def publish(self, kind: str, **data: Any) -> Event:
        """Append the event to the ring; O(1) in the number of subscribers."""
        self._last_id = next(self._ids)
        event = Event(self._last_id, kind, time.time(), data)
        self._ring.append(event)
        parked = self._parked
        if parked.statistics().tasks_waiting:
            self._parked = trio.lowlevel.ParkingLot()
            parked.unpark(count=WAKE_FANOUT)
        return event

    @contextmanager
    def subscribe(self) -> Iterator[Subscription]:
        """Events published from now on; raises ``TooManySubscribers`` when full."""
        if self.full:
            raise TooManySubscribers(f"at most {self.max_subscribers} event stream subscribers")
        sub = Subscription(self)
        self._subscribers.add(sub)
        try:
            yield sub
        finally:
            sub.closed = True
            self._subscribers.discard(sub)

    @property
    def full(self) -> bool:
        return len(self._subscribers) >= self.max_subscribers

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)
