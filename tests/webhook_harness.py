"""Helpers for the webhook tests: a hand-moved wall clock, the dispatcher running on the
test's database, events emitted and fanned out through the real outbox queue."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import msgspec
import trio

from daemon.actors import webhook_dispatcher
from daemon.platform import outbox, queues
from daemon.platform.config import WebhooksConfig
from daemon.platform.db import Database
from daemon.platform.metrics import Metrics
from daemon.platform.secrets import Keyring
from daemon.webhooks import endpoints, fanout
from daemon.webhooks.timing import Doorbell, SystemClock, WallClock

BOX = Keyring(bytes(range(32)))
LOOPBACK = WebhooksConfig(allowed_cidrs=("127.0.0.0/8",))


class ManualClock:
    """A wall clock that moves only when the test says; the dispatcher's sleeps on it
    are observable (``wait_asleep``), so a test checks *when* it means to act."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self._now = start or dt.datetime.now(dt.UTC).replace(microsecond=0)
        self._moved = trio.Event()
        self.asleep_until: dt.datetime | None = None
        self._sleep_changed = trio.Event()

    def now(self) -> dt.datetime:
        return self._now

    async def sleep_until(self, when: dt.datetime) -> None:
        self.asleep_until = when
        self._poke()
        try:
            while self._now < when:
                await self._moved.wait()
        finally:
            self.asleep_until = None
            self._poke()

    def _poke(self) -> None:
        self._sleep_changed.set()
        self._sleep_changed = trio.Event()

    def advance_to(self, when: dt.datetime) -> None:
        self._now = max(self._now, when)
        self._moved.set()
        self._moved = trio.Event()

    def advance(self, seconds: float) -> None:
        self.advance_to(self._now + dt.timedelta(seconds=seconds))

    async def wait_asleep(self, until: dt.datetime | None = None) -> dt.datetime:
        """Until the dispatcher sleeps (until ``until``, if given); returns its deadline."""
        while self.asleep_until is None or (until is not None and self.asleep_until != until):
            await self._sleep_changed.wait()
        return self.asleep_until


@dataclass
class Running:
    db: Database
    doorbell: Doorbell
    clock: WallClock
    metrics: Metrics = field(default_factory=Metrics)

    async def emit(self, type: str, data: dict[str, Any]) -> outbox.Event:
        """Emit in a transaction, then fan out from the outbox queue as the consumer does."""
        async with self.db.transaction() as tx:
            event = await outbox.emit(tx, type, data)
        await self.fan_out()
        return event

    async def fan_out(self) -> None:
        deps = fanout.FanoutDeps(self.db, self.doorbell, self.clock)
        while msgs := await queues.read(self.db, outbox.QUEUE, 30, 50):
            for m in msgs:
                await fanout.handle(deps, m, None)  # type: ignore[arg-type]

    async def endpoint(self, url: str, **kw: Any) -> tuple[endpoints.Endpoint, str]:
        async with self.db.transaction() as tx:
            return await endpoints.create(tx, BOX, url=url, **kw)


@asynccontextmanager
async def dispatcher(
    db: Database,
    config: WebhooksConfig = LOOPBACK,
    *,
    clock: WallClock | None = None,
    rand: Any = None,
    **overrides: Any,
) -> AsyncIterator[Running]:
    if overrides:
        config = msgspec.structs.replace(config, **overrides)
    running = Running(db, Doorbell(), clock or SystemClock())
    stop = trio.Event()
    deps = webhook_dispatcher.DispatcherDeps(
        db, BOX, config, running.doorbell, running.metrics, stop, clock=running.clock
    )
    if rand is not None:
        deps.rand = rand
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(webhook_dispatcher.run, deps))
        try:
            yield running
        finally:
            stop.set()
            # In-flight exchanges get a short grace (a hanging one is cut: its lease covers it).
            nursery.cancel_scope.deadline = trio.current_time() + 1


async def attempts_of(db: Database, delivery_id: int | None = None) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT * FROM webhook_attempts WHERE $1::bigint IS NULL OR delivery_id = $1 ORDER BY id",
        delivery_id,
    )
    return [dict(r) for r in rows]


async def wait_until(what: str, check: Any, seconds: float = 30) -> None:
    with trio.fail_after(seconds):
        while not await check():  # noqa: ASYNC110 - polls the database
            await trio.sleep(0.02)
