"""The simulator's vendor CLIs: Huawei SmartAX (MA5600T/MA5800) and ZTE ZXAN (C300/C320/C600).

Each session is one ``_Shell`` running on the asyncio side of the trio-asyncio loop. The
shell does its own echo and raw key reads (pager, y/n), as a device's CLI does on a PTY.
Wording follows /work/shared/reference/olt-cli.md ("seen in the field").
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING

import asyncssh

if TYPE_CHECKING:
    from daemon.network.olt.simulator import SimDevice

_NO_PAGER = 1_000_000


class _Logout(Exception):
    """The user logged out: end the session normally."""


class _Shell:
    """Terminal I/O, pager, fault injection and the command loop shared by both vendors."""

    MORE = ""
    MORE_ERASE = ""
    TOO_MANY = ""

    def __init__(self, device: SimDevice, process: asyncssh.SSHServerProcess[str]) -> None:
        self.d = device
        self.p = process
        self._pending = ""
        self._skip_lf = False
        self.muted = False
        self.page_size = device.page_lines
        self.mode = "user"

    # -- terminal --------------------------------------------------------------------
    def write(self, text: str) -> None:
        if not self.muted:
            self.p.stdout.write(text.replace("\n", "\r\n"))

    async def _getc(self) -> str:
        while not self._pending:
            data = await self.p.stdin.read(1024)
            if not data:
                raise _Logout  # the client went away
            # Device CLIs discard NUL bytes: clients send them as keepalives (netmiko's
            # is_alive() writes "\x00" while it waits for the logout confirmation).
            self._pending = data.replace("\x00", "")
        c, self._pending = self._pending[0], self._pending[1:]
        return c

    async def readline(self, echo: bool = True) -> str:
        buf: list[str] = []
        while True:
            c = await self._getc()
            if c == "\n" and self._skip_lf:  # "\r\n" is one line ending
                self._skip_lf = False
                continue
            self._skip_lf = c == "\r"
            if c in "\r\n":
                self.write("\n")
                return "".join(buf)
            if c in "\x7f\x08":
                if buf:
                    buf.pop()
                    self.write("\b \b" if echo else "")
                continue
            buf.append(c)
            if echo:
                self.write(c)

    async def getkey(self) -> str:
        while True:
            c = await self._getc()
            if c == "\n" and self._skip_lf:
                self._skip_lf = False
                continue
            self._skip_lf = False
            return c

    async def output(self, text: str) -> None:
        """Write command output, paginated unless the pager is off."""
        if self.muted or not text:
            return
        lines = text.rstrip("\n").split("\n")
        for i, line in enumerate(lines, 1):
            self.write(line + "\n")
            if i % self.page_size == 0 and i < len(lines):
                self.write(self.MORE)
                key = await self.getkey()
                self.write(self.MORE_ERASE)
                if key in "qQ":
                    self.write("\n")
                    return

    def caret_error(self, cmd: str, word: int, message: str) -> str:
        words = cmd.split()
        col = len(self.prompt()) + len(" ".join(words[:word])) + (1 if word else 0)
        return " " * col + "^\n" + message + "\n"

    # -- command loop ----------------------------------------------------------------
    def prompt(self) -> str:
        raise NotImplementedError

    def banner(self) -> str:
        return ""

    async def login(self) -> bool:
        return True

    async def execute(self, cmd: str) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        try:
            if self.d.active_sessions > self.d.max_sessions:
                self.write(self.TOO_MANY)
                return
            if not await self.login():
                return
            self.write(self.banner())
            while True:
                self.write(self.prompt())
                cmd = " ".join((await self.readline()).split())
                if not cmd:
                    continue
                self.d.command_log.append(cmd)
                fault = self.d._take_fault(cmd)
                if fault == "hang":
                    while await self.p.stdin.read(1024):  # swallow input until the client quits
                        pass
                    return
                if fault == "stop_reading":
                    # Wedged firmware: never reads again, never answers, never hangs up
                    # (the session ends only when the client closes the connection).
                    await self.p.wait_closed()
                    return
                if self.d.latency:
                    await asyncio.sleep(self.d.latency)
                await self.d._released.wait()  # held: a test lets requests pile up
                if fault == "drop_after":
                    self.muted = True
                    await self.execute(cmd)
                if fault is not None:  # drop_before / drop_after
                    self.p.get_extra_info("connection").abort()
                    return
                await self.execute(cmd)
        except _Logout:
            return


class HuaweiShell(_Shell):
    MORE = "  ---- More ( Press 'Q' to break ) ----"
    # Seen on SmartAX: a space then cursor-left over the pager text, which the next line
    # overwrites; netmiko strips exactly this " " + ESC[nD.
    MORE_ERASE = f" \x1b[{len(MORE) + 1}D"
    TOO_MANY = "\n  Reenter times have reached the upper limit.\n"
    UNKNOWN = "  % Unknown command, the error locates at '^'"
    PARAM = "  % Parameter error, the error locates at '^'"
    NO_ONT = "  Failure: The ONT does not exist"
    NO_ONTS = "  Failure: There is no ONT available"  # an empty port (wording unverified)

    def __init__(self, device: SimDevice, process: asyncssh.SSHServerProcess[str]) -> None:
        super().__init__(device, process)
        self.smart = True
        self.iface = (0, 0)

    def prompt(self) -> str:
        h = self.d.hostname
        return {
            "user": f"{h}>",
            "priv": f"{h}#",
            "config": f"{h}(config)#",
            "iface": f"{h}(config-if-gpon-{self.iface[0]}/{self.iface[1]})#",
        }[self.mode]

    def banner(self) -> str:
        return (
            "\n  User last login information:\n  " + "-" * 74 + "\n"
            "  Access Type : SSH\n  IP-Address  : 10.0.0.1 ssh\n"
            "  Login  Time : 2026-11-22 09:00:00+01:00\n  " + "-" * 74 + "\n\n"
        )

    async def execute(self, cmd: str) -> None:
        w = cmd.split()
        if self.smart and not self.muted and w[0] in ("display", "ont"):
            # Smart mode offers optional parameters before running the command.
            self.write("{ <cr>||<K> }:")
            extra = (await self.readline()).split()
            w += extra
            cmd = " ".join(w)
        if cmd == "undo smart":
            self.smart = self.smart and self.d.sticky_smart
        elif cmd == "smart":
            self.smart = True
        elif w[:2] == ["infoswitch", "cli"]:
            pass
        elif w[0] == "scroll" and len(w) <= 2:
            if not self.d.sticky_pager:
                self.page_size = int(w[1]) if len(w) == 2 and w[1].isdigit() else 512
        elif cmd == "display version":
            await self.output(
                "\n  VERSION : MA5800V100R019C10\n  PATCH   : SPC200\n"
                f"  PRODUCT : {self.d.hostname}\n"
            )
        elif w[:3] == ["display", "ont", "info"]:
            await self.display_ont(cmd, w[3:])
        elif cmd == "enable" and self.mode in ("user", "priv"):
            self.mode = "priv"
        elif cmd == "disable" and self.mode == "priv":
            self.mode = "user"
        elif cmd == "quit" and self.mode in ("user", "priv"):
            await self.logout()
        elif cmd == "quit":
            self.mode = "priv" if self.mode == "config" else "config"
        elif cmd == "return" and self.mode in ("config", "iface"):
            self.mode = "priv"
        elif cmd == "config" and self.mode == "priv":
            self.mode = "config"
        elif w[:2] == ["interface", "gpon"] and self.mode in ("config", "iface"):
            m = re.fullmatch(r"(\d+)/(\d+)", w[2]) if len(w) == 3 else None
            if m is None:
                self.write(self.caret_error(cmd, 2, self.PARAM))
            else:
                self.iface = (int(m[1]), int(m[2]))
                self.mode = "iface"
        elif (
            w[0] == "ont"
            and len(w) >= 2
            and w[1] in ("activate", "deactivate")
            and self.mode == "iface"
        ):
            if len(w) != 4 or not (w[2].isdigit() and w[3].isdigit()):
                self.write(self.caret_error(cmd, min(len(w), 4) - 1, self.PARAM))
                return
            onu = self.d.onus.get((*self.iface, int(w[2]), int(w[3])))
            if onu is None:
                self.write(self.NO_ONT + "\n")
            else:
                self.d._switch(onu, w[1] == "activate")
        else:
            self.write(self.caret_error(cmd, 0, self.UNKNOWN))

    async def display_ont(self, cmd: str, args: list[str]) -> None:
        if len(args) == 2 and args[1] == "all" and args[0].isdigit() and self.mode == "iface":
            await self.display_port(int(args[0]))
            return
        if (
            not all(a.isdigit() for a in args)
            or len(args) not in (2, 4)
            or (len(args) == 2 and self.mode != "iface")
        ):
            self.write(self.caret_error(cmd, 3, self.PARAM))
            return
        nums = [int(a) for a in args]
        key = (*self.iface, *nums) if len(nums) == 2 else tuple(nums)
        onu = self.d.onus.get(key)  # type: ignore[arg-type]
        if onu is None:
            self.write(self.NO_ONT + "\n")
            return
        rule = "  " + "-" * 77
        flag, run = ("active", "online") if onu.active else ("deactivated", "offline")
        rows = [
            ("F/S/P", f"{onu.frame}/{onu.slot}/{onu.port}"),
            ("ONT-ID", str(onu.onu_id)),
            ("Control flag", flag),
            ("Run state", run),
            ("Config state", "normal"),
            ("Match state", "match"),
            ("DBA type", "SR"),
            ("ONT distance(m)", "1234"),
            ("ONT battery state", "not support"),
            ("Memory occupation", "45%"),
            ("CPU occupation", "1%"),
            ("Temperature", "48(C)"),
            ("Authentic type", "SN-auth"),
            ("SN", f"{onu.serial} (HWTC-{onu.serial[4:]})"),
            ("Management mode", "OMCI"),
            ("Software work mode", "normal"),
            ("Isolation state", "normal"),
            ("ONT IP 0 address/mask", "-"),
            ("Description", f"client-{onu.onu_id}"),
            ("Last down cause", "dying-gasp"),
            ("Last up time", "2026-11-20 10:11:12+01:00"),
            ("Last down time", "2026-11-20 10:01:02+01:00"),
            ("ONT online duration", "2 day(s), 2 hour(s), 5 minute(s), 12 second(s)"),
            ("Type C support", "Not support"),
            ("Interoperability-mode", "ITU-T"),
        ]
        body = [rule, *(f"  {k:<24}: {v}" for k, v in rows), rule]
        body += ["  VoIP configure method   : Default", rule, "  Line profile ID      : 10"]
        body += ["  Line profile name    : line-10", rule, "  FEC upstream switch  :Disable"]
        body += ["  OMCC encrypt switch  :On", "  Qos mode             :PQ", rule]
        body += ["  Notes: * indicates Discrete Pon.", rule]
        await self.output("\n".join(body) + "\n")

    async def display_port(self, port: int) -> None:
        """``display ont info P all`` inside ``interface gpon F/S``: one row per ONT, the
        layout seen on MA5600T/MA5800 (slot padded to two places, a description section
        whose rows also start with F/S/P, then the port summary)."""
        frame, slot = self.iface
        onus = sorted(
            (o for o in self.d.onus.values() if o.key[:3] == (frame, slot, port)),
            key=lambda o: o.onu_id,
        )
        if not onus:
            self.write(self.NO_ONTS + "\n")
            return
        rule = "  " + "-" * 77
        fsp = f"{frame}/{slot:>2}/{port}"
        body = [
            rule,
            "  F/S/P   ONT         SN         Control     Run      Config   Match    Protect",
            "          ID                     flag        state    state    state    side",
            rule,
        ]
        for o in onus:
            flag, run = ("active", "online") if o.active else ("deactivated", "offline")
            body.append(
                f"  {fsp:<8}{o.onu_id:>4}  {o.serial:<16}  {flag:<11} {run:<8} normal   match    no"
            )
        body += [rule, "  F/S/P   ONT-ID   Description", rule]
        body += [f"  {fsp:<8}{o.onu_id:>6}   client-{o.onu_id}" for o in onus]
        online = sum(o.active for o in onus)
        body += [rule, f"  In port {fsp} , the total of ONTs are: {len(onus)}, online: {online}"]
        body.append(rule)
        await self.output("\n".join(body) + "\n")

    async def logout(self) -> None:
        if self.muted:
            raise _Logout
        self.write(
            "\n  Check whether system data has been changed. Please save data before logout.\n"
            "  Are you sure to log out? (y/n)[n]:"
        )
        key = await self.getkey()
        self.write(key + "\n")
        if key in "yY":
            raise _Logout


class ZteShell(_Shell):
    MORE = "--More--"
    MORE_ERASE = "\b" * 8 + " " * 8 + "\b" * 8
    TOO_MANY = "\n%Error 20204: The number of users has reached the maximum.\n"
    INVALID = "% Invalid input detected at '^' marker."
    NOT_EXISTED = "%Code 62397-GPONSRV: The entry is not existed."
    NO_INFO = "%Code 62310-GPONSRV : No related information to show."

    def __init__(self, device: SimDevice, process: asyncssh.SSHServerProcess[str]) -> None:
        super().__init__(device, process)
        self.olt = (0, 0, 0)
        self.onu = (0, 0, 0, 0)

    def prompt(self) -> str:
        h = self.d.hostname
        f, s, p, i = self.onu
        return {
            "user": f"{h}>",
            "priv": f"{h}#",
            "config": f"{h}(config)#",
            "iface-olt": f"{h}(config-if)#",
            "iface-onu": f"{h}(config-if-gpon_onu-{f}/{s}/{p}:{i})#",
        }[self.mode]

    def banner(self) -> str:
        return "\nWelcome to ZXAN product C320 of ZTE Corporation\n\n"

    async def login(self) -> bool:
        if not self.d.cli_login:
            return True
        self.write("\n************************************************\n")
        for _ in range(3):
            user = ""
            while not user:  # a blank line re-prompts (netmiko sends one on connect)
                self.write("Username:")
                user = await self.readline()
            self.write("Password:")
            password = await self.readline(echo=self.d.echo_password)
            self.d.auth_attempts += 1
            if not self.d.refuse_logins and (user, password) == (self.d.username, self.d.password):
                return True
            self.write("%Error 20203: Username or password is wrong.\n")
            if self.d.refuse_logins:
                break
        return False

    async def execute(self, cmd: str) -> None:
        w = cmd.split()
        if w[0] == "terminal" and len(w) == 3 and w[1] == "length" and w[2].isdigit():
            if not self.d.sticky_pager:
                self.page_size = int(w[2]) or _NO_PAGER
        elif cmd == "show version":
            await self.output("ZXAN C320 Software, Version V2.1.0, Release software\n")
        elif w[:3] == ["show", "gpon", "onu"] and len(w) == 5 and w[3] == "state":
            await self.show_state(cmd, w[4])
        elif cmd == "write":
            await self.output("Building configuration...\n..[OK]\n")
        elif cmd == "enable" and self.mode == "user":
            if self.d.enable_password is not None and not self.muted:
                self.write("Password:")
                if await self.readline(echo=False) != self.d.enable_password:
                    self.write("% Access denied\n")
                    return
            self.mode = "priv"
        elif cmd == "disable" and self.mode == "priv":
            self.mode = "user"
        elif cmd in ("exit", "quit") and self.mode in ("user", "priv"):
            raise _Logout
        elif cmd == "exit":
            self.mode = "config" if self.mode.startswith("iface") else "priv"
        elif cmd == "end" and self.mode != "user":
            self.mode = "priv"
        elif cmd == "configure terminal" and self.mode == "priv":
            self.mode = "config"
        elif w[0] == "interface" and len(w) == 2 and self.mode != "user" and self.mode != "priv":
            await self.interface(cmd, w[1])
        elif (
            w[0] == "onu"
            and self.mode == "iface-olt"
            and len(w) == 4
            and w[1].isdigit()
            and (w[2:] in (["state", "enable"], ["state", "disable"]))
        ):
            onu = self.d.onus.get((*self.olt, int(w[1])))
            if onu is None:
                self.write(self.NOT_EXISTED + "\n")
            else:
                self.d._switch(onu, w[3] == "enable")
        elif w[0] == "admin" and self.mode == "iface-onu" and w[1:] in (["enable"], ["disable"]):
            self.d._switch(self.d.onus[self.onu], w[1] == "enable")
        else:
            self.write(self.caret_error(cmd, 0, self.INVALID))

    async def interface(self, cmd: str, name: str) -> None:
        if m := re.fullmatch(r"gpon-olt_(\d+)/(\d+)/(\d+)", name):
            self.olt = (int(m[1]), int(m[2]), int(m[3]))
            self.mode = "iface-olt"
        elif m := re.fullmatch(r"gpon_onu-(\d+)/(\d+)/(\d+):(\d+)", name):
            key = (int(m[1]), int(m[2]), int(m[3]), int(m[4]))
            if key not in self.d.onus:
                self.write(self.NOT_EXISTED + "\n")
                return
            self.onu = key
            self.mode = "iface-onu"
        else:
            self.write(self.caret_error(cmd, 1, self.INVALID))

    async def show_state(self, cmd: str, name: str) -> None:
        m = re.fullmatch(r"gpon-olt_(\d+)/(\d+)/(\d+)", name)
        if m is None:
            self.write(self.caret_error(cmd, 4, self.INVALID))
            return
        fsp = (int(m[1]), int(m[2]), int(m[3]))
        onus = sorted((o for o in self.d.onus.values() if o.key[:3] == fsp), key=lambda o: o.onu_id)
        if not onus:
            self.write(self.NO_INFO + "\n")
            return
        lines = ["OnuIndex   Admin State  OMCC State  Phase State  Channel", "-" * 62]
        for o in onus:
            state, phase = ("enable", "working") if o.active else ("disable", "offline")
            index = f"{o.frame}/{o.slot}/{o.port}:{o.onu_id}"
            lines.append(f"{index:<11}{state:<13}{state:<12}{phase:<13}1(GPON)")
        lines.append(f"ONU Number: {len(onus)}/{len(onus)}")
        await self.output("\n".join(lines) + "\n")


def shell_for(device: SimDevice, process: asyncssh.SSHServerProcess[str]) -> _Shell:
    return HuaweiShell(device, process) if device.vendor == "huawei" else ZteShell(device, process)
