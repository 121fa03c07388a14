"""Supervision: boot errors surface, crashes restart with capped backoff (pure trio, mock clock)."""

from __future__ import annotations

import itertools
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from daemon.platform.health import Health
from daemon.platform.metrics import Metrics
from daemon.platform.supervisor import supervise


async def test_a_boot_error_comes_out_of_start(autojump_clock: trio.testing.MockClock) -> None:
    async def actor(*, task_status: Any) -> None:
        raise ValueError("bad credentials")

    health = Health()
    async with trio.open_nursery() as nursery:
        with pytest.raises(ValueError, match="bad credentials"):
            await nursery.start(partial(supervise, "a", actor, health, Metrics()))
    assert health.actors["a"].state == "stopped"


async def test_crashes_restart_with_doubling_capped_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    starts: list[float] = []

    async def actor(*, task_status: Any) -> None:
        starts.append(trio.current_time())
        task_status.started()
        if len(starts) < 6:
            raise RuntimeError("one bad message")
        await trio.sleep_forever()

    health, metrics = Health(unhealthy_restarts=3), Metrics()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(
                supervise, "a", actor, health, metrics, backoff_min=1, backoff_max=4, reset_after=60
            )
        )
        await trio.sleep(100)
        assert health.actors["a"].state == "running"
        nursery.cancel_scope.cancel()
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(starts)]
    assert gaps == [1, 2, 4, 4, 4]
    assert metrics.actor_restarts.labels("a")._value.get() == 5
    assert health.actors["a"].restarts == 5
    assert health.actors["a"].last_error == "RuntimeError: one bad message"


async def test_flapping_actor_makes_the_daemon_unready(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def actor(*, task_status: Any) -> None:
        task_status.started()
        raise RuntimeError("always")

    health = Health(unhealthy_restarts=3, window_seconds=60)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(supervise, "a", actor, health, Metrics(), backoff_min=0.1, backoff_max=0.1)
        )
        await trio.sleep(2)
        assert not health.ready
        assert "restarting repeatedly: a" in health.status_line()
        nursery.cancel_scope.cancel()


async def test_backoff_resets_after_a_healthy_run(autojump_clock: trio.testing.MockClock) -> None:
    starts: list[float] = []

    async def actor(*, task_status: Any) -> None:
        starts.append(trio.current_time())
        task_status.started()
        # Crash quickly twice, then after a long healthy run, then quickly again.
        await trio.sleep(100 if len(starts) == 3 else 0)
        raise RuntimeError("crash")

    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(
                supervise,
                "a",
                actor,
                Health(),
                Metrics(),
                backoff_min=1,
                backoff_max=30,
                reset_after=60,
            )
        )
        while len(starts) < 5:  # noqa: ASYNC110 - polls a side effect
            await trio.sleep(1)
        nursery.cancel_scope.cancel()
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(starts)]
    assert gaps == [1, 2, 101, 2]
