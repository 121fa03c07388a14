"""Scenarios: the OLT pool actor against the simulator, over real SSH on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from daemon.actors.olt_pool import Action, OltPool
from daemon.network.olt.types import (
    OltAuthError,
    OltCircuitOpen,
    OltCommandError,
    OltResult,
    OltTransientError,
    OltUnknownDevice,
    OnuRef,
)
from daemon.platform.events import EventBus
from daemon.platform.metrics import Metrics
from tests.olt_fixtures import Rows, Sim, eventually, pool_settings, sim

__all__ = ["sim"]


@asynccontextmanager
async def running_pool(
    sim: Sim, rows: Rows | None = None, **settings: Any
) -> AsyncIterator[OltPool]:
    load = sim.load_device if rows is None else rows.load_device
    pool = OltPool(pool_settings(**settings), load, Metrics(), EventBus())
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        yield pool
        nursery.cancel_scope.cancel()


def sample(pool: OltPool, name: str, **labels: str) -> float:
    value = pool._metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_a_warm_session_serves_three_requests(sim: Sim) -> None:
    events = EventBus()
    with trio.fail_after(15), events.subscribe() as received:
        async with running_pool(sim) as pool:
            pool._events = events
            steps: list[tuple[int, Action]] = [(2, "activate"), (4, "activate"), (2, "deactivate")]
            for onu_id, action in steps:
                result = await pool.execute("hw", OnuRef(0, 1, 3, onu_id), action)
                assert isinstance(result, OltResult) and result.action == action
            assert sim["hw"].is_active(OnuRef(0, 1, 3, 4))
            assert not sim["hw"].is_active(OnuRef(0, 1, 3, 2))
            assert sim["hw"].sessions_opened == 1
            assert sim["hw"].command_log.count("enable") == 1
            assert sample(pool, "paymentd_olt_sessions_opened_total", device="hw") == 1
            count = "paymentd_olt_command_seconds_count"
            assert sample(pool, count, vendor="huawei", outcome="ok") == 3
        event = received.receive_nowait()
    assert event.kind == "olt.command"
    assert event.data["device"] == "hw" and event.data["onu"] == "0/1/3:2"
    assert event.data["action"] == "activate" and event.data["outcome"] == "ok"


@pytest.mark.parametrize("after", [True, False], ids=["dropped-after-apply", "dropped-before"])
async def test_a_connection_dropped_mid_command_is_retried_on_a_fresh_session(
    sim: Sim, after: bool
) -> None:
    onu = OnuRef(0, 1, 3, 2)
    with trio.fail_after(15):
        async with running_pool(sim) as pool:
            sim["hw"].drop_on("ont activate", after=after)
            result = await pool.execute("hw", onu, "activate")
    assert result.state == "active" and sim["hw"].is_active(onu)
    assert sim["hw"].sessions_opened == 2
    assert sim["hw"].command_log.count("ont activate 3 2") == 2


async def test_a_hung_command_times_out_and_is_retried(sim: Sim) -> None:
    hw = sim["hw"]
    with trio.fail_after(15):
        async with running_pool(sim, command_timeout=0.5) as pool:
            # Hanging during login (`enable`) is a failed connection: reported, not retried.
            hw.hang_next()
            with pytest.raises(OltTransientError, match=r"no answer within 0\.5s"):
                await pool.execute("hw", OnuRef(0, 1, 3, 2), "activate")
            assert hw.sessions_opened == 1
            await pool.execute("hw", OnuRef(0, 1, 3, 2), "activate")
            assert hw.sessions_opened == 2
            # Hanging on the warm session (`config`): retried once on a fresh session.
            hw.hang_next()
            result = await pool.execute("hw", OnuRef(0, 1, 3, 2), "deactivate")
    assert result.state == "deactivated"
    assert hw.sessions_opened == 3


async def test_two_drops_in_one_request_are_reported_as_transient(sim: Sim) -> None:
    with trio.fail_after(15):
        async with running_pool(sim) as pool:
            sim["hw"].drop_on("ont activate", times=2)
            with pytest.raises(OltTransientError):
                await pool.execute("hw", OnuRef(0, 1, 3, 2), "activate")
            count = "paymentd_olt_command_seconds_count"
            assert sample(pool, count, vendor="huawei", outcome="transient") == 1
            # The device is fine again: the next request gets through.
            assert (await pool.execute("hw", OnuRef(0, 1, 3, 2), "activate")).state == "active"


async def test_a_device_error_is_not_retried(sim: Sim) -> None:
    with trio.fail_after(15):
        async with running_pool(sim) as pool:
            with pytest.raises(OltCommandError, match=r"^Failure: The ONT does not exist$"):
                await pool.execute("hw", OnuRef(0, 1, 3, 99), "activate")
            await pool.execute("hw", OnuRef(0, 1, 3, 2), "activate")
            count = "paymentd_olt_command_seconds_count"
            assert sample(pool, count, vendor="huawei", outcome="device_error") == 1
    assert sim["hw"].command_log.count("ont activate 3 99") == 1
    assert sim["hw"].sessions_opened == 1


async def test_unknown_device(sim: Sim) -> None:
    with trio.fail_after(15):
        async with running_pool(sim) as pool:
            with pytest.raises(OltUnknownDevice):
                await pool.execute("nope", OnuRef(0, 1, 3, 2), "activate")


async def test_an_idle_session_is_closed_and_reopened_on_demand(sim: Sim) -> None:
    with trio.fail_after(15):
        async with running_pool(sim, idle_close=0.3) as pool:
            await pool.execute("hw", OnuRef(0, 1, 3, 2), "activate")
            assert sim["hw"].active_sessions == 1
            await eventually(lambda: sim["hw"].active_sessions == 0)  # logged out when idle
            assert sim["hw"].command_log[-1] == "quit"
            await pool.execute("hw", OnuRef(0, 1, 3, 2), "deactivate")
    assert sim["hw"].sessions_opened == 2


async def test_the_breaker_opens_after_failed_connections_and_closes_after_reset(
    sim: Sim,
) -> None:
    hw = sim["hw"]
    onu = OnuRef(0, 1, 3, 2)
    with trio.fail_after(15):
        async with running_pool(sim, breaker_failures=2, breaker_reset=0.5) as pool:
            hw.max_sessions = 0  # the device hangs up on every new session
            for _ in range(2):
                with pytest.raises(OltTransientError, match="closed by the device"):
                    await pool.execute("hw", onu, "activate")
            assert hw.sessions_opened == 2
            assert sample(pool, "paymentd_olt_breaker_open", device="hw") == 1
            # What the console's overview shows: open, with how long it stays so.
            status = pool.status()["hw"]
            assert status.failures == 2 and not status.session
            assert 0 < status.breaker_open_seconds <= 0.5
            with pytest.raises(OltCircuitOpen):
                await pool.execute("hw", onu, "activate")
            assert hw.sessions_opened == 2  # answered without touching the device
            count = "paymentd_olt_command_seconds_count"
            assert sample(pool, count, vendor="huawei", outcome="breaker_open") == 1

            hw.max_sessions = 4
            await trio.sleep(0.5)
            assert (await pool.execute("hw", onu, "activate")).state == "active"
            assert sample(pool, "paymentd_olt_breaker_open", device="hw") == 0
            status = pool.status()["hw"]
            assert status.failures == 0 and status.breaker_open_seconds == 0
            assert status.session  # the session it worked on stays open (until idle)


async def test_concurrent_requests_to_one_device_never_interleave(sim: Sim) -> None:
    hw = sim["hw"]
    hw.latency = 0.01
    with trio.fail_after(15):
        # One sequence per request (olt.max_batch = 1); batched bursts: test_olt_batching.
        async with running_pool(sim, max_batch=1) as pool, trio.open_nursery() as nursery:
            for onu_id in (1, 2, 3, 4):
                action: Action = "deactivate" if onu_id % 2 else "activate"
                nursery.start_soon(pool.execute, "hw", OnuRef(0, 1, 3, onu_id), action)
            # Another device works in parallel meanwhile.
            nursery.start_soon(pool.execute, "zte", OnuRef(1, 2, 1, 2), "activate")
    assert hw.sessions_opened == 1
    ops = hw.command_log[4:28]  # after the login set-up, before the logout
    assert hw.command_log[28:] == ["quit"]
    changed = []
    for i in range(0, len(ops), 6):  # each operation is one uninterrupted block
        block = ops[i : i + 6]
        assert block[:2] == ["config", "interface gpon 0/1"]
        _verb, port, onu = block[2].split()[1:]
        assert block[3] == f"display ont info {port} {onu}"
        assert block[4:] == ["quit", "quit"]
        changed.append(int(onu))
    assert sorted(changed) == [1, 2, 3, 4]
    assert all(hw.is_active(OnuRef(0, 1, 3, i)) == (i % 2 == 0) for i in (1, 2, 3, 4))
    assert sim["zte"].is_active(OnuRef(1, 2, 1, 2))


async def test_device_test_and_forget(sim: Sim) -> None:
    with trio.fail_after(15):
        async with running_pool(sim) as pool:
            assert "ZXAN C320" in await pool.test_device("zte")
            assert "PRODUCT : MA5800-X15" in await pool.test_device("hw")
            pool.forget("hw")  # e.g. its password changed: the next request logs in again
            await pool.execute("hw", OnuRef(0, 1, 3, 2), "activate")
    assert sim["hw"].sessions_opened == 2
    assert sim["hw"].peak_sessions == 1  # the new session waited for the old one's logout


async def test_a_stopped_pool_is_a_transient_error(sim: Sim) -> None:
    pool = OltPool(pool_settings(), sim.load_device, Metrics(), EventBus())
    with trio.fail_after(5), pytest.raises(OltTransientError, match="not running"):
        await pool.execute("hw", OnuRef(0, 1, 3, 2), "activate")


async def test_a_request_whose_caller_gave_up_while_queued_is_not_run(sim: Sim) -> None:
    hw = sim["hw"]
    with trio.fail_after(20):
        async with running_pool(sim) as pool:
            await pool.execute("hw", OnuRef(0, 1, 3, 2), "activate")  # warm the session
            hw.latency = 0.2
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pool.execute, "hw", OnuRef(0, 1, 3, 2), "deactivate")
                await eventually(lambda: any(c == "ont deactivate 3 2" for c in hw.command_log))
                with trio.move_on_after(0.1):  # queued behind the first; its caller gives up
                    await pool.execute("hw", OnuRef(0, 1, 3, 4), "activate")
            hw.latency = 0.0
            # The device actor is free again and never ran the abandoned request.
            await pool.execute("hw", OnuRef(0, 1, 3, 2), "activate")
    assert "ont activate 3 4" not in hw.command_log
    assert not hw.is_active(OnuRef(0, 1, 3, 4))


# -- device changes reach the running pool (defect 2) ---------------------------------


async def test_a_changed_port_is_used_by_the_next_request_without_a_restart(sim: Sim) -> None:
    hw = sim["hw"]
    rows = Rows.of(sim, "hw")
    right_port = rows.specs["hw"].port
    rows.update("hw", port=1)  # nothing listens there
    onu = OnuRef(0, 1, 3, 2)
    with trio.fail_after(15):
        async with running_pool(sim, rows, breaker_failures=2, breaker_reset=60) as pool:
            for _ in range(2):
                with pytest.raises(OltTransientError, match=r"connect 127\.0\.0\.1:1\b"):
                    await pool.execute("hw", onu, "activate")
            with pytest.raises(OltCircuitOpen):  # the breaker is open for a minute...
                await pool.execute("hw", onu, "activate")
            rows.update("hw", port=right_port)  # ... but the operator fixed the port
            assert (await pool.execute("hw", onu, "activate")).state == "active"
            assert sample(pool, "paymentd_olt_breaker_open", device="hw") == 0
    assert hw.sessions_opened == 1


async def test_a_changed_password_replaces_the_warm_session(sim: Sim) -> None:
    hw = sim["hw"]
    rows = Rows.of(sim, "hw")
    with trio.fail_after(15):
        async with running_pool(sim, rows) as pool:
            await pool.execute("hw", OnuRef(0, 1, 3, 2), "activate")
            hw.password = "rotated"
            rows.update("hw", password="rotated")
            await pool.execute("hw", OnuRef(0, 1, 3, 2), "deactivate")
            assert hw.sessions_opened == 2
            assert hw.peak_sessions == 1  # the old session was closed first
            await pool.execute("hw", OnuRef(0, 1, 3, 2), "activate")  # unchanged: warm
    assert hw.sessions_opened == 2


async def test_a_removed_device_is_unknown_and_its_session_closed(sim: Sim) -> None:
    hw = sim["hw"]
    rows = Rows.of(sim, "hw")
    with trio.fail_after(15):
        async with running_pool(sim, rows) as pool:
            await pool.execute("hw", OnuRef(0, 1, 3, 2), "activate")
            rows.remove("hw")
            with pytest.raises(OltUnknownDevice):
                await pool.execute("hw", OnuRef(0, 1, 3, 2), "deactivate")
            await eventually(lambda: hw.active_sessions == 0)
    assert "ont deactivate 3 2" not in hw.command_log


# -- hung commands and rejected logins (defect 21) -----------------------------------


async def test_a_device_that_logs_in_but_hangs_on_the_change_trips_the_breaker(
    sim: Sim,
) -> None:
    hw = sim["hw"]
    onu = OnuRef(0, 1, 3, 2)
    with trio.fail_after(15):
        async with running_pool(sim, command_timeout=0.3, breaker_failures=2) as pool:
            hw.hang_on("ont activate", times=2)  # logs in fine every time
            with pytest.raises(OltTransientError, match=r"no answer within 0\.3s"):
                await pool.execute("hw", onu, "activate")  # hangs, and again on the retry
            assert hw.sessions_opened == 2
            assert sample(pool, "paymentd_olt_breaker_open", device="hw") == 1
            with pytest.raises(OltCircuitOpen, match="after 2 failed attempts"):
                await pool.execute("hw", onu, "activate")
    assert hw.sessions_opened == 2
    assert hw.command_log.count("ont activate 3 2") == 2


@pytest.mark.parametrize("device", ["hw", "zte"], ids=["ssh-auth", "cli-login"])
async def test_a_wrong_password_fails_for_good_until_the_device_is_updated(
    sim: Sim, device: str
) -> None:
    d = sim[device]
    rows = Rows.of(sim, device)
    rows.update(device, password="wrong")
    onu = OnuRef(0, 1, 3, 2) if device == "hw" else OnuRef(1, 2, 1, 2)
    with trio.fail_after(15):
        async with running_pool(sim, rows) as pool:
            with pytest.raises(OltAuthError, match=f"paymentd olt update {device} --new-password"):
                await pool.execute(device, onu, "activate")
            attempts = d.auth_attempts
            assert attempts >= 1
            for _ in range(3):  # refused at once, without trying the device again
                with pytest.raises(OltAuthError, match="authentication failed"):
                    await pool.execute(device, onu, "activate")
            assert d.auth_attempts == attempts
            assert sample(pool, "paymentd_olt_auth_failed", device=device) == 1
            assert sample(pool, "paymentd_olt_auth_failures_total", device=device) == 1
            count = "paymentd_olt_command_seconds_count"
            assert sample(pool, count, vendor=d.vendor, outcome="auth_failed") == 4

            rows.update(device, password=d.password)  # paymentd olt update --new-password
            assert (await pool.execute(device, onu, "activate")).state == "active"
            assert sample(pool, "paymentd_olt_auth_failed", device=device) == 0
