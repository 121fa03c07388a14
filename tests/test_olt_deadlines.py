"""Scenarios: no OLT step can wedge a device actor, over real SSH to the simulator.

Connect, channel open, each read, each write (a device that stops reading fills the SSH
window), logout and close are each bounded on the asyncio side too, and the actor has an
overall deadline per request; a wedged session is dropped and the next one works.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from daemon.network.olt.driver import driver_for
from daemon.network.olt.simulator import SimDevice, serve
from daemon.network.olt.ssh import open_session
from daemon.network.olt.types import DeviceSpec, OltTimeout, OltTransientError, OnuRef
from tests.olt_fixtures import Sim, eventually, sim
from tests.test_olt_pool import running_pool, sample

__all__ = ["sim"]

ONU = OnuRef(0, 1, 3, 2)


async def test_a_device_that_never_opens_the_shell_channel_is_dropped_and_retried(
    sim: Sim,
) -> None:
    hw = sim["hw"]
    with trio.fail_after(15):
        async with running_pool(sim, connect_timeout=0.5) as pool:
            hw.stall_channel_open = True
            with pytest.raises(OltTimeout, match=r"open shell: no response within 0\.5s"):
                await pool.execute("hw", ONU, "activate")
            await eventually(lambda: not hw._connections)  # the stalled connection is cut
            hw.stall_channel_open = False
            assert (await pool.execute("hw", ONU, "activate")).state == "active"


async def test_a_device_that_stops_reading_mid_operation_is_dropped_and_retried(
    sim: Sim,
) -> None:
    hw = sim["hw"]
    with trio.fail_after(15):
        async with running_pool(sim, command_timeout=0.5) as pool:
            await pool.execute("hw", ONU, "activate")  # a warm session
            hw.stop_reading_next()  # wedges on the next command: "config"
            assert (await pool.execute("hw", ONU, "deactivate")).state == "deactivated"
    assert hw.sessions_opened == 2
    assert not hw.is_active(ONU)


@asynccontextmanager
async def small_window_device(aio_loop: None) -> AsyncIterator[SimDevice]:
    # A 1 KiB SSH window: a shell that stops reading blocks our writes after ~2 KiB.
    device = SimDevice("hw-small", "huawei", username="ops", password="pw", window=1024)
    device.add_onu(0, 1, 3, 2)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve, [device])
        yield device
        nursery.cancel_scope.cancel()


def spec_of(device: SimDevice) -> DeviceSpec:
    return DeviceSpec(
        device.name,
        device.vendor,
        "127.0.0.1",
        device.port,
        device.username,
        device.password,
        host_key=device.public_host_key(),
    )


async def test_a_write_to_a_device_that_stopped_reading_times_out(aio_loop: None) -> None:
    async with small_window_device(aio_loop) as device:
        spec = spec_of(device)
        with trio.fail_after(15):
            session = await open_session(spec, connect_timeout=5, known_hosts=None, io_timeout=0.5)
            driver = driver_for(spec, 5)
            await driver.login(session, spec)
            device.stop_reading_next()
            await session.send_line("display version")  # the shell takes it, then wedges
            with pytest.raises(OltTimeout, match=r"write: no response within 0\.5s"):
                for _ in range(100):  # 100 KiB: far more than the window lets through
                    await session.send_raw("x" * 1024)
            assert not session.usable
            await session.close()  # returns: the connection was aborted
            await eventually(lambda: not device._connections)


async def test_the_overall_deadline_drops_a_session_that_is_slow_at_every_step(
    sim: Sim,
) -> None:
    hw = sim["hw"]
    with trio.fail_after(15):
        async with running_pool(
            sim, command_timeout=2, request_timeout=0.5, breaker_failures=1
        ) as pool:
            await pool.execute("hw", ONU, "activate")
            hw.latency = 0.2  # each answer in time, all of them together not
            with pytest.raises(OltTimeout, match=r"no result within 0\.5s; session dropped"):
                await pool.execute("hw", ONU, "deactivate")
            assert sample(pool, "paymentd_olt_breaker_open", device="hw") == 1
            await eventually(lambda: not hw._connections)


async def test_an_idle_session_whose_device_ignores_the_logout_is_still_closed(
    sim: Sim,
) -> None:
    hw = sim["hw"]
    with trio.fail_after(15):
        async with running_pool(sim, idle_close=0.2, command_timeout=0.5) as pool:
            await pool.execute("hw", ONU, "activate")
            hw.stop_reading_next()  # the logout's "quit" is never read
            await eventually(lambda: "quit" in hw.command_log)
            await eventually(lambda: not hw._connections)
            assert "hw" not in pool._actors  # the actor ended instead of waiting forever


async def test_connecting_to_a_port_that_never_answers_ssh_times_out() -> None:
    # A TCP listener that accepts and then says nothing (no SSH banner).
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    spec = DeviceSpec("mute", "huawei", "127.0.0.1", port, "u", "p", host_key_check=False)
    try:
        async with _aio():
            with trio.fail_after(10), pytest.raises(OltTransientError, match="mute: connect"):
                await open_session(spec, connect_timeout=0.5, known_hosts=None)
    finally:
        listener.close()


@asynccontextmanager
async def _aio() -> AsyncIterator[None]:
    import trio_asyncio

    async with trio_asyncio.open_loop():
        yield
