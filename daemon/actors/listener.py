"""The LISTEN actor: one dedicated PostgreSQL connection that wakes the queue consumers.

Consumes: NOTIFY on ``"pgmq.q_<queue>.INSERT"`` for every declared queue (from
``pgmq.enable_notify_insert``).
Produces: wake-ups on ``Wakeups`` (one coalescing flag per queue).
Owns: the LISTEN connection.

Order on every (re)connect: put back PGMQ's notify-throttle rows (an UNLOGGED table a
PostgreSQL crash empties, after which inserts never notify again), LISTEN, then wake
every consumer so it drains what was queued while nobody listened (NOTIFY is not buffered
for a dropped listener). A safety tick every ``database.safety_poll_seconds`` asks, in
one statement on this connection, which queues hold a readable message, and wakes only
those consumers. That statement is also the ping that notices a half-open TCP
connection, and it bounds how long a missed notification can delay work. Consumers time
their own future work (retry backoffs, lapsed leases) from the queue's earliest ``vt``,
so an idle tick costs exactly one statement on this connection
(``bench/idle_queries.py`` counts 1.0 per tick).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import asyncpg
import trio

from daemon.platform import db as dbmod
from daemon.platform import queues
from daemon.platform.consumer import Wakeups
from daemon.platform.events import EventBus
from daemon.platform.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass
class ListenerDeps:
    url: str
    queue_names: Sequence[str]
    wakeups: Wakeups
    metrics: Metrics
    events: EventBus
    safety_poll_seconds: float = 300.0
    notify_throttle_ms: int = 100


async def run(
    deps: ListenerDeps,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    started = False
    backoff = 0.5
    names = list(deps.queue_names)
    tick_sql = queues.readable_sql(names)
    wakeups = deps.wakeups
    while True:
        lost_send, lost_recv = trio.open_memory_channel[str](1)
        try:
            conn = await dbmod.connect(deps.url)
        except dbmod.DatabaseError as exc:
            if not started:
                raise
            log.debug("listener: cannot reconnect (%s); retrying in %.1f s", exc, backoff)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
            continue
        try:
            with trio.fail_after(10):
                rearmed = await queues.rearm_notify(
                    dbmod.Conn(conn), names, deps.notify_throttle_ms
                )
            if rearmed:
                log.warning(
                    "listener: %d queue(s) had lost their insert notifications (PostgreSQL "
                    "restarted after a crash?); re-armed",
                    rearmed,
                )

            def on_notify(_c: Any, _pid: int, channel: str, _payload: str, queue: str) -> None:
                deps.metrics.notifications.labels(queue).inc()
                wakeups.wake(queue, notified=True)

            for q in names:
                await dbmod.bridge(
                    conn.add_listener, queues.notify_channel(q), partial(on_notify, queue=q)
                )
            conn.add_termination_listener(_on_lost(lost_send))
            # LISTEN is in effect (autocommit): now drain whatever arrived while deaf.
            wakeups.wake_all()
            backoff = 0.5
            if not started:
                started = True
                task_status.started()
            else:
                deps.metrics.listener_reconnects.inc()
                log.info("listener: reconnected; consumers draining")
            deps.events.publish("listener.connected")
            await _watch(conn, lost_recv, tick_sql, names, deps)
        except (dbmod.DatabaseError, asyncpg.PostgresError, trio.TooSlowError) as exc:
            if not started:
                raise
            log.warning("listener: connection lost (%s); reconnecting", exc)
            deps.events.publish("listener.lost", error=str(exc))
        finally:
            await dbmod.close_conn(conn)


def _on_lost(lost: trio.MemorySendChannel[str]) -> Callable[[Any], None]:
    """asyncpg's termination callback: runs on the asyncio side, so it only signals."""

    def on_lost(_conn: Any) -> None:
        with contextlib.suppress(trio.WouldBlock):
            lost.send_nowait("connection terminated")

    return on_lost


async def _watch(
    conn: asyncpg.Connection,
    lost: trio.MemoryReceiveChannel[str],
    tick_sql: str,
    names: list[str],
    deps: ListenerDeps,
) -> None:
    """Return (by raising) when the connection is gone; tick the safety net meanwhile."""
    # A terminated backend is noticed by asyncpg but may only show as is_closed(); check
    # it at a short interval — a local flag read, not a query.
    tick = deps.safety_poll_seconds
    next_tick = trio.current_time() + tick
    while True:
        with trio.move_on_after(0.5):
            reason = await lost.receive()
            raise dbmod.DatabaseError(reason)
        if conn.is_closed():
            raise dbmod.DatabaseError("connection closed")
        if trio.current_time() >= next_tick:
            next_tick = trio.current_time() + tick
            readable: list[bool] | None = None
            with trio.move_on_after(10):
                readable = await dbmod.bridge(conn.fetchval, tick_sql, timeout=10)
            if readable is None:
                raise dbmod.DatabaseError("listener connection did not answer in 10 s")
            for q, missed in zip(names, readable, strict=True):
                if missed:
                    # Work nobody was woken for: a lost NOTIFY. Counted, then drained.
                    deps.metrics.safety_polls.labels(q).inc()
                    log.info("listener: safety tick found unannounced work in %s", q)
                    deps.wakeups.wake(q)
