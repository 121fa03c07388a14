"""Run ``paymentd`` as a real subprocess from a trio test, and read its output as it comes."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def one_error_line(self, *expected: str) -> str:
        """Exit 2, no traceback, exactly one stderr line containing each ``expected``."""
        err = self.err.strip()
        assert self.code == 2, (self.code, self.out, err)
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
        for text in expected:
            assert text in err, err
        return err


async def paymentd(*args: str, seconds: float = 60) -> Ran:
    with trio.fail_after(seconds):
        proc = await trio.run_process(
            [sys.executable, "-m", "daemon.cli", *args],
            cwd=ROOT,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return Ran(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


class Streaming:
    """A long-running command (``tasks follow``): wait for stderr / stdout lines."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.out = b""
        self.err = b""

    @classmethod
    async def start(cls, *args: str) -> Streaming:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "daemon.cli", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        return cls(proc)

    async def _read(self, stream: trio.abc.ReceiveStream, attr: str, text: str) -> None:
        while text not in getattr(self, attr).decode():
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise AssertionError(f"{attr} ended without {text!r}: {getattr(self, attr)!r}")
            setattr(self, attr, getattr(self, attr) + chunk)

    async def wait_err(self, text: str, seconds: float = 60) -> None:
        assert self.proc.stderr is not None
        with trio.fail_after(seconds):
            await self._read(self.proc.stderr, "err", text)

    async def wait_out(self, text: str, seconds: float = 60) -> None:
        assert self.proc.stdout is not None
        with trio.fail_after(seconds):
            await self._read(self.proc.stdout, "out", text)

    async def finish(self, seconds: float = 30) -> int:
        """Read the rest and wait for the exit (``--count`` ends the command)."""
        assert self.proc.stdout is not None and self.proc.stderr is not None
        with trio.fail_after(seconds):
            async with trio.open_nursery() as nursery:
                for stream, attr in ((self.proc.stdout, "out"), (self.proc.stderr, "err")):
                    nursery.start_soon(self._drain, stream, attr)
            return await self.proc.wait()

    async def _drain(self, stream: trio.abc.ReceiveStream, attr: str) -> None:
        while chunk := await stream.receive_some(65536):
            setattr(self, attr, getattr(self, attr) + chunk)

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
