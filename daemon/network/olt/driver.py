"""The OLT driver interface and the CLI mechanics both vendors share.

A driver speaks one vendor's CLI over a ``CliSession``: it detects prompts per mode,
answers the pager and parameter prompts, cleans terminal noise out of the output, turns
error lines into ``OltCommandError`` and confirms every change by reading the state back.
Drivers are stateless apart from the prompt they learn at login, so one instance serves
one session.
"""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from daemon.network.olt.ssh import CliSession
from daemon.network.olt.types import (
    DeviceSpec,
    OltCommandError,
    OltError,
    OltResult,
    OltTimeout,
    OltTransientError,
    OnuChange,
    OnuRef,
    auth_error,
)

__all__ = ["BatchResult", "OltDriver", "Transcript", "check_board", "clean_output", "driver_for"]

# One entry per change of a batch, in order: the confirmed change, or why that ONU failed.
BatchResult = list[OltResult | OltCommandError]

EXCERPT_CHARS = 2000

# Any CLI prompt at the very end of what was received (used until the hostname is known).
_ANY_PROMPT = re.compile(r"(?:^|[\r\n])(?P<host>[A-Za-z0-9][\w.-]*)(?:\([^)\r\n]*\))?[>#] ?\Z")
_LOGIN_USER = re.compile(r"(?:Username|User name|login):\s*\Z", re.IGNORECASE)
_LOGIN_PASSWORD = re.compile(r"(?:Password|User password):\s*\Z", re.IGNORECASE)
# What CLIs print after a rejected login before they hang up ("%Error 20203: Username or
# password is wrong.", "Username or password invalid", "Authentication failed").
_LOGIN_REJECTED = re.compile(r"wrong|invalid|incorrect|fail|denied", re.IGNORECASE)
# Huawei "---- More ( Press 'Q' to break ) ----", ZTE "--More--": answered with a space.
PAGER = re.compile(r"---- More \( Press 'Q' to break \) ----|--More--")
# Huawei smart mode asks for optional parameters ("{ <cr>||<K> }:"): a newline accepts.
SMART = re.compile(r"\{ ?<cr>[^}\r\n]*\}:\s*\Z")
CONFIRM = re.compile(r"\(y/n\)\[[yn]\]:\s*\Z")

_CURSOR_LEFT = re.compile(r" ?\x1b\[\d+D")  # Huawei's " " + ESC[nD after the pager
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_PAGER_TEXT = re.compile(r"[ ]*---- More \( Press 'Q' to break \) ----|--More--[\x08 ]*")
_SMART_TEXT = re.compile(r"\{ ?<cr>[^}\r\n]*\}:")


def clean_output(raw: str) -> str:
    """Strip pager text, cursor sequences and carriage returns; normalise to ``\\n``."""
    text = _CURSOR_LEFT.sub("", raw)
    text = _ANSI.sub("", text)
    text = _PAGER_TEXT.sub("", text)
    text = _SMART_TEXT.sub("", text)
    text = text.replace("\x08", "")
    return text.replace("\r\n", "\n").replace("\r", "")


class Transcript:
    """What one operation saw, cleaned; ``excerpt()`` is what goes into results and errors."""

    def __init__(self) -> None:
        self._parts: list[str] = []

    def add(self, text: str) -> None:
        self._parts.append(text)

    def excerpt(self, chars: int = EXCERPT_CHARS) -> str:
        return "".join(self._parts)[-chars:]


class OltDriver(ABC):
    """One vendor's CLI. ``login`` leaves the session in privileged mode; every other
    operation starts and ends there, so a warm session can be reused."""

    vendor: ClassVar[str]
    # Lines (stripped) starting with one of these are device errors.
    error_prefixes: ClassVar[tuple[str, ...]]

    def __init__(self, command_timeout: float) -> None:
        self.timeout = command_timeout
        self.prompt: re.Pattern[str] = _ANY_PROMPT

    # -- the interface ---------------------------------------------------------------
    @abstractmethod
    async def login(self, session: CliSession, spec: DeviceSpec) -> None: ...

    @abstractmethod
    async def set_onu(self, session: CliSession, onu: OnuRef, enabled: bool) -> OltResult: ...

    async def set_onus(self, session: CliSession, changes: Sequence[OnuChange]) -> BatchResult:
        """Switch several ONUs of one board in one CLI sequence; one result per change.

        A device error about one ONU (unknown ONU, wrong read-back state) is that change's
        result and the others go on; an error that concerns the whole sequence (the board's
        interface refused, the CLI lost) raises ``OltCommandError``, a transport failure
        ``OltTransientError``, as ``set_onu`` does. This fallback runs one ``set_onu`` per
        change; the vendor drivers enter the board once and confirm per PON port.
        """
        check_board(changes)
        results: BatchResult = []
        for change in changes:
            try:
                results.append(await self.set_onu(session, change.onu, change.enabled))
            except OltCommandError as exc:
                results.append(exc)
        return results

    @abstractmethod
    async def onu_state(self, session: CliSession, onu: OnuRef) -> str: ...

    @abstractmethod
    async def logout(self, session: CliSession) -> None: ...

    @abstractmethod
    async def probe(self, session: CliSession) -> str:
        """Run a harmless show command; returns its output (``paymentd olt test``)."""

    # -- shared mechanics ------------------------------------------------------------
    async def first_prompt(self, session: CliSession, spec: DeviceSpec) -> str:
        """Answer an in-shell login if asked, learn the hostname; returns the mode."""
        patterns = [_ANY_PROMPT, _LOGIN_USER, _LOGIN_PASSWORD]
        answered_password = False
        while True:
            try:
                index, text = await session.read_until(patterns, self.timeout)
            except OltTimeout:
                raise
            except OltTransientError:
                # Hung up right after our password, saying why: the credentials are wrong.
                if answered_password and _LOGIN_REJECTED.search(session.unread):
                    said = session.redact(session.unread.strip()[-120:])
                    raise auth_error(spec.name, f"CLI login rejected: {said!r}") from None
                raise
            if index in (1, 2) and answered_password:
                # Asked again after our password: the device rejected the credentials.
                raise auth_error(spec.name, "CLI login rejected")
            if index == 1:
                await session.send_line(spec.username)
            elif index == 2:
                answered_password = True
                await session.send_line(spec.password)
            else:
                break
        m = _ANY_PROMPT.search(text)
        assert m is not None
        host = re.escape(m["host"])
        self.prompt = re.compile(
            rf"(?:^|[\r\n]){host}(?:\((?P<mode>[^)\r\n]*)\))?(?P<end>[>#]) ?\Z"
        )
        return self.mode_of(text)

    def mode_of(self, text: str) -> str:
        """``user`` / ``priv`` / ``config`` / ``iface`` from the prompt ending ``text``."""
        m = self.prompt.search(text)
        if m is None:
            return "unknown"
        paren = m["mode"]
        if m["end"] == ">":
            return "user"
        if paren is None:
            return "priv"
        return "iface" if paren.startswith("config-if") else paren

    async def reply(
        self, session: CliSession, extra: tuple[re.Pattern[str], ...] = ()
    ) -> tuple[int, str]:
        """Read up to the next prompt (or one of ``extra``), paging through as needed.

        Returns (0 for the prompt, or 1 + index into ``extra``; the cleaned text).
        """
        patterns = [self.prompt, *extra, PAGER, SMART]
        chunks: list[str] = []
        while True:
            index, text = await session.read_until(patterns, self.timeout)
            chunks.append(text)
            if index == len(patterns) - 2:
                await session.send_raw(" ")
            elif index == len(patterns) - 1:
                await session.send_raw("\n")
            else:
                return index, clean_output("".join(chunks))

    async def command(
        self, session: CliSession, cmd: str, transcript: Transcript, mode: str | None = None
    ) -> str:
        """Run one command; returns its output lines (without echo and prompt).

        Raises ``OltCommandError`` for an error line, or when the CLI did not land in
        ``mode`` afterwards.
        """
        body, error = await self.try_command(session, cmd, transcript, mode)
        if error is not None:
            raise error
        return body

    async def try_command(
        self, session: CliSession, cmd: str, transcript: Transcript, mode: str | None = None
    ) -> tuple[str, OltCommandError | None]:
        """``command``, but an error line is returned instead of raised (the CLI stays
        where it was, so a batch can go on with the next ONU); landing in another mode
        than ``mode`` still raises."""
        await session.send_line(cmd)
        _, text = await self.reply(session)
        transcript.add(text)
        lines = text.split("\n")
        body = lines[1:-1]  # first line: our echoed command; last line: the prompt
        for line in body:
            stripped = line.strip()
            if stripped.startswith(self.error_prefixes):
                return "\n".join(body), OltCommandError(stripped, output=transcript.excerpt())
        if mode is not None and (got := self.mode_of(text)) != mode:
            raise OltCommandError(
                f"{cmd!r} left the CLI in {got} mode ({lines[-1]!r}), expected {mode}",
                output=transcript.excerpt(),
            )
        return "\n".join(body), None

    async def recover(self, session: CliSession, cmd: str) -> None:
        """Bring the CLI back to privileged mode after a failed operation, or poison it."""
        try:
            await session.send_line(cmd)
            _, text = await self.reply(session)
            if self.mode_of(text) != "priv":
                session.poisoned = True
        except OltError:
            session.poisoned = True

    def result(
        self,
        session: CliSession,
        onu: OnuRef,
        enabled: bool,
        state: str,
        transcript: Transcript,
        started: float,
    ) -> OltResult:
        """Check the read-back state against the request and build the result."""
        action = "activate" if enabled else "deactivate"
        want = "active" if enabled else "deactivated"
        if state != want:
            raise OltCommandError(
                f"{onu}: state is {state!r} after {action}, expected {want!r}",
                output=transcript.excerpt(),
            )
        seconds = time.monotonic() - started
        return OltResult(session.device, onu, action, state, transcript.excerpt(), seconds)

    def batch_results(
        self,
        session: CliSession,
        changes: Sequence[OnuChange],
        errors: dict[int, OltCommandError],
        states: dict[int, str],
        transcripts: Sequence[Transcript],
        started: float,
    ) -> BatchResult:
        """Each change's own outcome: its error, else its read-back state checked."""
        results: BatchResult = []
        for i, change in enumerate(changes):
            if i in errors:
                results.append(errors[i])
                continue
            try:
                state = states[i]
                results.append(
                    self.result(session, change.onu, change.enabled, state, transcripts[i], started)
                )
            except OltCommandError as exc:
                results.append(exc)
        return results


def check_board(changes: Sequence[OnuChange]) -> None:
    """A batch is one board (frame/slot) and names each ONU once: the caller's promise
    (``actors/olt_batch.plan``), checked because a broken one would confirm the wrong
    state (an activate and a deactivate of one ONU read back the same flag)."""
    boards = {(c.onu.frame, c.onu.slot) for c in changes}
    if len(boards) > 1:
        raise ValueError(f"one batch spans several boards: {sorted(boards)}")
    if len({c.onu for c in changes}) != len(changes):
        raise ValueError("one batch names an ONU twice")


def driver_for(spec: DeviceSpec, command_timeout: float) -> OltDriver:
    """The driver for ``spec.vendor`` (options such as ``zte_style`` come from the spec)."""
    from daemon.network.olt.huawei import HuaweiDriver  # vendor modules import this one
    from daemon.network.olt.zte import ZteDriver

    if spec.vendor == "huawei":
        return HuaweiDriver(command_timeout)
    if spec.vendor == "zte":
        return ZteDriver(command_timeout, style=str(spec.options.get("zte_style", "onu_state")))
    raise OltCommandError(f"{spec.name}: unsupported vendor {spec.vendor!r}")
