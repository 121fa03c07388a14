"""Scenarios: OLT SSH host keys are pinned per device, over real SSH to the simulator.

``olt add`` records the key the device presents; a different key later is refused with
an error saying what to run; skipping the check is an explicit, logged opt-out; an
OpenSSH ``known_hosts`` file (``olt.known_hosts``) still works for unpinned devices.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from daemon.network import devices as olt_store
from daemon.network.olt.ssh import host_key_fingerprint, open_session
from daemon.network.olt.types import OltHostKeyError, OnuRef
from daemon.platform.config import to_toml
from daemon.platform.db import Database
from daemon.platform.secrets import load_keyring
from tests.flow_harness import make_config
from tests.olt_fixtures import Rows, Sim, sim
from tests.test_olt_pool import running_pool, sample

__all__ = ["sim"]

ROOT = Path(__file__).resolve().parent.parent


async def test_the_pinned_key_connects_and_a_changed_key_is_refused(sim: Sim) -> None:
    hw = sim["hw"]
    spec = sim.spec("hw")
    with trio.fail_after(10):
        session = await open_session(spec, connect_timeout=5, known_hosts=None)
        await session.close()
        hw.change_host_key()  # reinstalled, or someone in the middle
        pinned = host_key_fingerprint(spec.host_key or "")
        with pytest.raises(OltHostKeyError, match="REFUSED") as caught:
            await open_session(spec, connect_timeout=5, known_hosts=None)
    message = str(caught.value)
    assert f"does not match the pinned {pinned}" in message
    assert "paymentd olt update hw --refresh-host-key" in message
    assert hw.auth_attempts == 1  # the password was never offered to the new key


async def test_the_pool_refuses_a_changed_key_for_good_until_the_device_is_updated(
    sim: Sim,
) -> None:
    hw = sim["hw"]
    rows = Rows.of(sim, "hw")
    onu = OnuRef(0, 1, 3, 2)
    with trio.fail_after(15):
        async with running_pool(sim, rows) as pool:
            hw.change_host_key()
            with pytest.raises(OltHostKeyError, match="REFUSED"):
                await pool.execute("hw", onu, "activate")
            connections = hw.connections_made
            with pytest.raises(OltHostKeyError, match="--refresh-host-key"):
                await pool.execute("hw", onu, "activate")  # not even dialled again
            assert hw.connections_made == connections
            assert sample(pool, "paymentd_olt_host_key_rejected", device="hw") == 1
            count = "paymentd_olt_command_seconds_count"
            assert sample(pool, count, vendor="huawei", outcome="host_key_rejected") == 2

            rows.update("hw", host_key=hw.public_host_key())  # olt update --refresh-host-key
            assert (await pool.execute("hw", onu, "activate")).state == "active"
            assert sample(pool, "paymentd_olt_host_key_rejected", device="hw") == 0


async def test_no_pinned_key_and_no_known_hosts_file_is_refused_without_connecting(
    sim: Sim,
) -> None:
    hw = sim["hw"]
    unpinned = dataclasses.replace(sim.spec("hw"), host_key=None)
    with trio.fail_after(10), pytest.raises(OltHostKeyError, match="no SSH host key is pinned"):
        await open_session(unpinned, connect_timeout=5, known_hosts=None)
    assert hw.connections_made == 0


async def test_the_opt_out_connects_to_any_key_and_says_so_on_every_connect(
    sim: Sim, caplog: pytest.LogCaptureFixture
) -> None:
    hw = sim["hw"]
    hw.change_host_key()
    unchecked = dataclasses.replace(sim.spec("hw"), host_key=None, host_key_check=False)
    caplog.set_level(logging.WARNING, logger="daemon.network.olt.ssh")
    with trio.fail_after(10):
        for _ in range(2):
            session = await open_session(unchecked, connect_timeout=5, known_hosts=None)
            await session.close()
    warnings = [r.getMessage() for r in caplog.records if "NOT checked" in r.getMessage()]
    assert len(warnings) == 2
    assert "hw: SSH host key NOT checked" in warnings[0]
    assert "--refresh-host-key" in warnings[0]
    assert hw.sessions_opened == 2


async def test_a_known_hosts_file_still_works_for_unpinned_devices(
    sim: Sim, tmp_path: Path
) -> None:
    hw = sim["hw"]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{hw.port} {hw.public_host_key()}\n")
    unpinned = dataclasses.replace(sim.spec("hw"), host_key=None)
    with trio.fail_after(10):
        session = await open_session(unpinned, connect_timeout=5, known_hosts=str(known_hosts))
        await session.close()
        hw.change_host_key()
        with pytest.raises(OltHostKeyError, match=f"does not match the keys in {known_hosts}"):
            await open_session(unpinned, connect_timeout=5, known_hosts=str(known_hosts))


# -- the CLI ---------------------------------------------------------------------------


async def paymentd(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PAYMENTD_OLT_PASSWORD": "secret-hw"}
    done = await trio.run_process(
        [sys.executable, "-m", "daemon.cli", *args, "--config", str(config)],
        cwd=ROOT,
        env=env,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


async def test_olt_add_records_the_key_and_update_refreshes_it(
    sim: Sim, db: Database, db_url: str, tmp_path: Path
) -> None:
    hw = sim["hw"]
    cfg = make_config(db_url, tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:9")
    config = tmp_path / "config.toml"
    config.write_text(to_toml(cfg))
    box = load_keyring(cfg.secrets)
    add = ("olt", "add", "hw", "--vendor", "huawei", "--host", "127.0.0.1", "--username", "ops")
    with trio.fail_after(60):
        # A device that cannot be reached is not added half-way.
        refused = await paymentd(config, *add, "--port", "1")
        assert refused.returncode == 2, refused.stderr
        assert "cannot read the SSH host key of 127.0.0.1:1" in refused.stderr
        assert "--no-host-key-check" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert await olt_store.list_devices(db) == []

        added = await paymentd(config, *add, "--port", str(hw.port))
        assert added.returncode == 0, added.stderr
        fingerprint = host_key_fingerprint(hw.public_host_key())
        assert f"host key pinned: {fingerprint}" in added.stdout
        spec = await olt_store.load_spec(db, box, "hw")
        assert spec is not None and spec.host_key == hw.public_host_key()
        tested = await paymentd(config, "olt", "test", "hw")
        assert tested.returncode == 0, tested.stderr
        assert "hw: OK" in tested.stdout

        hw.change_host_key()
        tested = await paymentd(config, "olt", "test", "hw")
        assert tested.returncode == 2
        assert "REFUSED" in tested.stderr and "--refresh-host-key" in tested.stderr

        refreshed = await paymentd(config, "olt", "update", "hw", "--refresh-host-key")
        assert refreshed.returncode == 0, refreshed.stderr
        assert host_key_fingerprint(hw.public_host_key()) in refreshed.stdout
        assert (await paymentd(config, "olt", "test", "hw")).returncode == 0
        listed = await paymentd(config, "olt", "list")
        assert host_key_fingerprint(hw.public_host_key()) in listed.stdout

        opted_out = await paymentd(
            config, *add[:2], "hw2", *add[3:], "--port", str(hw.port), "--no-host-key-check"
        )
        assert opted_out.returncode == 0, opted_out.stderr
        assert "WARNING: the SSH host key will NOT be checked" in opted_out.stdout
        unchecked = await olt_store.load_spec(db, box, "hw2")
        assert unchecked is not None
        assert (unchecked.host_key, unchecked.host_key_check) == (None, False)
        listed = await paymentd(config, "olt", "list")
        assert "host key NOT checked" in listed.stdout
