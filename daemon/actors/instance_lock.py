"""The single-instance lock: one daemon per database, held on its own connection.

Owns: a dedicated PostgreSQL connection holding a session advisory lock. Correctness
does not depend on it (every message is held by a short lease, so two consumers at most
repeat idempotent work), but one daemon per database keeps the OLTs from being driven by
two processes and keeps operators sane. ``hold()`` yields an event that is set the
moment the lock's connection is lost; the composition root then stops the workers at
once and takes the lock again before starting them anew.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import trio

from daemon.platform import db as dbmod

log = logging.getLogger(__name__)

# Session-level advisory lock key held by the running daemon ("paymentd" as a number).
INSTANCE_LOCK = 0x7061796D656E7464
# How often the holder checks that its connection is alive: a local flag (asyncpg sees a
# closed socket at once), and a ping at the listener's safety-tick rate for a half-open
# TCP connection (rare; and correctness never depends on this lock, only tidiness).
WATCH_SECONDS = 0.5


class InstanceLockError(Exception):
    """Another paymentd holds the instance lock on this database."""


# The backends holding the instance lock of this database ($1: INSTANCE_LOCK). Advisory
# locks are per database: a daemon on another database of the same server (staging beside
# production) holds a lock with the same key that is not ours.
HOLDERS_SQL = (
    "SELECT l.pid FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted"
    " AND l.objid = ($1::bigint & 4294967295)::oid"
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


async def _holder(conn: Any) -> str | None:
    holder: str | None = await dbmod.bridge(
        conn.fetchval,
        "SELECT coalesce(a.client_addr::text, 'local') || ' pid ' || a.pid"
        f" FROM ({HOLDERS_SQL}) h JOIN pg_stat_activity a USING (pid)",
        INSTANCE_LOCK,
        timeout=5,
    )
    return holder


@contextlib.asynccontextmanager
async def hold(
    url: str, *, wait_seconds: float, ping_seconds: float = 300.0
) -> AsyncIterator[trio.Event]:
    """Take the lock (waiting up to ``wait_seconds`` for a previous holder to go away).

    Raises ``InstanceLockError`` naming the holder when another daemon keeps it, and
    ``DatabaseError`` when the database cannot be reached. Yields ``lost``, set when the
    lock's connection dies while the block runs.
    """
    conn = await dbmod.connect(url)
    try:
        # After pg_terminate_backend (or a SIGKILL) the old backend may need a moment to
        # exit and release it.
        got = False
        with trio.move_on_after(wait_seconds):
            while not got:
                got = await dbmod.bridge(
                    conn.fetchval, "SELECT pg_try_advisory_lock($1)", INSTANCE_LOCK, timeout=5
                )
                if not got:
                    await trio.sleep(0.2)
        if not got:
            holder = await _holder(conn)
            raise InstanceLockError(
                f"another paymentd is already running against this database "
                f"({holder or 'unknown'}); stop it first"
            )
        lost = trio.Event()
        conn.add_termination_listener(lambda _c: lost.set())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch, conn, lost, ping_seconds)
            try:
                yield lost
            finally:
                nursery.cancel_scope.cancel()
    finally:
        await dbmod.close_conn(conn)


async def _watch(conn: Any, lost: trio.Event, ping_seconds: float) -> None:
    next_ping = trio.current_time() + ping_seconds
    while not lost.is_set():
        await trio.sleep(WATCH_SECONDS)
        if conn.is_closed():
            break
        if trio.current_time() >= next_ping:
            next_ping = trio.current_time() + ping_seconds
            try:
                with trio.fail_after(5):
                    await dbmod.bridge(conn.fetchval, "SELECT 1", timeout=5)
            except (dbmod.DatabaseError, trio.TooSlowError):
                break
    if not lost.is_set():
        lost.set()
