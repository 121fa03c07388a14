"""PGMQ through the bridge: what the consumers rely on."""

from __future__ import annotations

import pytest
import trio

from daemon.notifications.messages import QUEUE as SMS_QUEUE
from daemon.platform import queues
from daemon.platform.db import Database


async def test_send_read_archive_roundtrip(db: Database) -> None:
    with trio.fail_after(10):
        msg_id = await queues.send(db, SMS_QUEUE, {"sms_id": 7})
        [msg] = await queues.read(db, SMS_QUEUE, 30, 10)
        assert (msg.msg_id, msg.read_ct, msg.message) == (msg_id, 1, {"sms_id": 7})
        # Invisible while being worked on; the earliest vt is the next deadline.
        assert await queues.read(db, SMS_QUEUE, 30, 10) == []
        wait = await queues.seconds_until_next_visible(db, SMS_QUEUE)
        assert wait is not None and 25 < wait <= 30
        assert await queues.archive(db, SMS_QUEUE, msg_id)
        assert await queues.seconds_until_next_visible(db, SMS_QUEUE) is None


async def test_archive_and_outcome_commit_together(db: Database) -> None:
    with trio.fail_after(10):
        msg_id = await queues.send(db, SMS_QUEUE, {"sms_id": 1})
        try:
            async with db.transaction() as tx:
                await queues.archive(tx, SMS_QUEUE, msg_id)
                raise RuntimeError("handler crashed before commit")
        except RuntimeError:
            pass
        # Rolled back: the message is still there to be retried.
        [msg] = await queues.read(db, SMS_QUEUE, 30, 1)
        assert msg.msg_id == msg_id


async def test_a_lease_extension_never_undoes_a_retry_delay(db: Database) -> None:
    with trio.fail_after(10):
        msg_id = await queues.send(db, SMS_QUEUE, {"sms_id": 3})
        [msg] = await queues.read(db, SMS_QUEUE, 2, 1)
        held = await queues.extend_lease(db, SMS_QUEUE, msg_id, msg.vt, 30)
        assert held is not None and held > msg.vt
        wait = await queues.seconds_until_next_visible(db, SMS_QUEUE)
        assert wait is not None and 25 < wait <= 30
        # The handler schedules a retry in 600 s; a late extension must not shorten it.
        await queues.set_vt(db, SMS_QUEUE, msg_id, 600)
        assert await queues.extend_lease(db, SMS_QUEUE, msg_id, held, 30) is None
        wait = await queues.seconds_until_next_visible(db, SMS_QUEUE)
        assert wait is not None and wait > 500


async def test_a_lease_taken_over_by_another_reader_is_not_extended(db: Database) -> None:
    with trio.fail_after(10):
        await queues.send(db, SMS_QUEUE, {"sms_id": 4})
        [first] = await queues.read(db, SMS_QUEUE, 0, 1)  # lease lapses at once
        [second] = await queues.read(db, SMS_QUEUE, 30, 1)
        assert second.read_ct == 2
        assert await queues.extend_lease(db, SMS_QUEUE, first.msg_id, first.vt, 30) is None


async def test_requeue_starts_the_delivery_count_again(db: Database) -> None:
    with trio.fail_after(10):
        await queues.send(db, SMS_QUEUE, {"sms_id": 5})
        [msg] = await queues.read(db, SMS_QUEUE, 30, 1)
        async with db.transaction() as tx:
            new_id = await queues.requeue(tx, SMS_QUEUE, msg, 0)
        [again] = await queues.read(db, SMS_QUEUE, 30, 1)
        assert (again.msg_id, again.read_ct, again.message) == (new_id, 1, {"sms_id": 5})


async def test_dead_letters_are_listed_and_taken_once_for_replay(db: Database) -> None:
    with trio.fail_after(10):
        await queues.send(db, SMS_QUEUE, {"sms_id": 6})
        [msg] = await queues.read(db, SMS_QUEUE, 30, 1)
        async with db.transaction() as tx:
            dead_id = await queues.dead_letter(tx, SMS_QUEUE, msg, "delivered too often")
        [dead] = await queues.list_dead(db, queue=SMS_QUEUE)
        assert (dead.id, dead.message) == (dead_id, {"sms_id": 6})
        assert dead.reason == "delivered too often"
        assert await queues.read(db, SMS_QUEUE, 30, 1) == []  # archived, not readable
        async with db.transaction() as tx:
            assert (await queues.take_dead(tx, dead_id)).id == dead_id
        async with db.transaction() as tx:
            with pytest.raises(queues.DeadLetterNotFound):
                await queues.take_dead(tx, dead_id)
        assert await queues.list_dead(db) == []
        assert [d.id for d in await queues.list_dead(db, include_replayed=True)] == [dead_id]


async def test_set_vt_delays_a_retry(db: Database) -> None:
    with trio.fail_after(10):
        msg_id = await queues.send(db, SMS_QUEUE, {"sms_id": 2})
        await queues.read(db, SMS_QUEUE, 30, 1)
        await queues.set_vt(db, SMS_QUEUE, msg_id, 0)
        assert [m.msg_id for m in await queues.read(db, SMS_QUEUE, 30, 1)] == [msg_id]
        stats = await queues.stats(db, SMS_QUEUE)
        assert stats.depth == 1
