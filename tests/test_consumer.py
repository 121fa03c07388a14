"""The consumer loop: wake-ups, database-computed deadlines, bounded concurrency."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio

from daemon.notifications.messages import QUEUE as SMS_QUEUE
from daemon.platform import consumer as consumer_module
from daemon.platform import queues
from daemon.platform.consumer import ConsumerSettings, Handler, Lease, Wakeups, consume
from daemon.platform.db import Conn, Database, DatabaseError
from daemon.platform.metrics import Metrics
from daemon.platform.queues import Message
from daemon.wiring import QUEUE_NAMES


@asynccontextmanager
async def consuming(
    db: Database, settings: ConsumerSettings, handler: Handler, metrics: Metrics
) -> AsyncIterator[Wakeups]:
    """Run a consumer for the block, then stop it and let its handlers finish."""
    wakeups, stop = Wakeups(QUEUE_NAMES), trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(
                consume, db, settings, wakeups.receiver(settings.queue), handler, metrics, stop=stop
            )
        )
        yield wakeups
        stop.set()
        wakeups.wake_all()


async def test_drains_backlog_then_handles_woken_work(db: Database) -> None:
    for i in range(25):
        await queues.send(db, SMS_QUEUE, {"n": i})
    seen: list[int] = []
    done = trio.Event()

    async def handler(msg: Message, lease: Lease) -> None:
        seen.append(msg.message["n"])
        await queues.archive(db, SMS_QUEUE, msg.msg_id)
        if len(seen) == 26:
            done.set()

    with trio.fail_after(10):
        async with consuming(
            db, ConsumerSettings(SMS_QUEUE, lease_seconds=30), handler, Metrics()
        ) as wakeups:
            await queues.send(db, SMS_QUEUE, {"n": 99})
            wakeups.wake(SMS_QUEUE)
            await done.wait()
    assert sorted(seen) == [*range(25), 99]


async def test_retry_backoff_is_a_deadline_not_a_poll(db: Database) -> None:
    """A handler that asks for a retry in 1 s runs again ~1 s later with no wake-up at all."""
    await queues.send(db, SMS_QUEUE, {"n": 1})
    runs: list[float] = []
    done = trio.Event()

    async def handler(msg: Message, lease: Lease) -> None:
        runs.append(trio.current_time())
        if msg.read_ct == 1:
            await queues.set_vt(db, SMS_QUEUE, msg.msg_id, 1.0)
        else:
            await queues.archive(db, SMS_QUEUE, msg.msg_id)
            done.set()

    with trio.fail_after(10):
        async with consuming(db, ConsumerSettings(SMS_QUEUE, lease_seconds=30), handler, Metrics()):
            await done.wait()
    assert len(runs) == 2
    assert 0.9 <= runs[1] - runs[0] < 3.0


async def test_a_crashing_handler_is_retried_after_the_visibility_timeout(db: Database) -> None:
    await queues.send(db, SMS_QUEUE, {"n": 1})
    attempts: list[int] = []
    done = trio.Event()
    metrics = Metrics()

    async def handler(msg: Message, lease: Lease) -> None:
        attempts.append(msg.read_ct)
        if msg.read_ct == 1:
            raise RuntimeError("boom")
        await queues.archive(db, SMS_QUEUE, msg.msg_id)
        done.set()

    with trio.fail_after(10):
        async with consuming(db, ConsumerSettings(SMS_QUEUE, lease_seconds=1), handler, metrics):
            await done.wait()
    assert attempts == [1, 2]
    assert metrics.jobs.labels(SMS_QUEUE, "crash")._value.get() == 1


async def test_concurrency_is_bounded(db: Database) -> None:
    for i in range(12):
        await queues.send(db, SMS_QUEUE, {"n": i})
    running = 0
    peak = 0
    handled = 0
    done = trio.Event()

    async def handler(msg: Message, lease: Lease) -> None:
        nonlocal running, peak, handled
        running += 1
        peak = max(peak, running)
        await trio.sleep(0.05)
        await queues.archive(db, SMS_QUEUE, msg.msg_id)
        running -= 1
        handled += 1
        if handled == 12:
            done.set()

    with trio.fail_after(10):
        async with consuming(
            db, ConsumerSettings(SMS_QUEUE, lease_seconds=30, concurrency=3), handler, Metrics()
        ):
            await done.wait()
    assert peak == 3


async def test_a_poison_message_is_archived_with_its_outcome_recorded(db: Database) -> None:
    msg_id = await queues.send(db, SMS_QUEUE, {"n": 1})
    await db.execute("UPDATE pgmq.q_sms SET read_ct = 30 WHERE msg_id = $1", msg_id)
    called = False
    recorded: list[int] = []

    async def handler(msg: Message, lease: Lease) -> None:
        nonlocal called
        called = True

    async def on_poison(tx: Conn, msg: Message, reason: str) -> None:
        # Runs in the archiving transaction: a domain row would be marked failed here.
        assert await tx.fetchval("SELECT count(*) FROM pgmq.a_sms") == 0
        recorded.append(msg.read_ct)

    metrics = Metrics()
    settings = ConsumerSettings(SMS_QUEUE, lease_seconds=30, on_poison=on_poison)
    with trio.fail_after(10):
        async with consuming(db, settings, handler, metrics):
            while metrics.jobs.labels(SMS_QUEUE, "poison")._value.get() < 1:  # noqa: ASYNC110
                await trio.sleep(0.02)
    assert not called
    assert recorded == [31]
    assert await db.fetchval("SELECT count(*) FROM pgmq.a_sms WHERE msg_id = $1", msg_id) == 1


async def test_an_unexpected_exception_costs_a_short_backoff_not_the_lease(db: Database) -> None:
    """Was 1,500 s for the reconnect queue: a crash now costs about a second."""
    await queues.send(db, SMS_QUEUE, {"n": 1})
    seen: list[float] = []
    done = trio.Event()

    async def handler(msg: Message, lease: Lease) -> None:
        seen.append(trio.current_time())
        if msg.read_ct == 1:
            raise RuntimeError("unexpected")
        await queues.archive(db, SMS_QUEUE, msg.msg_id)
        done.set()

    # A 60 s lease: if the crash left the message invisible for the lease, this times out.
    with trio.fail_after(15):
        async with consuming(db, ConsumerSettings(SMS_QUEUE, lease_seconds=60), handler, Metrics()):
            await done.wait()
    assert len(seen) == 2


async def test_a_handler_longer_than_its_lease_keeps_its_message(db: Database) -> None:
    """The keeper extends the lease: no second delivery while the first still works."""
    await queues.send(db, SMS_QUEUE, {"n": 1})
    deliveries: list[int] = []

    async def handler(msg: Message, lease: Lease) -> None:
        deliveries.append(msg.read_ct)
        await trio.sleep(3.5)  # more than three leases of 1 s
        await queues.archive(db, SMS_QUEUE, msg.msg_id)

    with trio.fail_after(15):
        async with consuming(db, ConsumerSettings(SMS_QUEUE, lease_seconds=1), handler, Metrics()):
            await trio.sleep(4.5)
    assert deliveries == [1]
    assert await db.fetchval("SELECT count(*) FROM pgmq.q_sms") == 0


async def test_a_message_held_by_a_killed_consumer_runs_again_one_lease_later(
    db: Database,
) -> None:
    """SIGKILL after the read, before the handler touched its row: one lease, not more."""
    await queues.send(db, SMS_QUEUE, {"n": 1})
    [orphan] = await queues.read(db, SMS_QUEUE, 2, 1)  # the dead process's read
    done = trio.Event()

    async def handler(msg: Message, lease: Lease) -> None:
        await queues.archive(db, SMS_QUEUE, msg.msg_id)
        done.set()

    with trio.fail_after(10):
        async with consuming(db, ConsumerSettings(SMS_QUEUE, lease_seconds=2), handler, Metrics()):
            await done.wait()
    assert orphan.read_ct == 1


async def test_handlers_returning_from_detached_never_break_the_reads(db: Database) -> None:
    """A detached handler takes its slot back while a read is in flight: no crash."""
    for i in range(300):
        await queues.send(db, SMS_QUEUE, {"n": i})
    done: list[int] = []
    rng = random.Random(7)

    async def handler(msg: Message, lease: Lease) -> None:
        async with lease.detached():
            await trio.sleep(rng.uniform(0, 0.01))
        await queues.archive(db, SMS_QUEUE, msg.msg_id)
        done.append(msg.msg_id)

    metrics = Metrics()
    settings = ConsumerSettings(SMS_QUEUE, lease_seconds=30, concurrency=2, batch=10)
    with trio.fail_after(60):
        async with consuming(db, settings, handler, metrics):
            while len(done) < 300:  # noqa: ASYNC110 - waits for the handlers' side effect
                await trio.sleep(0.05)
    assert sorted(done) == sorted(set(done)) and len(done) == 300
    assert metrics.jobs.labels(SMS_QUEUE, "crash")._value.get() == 0


@pytest.mark.parametrize("detached", [False, True])
async def test_a_lease_that_cannot_be_extended_never_runs_one_message_twice_at_once(
    db: Database, monkeypatch: pytest.MonkeyPatch, detached: bool
) -> None:
    """The database stalls longer than a lease: the handler stops before its lease lapses,
    so the reader that takes the message next is never working beside it."""

    async def failing(*_args: object) -> None:
        raise DatabaseError("simulated stall: the keeper cannot reach the database")

    monkeypatch.setattr(consumer_module.queues, "extend_lease", failing)
    await queues.send(db, SMS_QUEUE, {"n": 1})
    running = 0
    peak = 0
    starts: list[int] = []

    async def handler(msg: Message, lease: Lease) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        starts.append(msg.read_ct)
        try:
            if detached:
                async with lease.detached():
                    await trio.sleep(3)
            else:
                await trio.sleep(3)
        finally:
            running -= 1

    with trio.fail_after(20):
        async with consuming(
            db, ConsumerSettings(SMS_QUEUE, lease_seconds=1, concurrency=2), handler, Metrics()
        ):
            await trio.sleep(4)
    assert len(starts) >= 2  # it ran again after each lost lease...
    assert peak == 1  # ...but never twice at once
