"""ZTE ZXAN (C300 / C320 / C600) CLI driver.

Login answers ``Username:``/``Password:`` if the shell asks, ``enable`` answers its
``Password:`` with ``spec.enable_password`` (falling back to the login password), then
``terminal length 0``. Config mode is always entered with ``configure terminal`` in full
(``conf t`` is rejected on C320 V2.1).

Two styles, chosen by ``spec.options["zte_style"]``:

- ``onu_state`` (default, C300/C320): ``interface gpon-olt_F/S/P`` → ``onu ID state
  enable|disable``;
- ``admin`` (C600): ``interface gpon_onu-F/S/P:ID`` → ``admin enable|disable``.

Both confirm with ``show gpon onu state gpon-olt_F/S/P``, whose rows read
``F/S/P:ID  <Admin State> <OMCC State> <Phase State> <Channel>``; the Admin State column
(``enable``/``disable``) maps to ``active``/``deactivated``.
"""

from __future__ import annotations

import re
import time

from daemon.network.olt.driver import OltDriver, Transcript
from daemon.network.olt.ssh import CliSession
from daemon.network.olt.types import (
    DeviceSpec,
    OltCommandError,
    OltError,
    OltOnuNotFound,
    OltResult,
    OnuRef,
)

__all__ = ["ZteDriver"]

_PASSWORD = re.compile(r"Password:\s*\Z", re.IGNORECASE)
_ADMIN_STATES = {"enable": "active", "disable": "deactivated"}


class ZteDriver(OltDriver):
    vendor = "zte"
    error_prefixes = ("%",)  # "%Code 62397-GPONSRV: ...", "% Invalid input detected ..."

    def __init__(self, command_timeout: float, style: str = "onu_state") -> None:
        super().__init__(command_timeout)
        if style not in ("onu_state", "admin"):
            raise OltCommandError(f"unknown zte_style {style!r} (expected onu_state or admin)")
        self.style = style

    async def login(self, session: CliSession, spec: DeviceSpec) -> None:
        t = Transcript()
        mode = await self.first_prompt(session, spec)
        if mode == "user":
            await session.send_line("enable")
            index, text = await self.reply(session, (_PASSWORD,))
            t.add(text)
            if index == 1:
                await session.send_line(spec.enable_password or spec.password)
                _, text = await self.reply(session)
                t.add(text)
            if self.mode_of(text) != "priv":
                raise OltCommandError(f"{spec.name}: enable refused", output=t.excerpt())
        elif mode != "priv":
            await self.recover(session, "end")
        await self.command(session, "terminal length 0", t, mode="priv")

    async def set_onu(self, session: CliSession, onu: OnuRef, enabled: bool) -> OltResult:
        started = time.monotonic()
        t = Transcript()
        word = "enable" if enabled else "disable"
        fsp = f"{onu.frame}/{onu.slot}/{onu.port}"
        try:
            await self.command(session, "configure terminal", t, mode="config")
            if self.style == "admin":
                await self.command(session, f"interface gpon_onu-{fsp}:{onu.onu_id}", t, "iface")
                await self.command(session, f"admin {word}", t)
            else:
                await self.command(session, f"interface gpon-olt_{fsp}", t, mode="iface")
                await self.command(session, f"onu {onu.onu_id} state {word}", t)
            await self.command(session, "end", t, mode="priv")
            state = await self._read_state(session, onu, t)
        except OltCommandError:
            await self.recover(session, "end")
            raise
        return self.result(session, onu, enabled, state, t, started)

    async def _read_state(self, session: CliSession, onu: OnuRef, t: Transcript) -> str:
        fsp = f"{onu.frame}/{onu.slot}/{onu.port}"
        out = await self.command(session, f"show gpon onu state gpon-olt_{fsp}", t, mode="priv")
        m = re.search(rf"(?m)^\s*{re.escape(f'{fsp}:{onu.onu_id}')}\s+(\S+)", out)
        if m is None:
            raise OltCommandError(f"{onu}: not listed by show gpon onu state", t.excerpt())
        if m[1] not in _ADMIN_STATES:
            raise OltCommandError(f"{onu}: unexpected admin state {m[1]!r}", t.excerpt())
        return _ADMIN_STATES[m[1]]

    async def onu_state(self, session: CliSession, onu: OnuRef) -> str:
        """Read-only: ``show gpon onu state gpon-olt_F/S/P`` in privileged mode; the ONU's
        admin state, or ``OltOnuNotFound`` if the port has no row for it."""
        t = Transcript()
        try:
            return await self._read_state(session, onu, t)
        except OltCommandError as exc:
            # "%Code 62310-GPONSRV : No related information to show." (an empty port) or
            # no row for this id: either way the mapping names an ONU that is not there.
            if "62310" in exc.message or "not listed" in exc.message:
                raise OltOnuNotFound(exc.message, exc.output) from None
            raise

    async def probe(self, session: CliSession) -> str:
        return await self.command(session, "show version", Transcript(), mode="priv")

    async def logout(self, session: CliSession) -> None:
        """``exit`` from privileged mode closes the session. Best effort."""
        try:
            await session.send_line("exit")
            await self.reply(session)  # normally ends with the connection closing
        except OltError:
            pass
