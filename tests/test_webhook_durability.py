"""The daemon as a real process: SIGKILLed between a failed attempt and its retry, the
delivery still goes out once, at its time — never early, never twice."""

from __future__ import annotations

import datetime as dt
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
import trio
from standardwebhooks import Webhook

from daemon.fakes.webhook_receiver import Answer, Received, WebhookReceiver
from daemon.platform import outbox
from daemon.platform.config import WebhooksConfig, to_toml
from daemon.platform.secrets import load_keyring
from daemon.webhooks import deliveries, endpoints
from tests.flow_harness import World, make_config, world
from tests.test_daemon_process import Notifications, daemon_process, free_port, listen, wait_exit

RETRY_AFTER = 8.0  # the second attempt's delay: longer than a restart takes


@pytest.fixture
async def w(db_url: str, tmp_path: Path, aio_loop: None) -> AsyncIterator[World]:
    async with world(db_url, tmp_path) as running_world:
        yield running_world


@pytest.fixture
async def notify_sockets() -> AsyncIterator[list[Notifications]]:
    made: list[Notifications] = []
    yield made
    for n in made:
        n.sock.close()


async def test_sigkill_mid_schedule_then_restart_sends_the_retry_once_at_its_time(
    w: World, tmp_path: Path, notify_sockets: list[Notifications]
) -> None:
    async def fail_first(r: Received) -> Answer:
        return Answer(500, b"not yet") if len(rx.received) == 1 else Answer(200, b"ok")

    rx = WebhookReceiver(fail_first)
    cfg = make_config(w.db_url, tmp_path, w.fake_url, w.sink_url, port=free_port())
    cfg = cfg.replace(
        webhooks=msgspec.structs.replace(
            WebhooksConfig(),
            allowed_cidrs=("127.0.0.0/8",),
            retry_schedule_seconds=(0, RETRY_AFTER),
            jitter=0.0,
        )
    )
    config = tmp_path / "config.toml"
    config.write_text(to_toml(cfg))
    log = tmp_path / "daemon.log"
    async with trio.open_nursery() as nursery:
        await nursery.start(rx.serve)
        async with w.db.transaction() as tx:
            _, secret = await endpoints.create(tx, load_keyring(cfg.secrets), url=rx.url())
        notify = await listen(notify_sockets, tmp_path / "notify-1.sock")
        with daemon_process(config, notify.path, log) as proc:
            await notify.wait_for("READY=1")
            # Emitted by "another part of the daemon": the fan-out and the first attempt
            # run from the outbox queue's notification, no polling.
            async with w.db.transaction() as tx:
                event = await outbox.emit(tx, "reconnection.succeeded", {"task_id": 1})
            with trio.fail_after(30):
                await rx.wait_for(1)
                while True:
                    [d] = await deliveries.list_deliveries(w.db)
                    if d.attempts == 1:
                        break
                    await trio.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            assert await wait_exit(proc, 10) == -signal.SIGKILL
        assert d.state == "pending" and d.next_attempt_at is not None
        due = d.next_attempt_at
        # The delay counts from the end of the failed exchange.
        assert RETRY_AFTER <= (due - d.last_attempt_at).total_seconds() < RETRY_AFTER + 5

        notify2 = await listen(notify_sockets, tmp_path / "notify-2.sock")
        with daemon_process(config, notify2.path, log) as proc:
            await notify2.wait_for("READY=1")
            ready_at = dt.datetime.now(dt.UTC)
            with trio.fail_after(60):
                second = (await rx.wait_for(2))[1]
                while (await deliveries.get(w.db, d.id)).state != "succeeded":  # type: ignore[union-attr]  # noqa: ASYNC110
                    await trio.sleep(0.05)
            await trio.sleep(1.5)  # anything extra the daemon might (wrongly) send
            proc.send_signal(signal.SIGTERM)
            assert await wait_exit(proc, 20) == 0
        nursery.cancel_scope.cancel()
    # Back before the retry was due (so it had to wait for it), and it did wait.
    assert ready_at < due, f"restart took too long to check 'not early' ({ready_at} > {due})"
    assert second.wall >= due, "the retry went out before its time"
    assert second.wall - due < dt.timedelta(seconds=10)
    assert len(rx.received) == 2
    assert rx.received[0].headers["webhook-id"] == second.headers["webhook-id"] == event.id
    done = await deliveries.get_detail(w.db, d.id)
    assert done is not None and done.delivery.attempts == 2
    assert [a.status_code for a in done.attempts] == [500, 200]
    Webhook(secret).verify(second.body, second.headers)


async def test_sigkill_mid_send_retries_after_the_lease_and_only_then(
    w: World, tmp_path: Path, notify_sockets: list[Notifications]
) -> None:
    async def hang_first(r: Received) -> Answer:
        if len(rx.received) == 1:
            await trio.sleep_forever()
        return Answer(200, b"ok")

    rx = WebhookReceiver(hang_first)
    cfg = make_config(w.db_url, tmp_path, w.fake_url, w.sink_url, port=free_port())
    cfg = cfg.replace(
        webhooks=msgspec.structs.replace(
            WebhooksConfig(), allowed_cidrs=("127.0.0.0/8",), timeout_seconds=4, lease_seconds=10
        )
    )
    config = tmp_path / "config.toml"
    config.write_text(to_toml(cfg))
    log = tmp_path / "daemon.log"
    async with trio.open_nursery() as nursery:
        await nursery.start(rx.serve)
        async with w.db.transaction() as tx:
            await endpoints.create(tx, load_keyring(cfg.secrets), url=rx.url())
        notify = await listen(notify_sockets, tmp_path / "notify-1.sock")
        with daemon_process(config, notify.path, log) as proc:
            await notify.wait_for("READY=1")
            async with w.db.transaction() as tx:
                await outbox.emit(tx, "sms.sent", {"n": 1})
            with trio.fail_after(30):
                await rx.wait_for(1)  # the receiver holds it: the daemon is mid-send
            proc.send_signal(signal.SIGKILL)
            assert await wait_exit(proc, 10) == -signal.SIGKILL
        [d] = await deliveries.list_deliveries(w.db)
        assert d.state == "pending" and d.attempts == 0 and d.leased_until is not None
        lease_end = d.leased_until
        notify2 = await listen(notify_sockets, tmp_path / "notify-2.sock")
        with daemon_process(config, notify2.path, log) as proc:
            await notify2.wait_for("READY=1")
            with trio.fail_after(60):
                second = (await rx.wait_for(2))[1]
                while (await deliveries.get(w.db, d.id)).state != "succeeded":  # type: ignore[union-attr]  # noqa: ASYNC110
                    await trio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert await wait_exit(proc, 20) == 0
        nursery.cancel_scope.cancel()
    assert second.wall >= lease_end, "sent again while the crashed attempt's lease held"
    assert len(rx.received) == 2
    assert rx.received[0].headers["webhook-id"] == second.headers["webhook-id"]
    done = await deliveries.get_detail(w.db, d.id)
    # The crashed attempt left no record (it never finished); the retry is attempt 1.
    assert done is not None and [a.status_code for a in done.attempts] == [200]
