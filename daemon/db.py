"""The database bridge: asyncpg (an asyncio library) called from trio through trio-asyncio.

This module and ``daemon.olt.ssh`` are the only places that cross the bridge, so the rest
of the daemon is plain trio and cancellation behaves. Every call has an asyncio-side
timeout too (``command_timeout``), because a trio deadline cannot cut an asyncio call short.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeAlias, TypeVar

import asyncpg
import trio
from trio_asyncio import aio_as_trio

log = logging.getLogger(__name__)

# asyncpg ships no type information: a Record is a Mapping-like row.
Record: TypeAlias = Any
T = TypeVar("T")


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
        # An asyncio cancellation trio did not ask for (e.g. a connection torn down from
        # under us) must not escape as a BaseException past `except Exception` handlers.
        raise DatabaseError(f"database call cancelled on the asyncio side: {exc!r}") from exc
    except _UNAVAILABLE as exc:
        raise DatabaseError(str(exc) or type(exc).__name__) from exc


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(typ, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def connect(url: str, *, connect_timeout: float = 10.0) -> asyncpg.Connection:
    """One dedicated connection (the listener's); caller closes it with ``close_conn``."""
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
        pool = await bridge(
            asyncpg.create_pool,
            url,
            min_size=min_size,
            max_size=max_size,
            command_timeout=command_timeout,
            init=_init_connection,
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
    async def acquire(self) -> AsyncIterator[Conn]:
        async with aio_as_trio(self._pool.acquire(timeout=10)) as raw:
            yield Conn(raw)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        try:
            async with (
                aio_as_trio(self._pool.acquire(timeout=10)) as raw,
                aio_as_trio(raw.transaction()),
            ):
                yield Conn(raw)
        except _UNAVAILABLE as exc:
            raise DatabaseError(str(exc) or type(exc).__name__) from exc
        except asyncio.CancelledError as exc:
            raise DatabaseError(f"database call cancelled on the asyncio side: {exc!r}") from exc

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
