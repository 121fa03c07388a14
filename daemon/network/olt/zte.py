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

A batch (``set_onus``) enters config mode once, switches each ONU (``onu_state``: one
``interface gpon-olt_F/S/P`` per PON port, then its ``onu ID state ...`` lines; ``admin``:
``interface gpon_onu-...`` and ``admin ...`` per ONU, moving from one interface to the
next directly), ``end``, and confirms with one ``show gpon onu state`` per port.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

from daemon.network.olt.driver import BatchResult, OltDriver, Transcript, check_board
from daemon.network.olt.ssh import CliSession
from daemon.network.olt.types import (
    DeviceSpec,
    OltCommandError,
    OltError,
    OltOnuNotFound,
    OltResult,
    OnuChange,
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
        return _admin_state(out, onu, t)

    async def set_onus(self, session: CliSession, changes: Sequence[OnuChange]) -> BatchResult:
        check_board(changes)
        started = time.monotonic()
        own = [Transcript() for _ in changes]
        errors: dict[int, OltCommandError] = {}
        states: dict[int, str] = {}
        ports: dict[str, list[int]] = {}  # "F/S/P" -> indexes into changes, in order
        for i, c in enumerate(changes):
            ports.setdefault(f"{c.onu.frame}/{c.onu.slot}/{c.onu.port}", []).append(i)
        shared = Transcript()
        try:
            await self.command(session, "configure terminal", shared, mode="config")
            for t in own:
                t.add(shared.excerpt())
            for fsp, members in ports.items():
                await self._switch_port(session, changes, fsp, members, own, errors)
            await self.command(session, "end", shared, mode="priv")
            for fsp, members in ports.items():
                live = [i for i in members if i not in errors]
                if not live:
                    continue
                table = Transcript()
                cmd = f"show gpon onu state gpon-olt_{fsp}"
                out, error = await self.try_command(session, cmd, table, mode="priv")
                for i in live:
                    own[i].add(table.excerpt())
                    try:
                        if error is not None:
                            raise OltCommandError(error.message)
                        states[i] = _admin_state(out, changes[i].onu, own[i])
                    except OltCommandError as exc:
                        errors[i] = OltCommandError(exc.message, own[i].excerpt())
        except OltCommandError:
            await self.recover(session, "end")
            raise
        return self.batch_results(session, changes, errors, states, own, started)

    async def _switch_port(
        self,
        session: CliSession,
        changes: Sequence[OnuChange],
        fsp: str,
        members: list[int],
        own: list[Transcript],
        errors: dict[int, OltCommandError],
    ) -> None:
        """Send the change of each of ``members`` (one PON port), in config mode."""
        if self.style == "onu_state":
            port = Transcript()
            _, error = await self.try_command(session, f"interface gpon-olt_{fsp}", port, "iface")
            for i in members:
                own[i].add(port.excerpt())
                if error is not None:
                    errors[i] = OltCommandError(error.message, own[i].excerpt())
            if error is not None:
                return
        for i in members:
            c = changes[i]
            word = "enable" if c.enabled else "disable"
            if self.style == "admin":
                cmd = f"interface gpon_onu-{fsp}:{c.onu.onu_id}"
                _, error = await self.try_command(session, cmd, own[i], mode=None)
                if error is None:
                    # Checked here, not by mode=: a refused interface leaves the CLI in
                    # the previous ONU's interface or config mode, and that is fine.
                    _, error = await self.try_command(session, f"admin {word}", own[i], "iface")
            else:
                cmd = f"onu {c.onu.onu_id} state {word}"
                _, error = await self.try_command(session, cmd, own[i], mode="iface")
            if error is not None:
                errors[i] = error

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


def _admin_state(out: str, onu: OnuRef, t: Transcript) -> str:
    """The ONU's Admin State in ``show gpon onu state`` output, as active/deactivated."""
    fsp = f"{onu.frame}/{onu.slot}/{onu.port}"
    m = re.search(rf"(?m)^\s*{re.escape(f'{fsp}:{onu.onu_id}')}\s+(\S+)", out)
    if m is None:
        raise OltCommandError(f"{onu}: not listed by show gpon onu state", t.excerpt())
    if m[1] not in _ADMIN_STATES:
        raise OltCommandError(f"{onu}: unexpected admin state {m[1]!r}", t.excerpt())
    return _ADMIN_STATES[m[1]]
