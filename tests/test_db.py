"""The asyncpg bridge: transactions survive trio cancellation without leaking anything."""

from __future__ import annotations

import pytest
import trio

from daemon.notifications.messages import QUEUE as SMS_QUEUE
from daemon.platform import queues
from daemon.platform.db import Database


async def test_cancelling_a_transaction_rolls_back_and_returns_the_connection(
    db_url: str, aio_loop: None
) -> None:
    async with Database.open(db_url, min_size=1, max_size=1) as db:
        with trio.fail_after(10):
            for _ in range(3):  # with one connection, a leak would hang the next round
                with trio.move_on_after(0.05):
                    async with db.transaction() as tx:
                        await tx.execute(
                            "INSERT INTO onu_overrides (service_id, olt_name, onu)"
                            " VALUES (1, 'x', '0/0/0:1')"
                        )
                        await trio.sleep(10)  # a client hangs up; a shutdown cancels us
            assert await db.fetchval("SELECT count(*) FROM onu_overrides") == 0
            idle_in_tx = await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND state = 'idle in transaction'"
            )
            assert idle_in_tx == 0


async def test_an_exception_rolls_back_and_a_commit_commits(db: Database) -> None:
    with trio.fail_after(10):
        with pytest.raises(ZeroDivisionError):
            async with db.transaction() as tx:
                await queues.send(tx, SMS_QUEUE, {"n": 1})
                _ = 1 / 0
        async with db.transaction() as tx:
            await queues.send(tx, SMS_QUEUE, {"n": 2})
        assert [m.message for m in await queues.read(db, SMS_QUEUE, 30, 10)] == [{"n": 2}]


async def test_a_refused_commit_raises_and_keeps_the_pool_usable(
    db_url: str, aio_loop: None
) -> None:
    async with Database.open(db_url, min_size=1, max_size=1) as db:
        await db.execute("CREATE TABLE t (id int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED)")
        with trio.fail_after(10):
            with pytest.raises(Exception, match="duplicate key"):
                async with db.transaction() as tx:
                    await tx.execute("INSERT INTO t VALUES (1), (1)")
            assert await db.fetchval("SELECT count(*) FROM t") == 0


async def test_fetchrow_then_runs_the_statement_made_from_the_first_row_on_one_connection(
    db_url: str, aio_loop: None
) -> None:
    async with Database.open(db_url, min_size=1, max_size=1) as db:
        with trio.fail_after(10):
            seen: list[object] = []

            def then(row: object) -> tuple[str, tuple[object, ...]] | None:
                seen.append(row)
                if row is None:
                    return None
                return "SELECT $1::int + 1 AS n, pg_backend_pid() AS pid", (row["n"],)  # type: ignore[index]

            first, second = await db.fetchrow_then(
                "SELECT 41 AS n, pg_backend_pid() AS pid", (), then
            )
            assert first is not None and second is not None
            assert second["n"] == 42 and second["pid"] == first["pid"]
            # No row: then decides there is nothing more.
            first, second = await db.fetchrow_then("SELECT 1 WHERE false", (), then)
            assert (first, second) == (None, None) and seen[-1] is None
            # Each statement commits on its own: a refused second leaves the first done,
            # and the (single) connection goes back to the pool usable.
            with pytest.raises(Exception, match="division by zero"):
                await db.fetchrow_then(
                    "INSERT INTO onu_overrides (service_id, olt_name, onu)"
                    " VALUES (7, 'x', '0/0/0:7') RETURNING service_id",
                    (),
                    lambda row: ("SELECT 1 / 0", ()),
                )
            assert await db.fetchval("SELECT count(*) FROM onu_overrides") == 1
