"""The database bridge: asyncpg (an asyncio library) called from trio through trio-asyncio.

This module and ``daemon.network.olt.ssh`` are the only places that cross the bridge, so the rest
of the daemon is plain trio and cancellation behaves.

A trio deadline cannot cut an asyncio call short (a cancelled asyncpg query waits for the
server to confirm the cancel: with the server frozen, that is the ``command_timeout``,
30 s). So every call here passes the caller's trio deadline down as asyncpg's own
``timeout=`` (``budget()``), a little earlier than trio's, and a connection whose
statement timed out or was cancelled is terminated instead of waited for.

An outage is logged twice, once when it starts and once when it ends (``Availability``);
asyncpg's own retry warnings (a traceback every few seconds) are filtered out.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import math
import time
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


# The asyncio side gives up this long before the caller's trio deadline, so asyncpg's
# timeout (prompt, terminates nothing by itself) fires before trio's cancellation (which
# makes asyncpg wait for the server to acknowledge a cancel request).
DEADLINE_MARGIN = 0.05
ACQUIRE_TIMEOUT = 10.0


def budget(limit: float | None = None) -> float | None:
    """Seconds an asyncio-side call may take: ``limit``, capped by the trio deadline.

    None when neither bounds it (asyncpg then applies the pool's ``command_timeout``).
    """
    deadline = trio.current_effective_deadline()
    if deadline == math.inf:
        return limit
    left = deadline - trio.current_time()
    left = max(left - min(DEADLINE_MARGIN, left / 5), 0.001)
    return left if limit is None else min(limit, left)


class Availability:
    """Logs an outage once when it starts and once when it ends.

    Fed by every bridged call (a success, or an error meaning "the database is not
    there") and by asyncpg's pool-floor retries, which it silences. One per process:
    a daemon talks to one database.
    """

    def __init__(self) -> None:
        self.down_since: float | None = None  # time.time() of the first failure
        self.failures = 0
        self.reason = ""

    def failed(self, reason: str) -> None:
        self.failures += 1
        if self.down_since is None:
            self.down_since = time.time()
            self.reason = reason
            log.warning(
                "database unavailable: %s; retrying in the background, logged again when"
                " it is back",
                reason,
            )

    def succeeded(self) -> None:
        if self.down_since is not None:
            log.warning(
                "database available again after %.1f s (%d failed attempts; first error: %s)",
                time.time() - self.down_since,
                self.failures,
                self.reason,
            )
            self.down_since = None
            self.failures = 0
            self.reason = ""


availability = Availability()


class _PoolRetryFilter(logging.Filter):
    """asyncpg logs "Failed to restore the pool connection floor" with a traceback on
    every reconnect attempt of an outage: count it as a failure, do not print it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Failed to restore the pool connection floor"):
            exc = record.exc_info[1] if record.exc_info else None
            availability.failed(_describe(exc) if exc else "cannot reconnect")
            return False
        return True


logging.getLogger("asyncpg.pool").addFilter(_PoolRetryFilter())


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer before the deadline (database or network hung?)"
    return str(exc) or type(exc).__name__


async def bridge(fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    try:
        result: T = await aio_as_trio(fn)(*args, **kwargs)
    except asyncio.CancelledError as exc:
        # If trio is cancelling us, let its Cancelled through. Otherwise this is an asyncio
        # cancellation trio did not ask for (a connection torn down from under us): it
        # must not escape as a BaseException past `except Exception` handlers.
        await trio.lowlevel.checkpoint_if_cancelled()
        availability.failed("database call cancelled on the asyncio side")
        raise DatabaseError(f"database call cancelled on the asyncio side: {exc!r}") from exc
    except _UNAVAILABLE as exc:
        availability.failed(_describe(exc))
        deadline = trio.current_effective_deadline()
        if isinstance(exc, TimeoutError) and deadline - trio.current_time() <= DEADLINE_MARGIN:
            # Our own budget() expired just ahead of the caller's trio deadline: let that
            # deadline fire as the caller wrote it (move_on_after / fail_after), rather
            # than surprising it with an error a few milliseconds early.
            await trio.sleep_until(deadline)
        raise DatabaseError(_describe(exc)) from exc
    availability.succeeded()
    return result


async def _pooled(
    pool: asyncpg.Pool,
    method: str,
    sql: str,
    args: tuple[Any, ...],
    limit: float,
    statement_limit: float,
) -> Any:
    """One statement on a pooled connection, on the asyncio side (one bridge crossing).

    Like ``pool.fetchval`` & co., except that a connection whose statement did not finish
    (timeout, cancellation, broken connection) is terminated, not handed back to wait for
    the server's answer to a cancel request: that wait is what outlived every deadline.
    """
    started = time.monotonic()
    con = await pool.acquire(timeout=min(limit, ACQUIRE_TIMEOUT))
    try:
        left = max(min(limit - (time.monotonic() - started), statement_limit), 0.001)
        return await getattr(con, method)(sql, *args, timeout=left)
    except BaseException as exc:
        if not isinstance(exc, asyncpg.PostgresError):  # a refused statement is harmless
            con.terminate()
        raise
    finally:
        await pool.release(con, timeout=5)


# What ``Database.fetchrow_then`` runs second: the statement and its arguments made from
# the first statement's row, or None for nothing more. Plain Python, no I/O: it runs on
# the asyncio side, between the two statements.
Then: TypeAlias = Callable[[Record | None], tuple[str, tuple[Any, ...]] | None]


async def _pooled_then(
    pool: asyncpg.Pool,
    sql: str,
    args: tuple[Any, ...],
    then: Then,
    limit: float,
    statement_limit: float,
) -> tuple[Record | None, Record | None]:
    """``_pooled``'s ``fetchrow``, then the ``fetchrow`` that ``then`` makes of its row, on
    one connection in one bridge crossing; each statement is its own transaction."""
    started = time.monotonic()
    con = await pool.acquire(timeout=min(limit, ACQUIRE_TIMEOUT))
    try:
        left = max(min(limit - (time.monotonic() - started), statement_limit), 0.001)
        first = await con.fetchrow(sql, *args, timeout=left)
        follow = then(first)
        if follow is None:
            return first, None
        left = max(min(limit - (time.monotonic() - started), statement_limit), 0.001)
        return first, await con.fetchrow(follow[0], *follow[1], timeout=left)
    except BaseException as exc:
        if not isinstance(exc, asyncpg.PostgresError):  # a refused statement is harmless
            con.terminate()
        raise
    finally:
        await pool.release(con, timeout=5)


# How many cancelled timers a loop may hold before they are swept out of its heap.
_SWEEP_AFTER = 256


def prepare_loop() -> None:
    """Adapt the running trio-asyncio loop to asyncpg: sweep timers, absorb benign errors.

    Idempotent, per loop; ``Database.open`` and ``connect`` call it.
    """
    loop = trio_asyncio.current_loop.get()
    if loop is None or getattr(loop, "_paymentd_prepared", False):
        return
    _prune_cancelled_timers(loop)
    _absorb_abandoned_connects(loop)
    _run_ready_callbacks_together(loop)
    loop._paymentd_prepared = True


def _absorb_abandoned_connects(loop: Any) -> None:
    """A connect or cancel request abandoned mid-handshake (its deadline passed, the
    server went away) leaves asyncpg's TLS-negotiation future failed and unread: asyncio
    reports "Future exception was never retrieved" through the loop's exception handler,
    which by default tears the whole bridge down and in the daemon logs an ERROR each
    time. The call that abandoned it already failed (or was cancelled: a shutdown, a
    deadline) and said so; this is only its echo. Everything else is passed on."""
    previous = loop.get_exception_handler()

    def handler(the_loop: Any, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if context.get("message") == "Future exception was never retrieved" and isinstance(
            exc, ConnectionError | OSError
        ):
            log.debug("abandoned connection attempt: %s", _describe(exc))
            return
        if previous is not None:
            previous(the_loop, context)
        else:
            the_loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def _run_ready_callbacks_together(loop: Any) -> None:
    """Run the asyncio callbacks that are ready in one batch, as asyncio's own loop does.

    trio-asyncio 0.16 runs one callback per pass of its main-loop task, and each pass
    is a trio checkpoint: a trip through trio's scheduler per callback, and an asyncpg
    statement makes several (its write, the read, the future's and the task's wake-ups).
    asyncio runs everything that is ready at the start of an iteration before polling
    again; so does this (what becomes ready during the batch waits for the next one), and
    it skips the callback type check that asyncio does only in debug mode and trio-asyncio
    always. Measured with bench/payments_create.py: see the commit that added it.
    """
    run_one = loop._main_loop_one
    queue = loop._q_recv

    async def main_loop_one(no_wait: bool = False) -> None:
        await run_one(no_wait)
        ready = queue.statistics().current_buffer_used
        try:
            for _ in range(ready):
                await run_one(True)  # pops a due timer first, else the next callback
        except trio.WouldBlock:
            pass

    loop._main_loop_one = main_loop_one
    if not loop.get_debug():
        loop._check_callback = lambda callback, method: None


def _prune_cancelled_timers(loop: Any) -> None:
    """Make the loop drop cancelled timers, as asyncio's own loop does.

    Every asyncpg call arms asyncio timers (``command_timeout``, the pool-acquire
    ``timeout``, the pool's idle-connection timer re-armed on each release) and cancels
    them when the call ends. asyncio's loop sweeps cancelled timers out of its heap once
    they are half of it; trio-asyncio 0.16's ``_timer_handle_cancelled`` does nothing, so
    each stays in the heap until its due time (30 s to 300 s later) together with the
    ``contextvars.Context`` it captured: the request's context, so the request's socket
    stream and hypercorn's events too. That was ~16 KB held per request
    (bench/soak_memory.py). Sweeping here keeps it flat.
    """
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


def _mid_statement(raw: asyncpg.Connection) -> bool:
    """Whether asyncpg is still waiting for the server to end a cancelled statement."""
    is_cancelling = getattr(raw._protocol, "_is_cancelling", None)
    return bool(is_cancelling()) if callable(is_cancelling) else False


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
    prepare_loop()
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
        rows: list[Record] = await bridge(self.raw.fetch, sql, *args, timeout=budget())
        return rows

    async def fetchrow(self, sql: str, *args: Any) -> Record | None:
        row: Record | None = await bridge(self.raw.fetchrow, sql, *args, timeout=budget())
        return row

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await bridge(self.raw.fetchval, sql, *args, timeout=budget())

    async def execute(self, sql: str, *args: Any) -> str:
        status: str = await bridge(self.raw.execute, sql, *args, timeout=budget())
        return status


class Database:
    """A pool of asyncpg connections with a trio-facing API.

    Single statements run on any pooled connection; ``transaction()`` yields a ``Conn``
    whose statements commit together (or roll back on any exception, cancellation
    included).
    """

    def __init__(self, pool: asyncpg.Pool, url: str, command_timeout: float = 30.0) -> None:
        self._pool = pool
        self.url = url
        self._command_timeout = command_timeout

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
        prepare_loop()
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
            yield cls(pool, url, command_timeout)
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
        raw = await bridge(self._pool.acquire, timeout=budget(ACQUIRE_TIMEOUT))
        clean = False
        try:
            await bridge(raw.execute, "BEGIN", timeout=budget())
            try:
                yield Conn(raw)
            except BaseException:
                # A statement cut short (deadline, cancellation) leaves asyncpg waiting for
                # the server to acknowledge a cancel: no ROLLBACK can run before that, and
                # a frozen server never answers. Terminating ends the transaction too.
                if not _mid_statement(raw):
                    with trio.move_on_after(5, shield=True):
                        try:
                            await bridge(raw.execute, "ROLLBACK", timeout=budget())
                            clean = True
                        except Exception:
                            log.warning("ROLLBACK failed; dropping the connection", exc_info=True)
                raise
            with trio.move_on_after(10, shield=True):
                try:
                    await bridge(raw.execute, "COMMIT", timeout=budget())
                finally:
                    # A COMMIT the server refused (deferred constraint, serialization)
                    # still ends the transaction: the connection is reusable.
                    clean = not raw.is_in_transaction() and not _mid_statement(raw)
            if not clean:
                raise DatabaseError("COMMIT did not finish in 10 s; outcome unknown")
        finally:
            if not clean:
                raw.terminate()
            with trio.move_on_after(5, shield=True):
                await bridge(self._pool.release, raw, timeout=5)

    # Single statements, bounded by the caller's trio deadline (waiting for a connection
    # included) or else by command_timeout + the acquire timeout.

    async def fetch(self, sql: str, *args: Any) -> list[Record]:
        rows: list[Record] = await self._run("fetch", sql, args)
        return rows

    async def fetchrow(self, sql: str, *args: Any) -> Record | None:
        row: Record | None = await self._run("fetchrow", sql, args)
        return row

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._run("fetchval", sql, args)

    async def execute(self, sql: str, *args: Any) -> str:
        status: str = await self._run("execute", sql, args)
        return status

    async def fetchrow_then(
        self, sql: str, args: tuple[Any, ...], then: Then
    ) -> tuple[Record | None, Record | None]:
        """Two dependent statements for the price of one call: ``sql``'s row, and the row
        of the statement ``then`` makes of it (None: ``then`` made none). One connection
        and one bridge crossing; each statement commits on its own, as two ``fetchrow``
        calls would (an error in the second leaves the first committed)."""
        limit = budget(2 * self._command_timeout + ACQUIRE_TIMEOUT)
        assert limit is not None
        rows: tuple[Record | None, Record | None] = await bridge(
            _pooled_then, self._pool, sql, args, then, limit, self._command_timeout
        )
        return rows

    async def _run(self, method: str, sql: str, args: tuple[Any, ...]) -> Any:
        limit = budget(self._command_timeout + ACQUIRE_TIMEOUT)
        return await bridge(_pooled, self._pool, method, sql, args, limit, self._command_timeout)


Executor = Database | Conn
