"""The SMS sender's handler on a real PostgreSQL and the fake LabsMobile over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import pytest
import trio

from daemon import wiring
from daemon.actors import queue_consumer
from daemon.fakes import sms_sink
from daemon.notifications import delivery
from daemon.notifications.delivery import SmsDeps, SmsSettings, handle_sms
from daemon.notifications.messages import QUEUE as SMS_QUEUE
from daemon.notifications.sms import LabsMobile
from daemon.platform import queues
from daemon.platform.config import Config
from daemon.platform.consumer import Wakeups
from daemon.platform.db import Database, DatabaseError
from daemon.platform.events import EventBus
from daemon.platform.metrics import Metrics
from daemon.wiring import QUEUE_NAMES


@pytest.fixture
async def sink(nursery: trio.Nursery) -> AsyncIterator[tuple[sms_sink.SmsSink, str]]:
    fake = sms_sink.SmsSink(username="ops@example.com", token="t0ken")
    url: str = await nursery.start(sms_sink.serve, fake)
    yield fake, url


@pytest.fixture
async def deps(db: Database, sink: tuple[sms_sink.SmsSink, str]) -> AsyncIterator[SmsDeps]:
    _, url = sink
    provider = LabsMobile(base_url=url, username="ops@example.com", token="t0ken", sender="ISP",
                          default_country_code="34", timeout=5.0)  # fmt: skip
    settings = SmsSettings(max_attempts=3, retry_backoff_seconds=30.0, send_deadline_seconds=8.0)
    yield SmsDeps(db, provider, Metrics(), EventBus(), settings)
    await provider.aclose()


async def queue_sms(db: Database, phone: str = "600 111 222", *, task: bool = False) -> int:
    task_id = None
    if task:
        task_id = await db.fetchval(
            "INSERT INTO reconnect_tasks (dedupe_key, action, service_id, olt_name, onu)"
            " VALUES ('t1', 'activate', 1, 'olt-huawei-1', '0/1/0:1') RETURNING id"
        )
    sms_id: int = await db.fetchval(
        "INSERT INTO sms_messages (task_id, phone, body, provider) VALUES ($1, $2, 'Hola', $3)"
        " RETURNING id",
        task_id,
        phone,
        "labsmobile",
    )
    await queues.send(db, SMS_QUEUE, {"sms_id": sms_id})
    return sms_id


async def deliver(deps: SmsDeps) -> queues.Message:
    """Read the next message (as the consumer would) and hand it to the handler."""
    [msg] = await queues.read(deps.db, SMS_QUEUE, 60, 1)
    await handle_sms(deps, msg)
    return msg


async def row(db: Database, sms_id: int) -> dict[str, Any]:
    record = await db.fetchrow("SELECT * FROM sms_messages WHERE id = $1", sms_id)
    assert record is not None
    return dict(record)


def count(deps: SmsDeps, outcome: str) -> float:
    value = deps.metrics.registry.get_sample_value(
        "paymentd_sms_total", {"provider": "labsmobile", "outcome": outcome}
    )
    return value or 0.0


async def test_a_queued_sms_is_sent_and_its_message_archived(
    deps: SmsDeps, sink: tuple[sms_sink.SmsSink, str]
) -> None:
    fake, _ = sink
    with trio.fail_after(10), deps.events.subscribe() as live:
        sms_id = await queue_sms(deps.db, task=True)
        await deliver(deps)
        sms = await row(deps.db, sms_id)
        event = live.receive_nowait()
        timeline = await deps.db.fetchval("SELECT array_agg(kind ORDER BY id) FROM task_events")
        assert await queues.seconds_until_next_visible(deps.db, SMS_QUEUE) is None
    assert sms["state"] == "sent" and sms["attempts"] == 1 and sms["sent_at"] is not None
    assert sms["provider_ref"] == f"paymentd-sms-{sms_id}" and sms["provider"] == "labsmobile"
    assert fake.messages == [{"msisdn": "34600111222", "message": "Hola", "tpoa": "ISP",
                              "subid": f"paymentd-sms-{sms_id}", "test": False}]  # fmt: skip
    assert event.kind == "sms.sent" and event.data["sms_id"] == sms_id
    assert timeline == ["sms_sent"]
    assert count(deps, "sent") == 1


async def test_a_redelivered_message_for_a_sent_sms_sends_nothing(
    deps: SmsDeps, sink: tuple[sms_sink.SmsSink, str]
) -> None:
    fake, _ = sink
    with trio.fail_after(10):
        sms_id = await queue_sms(deps.db)
        await deliver(deps)
        await queues.send(deps.db, SMS_QUEUE, {"sms_id": sms_id})  # a duplicate delivery
        await deliver(deps)
        assert await queues.seconds_until_next_visible(deps.db, SMS_QUEUE) is None
    assert len(fake.messages) == 1


async def test_a_crash_mid_send_sends_again_on_redelivery(
    deps: SmsDeps, sink: tuple[sms_sink.SmsSink, str]
) -> None:
    fake, _ = sink
    with trio.fail_after(10):
        sms_id = await queue_sms(deps.db)
        # What a crash after the 'sending' commit leaves behind, once the vt has lapsed.
        await deps.db.execute(
            "UPDATE sms_messages SET state = 'sending', attempts = 1,"
            " updated_at = now() - interval '2 minutes' WHERE id = $1",
            sms_id,
        )
        await deliver(deps)
        sms = await row(deps.db, sms_id)
    assert sms["state"] == "sent" and sms["attempts"] == 2
    assert len(fake.messages) == 1


async def test_a_duplicate_message_does_not_race_a_send_in_flight(
    deps: SmsDeps, sink: tuple[sms_sink.SmsSink, str]
) -> None:
    fake, _ = sink
    with trio.fail_after(10):
        sms_id = await queue_sms(deps.db)
        await deps.db.execute(
            "UPDATE sms_messages SET state = 'sending', attempts = 1, updated_at = now()"
            " WHERE id = $1",
            sms_id,
        )
        await deliver(deps)
        sms = await row(deps.db, sms_id)
        wait = await queues.seconds_until_next_visible(deps.db, SMS_QUEUE)
    assert sms["state"] == "sending" and sms["attempts"] == 1
    assert wait is not None and 10 < wait <= 13  # send deadline (8 s) + 5 s
    assert fake.messages == []


async def test_no_credit_is_retried_with_backoff_then_sent(
    deps: SmsDeps, sink: tuple[sms_sink.SmsSink, str]
) -> None:
    fake, _ = sink
    fake.fail_next(1, code="35")
    with trio.fail_after(10):
        sms_id = await queue_sms(deps.db)
        msg = await deliver(deps)
        sms = await row(deps.db, sms_id)
        assert sms["state"] == "queued" and sms["attempts"] == 1
        assert "code 35" in sms["last_error"]
        wait = await queues.seconds_until_next_visible(deps.db, SMS_QUEUE)
        assert wait is not None and 25 < wait <= 30  # retry_backoff_seconds * 2**0
        await queues.set_vt(deps.db, SMS_QUEUE, msg.msg_id, 0)  # skip the wait
        await deliver(deps)
        sms = await row(deps.db, sms_id)
    assert sms["state"] == "sent" and sms["attempts"] == 2
    assert count(deps, "retry") == 1 and count(deps, "sent") == 1
    assert len(fake.messages) == 1


async def test_transient_failures_give_up_after_max_attempts(
    deps: SmsDeps, sink: tuple[sms_sink.SmsSink, str]
) -> None:
    fake, _ = sink
    fake.fail_next(3, status=503)
    waits = []
    with trio.fail_after(10):
        sms_id = await queue_sms(deps.db)
        for _ in range(3):
            msg = await deliver(deps)
            waits.append(await queues.seconds_until_next_visible(deps.db, SMS_QUEUE))
            if waits[-1] is not None:
                await queues.set_vt(deps.db, SMS_QUEUE, msg.msg_id, 0)
        sms = await row(deps.db, sms_id)
    assert sms["state"] == "failed" and sms["attempts"] == 3
    assert sms["last_error"].startswith("gave up after 3 attempts")
    assert [round(w or 0, -1) for w in waits] == [30, 60, 0]  # doubling; archived at the end
    assert fake.messages == []


async def test_a_permanent_error_fails_at_once(
    deps: SmsDeps, sink: tuple[sms_sink.SmsSink, str]
) -> None:
    fake, _ = sink
    with trio.fail_after(10), deps.events.subscribe() as live:
        sms_id = await queue_sms(deps.db, phone="not a number")
        await deliver(deps)
        sms = await row(deps.db, sms_id)
        assert await queues.seconds_until_next_visible(deps.db, SMS_QUEUE) is None
        assert live.receive_nowait().kind == "sms.failed"
    assert sms["state"] == "failed" and sms["attempts"] == 1
    assert "invalid phone number" in sms["last_error"]
    assert fake.requests == []


async def test_provider_none_skips(deps: SmsDeps) -> None:
    deps.provider = None
    with trio.fail_after(10):
        sms_id = await queue_sms(deps.db)
        await deliver(deps)
        sms = await row(deps.db, sms_id)
        assert await queues.seconds_until_next_visible(deps.db, SMS_QUEUE) is None
    assert sms["state"] == "skipped" and sms["attempts"] == 0 and sms["provider"] == "none"


async def test_a_send_that_hangs_is_cut_off_and_retried(
    deps: SmsDeps, sink: tuple[sms_sink.SmsSink, str]
) -> None:
    fake, _ = sink
    fake.fail_next(1, delay=2.0)
    deps.settings = SmsSettings(max_attempts=3, send_deadline_seconds=0.3)
    with trio.fail_after(10):
        sms_id = await queue_sms(deps.db)
        await deliver(deps)
        sms = await row(deps.db, sms_id)
    assert sms["state"] == "queued" and "no answer within" in sms["last_error"]


async def test_the_actor_sends_what_is_queued_until_stopped(
    deps: SmsDeps, sink: tuple[sms_sink.SmsSink, str]
) -> None:
    fake, _ = sink
    wakeups, stop = Wakeups(QUEUE_NAMES), trio.Event()
    decl = wiring.BY_NAME[SMS_QUEUE]
    consumer = queue_consumer.ConsumerDeps(
        deps.db,
        decl.consumer_settings(Config()),
        partial(handle_sms, deps),
        wakeups,
        deps.metrics,
        stop,
    )
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(queue_consumer.run, consumer)
            ids = [await queue_sms(deps.db, f"60011122{n}") for n in range(3)]
            wakeups.wake(SMS_QUEUE)  # what the listener does on NOTIFY
            await fake.wait_messages(3)
            stop.set()
            wakeups.wake_all()
        states = {(await row(deps.db, i))["state"] for i in ids}
    assert states == {"sent"}


async def test_a_database_blip_after_the_provider_accepted_does_not_send_it_again(
    deps: SmsDeps, sink: tuple[sms_sink.SmsSink, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, _ = sink
    real_finish = delivery._finish
    failures = [DatabaseError("simulated: connection lost at COMMIT")]

    async def finish_after_a_blip(*args: Any, **kwargs: Any) -> None:
        if failures and args[3] == "sent":
            raise failures.pop()
        await real_finish(*args, **kwargs)

    monkeypatch.setattr(delivery, "_finish", finish_after_a_blip)
    with trio.fail_after(10):
        sms_id = await queue_sms(deps.db, task=True)
        await deliver(deps)
    assert not failures  # the blip happened...
    assert len(fake.messages) == 1  # ...and the SMS went out once
    assert (await row(deps.db, sms_id))["state"] == "sent"
