"""The test harness itself: waits in the fakes are bounded, and a hung test ends the run.

A regression that drops an SMS must fail its test, not hang CI until the job is killed.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from daemon.fakes import sms_sink, uisp_server

ROOT = Path(__file__).resolve().parent.parent


async def test_waiting_for_an_sms_that_never_comes_fails_with_a_clear_error() -> None:
    sink = sms_sink.SmsSink()
    # The outer bound only catches the old behaviour (waiting forever) as TooSlowError.
    with trio.fail_after(10), pytest.raises(TimeoutError, match=r"0 of 1 message\(s\) after 0.2 s"):
        await sink.wait_messages(1, seconds=0.2)


async def test_waiting_for_a_webhook_delivery_that_never_comes_fails() -> None:
    fake = uisp_server.FakeUisp()
    with trio.fail_after(10), pytest.raises(TimeoutError, match="0 of 2 webhook deliveries"):
        await fake.wait_deliveries(2, seconds=0.2)


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_hung_trio_test_is_ended_by_the_global_timeout(tmp_path: Path, workers: str) -> None:
    """The project's pytest config (pytest-timeout, thread method) stops a trio test that
    waits forever; the run fails and names the test. In this process (-n0) the dump comes
    from pytest-timeout; under xdist (-n1) the worker's stdout is gone, so faulthandler's
    dump (a second before) is what shows, and xdist names the test its worker was running.
    The test after it still runs there: a hang costs one test, not the rest of the run."""
    (tmp_path / "test_hangs.py").write_text(
        textwrap.dedent(
            """
            import trio

            async def test_waits_forever():
                await trio.sleep_forever()

            def test_after():
                pass
            """
        )
    )
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider"),
            *("-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path)),
            *("--timeout", "3", "-o", "faulthandler_timeout=2", "-n", workers),
            str(tmp_path / "test_hangs.py"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    if workers == "0":
        assert "Timeout" in out and "test_waits_forever" in out, out
    else:
        assert "Timeout (0:00:02)!" in out, out  # faulthandler's stacks, on the run's stderr
        assert "crashed while running 'test_hangs.py::test_waits_forever'" in out, out
        assert "PASSED test_hangs.py::test_after" in out, out
