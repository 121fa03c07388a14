"""Nothing lost: UISP outages, replays, dead letters, a slow OLT, a database outage.

The real daemon (in this process) against the fake UISP, the OLT simulator and the SMS
sink, over real sockets, on a real PostgreSQL database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from daemon.actors import instance_lock
from daemon.network import tasks
from daemon.network.olt.types import OnuRef
from daemon.platform import db as dbmod
from daemon.platform.db import Database
from tests.flow_harness import ADMIN_TOKEN, World, daemon, world
from tests.tcp_proxy import proxy_for

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ANA_ONU = OnuRef(0, 1, 3, 7)


@pytest.fixture
async def w(db_url: str, tmp_path: Path, aio_loop: None) -> AsyncIterator[World]:
    async with world(db_url, tmp_path) as running_world:
        yield running_world


async def _webhook_state(db: Database, uuid: str) -> str | None:
    state: str | None = await db.fetchval(
        "SELECT state FROM uisp_webhooks WHERE uuid = $1::uuid", uuid
    )
    return state


async def test_a_webhook_failed_by_a_uisp_outage_is_requeued_by_its_redelivery(w: World) -> None:
    # UISP answers 503 to everything; a tiny retry window makes the outage outlast it.
    w.fake.fail_next(10_000)
    async with daemon(w, retry_for_seconds=1) as flow:
        await w.fake.record_payment(1, 30.0)
        cancel = w.delivered("service.suspend_cancel")

        async def failed() -> bool:
            return await _webhook_state(w.db, cancel["uuid"]) == "failed"

        await flow.wait_for(failed, "the webhook failed", seconds=30)
        row = await w.db.fetchrow(
            "SELECT attempts, outcome FROM uisp_webhooks WHERE uuid = $1::uuid", cancel["uuid"]
        )
        assert row["attempts"] >= 1
        assert "paymentd uisp replay" in row["outcome"]
        assert await w.db.fetchval("SELECT count(*) FROM reconnect_tasks") == 0
        # UISP is back and delivers the event again: it is queued again, not "duplicate".
        w.fake._failures.clear()
        r = await flow.post_webhook(cancel)
        assert (r.status_code, r.json()["status"]) == (200, "requeued")
        [task] = await flow.wait_task_state("succeeded")
        await w.sink.wait_messages(1)
    assert task["action"] == "activate"
    assert w.devices["olt-hw"].is_active(ANA_ONU)
    assert await _webhook_state(w.db, cancel["uuid"]) == "processed"


async def test_replaying_a_processed_webhook_acts_again_and_sends_no_second_sms(w: World) -> None:
    async with daemon(w) as flow:
        await w.fake.record_payment(1, 30.0)
        await flow.wait_task_state("succeeded")
        await w.sink.wait_messages(1)
        cancel = w.delivered("service.suspend_cancel")
        r = await flow.http.post(f"/api/v1/uisp/webhooks/{cancel['uuid']}/replay", headers=AUTH)
        assert r.status_code == 202, r.text
        assert r.json()["webhook"]["replays"] == 1
        await flow.wait_task_state("succeeded", count=2)
        missing = await flow.http.post(
            "/api/v1/uisp/webhooks/00000000-0000-4000-8000-000000000000/replay", headers=AUTH
        )
        assert missing.status_code == 404
        await flow.settle()
    rows = await w.db.fetch("SELECT dedupe_key FROM reconnect_tasks ORDER BY id")
    assert rows[1]["dedupe_key"].endswith(":replay:1")
    assert len(w.sink.messages) == 1  # the service was already reconnected


async def test_a_poison_message_is_dead_lettered_listed_and_replayed(w: World) -> None:
    async with daemon(w) as flow:
        async with w.db.transaction() as tx:
            task_id = await tasks.create(
                tx,
                dedupe_key="activate:service:1:manual",
                webhook_uuid=None,
                action="activate",
                service_id=1,
                olt_name="olt-hw",
                onu="0/1/3:7",
                phone="+34600111222",
            )
            # As if it had been delivered 30 times without an outcome.
            await tx.execute("UPDATE pgmq.q_reconnect SET read_ct = 30")
        [task] = await flow.wait_task_state("failed")
        assert "delivered 31 times" in task["last_error"]
        r = await flow.http.get("/api/v1/queues/failed", headers=AUTH)
        [dead] = r.json()["failed"]
        await flow.http.get("/api/v1/queues", headers=AUTH)  # refreshes the gauges
        gauge = flow.running.deps.metrics.dead_letters.labels("reconnect")
        assert gauge._value.get() == 1
        assert (dead["queue"], dead["message"]) == ("reconnect", {"task_id": task_id})
        r = await flow.http.post(f"/api/v1/queues/failed/{dead['id']}/replay", headers=AUTH)
        assert r.status_code == 202, r.text
        [task] = await flow.wait_task_state("succeeded")
        again = await flow.http.post(f"/api/v1/queues/failed/{dead['id']}/replay", headers=AUTH)
        assert again.status_code == 404
        assert (await flow.http.get("/api/v1/queues/failed", headers=AUTH)).json()["failed"] == []
    assert w.devices["olt-hw"].is_active(ANA_ONU)


async def _queue_tasks(db: Database, olt: str, onus: list[OnuRef], first_service: int) -> None:
    async with db.transaction() as tx:
        for i, onu in enumerate(onus):
            await tasks.create(
                tx,
                dedupe_key=f"deactivate:service:{first_service + i}:manual",
                webhook_uuid=None,
                action="deactivate",
                service_id=first_service + i,
                olt_name=olt,
                onu=str(onu),
            )


async def test_a_slow_olt_never_delays_work_for_another_olt(w: World) -> None:
    """20 tasks for an OLT at 2 s per command (more than the queue's 16 handler slots)
    and then one for a healthy OLT: the healthy one is done while the slow ones crawl."""
    slow, fast = w.devices["olt-zte"], w.devices["olt-hw"]
    slow_onus = [OnuRef(1, 2, 2, n) for n in range(1, 21)]
    for onu in slow_onus:
        slow.add_onu(onu.frame, onu.slot, onu.port, onu.onu_id, active=True)
    fast.add_onu(0, 1, 4, 1, active=True)
    async with daemon(w) as flow:
        slow.latency = 2.0
        await _queue_tasks(w.db, "olt-zte", slow_onus, 1000)

        async def all_slow_running() -> bool:
            count = await w.db.fetchval(
                "SELECT count(*) FROM reconnect_tasks WHERE olt_name = 'olt-zte'"
                " AND state = 'running'"
            )
            return bool(count >= 17)  # more than the handler slots

        await flow.wait_for(all_slow_running, "slow tasks running", seconds=20)
        await _queue_tasks(w.db, "olt-hw", [OnuRef(0, 1, 4, 1)], 2000)

        async def fast_done() -> bool:
            state = await w.db.fetchval(
                "SELECT state FROM reconnect_tasks WHERE olt_name = 'olt-hw'"
            )
            return bool(state == "succeeded")

        # Without lease.detached() it would wait for ~17 slow tasks (minutes).
        await flow.wait_for(fast_done, "the healthy OLT's task", seconds=15)
        unfinished = await w.db.fetchval(
            "SELECT count(*) FROM reconnect_tasks WHERE olt_name = 'olt-zte'"
            " AND state <> 'succeeded'"
        )
        assert unfinished >= 15
    assert not fast.is_active(OnuRef(0, 1, 4, 1))


async def test_a_database_outage_mid_task_costs_at_most_a_lease(w: World) -> None:
    """The database goes away for 5 s while three reconnections are on the OLT: each
    finishes within a lease (3 s here) or so of the database coming back."""
    hw = w.devices["olt-hw"]
    onus = [OnuRef(0, 1, 5, n) for n in (1, 2, 3)]
    for onu in onus:
        hw.add_onu(onu.frame, onu.slot, onu.port, onu.onu_id, active=True)
    async with proxy_for(w.db_url) as proxy:
        w.db_url = proxy.url(w.db_url)
        async with daemon(w) as flow:
            hw.latency = 0.5
            await _queue_tasks(w.db, "olt-hw", onus, 3000)

            async def all_running() -> bool:
                n = await w.db.fetchval(
                    "SELECT count(*) FROM reconnect_tasks WHERE state = 'running'"
                )
                return bool(n == 3)

            await flow.wait_for(all_running, "three tasks on the OLT", seconds=20)
            proxy.down()
            await trio.sleep(5)
            proxy.up()
            back = trio.current_time()
            await flow.wait_task_state("succeeded", count=3)
            took = trio.current_time() - back
    # One lease (3 s) to notice, plus the OLT work again (~6 commands at 0.5 s each).
    assert took < 3 + 3 * 6 * 0.5 + 10, took
    assert not any(hw.is_active(o) for o in onus)


async def test_losing_the_instance_lock_stops_the_workers_then_they_resume(w: World) -> None:
    async with daemon(w) as flow:
        health = flow.running.deps.health
        with flow.running.deps.events.subscribe() as events:
            killed = await w.db.fetchval(
                f"SELECT count(pg_terminate_backend(pid)) FROM ({instance_lock.HOLDERS_SQL}) h",
                instance_lock.INSTANCE_LOCK,
            )
            assert killed == 1
            seen: list[str] = []
            with trio.fail_after(20):
                async for event in events:
                    seen.append(event.kind)
                    # The worker group (its listener first) starts again after the loss.
                    if "instance_lock.lost" in seen and event.kind == "listener.connected":
                        break
        assert seen.index("instance_lock.lost") < len(seen) - 1

        async def ready_again() -> bool:
            return health.ready

        await flow.wait_for(ready_again, "the workers running again", seconds=20)
        await w.fake.record_payment(1, 30.0)
        await flow.wait_task_state("succeeded")
        await w.sink.wait_messages(1)
    assert w.devices["olt-hw"].is_active(ANA_ONU)


async def test_shutdown_lets_a_reconnection_on_the_olt_finish(w: World) -> None:
    """SIGTERM mid-task: the task gets the grace period (3 s here) and succeeds, SMS queued."""
    hw = w.devices["olt-hw"]
    async with daemon(w) as flow:
        hw.latency = 0.15  # an activation takes ~1-2 s: well inside the grace
        await w.fake.record_payment(1, 30.0)
        await flow.wait_task_state("running")
        flow.running.shutdown.set()
    [task] = [dict(r) for r in await w.db.fetch("SELECT state FROM reconnect_tasks")]
    assert task["state"] == "succeeded"
    assert hw.is_active(ANA_ONU)


async def test_webhooks_are_still_taken_while_the_workers_drain_at_shutdown(w: World) -> None:
    """SIGTERM mid-task: the ingress keeps answering (and storing) UISP webhooks until the
    workers have finished, instead of leaving them unanswered for the whole drain."""
    hw = w.devices["olt-hw"]
    async with daemon(w) as flow:
        await w.fake.record_payment(1, 30.0)
        hw.hold()  # the OLT answers nothing until released: the worker is busy on it
        await flow.wait_task_state("running")
        flow.running.shutdown.set()
        hook = await w.fake.send_webhook("service.suspend", "service", 1, "edit", None)
        assert w.fake.deliveries[-1].get("status") == 200, w.fake.deliveries[-1]
        running = await w.db.fetchval(
            "SELECT count(*) FROM reconnect_tasks WHERE state = 'running'"
        )
        assert running == 1  # answered while the worker was still draining
        hw.release()
    stored = await w.db.fetchval(
        "SELECT count(*) FROM uisp_webhooks WHERE uuid = $1::uuid", hook["uuid"]
    )
    assert stored == 1
    [task] = await w.db.fetch("SELECT state FROM reconnect_tasks WHERE action = 'activate'")
    assert task["state"] == "succeeded"


async def test_a_worker_failing_its_restart_after_a_lost_lock_does_not_kill_the_daemon(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_connect = dbmod.connect
    calls = {"armed": False, "n": 0}

    async def connect(url: str, **kwargs: Any) -> Any:
        if calls["armed"]:
            calls["n"] += 1
            if calls["n"] == 2:  # 1st: the instance lock again; 2nd: the new listener
                raise dbmod.DatabaseError("simulated: too many connections")
        return await real_connect(url, **kwargs)

    monkeypatch.setattr(dbmod, "connect", connect)
    async with daemon(w) as flow:
        calls["armed"] = True
        await w.db.fetchval(
            f"SELECT count(pg_terminate_backend(pid)) FROM ({instance_lock.HOLDERS_SQL}) h",
            instance_lock.INSTANCE_LOCK,
        )

        async def ready_again() -> bool:
            return calls["n"] >= 3 and flow.running.deps.health.ready

        await flow.wait_for(ready_again, "the workers running again", seconds=20)
        await w.fake.record_payment(1, 30.0)
        await flow.wait_task_state("succeeded")
    assert w.devices["olt-hw"].is_active(ANA_ONU)
