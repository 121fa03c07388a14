"""``paymentd payments reconcile|expire|list|show``: the jobs once, from the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import trio

from daemon.platform.config import to_toml
from tests.payments_harness import make_config, paymentd

ROOT = Path(__file__).resolve().parent.parent


async def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-m", "daemon.cli", *args], cwd=ROOT, capture_stdout=True,
        capture_stderr=True, check=False,
    )  # fmt: skip


async def test_reconcile_once_from_the_cli_settles_a_processing_payment(
    db_url: str, tmp_path: Path, aio_loop: None
) -> None:
    async with paymentd(db_url, tmp_path) as pay:
        r = await pay.create(metadata={"mock": "processing", "mock_seconds": "0"},
                             headers={"Prefer": "wait=10"})  # fmt: skip
        payment = r.json()
        assert payment["status"] == "processing"
    cfg = make_config(db_url, tmp_path, reconcile_after_seconds=0.01)
    config = tmp_path / "config.toml"
    config.write_text(to_toml(cfg))
    done = await cli("payments", "reconcile", "-c", str(config))
    assert done.returncode == 0, done.stderr.decode()
    assert b"re-fetched 1 payment(s), 1 changed state" in done.stdout
    shown = await cli("payments", "show", payment["id"], "-c", str(config))
    assert b'"status": "succeeded"' in shown.stdout
    listed = await cli("payments", "list", "--status", "succeeded", "-c", str(config))
    assert payment["id"].encode() in listed.stdout and b"10.00 EUR" in listed.stdout
    expired = await cli("payments", "expire", "-c", str(config))
    assert expired.returncode == 0 and b"0 of 0 payment(s)" in expired.stdout


async def test_without_a_provider_the_jobs_say_so_in_one_line(
    db_url: str, tmp_path: Path, aio_loop: None
) -> None:
    cfg = make_config(db_url, tmp_path)
    cfg = cfg.replace(payments=msgspec.structs.replace(cfg.payments, provider="none"))
    config = tmp_path / "config.toml"
    config.write_text(to_toml(cfg))
    done = await cli("payments", "expire", "-c", str(config))
    assert done.returncode == 2
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and 'payments.provider is "none"' in lines[0]
    missing = await cli("payments", "show", "pay_nope", "-c", str(config))
    assert missing.returncode == 2 and b"no payment" in missing.stderr
