"""The database bridge under load: what a call leaves behind once it is done."""

from __future__ import annotations

import contextvars
import gc
import weakref

import trio

from daemon.platform.db import Database


class RequestState:
    """Stands in for what a request binds in its context (quart's request, its stream)."""


_request: contextvars.ContextVar[RequestState | None] = contextvars.ContextVar(
    "request", default=None
)


async def test_a_finished_call_does_not_keep_its_context_alive(db: Database) -> None:
    with trio.fail_after(30):
        state = RequestState()
        held = weakref.ref(state)

        async def request(state: RequestState) -> None:
            _request.set(state)
            # A pooled statement and a transaction: command and acquire timeouts, the
            # pool's idle timer re-armed on release.
            assert await db.fetchval("SELECT 1") == 1
            async with db.transaction() as conn:
                await conn.execute("SELECT 1")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(request, state)
        del state
        # Other requests come and go (the daemon's normal traffic).
        for _ in range(400):
            await db.fetchval("SELECT 1")
        gc.collect()
        # asyncpg's cancelled timers (due in 30-300 s) must not still hold the request.
        assert held() is None
