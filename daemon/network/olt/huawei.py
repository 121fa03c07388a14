"""Huawei SmartAX (MA5600T / MA5800) CLI driver.

Session set-up as netmiko does it: ``enable``, ``undo smart`` (no ``{ <cr>||<K> }:``
parameter prompts), ``infoswitch cli OFF`` (no alarm lines mixed into output) and
``scroll 512`` (pager off). The driver still answers the smart prompt and the pager if a
firmware keeps them on. An ONU is switched inside ``interface gpon F/S`` with
``ont activate|deactivate P ID`` and confirmed with ``display ont info P ID``
(``Control flag : active|deactivated``).
"""

from __future__ import annotations

import re
import time

from daemon.network.olt.driver import CONFIRM, OltDriver, Transcript
from daemon.network.olt.ssh import CliSession
from daemon.network.olt.types import (
    DeviceSpec,
    OltCommandError,
    OltError,
    OltOnuNotFound,
    OltResult,
    OnuRef,
)

__all__ = ["HuaweiDriver"]

_CONTROL_FLAG = re.compile(r"Control flag\s*:\s*(\S+)")


class HuaweiDriver(OltDriver):
    vendor = "huawei"
    error_prefixes = ("Failure:", "%")

    async def login(self, session: CliSession, spec: DeviceSpec) -> None:
        transcript = Transcript()
        mode = await self.first_prompt(session, spec)
        if mode == "user":
            await self.command(session, "enable", transcript, mode="priv")
        elif mode != "priv":  # a fresh session starts in user mode; anything else is odd
            await self.recover(session, "return")
        for setup in ("undo smart", "infoswitch cli OFF", "scroll 512"):
            await self.command(session, setup, transcript, mode="priv")

    async def _enter_interface(self, session: CliSession, onu: OnuRef, t: Transcript) -> None:
        await self.command(session, "config", t, mode="config")
        await self.command(session, f"interface gpon {onu.frame}/{onu.slot}", t, mode="iface")

    async def _leave_interface(self, session: CliSession, t: Transcript) -> None:
        await self.command(session, "quit", t, mode="config")
        await self.command(session, "quit", t, mode="priv")

    async def _read_state(self, session: CliSession, onu: OnuRef, t: Transcript) -> str:
        """``display ont info P ID`` inside the interface; returns the control flag."""
        out = await self.command(session, f"display ont info {onu.port} {onu.onu_id}", t)
        m = _CONTROL_FLAG.search(out)
        if m is None:
            raise OltCommandError(f"{onu}: no 'Control flag' in display ont info", t.excerpt())
        return m[1]

    async def set_onu(self, session: CliSession, onu: OnuRef, enabled: bool) -> OltResult:
        started = time.monotonic()
        t = Transcript()
        verb = "activate" if enabled else "deactivate"
        try:
            await self._enter_interface(session, onu, t)
            await self.command(session, f"ont {verb} {onu.port} {onu.onu_id}", t)
            state = await self._read_state(session, onu, t)
            await self._leave_interface(session, t)
        except OltCommandError:
            await self.recover(session, "return")
            raise
        return self.result(session, onu, enabled, state, t, started)

    async def onu_state(self, session: CliSession, onu: OnuRef) -> str:
        """Read-only: ``display ont info F S P ID`` from privileged mode (no config mode
        entered); the control flag, or ``OltOnuNotFound`` if the device has no such ONT."""
        t = Transcript()
        cmd = f"display ont info {onu.frame} {onu.slot} {onu.port} {onu.onu_id}"
        try:
            out = await self.command(session, cmd, t, mode="priv")
        except OltCommandError as exc:
            if "does not exist" in exc.message:
                raise OltOnuNotFound(f"{onu}: {exc.message}", exc.output) from None
            raise
        m = _CONTROL_FLAG.search(out)
        if m is None:
            raise OltCommandError(f"{onu}: no 'Control flag' in display ont info", t.excerpt())
        return m[1]

    async def probe(self, session: CliSession) -> str:
        return await self.command(session, "display version", Transcript(), mode="priv")

    async def logout(self, session: CliSession) -> None:
        """``quit`` from privileged mode, answering ``(y/n)[n]:`` with ``y``. Best effort."""
        try:
            await session.send_line("quit")
            index, _ = await self.reply(session, (CONFIRM,))
            if index == 1:
                # "y" then Enter, as netmiko does: some firmware reads a line, not a key.
                await session.send_raw("y\n")
        except OltError:
            pass  # the session is closed next anyway
