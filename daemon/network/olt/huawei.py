"""Huawei SmartAX (MA5600T / MA5800) CLI driver.

Session set-up as netmiko does it: ``enable``, ``undo smart`` (no ``{ <cr>||<K> }:``
parameter prompts), ``infoswitch cli OFF`` (no alarm lines mixed into output) and
``scroll 512`` (pager off). The driver still answers the smart prompt and the pager if a
firmware keeps them on. An ONU is switched inside ``interface gpon F/S`` with
``ont activate|deactivate P ID`` and confirmed with ``display ont info P ID``
(``Control flag : active|deactivated``).

A batch (``set_onus``) enters the board's interface once, sends each ONU's ``ont``
command, then confirms per PON port: ``display ont info P ID`` for a port with one ONU in
the batch, else one ``display ont info P all`` (a table, one row per ONT: F/S/P, ONT ID,
SN, Control flag, Run state, ...), and goes back with ``return``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

from daemon.network.olt.driver import CONFIRM, BatchResult, OltDriver, Transcript, check_board
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

__all__ = ["HuaweiDriver"]

_CONTROL_FLAG = re.compile(r"Control flag\s*:\s*(\S+)")
# A row of ``display ont info P all``: "  0/ 1/3    7  48575443...  active      online ..."
# (the slot is padded: "0/ 1/3"). The description section after it has rows that start
# the same way, so parsing stops at its header.
_ALL_ROW = re.compile(r"(?m)^\s*(\d+)/\s*(\d+)/\s*(\d+)\s+(\d+)\s+\S+\s+(\S+)")
_DESCRIPTION_HEADER = re.compile(r"(?m)^\s*F/S/P\s+ONT-ID\s+Description")
# The table abbreviates on some firmware ("deactive").
_FLAGS = {"active": "active", "deactivated": "deactivated", "deactive": "deactivated"}


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

    async def set_onus(self, session: CliSession, changes: Sequence[OnuChange]) -> BatchResult:
        check_board(changes)
        started = time.monotonic()
        shared = Transcript()  # entering and leaving the board: part of every change's record
        own = [Transcript() for _ in changes]
        errors: dict[int, OltCommandError] = {}
        states: dict[int, str] = {}
        try:
            await self._enter_interface(session, changes[0].onu, shared)
            for t in own:
                t.add(shared.excerpt())
            for i, c in enumerate(changes):
                cmd = f"ont {c.action} {c.onu.port} {c.onu.onu_id}"
                _, error = await self.try_command(session, cmd, own[i], mode="iface")
                if error is not None:
                    errors[i] = error
            ports: dict[int, list[int]] = {}
            for i, c in enumerate(changes):
                if i not in errors:
                    ports.setdefault(c.onu.port, []).append(i)
            for port, members in ports.items():
                await self._confirm_port(session, changes, port, members, own, errors, states)
            # One command back to privileged mode instead of quit, quit: a sequence is
            # paid for in commands.
            await self.command(session, "return", shared, mode="priv")
        except OltCommandError:
            await self.recover(session, "return")
            raise
        return self.batch_results(session, changes, errors, states, own, started)

    async def _confirm_port(
        self,
        session: CliSession,
        changes: Sequence[OnuChange],
        port: int,
        members: list[int],
        own: list[Transcript],
        errors: dict[int, OltCommandError],
        states: dict[int, str],
    ) -> None:
        """Read back the control flag of ``members`` (indexes into ``changes``) on one port."""
        if len(members) == 1:
            [i] = members
            onu = changes[i].onu
            out, error = await self.try_command(
                session, f"display ont info {port} {onu.onu_id}", own[i], mode="iface"
            )
            m = _CONTROL_FLAG.search(out)
            if error is not None:
                errors[i] = error
            elif m is None:
                errors[i] = OltCommandError(
                    f"{onu}: no 'Control flag' in display ont info", own[i].excerpt()
                )
            else:
                states[i] = m[1]
            return
        table = Transcript()
        out, error = await self.try_command(
            session, f"display ont info {port} all", table, mode="iface"
        )
        rows: dict[int, tuple[str, str]] = {}  # ONT id -> (its row, control flag)
        for m in _ALL_ROW.finditer(_DESCRIPTION_HEADER.split(out, maxsplit=1)[0]):
            fsp = (int(m[1]), int(m[2]), int(m[3]))
            if fsp == (changes[members[0]].onu.frame, changes[members[0]].onu.slot, port):
                rows.setdefault(int(m[4]), (m[0].strip("\n"), m[5]))
        for i in members:
            onu = changes[i].onu
            row = rows.get(onu.onu_id)
            if error is not None:
                own[i].add(table.excerpt())
                errors[i] = OltCommandError(error.message, own[i].excerpt())
            elif row is None:
                own[i].add(f"display ont info {port} all\n")
                errors[i] = OltCommandError(
                    f"{onu}: not listed by display ont info {port} all", own[i].excerpt()
                )
            else:
                own[i].add(f"display ont info {port} all\n{row[0]}\n")
                states[i] = _FLAGS.get(row[1], row[1])

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
