"""The OLT simulator against an independent, widely used client: netmiko.

netmiko's ``huawei_smartax`` and ``zte_zxros`` drivers encode what real SmartAX / ZXAN
devices do (prompts, session set-up commands, logout dialogue). If they can drive the
simulator, the simulator is not just tuned to our own drivers. netmiko is synchronous, so
it runs in a worker thread while the trio-asyncio loop keeps serving.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import pytest
import trio
from netmiko import BaseConnection, ConnectHandler, redispatch

from daemon.network.olt.simulator import SimDevice, serve
from tests.olt_fixtures import eventually

T = TypeVar("T")

HW_USER, HW_PASS = "ops", "secret-hw"
ZTE_USER, ZTE_PASS, ZTE_ENABLE = "ops", "secret-zte", "en-zte"


@pytest.fixture
async def olt(aio_loop: None) -> AsyncIterator[dict[str, SimDevice]]:
    hw = SimDevice("hw", "huawei", username=HW_USER, password=HW_PASS)
    zte = SimDevice("zte", "zte", username=ZTE_USER, password=ZTE_PASS, enable_password=ZTE_ENABLE)
    zte_cli = SimDevice(
        "zte-cli",
        "zte",
        username=ZTE_USER,
        password=ZTE_PASS,
        enable_password=ZTE_ENABLE,
        cli_login=True,
    )
    for onu_id in range(1, 9):
        hw.add_onu(0, 1, 3, onu_id, active=onu_id % 2 == 0)  # 7 starts deactivated
        zte.add_onu(1, 2, 1, onu_id, active=True)
        zte_cli.add_onu(1, 2, 1, onu_id, active=True)
    devices = [hw, zte, zte_cli]
    async with trio.open_nursery() as nursery:
        await nursery.start(serve, devices)
        yield {d.name: d for d in devices}
        nursery.cancel_scope.cancel()


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    # abandon_on_cancel: a stuck netmiko read must not keep trio.fail_after from firing.
    return await trio.to_thread.run_sync(
        functools.partial(fn, *args, **kwargs), abandon_on_cancel=True
    )


def connect(device: SimDevice, device_type: str, **extra: Any) -> BaseConnection:
    return ConnectHandler(
        device_type=device_type,
        host="127.0.0.1",
        port=device.port,
        username=device.username,
        password=device.password,
        fast_cli=False,
        conn_timeout=10,
        allow_agent=False,
        use_keys=False,
        ssh_strict=False,
        **extra,
    )


def timed_disconnect(conn: BaseConnection) -> float:
    start = time.monotonic()
    conn.disconnect()
    return time.monotonic() - start


def zte_states(output: str) -> dict[str, str]:
    """``show gpon onu state``: ONU index -> admin state."""
    return dict(re.findall(r"^(\d+/\d+/\d+:\d+)\s+(enable|disable)\s", output, re.MULTILINE))


async def test_huawei_smartax_session_prep_display_activate_and_logout(
    olt: dict[str, SimDevice],
) -> None:
    hw = olt["hw"]
    onu = hw.onus[(0, 1, 3, 7)]
    with trio.fail_after(60):
        conn = await in_thread(connect, hw, "huawei_smartax")
        # session_preparation: base prompt found, smart mode / alarms / pager switched off.
        assert conn.base_prompt == "MA5800-X15"
        assert hw.command_log[:5] == [
            "undo smart",
            "enable",
            "infoswitch cli OFF",
            "disable",
            "scroll",
        ]
        assert await in_thread(conn.find_prompt) == "MA5800-X15>"
        await in_thread(conn.enable)
        assert await in_thread(conn.find_prompt) == "MA5800-X15#"

        info = await in_thread(conn.send_command, "display ont info 0 1 3 7")
        assert "Control flag            : deactivated" in info
        assert "Notes: * indicates Discrete Pon." in info  # the whole block, no pager
        for noise in ("More", "<cr>", "\x1b", "\r"):
            assert noise not in info

        out = await in_thread(conn.send_config_set, ["interface gpon 0/1", "ont activate 3 7"])
        assert "MA5800-X15(config-if-gpon-0/1)#" in out
        assert "Failure" not in out
        assert onu.active
        assert await in_thread(conn.check_config_mode) is False  # `return` left config
        info = await in_thread(conn.send_command, "display ont info 0 1 3 7")
        assert "Control flag            : active" in info
        assert "Run state               : online" in info

        missing = await in_thread(conn.send_command, "display ont info 0 1 3 99")
        assert missing.strip() == "Failure: The ONT does not exist"
        out = await in_thread(conn.send_config_set, ["interface gpon 0/1", "ont deactivate 3 99"])
        assert "Failure: The ONT does not exist" in out

        # disconnect(): `quit`, then netmiko answers "Are you sure to log out? (y/n)[n]:".
        # Its is_alive() probe writes NUL bytes meanwhile, which the CLI must ignore.
        assert await in_thread(timed_disconnect, conn) < 5
        assert hw.command_log[-1] == "quit"
        await eventually(lambda: hw.active_sessions == 0)


async def test_zte_zxros_ssh_auth_enable_config_and_show_state(olt: dict[str, SimDevice]) -> None:
    zte = olt["zte"]
    with trio.fail_after(60):
        conn = await in_thread(connect, zte, "zte_zxros", secret=ZTE_ENABLE)
        assert conn.base_prompt == "ZXAN"
        assert zte.command_log == ["terminal length 0"]  # session_preparation's pager off
        await in_thread(conn.enable)  # answers the enable Password: prompt
        assert await in_thread(conn.find_prompt) == "ZXAN#"

        out = await in_thread(
            conn.send_config_set, ["interface gpon-olt_1/2/1", "onu 5 state disable"]
        )
        assert "ZXAN(config-if)#" in out
        assert "%" not in out
        assert not zte.onus[(1, 2, 1, 5)].active
        assert zte.command_log[2:6] == [
            "configure terminal",
            "interface gpon-olt_1/2/1",
            "onu 5 state disable",
            "end",
        ]

        shown = await in_thread(conn.send_command, "show gpon onu state gpon-olt_1/2/1")
        states = zte_states(shown)
        assert len(states) == 8
        assert states["1/2/1:5"] == "disable"
        assert states["1/2/1:4"] == "enable"
        assert "ONU Number: 8/8" in shown

        out = await in_thread(
            conn.send_config_set, ["interface gpon-olt_1/2/1", "onu 99 state enable"]
        )
        assert "%Code 62397-GPONSRV: The entry is not existed." in out
        empty = await in_thread(conn.send_command, "show gpon onu state gpon-olt_1/9/1")
        assert empty.strip() == "%Code 62310-GPONSRV : No related information to show."

        # zte_zxros's cleanup writes `exit` and closes at once (no wait for the device).
        assert await in_thread(timed_disconnect, conn) < 5
        await eventually(lambda: zte.active_sessions == 0)


async def test_zte_wrong_enable_password_is_refused(olt: dict[str, SimDevice]) -> None:
    zte = olt["zte"]
    with trio.fail_after(60):
        conn = await in_thread(connect, zte, "zte_zxros", secret="wrong")
        with pytest.raises(ValueError, match="enable mode"):
            await in_thread(conn.enable)
        assert await in_thread(conn.find_prompt) == "ZXAN>"
        # Not disconnect(): zte_zxros's check_config_mode() waits for "#", which a user-mode
        # prompt never shows, so cleanup would sit out netmiko's 10 s read timeout.
        conn.write_channel("exit" + conn.RETURN)
        await in_thread(conn.paramiko_cleanup)
        await eventually(lambda: zte.active_sessions == 0)


def cli_login(device: SimDevice) -> BaseConnection:
    """zte_zxros does not answer an in-shell ``Username:``; netmiko's documented way is
    the ``terminal_server`` driver, a manual login, then ``redispatch``."""
    conn = connect(device, "terminal_server")
    conn.read_until_pattern(pattern=r"Username:", read_timeout=10)
    conn.write_channel(device.username + conn.RETURN)
    conn.read_until_pattern(pattern=r"Password:", read_timeout=10)
    conn.write_channel(device.password + conn.RETURN)
    redispatch(conn, device_type="zte_zxros")
    return conn


async def test_zte_cli_login_through_terminal_server_redispatch(
    olt: dict[str, SimDevice],
) -> None:
    zte = olt["zte-cli"]
    with trio.fail_after(60):
        conn = await in_thread(cli_login, zte)
        conn.secret = ZTE_ENABLE
        assert conn.base_prompt == "ZXAN"
        assert zte.auth_attempts == 1
        await in_thread(conn.enable)
        await in_thread(conn.send_config_set, ["interface gpon-olt_1/2/1", "onu 3 state disable"])
        assert not zte.onus[(1, 2, 1, 3)].active
        shown = await in_thread(conn.send_command, "show gpon onu state gpon-olt_1/2/1")
        assert zte_states(shown)["1/2/1:3"] == "disable"
        await in_thread(conn.disconnect)
        await eventually(lambda: zte.active_sessions == 0)
