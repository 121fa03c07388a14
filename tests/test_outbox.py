"""The event outbox: an event exists exactly when its transaction commits."""

from __future__ import annotations

import pytest

from daemon.platform import outbox
from daemon.platform.db import Database


class Rollback(Exception):
    pass


async def test_an_event_commits_with_its_transaction_and_reads_back_as_a_payload(
    db: Database,
) -> None:
    async with db.transaction() as tx:
        event = await outbox.emit(tx, "sms.sent", {"task_id": 7}, subject="task:7")
    stored = await outbox.get(db, event.id)
    assert stored == event
    body = stored.payload()
    assert body["id"] == event.id and body["type"] == "sms.sent"
    assert body["data"] == {"task_id": 7}
    assert body["timestamp"].endswith("Z")


async def test_a_rolled_back_change_announces_nothing(db: Database) -> None:
    with pytest.raises(Rollback):
        async with db.transaction() as tx:
            await outbox.emit(tx, "payment.created", {"id": "pay_x"})
            raise Rollback
    assert await db.fetchval("SELECT count(*) FROM events") == 0


async def test_an_undeclared_event_type_is_refused(db: Database) -> None:
    async with db.transaction() as tx:
        with pytest.raises(outbox.UnknownEventType):
            await outbox.emit(tx, "payment.exploded", {})
    assert await db.fetchval("SELECT count(*) FROM events") == 0


async def test_every_inserted_event_is_queued_once_for_the_fan_out(db: Database) -> None:
    """By the trigger, so a writer in SQL (the SQL entry point) is fanned out like emit."""
    async with db.transaction() as tx:
        emitted = await outbox.emit(tx, "sms.sent", {"task_id": 1})
    await db.execute(
        "INSERT INTO events (id, type, data) VALUES ($1, 'sms.failed', '{}')",
        "evt_" + "0" * 32,
    )
    queued = await db.fetch(
        f"SELECT message->>'event_id' AS id FROM pgmq.q_{outbox.QUEUE} ORDER BY msg_id"
    )
    assert [r["id"] for r in queued] == [emitted.id, "evt_" + "0" * 32]
