"""PGMQ through the bridge: what the consumers rely on."""

from __future__ import annotations

import trio

from daemon.platform import queues
from daemon.platform.db import Database


async def test_send_read_archive_roundtrip(db: Database) -> None:
    with trio.fail_after(10):
        msg_id = await queues.send(db, queues.SMS, {"sms_id": 7})
        [msg] = await queues.read(db, queues.SMS, 30, 10)
        assert (msg.msg_id, msg.read_ct, msg.message) == (msg_id, 1, {"sms_id": 7})
        # Invisible while being worked on; the earliest vt is the next deadline.
        assert await queues.read(db, queues.SMS, 30, 10) == []
        wait = await queues.seconds_until_next_visible(db, queues.SMS)
        assert wait is not None and 25 < wait <= 30
        assert await queues.archive(db, queues.SMS, msg_id)
        assert await queues.seconds_until_next_visible(db, queues.SMS) is None


async def test_archive_and_outcome_commit_together(db: Database) -> None:
    with trio.fail_after(10):
        msg_id = await queues.send(db, queues.SMS, {"sms_id": 1})
        try:
            async with db.transaction() as tx:
                await queues.archive(tx, queues.SMS, msg_id)
                raise RuntimeError("handler crashed before commit")
        except RuntimeError:
            pass
        # Rolled back: the message is still there to be retried.
        [msg] = await queues.read(db, queues.SMS, 30, 1)
        assert msg.msg_id == msg_id


async def test_release_in_flight_frees_running_work_but_keeps_retry_delays(db: Database) -> None:
    with trio.fail_after(10):
        ids = []
        for state in ("running", "queued"):
            ids.append(
                await db.fetchval(
                    "INSERT INTO reconnect_tasks (dedupe_key, action, service_id, olt_name, onu,"
                    " state) VALUES ($1, 'activate', 1, 'x', '0/0/0:1', $1) RETURNING id",
                    state,
                )
            )
            await queues.send(db, queues.RECONNECT, {"task_id": ids[-1]})
        # Both read; the "queued" one then got a deliberate retry delay.
        msgs = await queues.read(db, queues.RECONNECT, 600, 2)
        await queues.set_vt(db, queues.RECONNECT, msgs[1].msg_id, 600)
        assert await queues.release_in_flight(db, queues.RECONNECT) == 1
        [msg] = await queues.read(db, queues.RECONNECT, 30, 5)
        assert (msg.message, msg.read_ct) == ({"task_id": ids[0]}, 2)


async def test_set_vt_delays_a_retry(db: Database) -> None:
    with trio.fail_after(10):
        msg_id = await queues.send(db, queues.SMS, {"sms_id": 2})
        await queues.read(db, queues.SMS, 30, 1)
        await queues.set_vt(db, queues.SMS, msg_id, 0)
        assert [m.msg_id for m in await queues.read(db, queues.SMS, 30, 1)] == [msg_id]
        stats = await queues.stats(db, queues.SMS)
        assert stats.depth == 1
