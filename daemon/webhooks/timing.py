"""The dispatcher's clock and doorbell.

``WallClock`` is the time delivery schedules are written in (``next_attempt_at`` is a
wall-clock instant in PostgreSQL, so it survives restarts). The daemon uses
``SystemClock``; tests inject a clock they move by hand, so the retry schedule is checked
at its exact instants against the real database and a real receiver.

``Doorbell`` is a coalescing wake-up for the dispatcher (new deliveries, a freed slot):
one pending ring is the same news as many, so ``ring`` never blocks and drops extras.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Protocol

import trio


class WallClock(Protocol):
    def now(self) -> dt.datetime: ...

    async def sleep_until(self, when: dt.datetime) -> None: ...


class SystemClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    async def sleep_until(self, when: dt.datetime) -> None:
        await trio.sleep(max(0.0, (when - self.now()).total_seconds()))


class Doorbell:
    def __init__(self) -> None:
        self._send, self._recv = trio.open_memory_channel[None](1)

    def ring(self) -> None:
        with contextlib.suppress(trio.WouldBlock):
            self._send.send_nowait(None)

    async def wait(self) -> None:
        await self._recv.receive()

    def clear(self) -> None:
        with contextlib.suppress(trio.WouldBlock):
            self._recv.receive_nowait()
