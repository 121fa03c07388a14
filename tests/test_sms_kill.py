"""The duplicate window closed for Twilio, with a real SIGKILL: the daemon (a subprocess) is
killed after Twilio accepted the SMS and before the daemon could record it; the restarted
daemon finds the message in Twilio's list and records it instead of sending it again."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
import trio

from daemon.fakes import twilio_server
from daemon.fakes.twilio_server import FakeTwilio
from daemon.network.olt.types import OnuRef
from daemon.platform.config import TwilioConfig, to_toml
from tests.flow_harness import WEBHOOK_TOKEN, World, make_config, register, world
from tests.test_daemon_process import Notifications, daemon_process, free_port, listen, wait_exit

SID = "AC" + "5a" * 16
TOKEN = "kill-test-token"
ANA_ONU = OnuRef(0, 1, 3, 7)


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


@pytest.fixture
async def twilio(nursery: trio.Nursery) -> AsyncIterator[tuple[FakeTwilio, str]]:
    fake = FakeTwilio(SID, TOKEN)
    url: str = await nursery.start(twilio_server.serve, fake)
    yield fake, url


async def wait_for_sms_state(w: World, state: str, seconds: float) -> dict[str, object]:
    with trio.fail_after(seconds):
        while True:
            found = await w.db.fetchrow("SELECT * FROM sms_messages")
            if found is not None and found["state"] == state:
                return dict(found)
            await trio.sleep(0.1)


async def test_sigkill_after_twilio_accepted_then_restart_sends_no_second_sms(
    w: World,
    twilio: tuple[FakeTwilio, str],
    tmp_path: Path,
    notify_sockets: list[Notifications],
) -> None:
    fake, fake_url = twilio
    port = free_port()
    cfg = make_config(w.db_url, tmp_path, w.fake_url, w.sink_url, port=port)
    cfg = cfg.replace(
        sms=msgspec.structs.replace(cfg.sms, provider="twilio"),
        twilio=TwilioConfig(
            base_url=fake_url,
            account_sid=SID,
            auth_token=TOKEN,
            from_number="+34911000111",
            timeout_seconds=2,
            lookup_settle_seconds=1,
        ),
    )
    config = tmp_path / "config.toml"
    config.write_text(to_toml(cfg))
    await register(w.db_url, cfg, list(w.devices.values()))
    w.fake.webhook_url = f"http://127.0.0.1:{port}/webhooks/uisp/{WEBHOOK_TOKEN}"
    log = tmp_path / "daemon.log"

    hold = fake.hold = trio.Event()  # Twilio keeps the message, its answer never arrives
    notify = await listen(notify_sockets, tmp_path / "notify-1.sock")
    with daemon_process(config, notify.path, log) as proc:
        await notify.wait_for("READY=1")
        await w.fake.record_payment(1, 30.0)
        [accepted] = await fake.wait_messages(1, seconds=60)
        proc.send_signal(signal.SIGKILL)
        assert await wait_exit(proc, 10) == -signal.SIGKILL
    fake.hold = None
    hold.set()
    left = await w.db.fetchrow("SELECT state, provider, unconfirmed FROM sms_messages")
    assert dict(left) == {"state": "sending", "provider": "twilio", "unconfirmed": True}

    notify2 = await listen(notify_sockets, tmp_path / "notify-2.sock")
    with daemon_process(config, notify2.path, log) as proc:
        await notify2.wait_for("READY=1")
        # One lease (3 s) for the message to come back, then the in-flight window (the
        # send deadline, 15 s here) before the attempt counts as interrupted.
        sms = await wait_for_sms_state(w, "sent", seconds=90)
        await trio.sleep(1.0)  # anything extra the daemon might (wrongly) send
        proc.send_signal(signal.SIGTERM)
        assert await wait_exit(proc, 20) == 0
    assert (sms["provider"], sms["provider_ref"], sms["attempts"]) == ("twilio", accepted["sid"], 1)
    assert len(fake.messages) == 1
    assert [m for m, _ in fake.requests].count("POST") == 1
    assert [m for m, _ in fake.requests].count("GET") >= 1  # the lookup
    kinds = await w.db.fetchval("SELECT array_agg(kind ORDER BY id) FROM task_events")
    assert kinds[-2:] == ["sms_found", "sms_sent"]
    assert w.devices["olt-hw"].is_active(ANA_ONU)
    assert w.sink.messages == []  # LabsMobile was never involved
    assert TOKEN not in log.read_text()
