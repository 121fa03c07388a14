"""Shared OLT fixtures: the simulator on ephemeral 127.0.0.1 ports, specs, pool settings.

Real SSH over real sockets, on the real clock (autojump would fire asyncssh's asyncio
timeouts instantly while sockets are in flight).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from daemon.actors.olt_pool import OltPoolSettings
from daemon.network.olt.simulator import SimDevice, serve
from daemon.network.olt.types import DeviceSpec


@dataclass
class Sim:
    """The running simulator: devices by name, with the port each listens on."""

    devices: dict[str, SimDevice]

    def __getitem__(self, name: str) -> SimDevice:
        return self.devices[name]

    def spec(self, name: str, **options: Any) -> DeviceSpec:
        d = self.devices[name]
        return DeviceSpec(
            name=d.name,
            vendor=d.vendor,
            host="127.0.0.1",
            port=d.port,
            username=d.username,
            password=d.password,
            enable_password=d.enable_password,
            options=options or ({"zte_style": "admin"} if name == "zte-c600" else {}),
            host_key=d.public_host_key(),
        )

    async def load_device(self, name: str) -> DeviceSpec | None:
        """What the composition root's DB lookup would return."""
        await trio.lowlevel.checkpoint()
        return self.spec(name) if name in self.devices else None


@dataclass
class Rows:
    """A stand-in for the olt_devices table that a test edits while the pool runs, as
    ``paymentd olt update`` would: every change bumps the version."""

    specs: dict[str, DeviceSpec]
    loads: int = 0

    @classmethod
    def of(cls, sim: Sim, *names: str) -> Rows:
        return cls({n: dataclasses.replace(sim.spec(n), version=1) for n in names})

    def update(self, name: str, **changes: Any) -> None:
        old = self.specs[name]
        self.specs[name] = dataclasses.replace(old, version=old.version + 1, **changes)

    def remove(self, name: str) -> None:
        del self.specs[name]

    async def load_device(self, name: str) -> DeviceSpec | None:
        await trio.lowlevel.checkpoint()
        self.loads += 1
        return self.specs.get(name)


def make_devices() -> list[SimDevice]:
    hw = SimDevice("hw", "huawei", username="ops", password="secret-hw")
    quirky = SimDevice(
        "hw-quirky",
        "huawei",
        username="ops",
        password="secret-q",
        hostname="MA5600T",
        sticky_smart=True,
        sticky_pager=True,
    )
    zte = SimDevice(
        "zte",
        "zte",
        username="ops",
        password="secret-zte",
        enable_password="en-zte",
        cli_login=True,
    )
    c600 = SimDevice("zte-c600", "zte", username="ops", password="secret-c600")
    for onu_id in range(1, 5):
        hw.add_onu(0, 1, 3, onu_id, active=onu_id % 2 == 1)
        quirky.add_onu(0, 2, 1, onu_id, active=onu_id % 2 == 1)
        c600.add_onu(1, 3, 13, onu_id, active=onu_id % 2 == 1)
    for onu_id in range(1, 31):  # long enough for the ZTE pager
        zte.add_onu(1, 2, 1, onu_id, active=onu_id % 2 == 1)
    return [hw, quirky, zte, c600]


@pytest.fixture
async def sim(aio_loop: None) -> AsyncIterator[Sim]:
    devices = make_devices()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve, devices)
        yield Sim({d.name: d for d in devices})
        nursery.cancel_scope.cancel()


async def eventually(condition: Callable[[], bool], poll: float = 0.01) -> None:
    """Wait until ``condition()`` holds (the simulator's state is not observable by events);
    callers bound it with ``trio.fail_after``."""
    while True:
        if condition():
            return
        await trio.sleep(poll)


def pool_settings(**overrides: Any) -> OltPoolSettings:
    base = OltPoolSettings(
        connect_timeout=5.0,
        command_timeout=5.0,
        idle_close=30.0,
        breaker_failures=3,
        breaker_reset=30.0,
        known_hosts=None,
        reconnect_backoff=0.01,
        reconnect_backoff_max=0.05,
    )
    return dataclasses.replace(base, **overrides)
