"""A SIGKILL between the provider making the object and our commit: after a restart the
same idempotency key finds that object, so exactly one exists."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from daemon.payments import mock_provider
from daemon.platform.config import to_toml
from daemon.platform.db import Database
from tests.payments_harness import ADMIN, make_config, wait_for
from tests.test_daemon_process import Notifications, daemon_process, free_port, listen, wait_exit

pytestmark = pytest.mark.slow


@pytest.fixture
async def notify_sockets() -> AsyncIterator[list[Notifications]]:
    made: list[Notifications] = []
    yield made
    for n in made:
        n.sock.close()


async def test_sigkill_after_the_provider_created_it_then_restart_makes_no_second_object(
    db_url: str, tmp_path: Path, aio_loop: None, notify_sockets: list[Notifications]
) -> None:
    port = free_port()
    # The mock's "timeout" makes the object, then never answers: the processor waits (a
    # long provider timeout), and we kill the daemon right there.
    cfg = make_config(db_url, tmp_path, port=port, provider_timeout_seconds=120.0)
    config = tmp_path / "config.toml"
    config.write_text(to_toml(cfg))
    log = tmp_path / "daemon.log"
    base = f"http://127.0.0.1:{port}"
    async with (
        Database.open(db_url, min_size=1, max_size=2) as db,
        httpx.AsyncClient(base_url=base, timeout=30) as http,
    ):
        notify = await listen(notify_sockets, tmp_path / "notify-1.sock")
        with daemon_process(config, notify.path, log) as proc:
            await notify.wait_for("READY=1")
            r = await http.post(
                "/api/v1/payments",
                json={"amount": 2500, "currency": "EUR", "metadata": {"mock": "timeout"}},
                headers={**ADMIN, "Idempotency-Key": "crash-1"},
            )
            assert r.status_code == 201, r.text
            payment_id = r.json()["id"]
            await wait_for(
                lambda: db.fetchval(
                    "SELECT count(*) FROM mock_provider_objects WHERE payment_id = $1", payment_id
                ),
                30,
            )
            proc.send_signal(signal.SIGKILL)
            assert await wait_exit(proc, 10) == -signal.SIGKILL
        row = await db.fetchrow(
            "SELECT status, create_attempted_at FROM payments WHERE id = $1", payment_id
        )
        assert row["status"] == "created" and row["create_attempted_at"] is not None
        assert await mock_provider.count_objects(db, payment_id) == (1, 1)

        notify2 = await listen(notify_sockets, tmp_path / "notify-2.sock")
        with daemon_process(config, notify2.path, log) as proc:
            await notify2.wait_for("READY=1")

            async def pending() -> bool:
                status = await db.fetchval("SELECT status FROM payments WHERE id = $1", payment_id)
                return bool(status == "pending")

            await wait_for(pending, 30)
            # The redelivered message asked again with the same key: the same object.
            assert await mock_provider.count_objects(db, payment_id) == (1, 2)
            again = await http.post(
                "/api/v1/payments",
                json={"amount": 2500, "currency": "EUR", "metadata": {"mock": "timeout"}},
                headers={**ADMIN, "Idempotency-Key": "crash-1"},
            )
            assert again.status_code == 201 and again.json()["id"] == payment_id
            proc.send_signal(signal.SIGTERM)
            assert await wait_exit(proc, 20) == 0
        assert await db.fetchval("SELECT count(*) FROM payments") == 1
        assert await mock_provider.count_objects(db, payment_id) == (1, 2)
