"""Both SMS fakes (LabsMobile and Twilio) over real HTTP, and the SMS handler's dependencies
on a real PostgreSQL database, for the fallback and lookup tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from daemon.fakes import sms_sink, twilio_server
from daemon.fakes.twilio_server import FakeTwilio
from daemon.notifications.delivery import SmsDeps, SmsSettings, handle_sms
from daemon.notifications.messages import QUEUE as SMS_QUEUE
from daemon.notifications.sms import LabsMobile, SmsProvider
from daemon.notifications.twilio import Twilio
from daemon.platform import queues
from daemon.platform.db import Database
from daemon.platform.events import EventBus
from daemon.platform.metrics import Metrics

TWILIO_SID = "AC" + "12" * 16
TWILIO_TOKEN = "tw-token"
SENDER = "+34911000111"


@dataclass
class Fakes:
    sink: sms_sink.SmsSink
    sink_url: str
    twilio: FakeTwilio
    twilio_url: str


@pytest.fixture(name="fakes")
async def fakes_fixture(nursery: trio.Nursery) -> AsyncIterator[Fakes]:
    sink = sms_sink.SmsSink(username="ops@example.com", token="t0ken")
    twilio = FakeTwilio(TWILIO_SID, TWILIO_TOKEN)
    sink_url = await nursery.start(sms_sink.serve, sink)
    twilio_url = await nursery.start(twilio_server.serve, twilio)
    yield Fakes(sink, sink_url, twilio, twilio_url)


def labsmobile(f: Fakes) -> LabsMobile:
    return LabsMobile(base_url=f.sink_url, username="ops@example.com", token="t0ken",
                      sender="ISP", default_country_code="34", timeout=2.0)  # fmt: skip


def twilio(f: Fakes) -> Twilio:
    return Twilio(account_sid=TWILIO_SID, auth_token=TWILIO_TOKEN, from_number=SENDER,
                  base_url=f.twilio_url, default_country_code="34", timeout=2.0)  # fmt: skip


def make_deps(
    db: Database,
    primary: SmsProvider,
    fallback: SmsProvider | None = None,
    **settings: Any,
) -> SmsDeps:
    defaults: dict[str, Any] = {
        "max_attempts": 5,
        "retry_backoff_seconds": 30.0,
        "send_deadline_seconds": 6.0,
        "fallback_after": 2,
        "lookup_settle_seconds": 5.0,
    }
    return SmsDeps(
        db, primary, Metrics(), EventBus(), SmsSettings(**(defaults | settings)), fallback
    )


async def close(deps: SmsDeps) -> None:
    for p in (deps.provider, deps.fallback):
        if p is not None:
            await p.aclose()


async def queue_sms(
    db: Database, phone: str = "600 111 222", body: str = "Hola", *, service: int = 1
) -> int:
    """An SMS for a reconnection task of ``service``, queued as reconnect.py does."""
    task_id = await db.fetchval(
        "INSERT INTO reconnect_tasks (dedupe_key, action, service_id, olt_name, onu)"
        " VALUES ($1, 'activate', $2, 'olt-huawei-1', '0/1/0:1') RETURNING id",
        f"activate:service:{service}:test",
        service,
    )
    sms_id: int = await db.fetchval(
        "INSERT INTO sms_messages (task_id, phone, body, provider) VALUES ($1, $2, $3, 'x')"
        " RETURNING id",
        task_id,
        phone,
        body,
    )
    await queues.send(db, SMS_QUEUE, {"sms_id": sms_id})
    return sms_id


async def deliver(deps: SmsDeps) -> queues.Message | None:
    """Read the next visible message (as the consumer would) and hand it to the handler."""
    got = await queues.read(deps.db, SMS_QUEUE, 60, 1)
    if not got:
        return None
    await handle_sms(deps, got[0])
    return got[0]


async def next_visible(deps: SmsDeps) -> float | None:
    return await queues.seconds_until_next_visible(deps.db, SMS_QUEUE)


async def skip_wait(deps: SmsDeps, msg: queues.Message) -> None:
    await queues.set_vt(deps.db, SMS_QUEUE, msg.msg_id, 0)


async def row(db: Database, sms_id: int) -> dict[str, Any]:
    record = await db.fetchrow("SELECT * FROM sms_messages WHERE id = $1", sms_id)
    assert record is not None
    return dict(record)


async def timeline(db: Database, sms_id: int) -> list[str]:
    kinds: list[str] = await db.fetchval(
        "SELECT array_agg(kind ORDER BY e.id) FROM task_events e"
        " JOIN sms_messages s ON s.task_id = e.task_id WHERE s.id = $1",
        sms_id,
    )
    return kinds or []
