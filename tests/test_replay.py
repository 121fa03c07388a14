"""Replays are all or nothing: one unknown id replays none of the others."""

from __future__ import annotations

import uuid

import pytest

from daemon import wiring
from daemon.notifications.messages import QUEUE as SMS_QUEUE
from daemon.platform import queues
from daemon.platform.db import Database
from daemon.uisp import webhooks


async def test_replaying_webhooks_with_one_unknown_uuid_replays_none(db: Database) -> None:
    known = uuid.uuid4()
    outcome = await webhooks.store(db, known, "service.suspend", "service", 1, "suspend", {})
    assert outcome == "queued"
    with pytest.raises(webhooks.WebhookNotFound):
        await wiring.replay_webhooks(db, [str(known), str(uuid.uuid4())])
    stored = await webhooks.get(db, known)
    assert stored is not None and stored.replays == 0
    [hook] = await wiring.replay_webhooks(db, [str(known)])
    assert hook.replays == 1 and hook.state == "queued"


async def test_replaying_dead_letters_with_one_unknown_id_replays_none(db: Database) -> None:
    await queues.send(db, SMS_QUEUE, {"sms_id": 0})
    [msg] = await queues.read(db, SMS_QUEUE, 30, 1)
    async with db.transaction() as tx:
        dead_id = await queues.dead_letter(tx, SMS_QUEUE, msg, "too often")
    with pytest.raises(queues.DeadLetterNotFound):
        await wiring.replay_dead(db, [dead_id, dead_id + 1000])
    assert [d.id for d in await queues.list_dead(db)] == [dead_id]  # still waiting
    [dead] = await wiring.replay_dead(db, [dead_id])
    assert dead.id == dead_id and await queues.list_dead(db) == []
    [again] = await queues.read(db, SMS_QUEUE, 30, 1)
    assert again.message == {"sms_id": 0}
