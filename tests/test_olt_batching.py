"""Bursts batched per board: the OLT pool against the simulator, over real SSH.

Each scenario holds the device busy with a first request (``SimDevice.hold``) until the
burst is queued behind it, so what the device actor drains when it becomes free is known.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from daemon.actors.olt_batch import plan
from daemon.actors.olt_pool import Action, OltPool
from daemon.network.olt.simulator import SimDevice
from daemon.network.olt.types import (
    OltBusy,
    OltCommandError,
    OltError,
    OltResult,
    OltTransientError,
    OnuRef,
)
from daemon.platform.events import EventBus
from daemon.platform.metrics import Metrics
from tests.olt_fixtures import Sim, eventually, pool_settings, sim
from tests.test_olt_pool import running_pool, sample

__all__ = ["sim"]

Outcome = OltResult | OltError | None


def hw_onu(onu_id: int) -> OnuRef:
    return OnuRef(0, 1, 3, onu_id)


async def burst(
    pool: OltPool,
    device: SimDevice,
    items: Sequence[tuple[OnuRef, Action]],
    *,
    give_up: Sequence[int] = (),
) -> list[Outcome]:
    """Queue ``items`` (in this order) behind a probe the held device is busy with, then
    let go; each item's own outcome. Callers of the items at ``give_up`` leave before
    the device is free (their task deadline passed)."""
    outcomes: list[Outcome] = [None] * len(items)
    gone = trio.CancelScope()

    async def one(i: int, onu: OnuRef, action: Action) -> None:
        try:
            outcomes[i] = await pool.execute(device.name, onu, action)
        except OltError as exc:
            outcomes[i] = exc

    async def leaving(i: int, onu: OnuRef, action: Action) -> None:
        with gone:
            await one(i, onu, action)

    device.hold()
    logged = len(device.command_log)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pool.test_device, device.name)
        await eventually(lambda: len(device.command_log) > logged)  # the actor is busy
        for i, (onu, action) in enumerate(items):
            nursery.start_soon(leaving if i in give_up else one, i, onu, action)
            await eventually(lambda i=i: pool.waiting(device.name) == i + 1)  # type: ignore[misc]
        gone.cancel()
        device.release()
    return outcomes


def held_pool(sim: Sim, **settings: Any) -> AbstractAsyncContextManager[OltPool]:
    """``running_pool`` with a command timeout beyond the tests' own bounds: ``burst``
    holds the device's answers until the burst is queued, which on a loaded machine can
    take longer than the default 5 s, and the blocker must not time out meanwhile."""
    return running_pool(sim, **{"command_timeout": 60.0, **settings})


def after_probe(device: SimDevice, probe: str) -> list[str]:
    """The commands the device saw after the last ``probe`` (the blocker)."""
    log = device.command_log
    last = len(log) - 1 - log[::-1].index(probe)
    return log[last + 1 :]


async def test_a_burst_over_one_board_is_one_sequence_with_each_its_own_result(
    sim: Sim,
) -> None:
    hw = sim["hw"]  # ONUs 1 and 3 active, 2 and 4 not
    items: list[tuple[OnuRef, Action]] = [
        (hw_onu(2), "activate"),
        (hw_onu(4), "activate"),
        (hw_onu(1), "deactivate"),
        (hw_onu(3), "deactivate"),
    ]
    with trio.fail_after(20):
        async with held_pool(sim) as pool:
            await pool.test_device("hw")  # log in first: the burst runs on a warm session
            outcomes = await burst(pool, hw, items)
            ops = after_probe(hw, "display version")  # before the pool logs out
            batches = sample(pool, "paymentd_olt_batch_size_count")
            batched = sample(pool, "paymentd_olt_batch_size_sum")
    assert ops == [
        "config",
        "interface gpon 0/1",
        "ont activate 3 2",
        "ont activate 3 4",
        "ont deactivate 3 1",
        "ont deactivate 3 3",
        "display ont info 3 all",
        "return",
    ]
    for (onu, action), outcome in zip(items, outcomes, strict=True):
        assert isinstance(outcome, OltResult)
        assert (outcome.onu, outcome.action) == (onu, action)
        assert outcome.state == ("active" if action == "activate" else "deactivated")
        assert f"ont {action} 3 {onu.onu_id}" in outcome.output  # its own command ...
        assert re.search(rf"0/ 1/3 +{onu.onu_id} +HWTC", outcome.output)  # ... and its row
        assert hw.is_active(onu) == (action == "activate")
    assert hw.sessions_opened == 1
    assert (batches, batched) == (1, 4)


async def test_one_unknown_onu_fails_alone_and_the_others_in_its_sequence_succeed(
    sim: Sim,
) -> None:
    hw = sim["hw"]
    items: list[tuple[OnuRef, Action]] = [
        (hw_onu(2), "activate"),
        (hw_onu(99), "activate"),
        (hw_onu(1), "deactivate"),
    ]
    with trio.fail_after(20):
        async with held_pool(sim) as pool:
            outcomes = await burst(pool, hw, items)
            ops = after_probe(hw, "display version")
            ok = sample(pool, "paymentd_olt_command_seconds_count", vendor="huawei", outcome="ok")
            failed = sample(
                pool, "paymentd_olt_command_seconds_count", vendor="huawei", outcome="device_error"
            )
    good, unknown, off = outcomes
    assert isinstance(unknown, OltCommandError)
    assert unknown.message == "Failure: The ONT does not exist"
    assert "ont activate 3 99" in unknown.output
    assert isinstance(good, OltResult) and good.state == "active" and hw.is_active(hw_onu(2))
    assert isinstance(off, OltResult) and off.state == "deactivated"
    assert not hw.is_active(hw_onu(1))
    # One sequence; the unknown ONU is not read back.
    assert ops.count("config") == 1 and ops.count("ont activate 3 99") == 1
    assert ops[-2:] == ["display ont info 3 all", "return"]
    assert (ok, failed) == (2, 1)


async def test_the_same_onu_twice_runs_in_two_sequences_in_arrival_order(sim: Sim) -> None:
    hw = sim["hw"]
    items: list[tuple[OnuRef, Action]] = [
        (hw_onu(2), "activate"),
        (hw_onu(2), "deactivate"),  # a later intent for the same ONU (a new task)
        (hw_onu(4), "activate"),
    ]
    with trio.fail_after(20):
        async with held_pool(sim) as pool:
            outcomes = await burst(pool, hw, items)
            ops = after_probe(hw, "display version")
    on, off, other = outcomes
    assert isinstance(on, OltResult) and on.state == "active"
    assert isinstance(off, OltResult) and off.state == "deactivated"
    assert isinstance(other, OltResult) and other.state == "active"
    assert not hw.is_active(hw_onu(2)) and hw.is_active(hw_onu(4))
    # Later requests join the newest sequence of their board.
    assert ops == [
        *["config", "interface gpon 0/1", "ont activate 3 2", "display ont info 3 2"],
        *["quit", "quit"],
        *["config", "interface gpon 0/1", "ont deactivate 3 2", "ont activate 3 4"],
        *["display ont info 3 all", "return"],
    ]


async def test_one_sequence_per_board_and_one_read_back_per_port(sim: Sim) -> None:
    hw = sim["hw"]
    hw.add_onu(0, 1, 5, 1)
    hw.add_onu(0, 1, 5, 2)
    hw.add_onu(0, 2, 0, 1)
    items: list[tuple[OnuRef, Action]] = [
        (OnuRef(0, 1, 5, 1), "activate"),
        (OnuRef(0, 2, 0, 1), "activate"),  # another board
        (hw_onu(2), "activate"),  # the first board, another port
        (OnuRef(0, 1, 5, 2), "activate"),
    ]
    with trio.fail_after(20):
        async with held_pool(sim) as pool:
            outcomes = await burst(pool, hw, items)
            ops = after_probe(hw, "display version")
    assert all(isinstance(o, OltResult) and o.state == "active" for o in outcomes)
    assert all(hw.is_active(onu) for onu, _ in items)
    assert ops == [
        *["config", "interface gpon 0/1", "ont activate 5 1", "ont activate 3 2"],
        *["ont activate 5 2", "display ont info 5 all", "display ont info 3 2", "return"],
        # A sequence of one is the single-request flow.
        *["config", "interface gpon 0/2", "ont activate 0 1", "display ont info 0 1"],
        *["quit", "quit"],
    ]


async def test_a_paged_port_table_with_smart_prompts_is_read_whole(sim: Sim) -> None:
    quirky = sim["hw-quirky"]  # pager and smart prompts stay on; 20 lines a page
    for onu_id in range(5, 31):
        quirky.add_onu(0, 2, 1, onu_id)
    items: list[tuple[OnuRef, Action]] = [
        (OnuRef(0, 2, 1, i), "activate")
        for i in (2, 17, 30)  # rows on three pages
    ]
    with trio.fail_after(20):
        async with held_pool(sim) as pool:
            outcomes = await burst(pool, quirky, items)
            ops = after_probe(quirky, "display version")
    assert all(isinstance(o, OltResult) and o.state == "active" for o in outcomes)
    assert "display ont info 1 all" in ops


@pytest.mark.parametrize("name", ["zte", "zte-c600"])
async def test_zte_batches_with_an_unknown_onu(sim: Sim, name: str) -> None:
    zte = sim[name]
    f, s, p = (1, 2, 1) if name == "zte" else (1, 3, 13)
    fsp = f"{f}/{s}/{p}"
    items: list[tuple[OnuRef, Action]] = [
        (OnuRef(f, s, p, 2), "activate"),
        (OnuRef(f, s, p, 77), "activate"),  # not on this OLT
        (OnuRef(f, s, p, 3), "deactivate"),
    ]
    with trio.fail_after(20):
        async with held_pool(sim) as pool:
            outcomes = await burst(pool, zte, items)
            ops = after_probe(zte, "show version")
    on, unknown, off = outcomes
    assert isinstance(unknown, OltCommandError)
    assert unknown.message == "%Code 62397-GPONSRV: The entry is not existed."
    assert isinstance(on, OltResult) and on.state == "active"
    assert isinstance(off, OltResult) and off.state == "deactivated"
    assert zte.is_active(OnuRef(f, s, p, 2)) and not zte.is_active(OnuRef(f, s, p, 3))
    if name == "zte":
        assert ops == [
            *["configure terminal", f"interface gpon-olt_{fsp}", "onu 2 state enable"],
            *["onu 77 state enable", "onu 3 state disable", "end"],
            f"show gpon onu state gpon-olt_{fsp}",
        ]
    else:
        assert ops == [
            *["configure terminal", f"interface gpon_onu-{fsp}:2", "admin enable"],
            *[f"interface gpon_onu-{fsp}:77", f"interface gpon_onu-{fsp}:3", "admin disable"],
            *["end", f"show gpon onu state gpon-olt_{fsp}"],
        ]


async def test_a_session_lost_mid_sequence_runs_the_whole_sequence_again(sim: Sim) -> None:
    hw = sim["hw"]
    items: list[tuple[OnuRef, Action]] = [(hw_onu(2), "activate"), (hw_onu(4), "activate")]
    with trio.fail_after(20):
        async with held_pool(sim) as pool:
            hw.drop_on("display ont info 3 all")  # both changes applied, never confirmed
            outcomes = await burst(pool, hw, items)
    assert all(isinstance(o, OltResult) and o.state == "active" for o in outcomes)
    assert hw.sessions_opened == 2
    assert hw.command_log.count("ont activate 3 2") == 2


async def test_a_sequence_that_fails_as_a_whole_is_run_again_one_change_at_a_time(
    sim: Sim,
) -> None:
    """One ONU whose command drops the session fails alone: its board-mate, run by itself
    after the sequence broke twice, succeeds (their retries would batch together again)."""
    hw = sim["hw"]
    items: list[tuple[OnuRef, Action]] = [(hw_onu(2), "activate"), (hw_onu(4), "activate")]
    with trio.fail_after(30):
        async with held_pool(sim) as pool:
            # The sequence and its retry, then ONU 4 alone and its retry.
            hw.drop_on("ont activate 3 4", times=4)
            outcomes = await burst(pool, hw, items)
            # The device is fine again: the next request gets through.
            assert (await pool.execute("hw", hw_onu(4), "activate")).state == "active"
    first, second = outcomes
    assert isinstance(first, OltResult) and first.state == "active"
    assert isinstance(second, OltTransientError)
    assert hw.command_log.count("ont activate 3 2") == 3  # twice batched, once alone


async def test_a_caller_that_gave_up_is_left_out_of_the_sequence(sim: Sim) -> None:
    hw = sim["hw"]
    items: list[tuple[OnuRef, Action]] = [
        (hw_onu(2), "activate"),
        (hw_onu(4), "activate"),
        (hw_onu(1), "deactivate"),
    ]
    with trio.fail_after(20):
        async with held_pool(sim) as pool:
            outcomes = await burst(pool, hw, items, give_up=[1])
            ops = after_probe(hw, "display version")
    assert outcomes[1] is None
    assert "ont activate 3 4" not in hw.command_log and not hw.is_active(hw_onu(4))
    assert isinstance(outcomes[0], OltResult) and isinstance(outcomes[2], OltResult)
    assert ops[:4] == [
        "config",
        "interface gpon 0/1",
        "ont activate 3 2",
        "ont deactivate 3 1",
    ]


async def test_a_read_back_that_disagrees_fails_each_onu_on_its_own(sim: Sim) -> None:
    hw = sim["hw"]
    hw.readonly = True  # accepts the commands, changes nothing
    items: list[tuple[OnuRef, Action]] = [(hw_onu(2), "activate"), (hw_onu(3), "activate")]
    with trio.fail_after(20):
        async with held_pool(sim) as pool:
            outcomes = await burst(pool, hw, items)
    changed, already = outcomes
    assert isinstance(changed, OltCommandError)
    assert changed.message == "0/1/3:2: state is 'deactivated' after activate, expected 'active'"
    assert isinstance(already, OltResult) and already.state == "active"  # ONU 3 was on


async def test_max_batch_bounds_a_sequence_and_one_means_one_per_request(sim: Sim) -> None:
    hw = sim["hw"]
    items: list[tuple[OnuRef, Action]] = [(hw_onu(i), "activate") for i in (1, 2, 3, 4)]
    with trio.fail_after(30):
        async with held_pool(sim, max_batch=3) as pool:
            outcomes = await burst(pool, hw, items)
            assert after_probe(hw, "display version").count("config") == 2
        assert all(isinstance(o, OltResult) for o in outcomes)
        async with held_pool(sim, max_batch=1) as pool:
            outcomes = await burst(pool, hw, [(onu, "deactivate") for onu, _ in items])
            ops = after_probe(hw, "display version")
        assert all(isinstance(o, OltResult) for o in outcomes)
    assert len(ops) == 4 * 6 and ops.count("config") == 4  # as before batching
    assert "display ont info 3 all" not in ops


async def test_a_device_queue_holds_two_full_batches(sim: Sim) -> None:
    hw = sim["hw"]
    items: list[tuple[OnuRef, Action]] = [(hw_onu(i), "activate") for i in (1, 2, 3, 4)]
    with trio.fail_after(20):
        async with held_pool(sim, queue_size=1, max_batch=2) as pool:
            outcomes = await burst(pool, hw, items)  # OltBusy past 1 would fail this
            ops = after_probe(hw, "display version")
    assert all(isinstance(o, OltResult) for o in outcomes)
    assert ops.count("config") == 2 and ops.count("display ont info 3 all") == 2


async def test_past_its_queue_a_device_answers_busy_at_once(sim: Sim) -> None:
    hw = sim["hw"]
    with trio.fail_after(20):
        async with held_pool(sim, queue_size=2, max_batch=1) as pool:
            hw.hold()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pool.test_device, "hw")
                await eventually(lambda: len(hw.command_log) > 0)  # the actor is busy
                for queued in (1, 2):
                    nursery.start_soon(pool.execute, "hw", hw_onu(2 + queued), "activate")
                    await eventually(lambda q=queued: pool.waiting("hw") == q)  # type: ignore[misc]
                with pytest.raises(OltBusy, match="too many queued requests"):
                    await pool.execute("hw", hw_onu(1), "deactivate")
                hw.release()
    assert hw.is_active(hw_onu(4))  # the queued ones ran
    assert hw.is_active(hw_onu(1)) and "ont deactivate 3 1" not in hw.command_log


async def test_requests_taken_for_later_sequences_still_count_as_waiting(sim: Sim) -> None:
    hw = sim["hw"]
    with trio.fail_after(30):
        async with held_pool(sim, queue_size=2, max_batch=1) as pool:
            hw.hold()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pool.test_device, "hw")
                await eventually(lambda: len(hw.command_log) > 0)
                for queued in (1, 2):
                    nursery.start_soon(pool.execute, "hw", hw_onu(queued), "deactivate")
                    await eventually(lambda q=queued: pool.waiting("hw") == q)  # type: ignore[misc]
                hw.latency = 0.3  # the first runs for a while; the second is in hand
                hw.release()
                await eventually(lambda: "ont deactivate 3 1" in hw.command_log)
                assert pool.waiting("hw") == 1
                nursery.start_soon(pool.execute, "hw", hw_onu(3), "deactivate")
                await eventually(lambda: pool.waiting("hw") == 2)
                with pytest.raises(OltBusy):
                    await pool.execute("hw", hw_onu(4), "activate")
    assert not any(hw.is_active(hw_onu(i)) for i in (1, 2, 3, 4))


@dataclass(frozen=True)
class Req:
    kind: str
    onu: OnuRef | None
    tag: str


def test_plan_groups_by_board_in_arrival_order() -> None:
    a1, a2, a3 = (Req("set", OnuRef(0, 1, p, 1), f"a{p}") for p in (1, 2, 3))
    b1 = Req("set", OnuRef(0, 2, 0, 1), "b1")
    again = Req("set", OnuRef(0, 1, 1, 1), "again")  # a1's ONU once more
    probe = Req("test", None, "probe")
    after = Req("set", OnuRef(0, 1, 4, 1), "after")

    def tags(requests: list[Req], size: int) -> list[list[str]]:
        return [[r.tag for r in seq] for seq in plan(requests, size)]

    assert tags([a1, b1, a2, again, a3, probe, after], 8) == [
        ["a1", "a2"],
        ["b1"],
        ["again", "a3"],
        ["probe"],
        ["after"],
    ]
    assert tags([a1, a2, a3, b1], 2) == [["a1", "a2"], ["a3"], ["b1"]]
    assert tags([a1, a2, b1], 1) == [["a1"], ["a2"], ["b1"]]


def test_the_batch_deadline_grows_with_the_batch() -> None:
    settings = pool_settings(connect_timeout=10, command_timeout=2, reconnect_backoff_max=1)
    assert settings.operation_deadline == settings.batch_deadline(1) == 2 * (10 + 24) + 1
    assert settings.batch_deadline(11) == 2 * (10 + (12 + 30) * 2) + 1
    assert OltPool(settings, Sim({}).load_device, Metrics(), EventBus()).waiting("x") == 0
