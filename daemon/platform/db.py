"""The database bridge: asyncpg (an asyncio library) called from trio through trio-asyncio.

This module and ``daemon.network.olt.ssh`` are the only places that cross the bridge, so the rest
of the daemon is plain trio and cancellation behaves. Every call has an asyncio-side
timeout too (``command_timeout``), because a trio deadline cannot cut an asyncio call short.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeAlias, TypeVar

import asyncpg
import trio
import trio_asyncio
from trio_asyncio import aio_as_trio

log = logging.getLogger(__name__)

# asyncpg ships no type information: a Record is a Mapping-like row.
Record: TypeAlias = Any
T = TypeVar("T")


# The largest bigint: ids from outside (URLs, webhook bodies) beyond it are refused up front
# rather than failing inside the database.
BIGINT_MAX = 2**63 - 1


class DatabaseError(Exception):
    """The database is unreachable or the connection broke; retry later."""


# Errors that mean "the database is not there right now", as opposed to a bad query.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
)


async def bridge(fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    try:
        result: T = await aio_as_trio(fn)(*args, **kwargs)
        return result
    except asyncio.CancelledError as exc:
        # If trio is cancelling us, let its Cancelled through. Otherwise this is an asyncio
        # cancellation trio did not ask for (a connection torn down from under us): it
        # must not escape as a BaseException past `except Exception` handlers.
        await trio.lowlevel.checkpoint_if_cancelled()
        raise DatabaseError(f"database call cancelled on the asyncio side: {exc!r}") from exc
    except _UNAVAILABLE as exc:
        raise DatabaseError(str(exc) or type(exc).__name__) from exc


# How many cancelled timers a loop may hold before they are swept out of its heap.
_SWEEP_AFTER = 256


def prune_cancelled_timers() -> None:
    """Make the running trio-asyncio loop drop cancelled timers, as asyncio's own loop does.

    Every asyncpg call arms asyncio timers (``command_timeout``, the pool-acquire
    ``timeout``, the pool's idle-connection timer re-armed on each release) and cancels
    them when the call ends. asyncio's loop sweeps cancelled timers out of its heap once
    they are half of it; trio-asyncio 0.16's ``_timer_handle_cancelled`` does nothing, so
    each stays in the heap until its due time (30 s to 300 s later) together with the
    ``contextvars.Context`` it captured: the request's context, so the request's socket
    stream and hypercorn's events too. That was ~16 KB held per request
    (bench/soak_memory.py). Sweeping here keeps it flat. Idempotent; per loop.
    """
    loop = trio_asyncio.current_loop.get()
    if loop is None or getattr(loop, "_paymentd_sweeps", False):
        return
    cancelled = 0

    def timer_handle_cancelled(handle: asyncio.TimerHandle) -> None:
        nonlocal cancelled
        cancelled += 1
        timers: list[asyncio.TimerHandle] = loop._timers
        if cancelled > _SWEEP_AFTER and cancelled * 2 > len(timers):
            timers[:] = [t for t in timers if not t.cancelled()]
            heapq.heapify(timers)
            cancelled = 0

    loop._timer_handle_cancelled = timer_handle_cancelled
    loop._paymentd_sweeps = True


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(typ, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _reset_connection(conn: asyncpg.Connection) -> None:
    # asyncpg's default reset sends "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    # RESET ALL" on every release: an extra round trip per statement, and half of the idle
    # query rate (measured, bench/idle_queries.py). Pool connections never LISTEN, SET,
    # hold session locks or cursors (the listener has its own connection), so all a
    # returned connection can need is the end of an interrupted transaction.
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def connect(url: str, *, connect_timeout: float = 10.0) -> asyncpg.Connection:
    """One dedicated connection (the listener's); caller closes it with ``close_conn``."""
    prune_cancelled_timers()
    conn: asyncpg.Connection = await bridge(asyncpg.connect, url, timeout=connect_timeout)
    await bridge(_init_connection, conn)
    return conn


async def close_conn(conn: asyncpg.Connection) -> None:
    with trio.move_on_after(5, shield=True):
        try:
            await bridge(conn.close, timeout=3)
        except Exception:
            conn.terminate()


class Conn:
    """A checked-out connection (inside ``Database.transaction`` or ``Database.acquire``)."""

    def __init__(self, raw: asyncpg.Connection) -> None:
        self.raw = raw

    async def fetch(self, sql: str, *args: Any) -> list[Record]:
        rows: list[Record] = await bridge(self.raw.fetch, sql, *args)
        return rows

    async def fetchrow(self, sql: str, *args: Any) -> Record | None:
        row: Record | None = await bridge(self.raw.fetchrow, sql, *args)
        return row

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await bridge(self.raw.fetchval, sql, *args)

    async def execute(self, sql: str, *args: Any) -> str:
        status: str = await bridge(self.raw.execute, sql, *args)
        return status


class Database:
    """A pool of asyncpg connections with a trio-facing API.

    Single statements run on any pooled connection; ``transaction()`` yields a ``Conn``
    whose statements commit together (or roll back on any exception, cancellation
    included).
    """

    def __init__(self, pool: asyncpg.Pool, url: str) -> None:
        self._pool = pool
        self.url = url

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        url: str,
        *,
        min_size: int = 2,
        max_size: int = 10,
        command_timeout: float = 30.0,
    ) -> AsyncIterator[Database]:
        prune_cancelled_timers()
        pool = await bridge(
            asyncpg.create_pool,
            url,
            min_size=min_size,
            max_size=max_size,
            command_timeout=command_timeout,
            init=_init_connection,
            reset=_reset_connection,
            # asyncpg arms 300 s timers in the caller's context, which keep that
            # request's objects alive until they fire: one re-armed on every release (idle
            # connection lifetime) and one per newly prepared statement (cache expiry).
            # Pool connections stay open instead (at most database.pool_max), and the
            # statement cache is bounded by size alone (the daemon's SQL is fixed text).
            max_inactive_connection_lifetime=0,
            max_cached_statement_lifetime=0,
            timeout=10,
        )
        try:
            yield cls(pool, url)
        finally:
            with trio.move_on_after(5, shield=True):
                try:
                    await bridge(pool.close)
                except Exception:
                    pool.terminate()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        """BEGIN ... COMMIT on one pooled connection; ROLLBACK on any exception.

        The ending (COMMIT or ROLLBACK) and the release are shielded: a trio cancellation
        of the body (a client hanging up on the HTTP handler, a shutdown) must not leave
        the connection ``idle in transaction`` holding row locks, out of the pool for good.
        A connection whose ending fails is terminated so the pool replaces it.
        """
        raw = await bridge(self._pool.acquire, timeout=10)
        clean = False
        try:
            await bridge(raw.execute, "BEGIN")
            try:
                yield Conn(raw)
            except BaseException:
                with trio.move_on_after(5, shield=True):
                    try:
                        await bridge(raw.execute, "ROLLBACK")
                        clean = True
                    except Exception:
                        log.warning("ROLLBACK failed; dropping the connection", exc_info=True)
                raise
            with trio.move_on_after(10, shield=True):
                try:
                    await bridge(raw.execute, "COMMIT")
                finally:
                    # A COMMIT the server refused (deferred constraint, serialization)
                    # still ends the transaction: the connection is reusable.
                    clean = not raw.is_in_transaction()
            if not clean:
                raise DatabaseError("COMMIT did not finish in 10 s; outcome unknown")
        finally:
            if not clean:
                raw.terminate()
            with trio.move_on_after(5, shield=True):
                await bridge(self._pool.release, raw, timeout=5)

    async def fetch(self, sql: str, *args: Any) -> list[Record]:
        rows: list[Record] = await bridge(self._pool.fetch, sql, *args)
        return rows

    async def fetchrow(self, sql: str, *args: Any) -> Record | None:
        row: Record | None = await bridge(self._pool.fetchrow, sql, *args)
        return row

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await bridge(self._pool.fetchval, sql, *args)

    async def execute(self, sql: str, *args: Any) -> str:
        status: str = await bridge(self._pool.execute, sql, *args)
        return status


Executor = Database | Conn
