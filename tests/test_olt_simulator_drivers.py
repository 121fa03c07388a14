"""Scenarios: the drivers against the OLT simulator, over real SSH on 127.0.0.1."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from daemon.network.olt.driver import OltDriver, Transcript, driver_for
from daemon.network.olt.ssh import CliSession, open_session
from daemon.network.olt.types import (
    DeviceSpec,
    OltAuthError,
    OltCommandError,
    OltTransientError,
    OnuRef,
)
from tests.olt_fixtures import Sim, eventually, sim

__all__ = ["sim"]


@asynccontextmanager
async def logged_in(
    spec: DeviceSpec, command_timeout: float = 5.0
) -> AsyncIterator[tuple[CliSession, OltDriver]]:
    session = await open_session(spec, connect_timeout=5, known_hosts=None)
    try:
        driver = driver_for(spec, command_timeout)
        await driver.login(session, spec)
        yield session, driver
    finally:
        await session.close()


def test_onu_ref_parses_both_notations() -> None:
    assert OnuRef.parse("0/1/3:12") == OnuRef(0, 1, 3, 12)
    assert OnuRef.parse(" 0/1/3/12 ") == OnuRef(0, 1, 3, 12)
    assert str(OnuRef(0, 1, 3, 12)) == "0/1/3:12"
    with pytest.raises(ValueError, match="frame/slot/port:onu"):
        OnuRef.parse("0/1:12")


async def test_huawei_activate_then_deactivate_is_confirmed_by_the_device(sim: Sim) -> None:
    onu = OnuRef(0, 1, 3, 2)
    assert not sim["hw"].is_active(onu)
    with trio.fail_after(10):
        async with logged_in(sim.spec("hw")) as (session, driver):
            result = await driver.set_onu(session, onu, True)
            assert (result.device, result.action, result.state) == ("hw", "activate", "active")
            assert sim["hw"].is_active(onu)
            assert "Control flag            : active" in result.output
            assert len(result.output) <= 2000

            result = await driver.set_onu(session, onu, False)
            assert result.state == "deactivated"
            assert not sim["hw"].is_active(onu)
            assert await driver.onu_state(session, onu) == "deactivated"
    log = sim["hw"].command_log
    assert log[:4] == ["enable", "undo smart", "infoswitch cli OFF", "scroll 512"]
    assert log[4:10] == [
        "config",
        "interface gpon 0/1",
        "ont activate 3 2",
        "display ont info 3 2",
        "quit",
        "quit",
    ]


async def test_huawei_pager_and_smart_prompt_are_answered_and_cleaned(sim: Sim) -> None:
    # This firmware keeps smart mode and the pager on despite `undo smart` / `scroll 512`.
    onu = OnuRef(0, 2, 1, 2)
    with trio.fail_after(10):
        async with logged_in(sim.spec("hw-quirky")) as (session, driver):
            result = await driver.set_onu(session, onu, True)
            raw = session.transcript
    assert sim["hw-quirky"].is_active(onu)
    assert "---- More ( Press 'Q' to break ) ----" in raw
    assert "{ <cr>||<K> }:" in raw
    assert "\x1b" in raw
    for noise in ("More", "<cr>", "\x1b", "\r"):
        assert noise not in result.output
    # The lines after the first page arrive intact.
    assert "Notes: * indicates Discrete Pon." in result.output


async def test_huawei_unknown_onu_is_a_command_error_and_the_session_stays_usable(
    sim: Sim,
) -> None:
    with trio.fail_after(10):
        async with logged_in(sim.spec("hw")) as (session, driver):
            with pytest.raises(OltCommandError) as caught:
                await driver.set_onu(session, OnuRef(0, 1, 3, 99), True)
            assert caught.value.message == "Failure: The ONT does not exist"
            assert "ont activate 3 99" in caught.value.output
            assert session.usable  # `return` brought it back to privileged mode
            result = await driver.set_onu(session, OnuRef(0, 1, 3, 4), True)
            assert result.state == "active"


async def test_huawei_unknown_command_is_a_command_error(sim: Sim) -> None:
    with trio.fail_after(10):
        async with logged_in(sim.spec("hw")) as (session, driver):
            with pytest.raises(OltCommandError, match=r"^% Unknown command"):
                await driver.command(session, "screen-length 0 temporary", Transcript())


async def test_a_change_the_device_does_not_show_is_a_command_error(sim: Sim) -> None:
    sim["hw"].readonly = True
    with trio.fail_after(10):
        async with logged_in(sim.spec("hw")) as (session, driver):
            with pytest.raises(OltCommandError, match="expected 'active'"):
                await driver.set_onu(session, OnuRef(0, 1, 3, 2), True)


async def test_huawei_logout_answers_the_confirmation(sim: Sim) -> None:
    with trio.fail_after(10):
        async with logged_in(sim.spec("hw")) as (session, driver):
            await driver.logout(session)
            assert sim["hw"].command_log[-1] == "quit"
            with pytest.raises(OltTransientError, match="closed by the device"):
                await session.read_until([], timeout=5)
        await eventually(lambda: sim["hw"].active_sessions == 0)


async def test_zte_cli_login_enable_password_and_onu_state_style(sim: Sim) -> None:
    onu = OnuRef(1, 2, 1, 2)
    with trio.fail_after(10):
        async with logged_in(sim.spec("zte")) as (session, driver):
            result = await driver.set_onu(session, onu, True)
            assert result.state == "active" and sim["zte"].is_active(onu)
            result = await driver.set_onu(session, onu, False)
            assert result.state == "deactivated" and not sim["zte"].is_active(onu)
    log = sim["zte"].command_log
    assert log[:2] == ["enable", "terminal length 0"]
    assert log[2:7] == [
        "configure terminal",
        "interface gpon-olt_1/2/1",
        "onu 2 state enable",
        "end",
        "show gpon onu state gpon-olt_1/2/1",
    ]


async def test_zte_admin_style_for_c600(sim: Sim) -> None:
    onu = OnuRef(1, 3, 13, 4)
    with trio.fail_after(10):
        async with logged_in(sim.spec("zte-c600", zte_style="admin")) as (session, driver):
            assert (await driver.set_onu(session, onu, True)).state == "active"
            assert sim["zte-c600"].is_active(onu)
            assert (await driver.set_onu(session, onu, False)).state == "deactivated"
    assert "interface gpon_onu-1/3/13:4" in sim["zte-c600"].command_log
    assert "admin disable" in sim["zte-c600"].command_log


async def test_zte_pager_on_a_long_onu_list(sim: Sim) -> None:
    sim["zte"].sticky_pager = True  # `terminal length 0` ignored: 30 ONUs span two pages
    onu = OnuRef(1, 2, 1, 28)
    with trio.fail_after(10):
        async with logged_in(sim.spec("zte")) as (session, driver):
            assert await driver.onu_state(session, onu) == "deactivated"
            result = await driver.set_onu(session, onu, True)
            assert "--More--" in session.transcript
    assert result.state == "active"
    assert "More" not in result.output and "\x08" not in result.output


async def test_zte_unknown_onu_and_invalid_input(sim: Sim) -> None:
    with trio.fail_after(10):
        async with logged_in(sim.spec("zte")) as (session, driver):
            with pytest.raises(OltCommandError) as caught:
                await driver.set_onu(session, OnuRef(1, 2, 1, 99), True)
            assert caught.value.message == "%Code 62397-GPONSRV: The entry is not existed."
            with pytest.raises(OltCommandError, match="Invalid input"):
                await driver.command(session, "conf t", Transcript())
            with pytest.raises(OltCommandError, match="No related information"):
                await driver.onu_state(session, OnuRef(1, 9, 1, 1))
            assert session.usable


async def test_zte_wrong_enable_password_is_refused(sim: Sim) -> None:
    spec = sim.spec("zte")
    bad = dataclasses.replace(spec, enable_password="wrong")
    with trio.fail_after(10), pytest.raises(OltCommandError, match="enable refused"):
        async with logged_in(bad):
            pass


async def test_rejected_logins_are_auth_errors_saying_what_to_fix(sim: Sim) -> None:
    sim["hw"].refuse_logins = True  # SSH password auth
    sim["zte"].refuse_logins = True  # the ZTE CLI's own Username:/Password:, then hangs up
    sim["zte"].echo_password = True  # and shows what was typed: never quoted back to us
    with trio.fail_after(10):
        with pytest.raises(OltAuthError, match="SSH login refused") as ssh:
            await open_session(sim.spec("hw"), connect_timeout=5, known_hosts=None)
        with pytest.raises(OltAuthError, match="Username or password is wrong") as cli:
            async with logged_in(sim.spec("zte")):
                pass
    for caught, name in ((ssh, "hw"), (cli, "zte")):
        assert f"paymentd olt update {name} --new-password" in str(caught.value)
        assert sim.spec(name).password not in str(caught.value)
    assert "******" in str(cli.value)


async def test_transport_failures_are_transient(sim: Sim) -> None:
    hw = sim["hw"]
    with trio.fail_after(10):
        with pytest.raises(OltTransientError, match="connect"):
            port_spec = sim.spec("hw")
            closed = DeviceSpec("x", "huawei", "127.0.0.1", 1, "u", "p", host_key_check=False)
            assert port_spec.port != 1
            await open_session(closed, connect_timeout=5, known_hosts=None)

        hw.max_sessions = 1
        async with logged_in(sim.spec("hw")):
            with pytest.raises(OltTransientError, match="closed by the device"):
                async with logged_in(sim.spec("hw")):
                    pass

        async with logged_in(sim.spec("hw")) as (session, driver):
            hw.drop_on("ont activate", after=False)
            with pytest.raises(OltTransientError):
                await driver.set_onu(session, OnuRef(0, 1, 3, 2), True)
            assert not hw.is_active(OnuRef(0, 1, 3, 2))  # dropped before it took effect
            assert not session.usable


async def test_slow_and_hung_commands(sim: Sim) -> None:
    hw = sim["hw"]
    with trio.fail_after(10):
        async with logged_in(sim.spec("hw"), command_timeout=0.5) as (session, driver):
            hw.latency = 0.05
            assert (await driver.set_onu(session, OnuRef(0, 1, 3, 2), True)).state == "active"
            hw.hang_next()
            with pytest.raises(OltTransientError, match=r"no answer within 0.5s"):
                await driver.set_onu(session, OnuRef(0, 1, 3, 2), False)
            assert not session.usable
