"""The LISTEN actor: one dedicated PostgreSQL connection that wakes the queue consumers.

Consumes: NOTIFY on ``"pgmq.q_<queue>.INSERT"`` for every queue (from
``pgmq.enable_notify_insert``).
Produces: wake-ups on ``Wakeups`` (one coalescing flag per queue).
Owns: the LISTEN connection, which also holds the single-instance advisory lock — one
daemon per database is what makes ``queues.release_in_flight`` at start-up safe.

Order on every (re)connect: take the lock, LISTEN, then wake every consumer so it drains
what was queued while nobody listened (NOTIFY is not buffered for a dropped listener).
A safety tick every ``database.safety_poll_seconds`` asks, in one statement on this
connection, which queues hold a readable message, and wakes only those consumers. That
statement is also the ping that notices a half-open TCP connection, and it bounds how long
a missed notification can delay work. Consumers time their own future work (retry
backoffs) from the queue's earliest ``vt``, so an idle tick costs exactly one statement
(``bench/idle_queries.py`` counts 1.0 per tick).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import asyncpg
import trio

from daemon.platform import db as dbmod
from daemon.platform import queues
from daemon.platform.consumer import Wakeups
from daemon.platform.deps import Deps

log = logging.getLogger(__name__)

# Session-level advisory lock key held by the running daemon ("paymentd" as a number).
INSTANCE_LOCK = 0x7061796D656E7464


class InstanceLockError(Exception):
    """Another paymentd holds the instance lock on this database."""


async def _take_lock(conn: asyncpg.Connection, wait_seconds: float) -> None:
    # After pg_terminate_backend the old backend may need a moment to exit and release it.
    with trio.move_on_after(wait_seconds):
        while True:
            got = await dbmod.bridge(
                conn.fetchval, "SELECT pg_try_advisory_lock($1)", INSTANCE_LOCK
            )
            if got:
                return
            await trio.sleep(0.2)
    holder = await dbmod.bridge(
        conn.fetchval,
        "SELECT a.client_addr::text || ' pid ' || a.pid FROM pg_locks l"
        " JOIN pg_stat_activity a USING (pid)"
        " WHERE l.locktype = 'advisory' AND l.objid = ($1::bigint & 4294967295)::oid",
        INSTANCE_LOCK,
    )
    raise InstanceLockError(
        f"another paymentd is already running against this database ({holder or 'unknown'}); "
        "stop it first"
    )


async def run(
    deps: Deps,
    wakeups: Wakeups,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    cfg = deps.config.database
    started = False
    backoff = 0.5
    while True:
        lost_send, lost_recv = trio.open_memory_channel[str](1)
        try:
            conn = await dbmod.connect(cfg.url)
        except dbmod.DatabaseError as exc:
            if not started:
                raise
            log.warning("listener: cannot reconnect (%s); retrying in %.1f s", exc, backoff)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
            continue
        try:
            await _take_lock(conn, wait_seconds=10.0 if started else 2.0)

            def on_notify(_c: Any, _pid: int, channel: str, _payload: str, queue: str) -> None:
                deps.metrics.notifications.labels(queue).inc()
                wakeups.wake(queue, notified=True)

            on_lost = _on_lost(lost_send)

            for q in queues.ALL:
                await dbmod.bridge(
                    conn.add_listener, queues.notify_channel(q), partial(on_notify, queue=q)
                )
            conn.add_termination_listener(on_lost)
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
            await _watch(conn, lost_recv, wakeups, deps, cfg.safety_poll_seconds)
        except (dbmod.DatabaseError, asyncpg.PostgresError) as exc:
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


# One statement per safety tick: for each queue, is a message readable right now?
_READABLE_SQL = "SELECT ARRAY[{}]".format(
    ", ".join(
        f"EXISTS (SELECT 1 FROM pgmq.q_{q} WHERE vt <= clock_timestamp())" for q in queues.ALL
    )
)


async def _watch(
    conn: asyncpg.Connection,
    lost: trio.MemoryReceiveChannel[str],
    wakeups: Wakeups,
    deps: Deps,
    tick: float,
) -> None:
    """Return (by raising) when the connection is gone; tick the safety net meanwhile."""
    # A terminated backend is noticed by asyncpg but may only show as is_closed(); check
    # it at a short interval — a local flag read, not a query.
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
                readable = await dbmod.bridge(conn.fetchval, _READABLE_SQL, timeout=10)
            if readable is None:
                raise dbmod.DatabaseError("listener connection did not answer in 10 s")
            for q, missed in zip(queues.ALL, readable, strict=True):
                if missed:
                    # Work nobody was woken for: a lost NOTIFY. Counted, then drained.
                    deps.metrics.safety_polls.labels(q).inc()
                    log.info("listener: safety tick found unannounced work in %s", q)
                    wakeups.wake(q)
