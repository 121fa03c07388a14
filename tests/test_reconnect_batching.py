"""Bursts batched per board, end to end: reconnection tasks in PostgreSQL, the real daemon,
the OLT simulator and the SMS sink over real sockets. Each task keeps its own outcome,
retry and SMS when its ONU shares a CLI sequence with others."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from daemon.network import tasks
from daemon.network.olt.types import OnuRef
from tests.flow_harness import Flow, World, daemon, world
from tests.olt_fixtures import eventually

# ``burst`` holds the OLT's answers for as long as queueing the tasks behind the blocker
# takes (bounded by its own fail_after), which on a loaded machine can exceed the
# harness's 5 s command timeout: the blocker would then time out and be retried, and the
# attempts and retries asserted below would not be the ones under test.
HELD = {"command_timeout_seconds": 60.0}


@pytest.fixture
async def w(db_url: str, tmp_path: Path, aio_loop: None) -> AsyncIterator[World]:
    async with world(db_url, tmp_path) as running_world:
        hw = running_world.devices["olt-hw"]
        for onu_id in (1, 2, 3, 4):
            hw.add_onu(0, 1, 3, onu_id, active=onu_id == 3)
        yield running_world


async def create(flow: Flow, service_id: int, action: str, onu: str, phone: str | None) -> int:
    async with flow.db.transaction() as tx:
        task_id = await tasks.create(
            tx,
            dedupe_key=f"{action}:service:{service_id}:test:{onu}",
            webhook_uuid=None,
            action=action,
            service_id=service_id,
            olt_name="olt-hw",
            onu=onu,
            client_name=f"Client {service_id}",
            phone=phone,
        )
    assert task_id is not None
    return task_id


async def burst(flow: Flow, specs: Sequence[tuple[int, str, str, str | None]]) -> list[int]:
    """Create the tasks one by one while the OLT is held busy by a first task, each queued
    at the device before the next is created; then let the OLT go. Their ids."""
    hw = flow.world.devices["olt-hw"]
    pool = flow.running.pool
    hw.hold()
    blocker = await create(flow, 100, "activate", "0/1/3:7", "+34 600 000 100")
    with trio.fail_after(20):
        await eventually(lambda: len(hw.command_log) > 0)  # the device actor is busy
        ids = [blocker]
        for i, spec in enumerate(specs):
            ids.append(await create(flow, *spec))
            await eventually(lambda i=i: pool.waiting("olt-hw") == i + 1)  # type: ignore[misc]
    hw.release()
    return ids


async def rows(flow: Flow, ids: list[int]) -> dict[int, dict[str, Any]]:
    return {r["id"]: r for r in await flow.task_rows() if r["id"] in ids}


async def sms_tasks(flow: Flow) -> set[int]:
    return {r["task_id"] for r in await flow.db.fetch("SELECT task_id FROM sms_messages")}


async def test_one_unknown_onu_fails_alone_and_only_successes_send_sms(w: World) -> None:
    hw = w.devices["olt-hw"]
    async with daemon(w, olt=HELD) as flow:
        _, on, unknown, off, quiet = ids = await burst(
            flow,
            [
                (101, "activate", "0/1/3:1", "+34 600 000 101"),
                (102, "activate", "0/1/3:99", "+34 600 000 102"),  # not on the OLT
                (103, "deactivate", "0/1/3:3", "+34 600 000 103"),
                (104, "activate", "0/1/3:4", None),  # no phone in UISP
            ],
        )
        await flow.wait_for(lambda: _all_final(flow, ids), "every task finished", seconds=30)
        messages = await w.sink.wait_messages(2)
        await flow.settle()
        by_id = await rows(flow, ids)
        with_sms = await sms_tasks(flow)
    assert by_id[unknown]["state"] == "failed" and by_id[unknown]["attempts"] == 1
    assert by_id[unknown]["last_error"] == "Failure: The ONT does not exist"
    assert all(by_id[t]["state"] == "succeeded" for t in ids if t != unknown)
    assert "ont activate 3 1" in by_id[on]["olt_output"]
    assert hw.is_active(OnuRef(0, 1, 3, 1)) and hw.is_active(OnuRef(0, 1, 3, 4))
    assert not hw.is_active(OnuRef(0, 1, 3, 3))
    # The blocker ran alone; the four queued behind it shared one sequence.
    assert hw.command_log.count("config") == 2
    assert hw.command_log.count("display ont info 3 all") == 1
    # SMS for the reconnections with a phone only: not the failed one, not the suspension.
    assert with_sms == {ids[0], on}
    assert sorted(m["msisdn"] for m in messages) == ["34600000100", "34600000101"]
    assert len(w.sink.messages) == 2
    assert off not in with_sms and quiet not in with_sms


async def test_a_sequence_lost_twice_runs_one_by_one_and_only_the_failing_task_retries(
    w: World,
) -> None:
    hw = w.devices["olt-hw"]
    async with daemon(w, olt=HELD) as flow:
        # The first try and the pool's own retry on a fresh session both lose the
        # connection; the changes then run one at a time: 0/1/3:1 succeeds, 0/1/3:2 loses
        # its session twice more, gets a transient error and schedules its own retry.
        hw.drop_on("ont activate 3 2", times=4)
        ids = await burst(
            flow,
            [
                (101, "activate", "0/1/3:1", "+34 600 000 101"),
                (102, "activate", "0/1/3:2", "+34 600 000 102"),
            ],
        )
        await flow.wait_for(lambda: _all_final(flow, ids), "every task finished", seconds=30)
        await w.sink.wait_messages(3)
        await flow.settle()
        by_id = await rows(flow, ids)
        retried = await flow.db.fetch(
            "SELECT task_id FROM task_events WHERE kind = 'retry_scheduled' ORDER BY task_id"
        )
    assert all(r["state"] == "succeeded" for r in by_id.values())
    assert [by_id[t]["attempts"] for t in ids] == [1, 1, 2]
    assert [r["task_id"] for r in retried] == ids[2:]
    assert len(w.sink.messages) == 3  # one per reconnection, none twice


async def test_two_tasks_of_one_service_in_one_burst_run_in_order(w: World) -> None:
    hw = w.devices["olt-hw"]
    async with daemon(w, olt=HELD) as flow:
        _, paid, other, suspended = ids = await burst(
            flow,
            [
                (101, "activate", "0/1/3:2", "+34 600 000 101"),
                (102, "activate", "0/1/3:4", "+34 600 000 102"),
                (101, "deactivate", "0/1/3:2", "+34 600 000 101"),
            ],
        )
        # (Created in this order: the activation was already at the device when the
        # suspension came, so it is not superseded; the suspension runs after it.)
        await flow.wait_for(lambda: _all_final(flow, ids), "every task finished", seconds=30)
        await flow.settle()
        by_id = await rows(flow, ids)
        with_sms = await sms_tasks(flow)
    assert [by_id[t]["state"] for t in ids] == ["succeeded"] * 4
    assert by_id[suspended]["action"] == "deactivate"
    assert not hw.is_active(OnuRef(0, 1, 3, 2)) and hw.is_active(OnuRef(0, 1, 3, 4))
    on_at = hw.command_log.index("ont activate 3 2")
    off_at = hw.command_log.index("ont deactivate 3 2")
    assert on_at < off_at
    # (Outcomes are recorded in whatever order their transactions commit; the device
    # order is what matters.) The reconnection still sends its SMS, the suspension none.
    assert with_sms == {ids[0], paid, other}
    assert hw.command_log.count("ont activate 3 4") == 1 and other in by_id


async def _all_final(flow: Flow, ids: list[int]) -> bool:
    by_id = await rows(flow, ids)
    return len(by_id) == len(ids) and all(r["state"] in tasks.FINAL_STATES for r in by_id.values())
