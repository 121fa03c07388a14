"""The loop paymentd exists for, end to end: UISP webhook → PGMQ → OLT → SMS.

The real daemon (in this process) against a fake UISP, the OLT simulator and an SMS sink,
over real sockets, on a real PostgreSQL database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from daemon.network import devices as olt_store
from daemon.network.olt.types import OnuRef
from daemon.platform.secrets import load_keyring
from tests.flow_harness import Flow, World, daemon, world

ANA_ONU = OnuRef(0, 1, 3, 7)


@pytest.fixture
async def w(db_url: str, tmp_path: Path, aio_loop: None) -> AsyncIterator[World]:
    async with world(db_url, tmp_path) as running_world:
        yield running_world


async def test_suspended_client_pays_and_gets_reconnected_with_one_sms(w: World) -> None:
    hw = w.devices["olt-hw"]
    async with daemon(w) as flow:
        assert not hw.is_active(ANA_ONU)
        # UISP takes the payment, cancels the overdue suspension itself and posts
        # payment.add, service.edit and service.suspend_cancel to the daemon.
        await w.fake.record_payment(1, 30.0)
        [task] = await flow.wait_task_state("succeeded")
        assert hw.is_active(ANA_ONU)
        messages = await w.sink.wait_messages(1)
        await flow.settle()
    assert (task["action"], task["olt_name"], task["onu"], task["attempts"]) == (
        "activate",
        "olt-hw",
        "0/1/3:7",
        1,
    )
    assert "Control flag" in task["olt_output"]
    assert len(w.sink.messages) == 1
    assert messages[0]["msisdn"] == "34600111222"
    assert "Ana" in messages[0]["message"]
    sms = await w.db.fetchrow("SELECT state, task_id FROM sms_messages")
    assert dict(sms) == {"state": "sent", "task_id": task["id"]}
    outcomes = dict(await w.db.fetch("SELECT event_name, outcome FROM uisp_webhooks"))
    assert outcomes["service.suspend_cancel"] == "activate service 1"
    assert outcomes["payment.add"].startswith("ignored")
    assert outcomes["service.edit"].startswith("ignored")
    # Every step is in the task's append-only history.
    kinds = [r["kind"] for r in await w.db.fetch("SELECT kind FROM task_events ORDER BY id")]
    assert kinds == ["queued", "running", "succeeded", "sms_queued", "sms_sent"]


async def test_the_same_webhook_three_times_makes_one_task_and_one_sms(w: World) -> None:
    async with daemon(w) as flow:
        await w.fake.record_payment(1, 30.0)
        await flow.wait_task_state("succeeded")
        await w.sink.wait_messages(1)
        cancel = w.delivered("service.suspend_cancel")
        for _ in range(3):
            r = await flow.post_webhook(cancel)
            assert (r.status_code, r.json()["status"]) == (200, "duplicate")
        await flow.settle(1.0)
        assert len(await flow.task_rows()) == 1
    assert len(w.sink.messages) == 1
    assert (
        await w.db.fetchval(
            "SELECT deliveries FROM uisp_webhooks WHERE uuid = $1::uuid", cancel["uuid"]
        )
        == 4
    )


async def test_a_connection_dropped_mid_command_is_retried_on_a_fresh_session(w: World) -> None:
    hw = w.devices["olt-hw"]
    hw.drop_on("ont activate", after=False)
    async with daemon(w) as flow:
        await w.fake.record_payment(1, 30.0)
        [_task] = await flow.wait_task_state("succeeded")
        await w.sink.wait_messages(1)
    assert hw.is_active(ANA_ONU)
    assert hw.sessions_opened == 2
    assert len([c for c in hw.command_log if c.startswith("ont activate")]) == 2
    assert len(w.sink.messages) == 1


async def test_an_onu_the_olt_does_not_know_fails_the_task_without_sms(w: World) -> None:
    w.fake.services[1]["attributes"][1]["value"] = "0/1/3:99"
    async with daemon(w) as flow:
        await w.fake.record_payment(1, 30.0)
        [task] = await flow.wait_task_state("failed")
        await flow.settle()
    assert task["last_error"] == "Failure: The ONT does not exist"
    assert task["attempts"] == 1
    assert w.sink.messages == []
    assert await w.db.fetchval("SELECT count(*) FROM sms_messages") == 0


async def test_listen_connection_killed_the_daemon_recovers_without_restart(w: World) -> None:
    async with daemon(w) as flow:
        killed = await w.db.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
        )
        assert killed == 1
        metrics = flow.running.deps.metrics
        with trio.fail_after(10):
            while metrics.listener_reconnects._value.get() < 1:  # noqa: ASYNC110 - polls a side effect
                await trio.sleep(0.05)
        t0 = trio.current_time()
        await w.fake.record_payment(1, 30.0)
        await flow.wait_task_state("succeeded")
        await w.sink.wait_messages(1)
        # Picked up by NOTIFY on the new connection, not by the (300 s) safety poll.
        assert trio.current_time() - t0 < 10
        assert flow.running.deps.health.ready


async def test_suspension_deactivates_the_onu_without_sms(w: World) -> None:
    zte = w.devices["olt-zte"]
    bruno = w.fake.add_client("Bruno", "Díaz", "+34 600 333 444")
    service = w.fake.add_service(bruno["id"], olt="olt-zte", onu="1/2/1:5")
    async with daemon(w) as flow:
        w.fake.services[service["id"]]["status"] = 3
        await w.fake.send_webhook("service.suspend", "service", service["id"], "suspend", service)
        [task] = await flow.wait_task_state("succeeded")
        await flow.settle()
    assert task["action"] == "deactivate"
    assert not zte.is_active(OnuRef(1, 2, 1, 5))
    assert w.sink.messages == []


async def test_a_webhook_uisp_never_sent_is_not_acted_on(w: World) -> None:
    async with daemon(w) as flow:
        w.fake.services[1]["status"] = 1  # even if the service looks active...
        forged = {
            "uuid": "0b7f3f0e-8d0e-4a43-9d3a-4f1c7f0c2b11",
            "changeType": "unsuspend",
            "entity": "service",
            "entityId": 1,
            "eventName": "service.suspend_cancel",
            "extraData": {"entity": None, "entityBeforeEdit": None},
        }
        assert (await flow.post_webhook(forged)).status_code == 200

        async def processed() -> str | None:
            outcome: str | None = await w.db.fetchval(
                "SELECT outcome FROM uisp_webhooks WHERE uuid = $1::uuid", forged["uuid"]
            )
            return outcome

        outcome = await flow.wait_for(processed, "webhook processed")
    assert outcome.startswith("rejected: UISP does not know")
    assert await w.db.fetchval("SELECT count(*) FROM reconnect_tasks") == 0
    assert not w.devices["olt-hw"].is_active(ANA_ONU)


async def test_payment_with_reactivate_onu_mode_reconnects_directly(w: World) -> None:
    """payment_action = reactivate_onu: UISP keeps the suspension, the ONU comes back."""
    w.fake.suspended_by.clear()  # a suspension UISP will not lift by itself
    async with daemon(w, payment_action="reactivate_onu") as flow:
        await w.fake.record_payment(1, 30.0)
        [task] = await flow.wait_task_state("succeeded")
        await w.sink.wait_messages(1)
    assert task["action"] == "activate"
    assert w.devices["olt-hw"].is_active(ANA_ONU)
    assert w.fake.services[1]["status"] == 3


async def test_payment_with_cancel_suspend_mode_asks_uisp_to_lift_the_suspension(w: World) -> None:
    w.fake.suspended_by.clear()
    async with daemon(w) as flow:
        await w.fake.record_payment(1, 30.0)
        [_task] = await flow.wait_task_state("succeeded")
        await w.sink.wait_messages(1)
    assert ("PATCH", "/clients/services/1/cancel-suspend") in w.fake.requests
    assert w.fake.services[1]["status"] == 1
    assert w.devices["olt-hw"].is_active(ANA_ONU)
    assert len(w.sink.messages) == 1


async def test_a_failed_task_can_be_retried_from_the_admin_api(w: World) -> None:
    hw = w.devices["olt-hw"]
    w.fake.services[1]["attributes"][1]["value"] = "0/1/3:99"
    async with daemon(w) as flow:
        await w.fake.record_payment(1, 30.0)
        [task] = await flow.wait_task_state("failed")
        # The operator provisions the ONU on the OLT, then retries the task.
        hw.add_onu(0, 1, 3, 99, active=False)
        r = await flow.http.post(
            f"/api/v1/tasks/{task['id']}/retry", headers={"Authorization": "Bearer admin-token"}
        )
        assert r.status_code == 202
        [task] = await flow.wait_task_state("succeeded")
        await w.sink.wait_messages(1)
    assert hw.is_active(OnuRef(0, 1, 3, 99))
    assert task["attempts"] == 1  # a retry starts the attempt count afresh
    assert len(w.sink.messages) == 1


async def test_a_stale_disconnect_never_undoes_a_later_reconnect(w: World) -> None:
    """A suspension stuck in retry (OLT unreachable) is superseded once the client pays."""
    hw = w.devices["olt-hw"]
    hw.set_active(ANA_ONU, True)
    hw.max_sessions = 0  # hangs up on every session (a rejected login would fail for good)
    async with daemon(w) as flow:
        w.fake.services[1]["status"] = 3
        await w.fake.send_webhook("service.suspend", "service", 1, "suspend", w.fake.services[1])

        async def retrying() -> bool:
            rows = await flow.task_rows()
            return bool(rows) and rows[0]["last_error"] is not None

        await flow.wait_for(retrying, "the deactivation failing against the OLT")
        await w.fake.record_payment(1, 30.0)  # UISP lifts the suspension: activate queued
        hw.max_sessions = 4
        await flow.wait_task_state("succeeded")
        rows = await flow.wait_task_state("superseded")
        await w.sink.wait_messages(1)
        await flow.settle(1.5)  # past the breaker reset: the stale task would have run by now
    deactivate, activate = rows
    assert (deactivate["action"], deactivate["state"]) == ("deactivate", "superseded")
    assert (activate["action"], activate["state"]) == ("activate", "succeeded")
    assert hw.is_active(ANA_ONU)
    assert not any(c.startswith("ont deactivate") for c in hw.command_log)
    assert len(w.sink.messages) == 1


async def test_two_activations_of_one_service_send_one_sms(w: World) -> None:
    w.fake.suspended_by.clear()
    async with daemon(w, payment_action="reactivate_onu") as flow:
        await w.fake.record_payment(1, 30.0)  # payment.add: the ONU is reactivated directly
        await flow.wait_task_state("succeeded")
        await w.sink.wait_messages(1)
        # Later the operator lifts the suspension in UISP: suspend_cancel arrives too.
        w.fake.services[1]["status"] = 1
        await w.fake.send_webhook(
            "service.suspend_cancel", "service", 1, "unsuspend", w.fake.services[1]
        )
        rows = await flow.wait_task_state("succeeded", 2)
        await flow.settle()
    assert len(w.sink.messages) == 1
    history = await w.db.fetch(
        "SELECT kind, detail FROM task_events WHERE task_id = $1", rows[1]["id"]
    )
    assert ("sms_skipped", {"reason": f"already reconnected by task {rows[0]['id']}"}) in [
        (r["kind"], r["detail"]) for r in history
    ]


async def test_a_real_uuid_paired_with_another_entity_is_rejected(w: World) -> None:
    async with daemon(w) as flow:
        w.fake.services[1]["status"] = 1
        genuine = w.fake.build_webhook("service.suspend_cancel", "service", 2, "unsuspend", None)
        forged = {**genuine, "entityId": 1}
        assert (await flow.post_webhook(forged)).status_code == 200

        async def outcome() -> str | None:
            value: str | None = await w.db.fetchval(
                "SELECT outcome FROM uisp_webhooks WHERE uuid = $1::uuid", forged["uuid"]
            )
            return value

        result = await flow.wait_for(outcome, "webhook processed")
    assert result == f"rejected: webhook {forged['uuid']} says entityId=1, UISP says 2"
    assert await w.db.fetchval("SELECT count(*) FROM reconnect_tasks") == 0


def olt_gauge(flow: Flow, name: str, device: str) -> float | None:
    value: float | None = flow.running.deps.metrics.registry.get_sample_value(
        name, {"device": device}
    )
    return value


async def test_an_olt_update_reaches_the_running_daemon_and_the_retry_uses_it(
    w: World,
) -> None:
    """The operator fixes a wrong OLT port while a task keeps retrying; no restart."""
    hw = w.devices["olt-hw"]
    async with daemon(w) as flow:
        box = load_keyring(flow.cfg.secrets)
        await olt_store.update_device(w.db, box, "olt-hw", port=1)  # nothing listens there
        await w.fake.record_payment(1, 30.0)

        async def failing_on_the_wrong_port() -> bool:
            rows = await flow.task_rows()
            return bool(rows) and "127.0.0.1:1" in (rows[0]["last_error"] or "")

        await flow.wait_for(failing_on_the_wrong_port, "the task retrying against port 1")
        await olt_store.update_device(w.db, box, "olt-hw", port=hw.port)
        with trio.fail_after(10):  # the next retry (a few seconds away) uses the new port
            [task] = await flow.wait_task_state("succeeded")
        await w.sink.wait_messages(1)
    assert hw.is_active(ANA_ONU)
    assert task["attempts"] <= 5
    assert hw.sessions_opened == 1
    assert len(w.sink.messages) == 1


async def test_an_olt_update_wakes_a_task_waiting_minutes_for_its_retry(w: World) -> None:
    """With a 60 s retry backoff, fixing the port must not cost the customer a minute."""
    hw = w.devices["olt-hw"]
    async with daemon(w, olt={"retry_backoff_seconds": 60.0}) as flow:
        box = load_keyring(flow.cfg.secrets)
        await olt_store.update_device(w.db, box, "olt-hw", port=1)  # nothing listens there
        await w.fake.record_payment(1, 30.0)

        async def waiting_for_its_retry() -> bool:
            rows = await flow.task_rows()
            return bool(rows) and rows[0]["state"] == "queued" and rows[0]["attempts"] == 1

        await flow.wait_for(waiting_for_its_retry, "the task waiting 60 s to retry")
        await trio.sleep(5.5)  # its last read is now a few seconds old
        await olt_store.update_device(w.db, box, "olt-hw", port=hw.port)
        with trio.fail_after(10):  # not 60 s
            [task] = await flow.wait_task_state("succeeded")
        await w.sink.wait_messages(1)
    assert task["attempts"] == 2


async def test_a_wrong_olt_password_fails_the_task_saying_how_to_fix_it(w: World) -> None:
    hw = w.devices["olt-hw"]
    async with daemon(w) as flow:
        hw.password = "changed-on-the-device"  # on the device, not in paymentd
        await w.fake.record_payment(1, 30.0)
        [task] = await flow.wait_task_state("failed")
        assert olt_gauge(flow, "paymentd_olt_auth_failed", "olt-hw") == 1
        assert olt_gauge(flow, "paymentd_olt_auth_failures_total", "olt-hw") == 1
        assert hw.auth_attempts == 1  # tried once, not every few seconds
        assert task["attempts"] == 1
        assert "authentication failed" in task["last_error"]
        assert "paymentd olt update olt-hw --new-password" in task["last_error"]
        assert w.sink.messages == []

        # The operator sets the password the device has now and retries the task.
        box = load_keyring(flow.cfg.secrets)
        await olt_store.update_device(w.db, box, "olt-hw", password="changed-on-the-device")
        r = await flow.http.post(
            f"/api/v1/tasks/{task['id']}/retry", headers={"Authorization": "Bearer admin-token"}
        )
        assert r.status_code == 202
        await flow.wait_task_state("succeeded")
        await w.sink.wait_messages(1)
        assert olt_gauge(flow, "paymentd_olt_auth_failed", "olt-hw") == 0
    assert hw.is_active(ANA_ONU)


async def test_an_olt_presenting_another_host_key_is_refused_and_the_task_fails(
    w: World,
) -> None:
    hw = w.devices["olt-hw"]
    async with daemon(w) as flow:
        hw.change_host_key()  # registered with the old key
        await w.fake.record_payment(1, 30.0)
        [task] = await flow.wait_task_state("failed")
        assert olt_gauge(flow, "paymentd_olt_host_key_rejected", "olt-hw") == 1
    assert "REFUSED" in task["last_error"]
    assert "paymentd olt update olt-hw --refresh-host-key" in task["last_error"]
    assert hw.auth_attempts == 0  # the password never went to the unknown key
    assert not hw.is_active(ANA_ONU)
