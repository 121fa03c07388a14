"""Reconnections, disconnections and SMS are announced in the outbox exactly when their
outcome commits: through the whole daemon (the flow), and at the stores for the paths the
flow cannot reach cheaply (dead letters, a rolled-back outcome)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from daemon.network import tasks
from daemon.notifications import announce as sms_announce
from daemon.notifications import messages
from daemon.platform.db import Database
from tests.flow_harness import World, daemon, world


@pytest.fixture
async def w(db_url: str, tmp_path: Path, aio_loop: None) -> AsyncIterator[World]:
    async with world(db_url, tmp_path) as running_world:
        yield running_world


async def events(db: Database) -> list[dict[str, Any]]:
    rows = await db.fetch("SELECT type, subject, data FROM events ORDER BY seq")
    return [dict(r) for r in rows]


async def test_a_reconnection_announces_its_success_and_its_sms_without_personal_data(
    w: World,
) -> None:
    async with daemon(w) as flow:
        await w.fake.record_payment(1, 30.0)
        [task] = await flow.wait_task_state("succeeded")
        await w.sink.wait_messages(1)
        sms_id = await flow.wait_for(
            lambda: w.db.fetchval("SELECT id FROM sms_messages WHERE state = 'sent'"), "sms sent"
        )
    announced = await events(w.db)
    assert [e["type"] for e in announced] == ["reconnection.succeeded", "sms.sent"]
    reconnection, sms = announced
    assert reconnection["subject"] == f"task:{task['id']}"
    data = reconnection["data"]
    assert dt.datetime.fromisoformat(data.pop("finished_at")) == task["finished_at"]
    assert data == {
        "task_id": task["id"],
        "action": "activate",
        "state": "succeeded",
        "service_id": 1,
        "client_id": 1,
        "olt": "olt-hw",
        "onu": "0/1/3:7",
        "attempts": 1,
        "error": None,
        "webhook_uuid": str(task["webhook_uuid"]),
    }
    assert sms["subject"] == f"sms:{sms_id}"
    assert sms["data"]["phone"] == "+** *** *** 222"
    assert (sms["data"]["task_id"], sms["data"]["service_id"], sms["data"]["client_id"]) == (
        task["id"],
        1,
        1,
    )
    assert sms["data"]["provider"] == "labsmobile" and sms["data"]["provider_ref"]
    assert sms["data"]["sent_at"] is not None and sms["data"]["error"] is None
    # Neither the client's name nor the number nor the SMS text is announced.
    text = json.dumps(announced)
    assert "Ana" not in text and "600 111" not in text and "600111" not in text


async def test_an_onu_the_olt_does_not_know_announces_a_failed_reconnection(w: World) -> None:
    w.fake.services[1]["attributes"][1]["value"] = "0/1/3:99"
    async with daemon(w) as flow:
        await w.fake.record_payment(1, 30.0)
        [task] = await flow.wait_task_state("failed")
    [event] = await events(w.db)
    assert event["type"] == "reconnection.failed"
    assert event["data"]["error"] == "Failure: The ONT does not exist"
    assert (event["data"]["task_id"], event["data"]["onu"]) == (task["id"], "0/1/3:99")


async def test_a_suspension_announces_a_disconnection(w: World) -> None:
    bruno = w.fake.add_client("Bruno", "Díaz", "+34 600 333 444")
    service = w.fake.add_service(bruno["id"], olt="olt-zte", onu="1/2/1:5")
    async with daemon(w) as flow:
        w.fake.services[service["id"]]["status"] = 3
        await w.fake.send_webhook("service.suspend", "service", service["id"], "suspend", service)
        [task] = await flow.wait_task_state("succeeded")
    [event] = await events(w.db)
    assert event["type"] == "disconnection.succeeded"
    assert (event["data"]["task_id"], event["data"]["action"]) == (task["id"], "deactivate")
    assert (event["data"]["service_id"], event["data"]["client_id"]) == (
        service["id"],
        bruno["id"],
    )


async def make_task(db: Database, action: str = "activate") -> int:
    async with db.transaction() as tx:
        task_id = await tasks.create(
            tx,
            dedupe_key=f"{action}:1",
            webhook_uuid=None,
            action=action,
            service_id=7,
            client_id=3,
            phone="+34 600 111 222",
            olt_name="olt-a",
            onu="0/1/1:1",
        )
    assert task_id is not None
    return task_id


class Rollback(Exception):
    pass


async def test_an_outcome_that_rolls_back_announces_nothing(db: Database) -> None:
    task_id = await make_task(db)
    with pytest.raises(Rollback):
        async with db.transaction() as tx:
            await tasks.finish(tx, task_id, "succeeded", output="ok")
            sms_id = await messages.queue_for_task(tx, task_id, "+34 600 111 222", "hi", "x")
            assert sms_id is not None
            await messages.finish(tx, sms_id, "sent", None, "x", "ref-1")
            assert await tx.fetchval("SELECT count(*) FROM events") == 2
            raise Rollback
    assert await events(db) == []
    assert await db.fetchval("SELECT state FROM reconnect_tasks WHERE id = $1", task_id) == "queued"


async def test_a_superseded_task_and_a_skipped_sms_are_not_announced(db: Database) -> None:
    task_id = await make_task(db)
    async with db.transaction() as tx:
        await tasks.finish(tx, task_id, "superseded")
        sms_id = await messages.queue_for_task(tx, task_id, "+34 600 111 222", "hi", "none")
        assert sms_id is not None
        await messages.finish(tx, sms_id, "skipped", 'sms.provider is "none"', "none", None)
    assert await events(db) == []


async def test_dead_lettered_tasks_and_sms_are_announced_as_failed(db: Database) -> None:
    task_id = await make_task(db, "deactivate")
    async with db.transaction() as tx:
        assert await tasks.fail_unfinished(tx, task_id, "poison: crashed 25 times")
        sms_id = await messages.queue_for_task(tx, task_id, "+34 600 111 222", "hi", "x")
        assert sms_id is not None
        await messages.fail_unfinished(tx, sms_id, "poison: crashed 25 times")
        # Already failed: nothing changes, nothing more is announced.
        assert not await tasks.fail_unfinished(tx, task_id, "again")
        await messages.fail_unfinished(tx, sms_id, "again")
    task_event, sms_event = await events(db)
    assert task_event["type"] == "disconnection.failed"
    assert task_event["data"]["error"] == "poison: crashed 25 times"
    assert sms_event["type"] == "sms.failed"
    assert sms_event["data"]["error"] == "poison: crashed 25 times"
    assert (sms_event["data"]["service_id"], sms_event["data"]["client_id"]) == (7, 3)


async def test_a_provider_error_quoting_the_number_is_masked(db: Database) -> None:
    task_id = await make_task(db)
    async with db.transaction() as tx:
        sms_id = await messages.queue_for_task(tx, task_id, "+34 600 111 222", "hi", "x")
        assert sms_id is not None
        await messages.finish(
            tx, sms_id, "failed", "invalid phone number '+34 600 111 222' (34600111222)", "x", None
        )
    [event] = await events(db)
    assert event["data"]["error"] == "invalid phone number '+** *** *** 222' (********222)"
    assert event["data"]["phone"] == "+** *** *** 222"


def test_short_numbers_are_masked_entirely() -> None:
    assert sms_announce.mask_phone("112") == "***"
    assert sms_announce.mask_phone("600111") == "******"
    assert sms_announce.mask_phone("+34600111222") == "+********222"
    assert sms_announce.mask_numbers("HTTP 500 for sms 42") == "HTTP 500 for sms 42"
