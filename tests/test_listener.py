"""The LISTEN actor: wakes consumers on insert, survives a terminated connection."""

from __future__ import annotations

import contextlib
from functools import partial

import pytest
import trio

from daemon.actors import instance_lock, listener
from daemon.actors.listener import ListenerDeps
from daemon.network.tasks import QUEUE as RECONNECT_QUEUE
from daemon.notifications.messages import QUEUE as SMS_QUEUE
from daemon.platform import queues
from daemon.platform.consumer import Wakeups
from daemon.platform.db import Database
from daemon.platform.events import EventBus
from daemon.platform.metrics import Metrics
from daemon.platform.migrate import migrate
from daemon.uisp.webhooks import QUEUE as UISP_QUEUE
from daemon.wiring import QUEUE_NAMES
from tests.private_pg import private_pg


def make_deps(db: Database, wakeups: Wakeups, safety_poll_seconds: float = 300.0) -> ListenerDeps:
    return ListenerDeps(db.url, QUEUE_NAMES, wakeups, Metrics(), EventBus(), safety_poll_seconds, 0)


async def drain_wake(w: Wakeups, q: str) -> None:
    with contextlib.suppress(trio.WouldBlock):
        w.receiver(q).receive_nowait()


async def test_insert_wakes_the_consumer_within_milliseconds(db: Database) -> None:
    wakeups = Wakeups(QUEUE_NAMES)
    deps = make_deps(db, wakeups)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(listener.run, deps))
            # The (re)connect drain wakes everybody once; consume that first.
            await wakeups.receiver(SMS_QUEUE).receive()
            t0 = trio.current_time()
            await queues.send(db, SMS_QUEUE, {"sms_id": 1})
            await wakeups.receiver(SMS_QUEUE).receive()
            assert trio.current_time() - t0 < 1.0
            nursery.cancel_scope.cancel()


async def test_terminated_listen_connection_reconnects_and_drains(db: Database) -> None:
    wakeups = Wakeups(QUEUE_NAMES)
    deps = make_deps(db, wakeups)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(listener.run, deps))
            await wakeups.receiver(RECONNECT_QUEUE).receive()
            killed = await db.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
            )
            assert killed == 1
            # Work queued while nobody listens: the reconnect drain must wake the consumer.
            await queues.send(db, RECONNECT_QUEUE, {"task_id": 1})
            await wakeups.receiver(RECONNECT_QUEUE).receive()
            while deps.metrics.listener_reconnects._value.get() < 1:  # noqa: ASYNC110 - polls a side effect
                await trio.sleep(0.05)
            # And new inserts notify again on the new connection.
            await drain_wake(wakeups, RECONNECT_QUEUE)
            await queues.send(db, RECONNECT_QUEUE, {"task_id": 2})
            await wakeups.receiver(RECONNECT_QUEUE).receive()
            nursery.cancel_scope.cancel()


async def test_a_second_daemon_on_the_same_database_is_refused(db: Database) -> None:
    with trio.fail_after(20):
        async with instance_lock.hold(db.url, wait_seconds=1):
            with pytest.raises(instance_lock.InstanceLockError, match="already running"):
                async with instance_lock.hold(db.url, wait_seconds=0.5):
                    pass


async def test_the_lock_holder_learns_at_once_when_its_connection_dies(db: Database) -> None:
    with trio.fail_after(20):
        async with instance_lock.hold(db.url, wait_seconds=1) as lost:
            await db.fetchval(
                f"SELECT count(pg_terminate_backend(pid)) FROM ({instance_lock.HOLDERS_SQL}) h",
                instance_lock.INSTANCE_LOCK,
            )
            await lost.wait()
        # Released with the connection: the next holder gets it without waiting.
        async with instance_lock.hold(db.url, wait_seconds=5):
            pass


async def test_notifications_are_rearmed_when_the_throttle_state_was_lost(db: Database) -> None:
    """A PostgreSQL crash empties PGMQ's UNLOGGED throttle table: inserts stop notifying."""
    await db.execute("TRUNCATE pgmq.notify_insert_throttle")
    wakeups = Wakeups(QUEUE_NAMES)
    deps = make_deps(db, wakeups)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(listener.run, deps))
            await wakeups.receiver(SMS_QUEUE).receive()  # the connect-time drain
            await queues.send(db, SMS_QUEUE, {"sms_id": 1})
            # Woken by a NOTIFY (the safety tick is 300 s away).
            await wakeups.receiver(SMS_QUEUE).receive()
            assert wakeups.take_notified(SMS_QUEUE)
            nursery.cancel_scope.cancel()
    assert await db.fetchval("SELECT count(*) FROM pgmq.notify_insert_throttle") == len(QUEUE_NAMES)


async def test_safety_tick_wakes_only_the_queue_with_unannounced_work(db: Database) -> None:
    wakeups = Wakeups(QUEUE_NAMES)
    deps = make_deps(db, wakeups, safety_poll_seconds=0.3)
    await db.execute("SELECT pgmq.disable_notify_insert('sms')")  # a NOTIFY that never comes
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(listener.run, deps))
            for q in QUEUE_NAMES:  # the connect-time drain
                await wakeups.receiver(q).receive()
            await queues.send(db, SMS_QUEUE, {"sms_id": 1})
            await wakeups.receiver(SMS_QUEUE).receive()
            await trio.sleep(0.7)  # two more ticks
            nursery.cancel_scope.cancel()
    polls = deps.metrics.safety_polls
    assert polls.labels(SMS_QUEUE)._value.get() >= 1
    assert polls.labels(RECONNECT_QUEUE)._value.get() == 0
    assert polls.labels(UISP_QUEUE)._value.get() == 0
    # Nobody else was woken by the ticks.
    with pytest.raises(trio.WouldBlock):
        wakeups.receiver(RECONNECT_QUEUE).receive_nowait()


async def test_after_a_real_server_crash_inserts_notify_again(aio_loop: None) -> None:
    """PostgreSQL crash-restarts: PGMQ's UNLOGGED throttle table comes back empty and its
    trigger would never notify again; the listener re-arms it when it reconnects."""
    with private_pg() as server:
        migrate(server.url, notify_throttle_ms=0)
        wakeups = Wakeups(QUEUE_NAMES)
        metrics = Metrics()
        deps = ListenerDeps(server.url, QUEUE_NAMES, wakeups, metrics, EventBus(), 300.0, 0)
        async with Database.open(server.url, min_size=1, max_size=2) as db:
            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    await nursery.start(partial(listener.run, deps))
                    await trio.to_thread.run_sync(server.crash_restart)
                    while metrics.listener_reconnects._value.get() < 1:  # noqa: ASYNC110
                        await trio.sleep(0.05)
                    await drain_wake(wakeups, SMS_QUEUE)
                    wakeups.take_notified(SMS_QUEUE)
                    t0 = trio.current_time()
                    await queues.send(db, SMS_QUEUE, {"sms_id": 1})
                    # A NOTIFY, within the bound; the safety tick is 300 s away.
                    with trio.fail_after(10):
                        await wakeups.receiver(SMS_QUEUE).receive()
                    latency = trio.current_time() - t0
                    assert wakeups.take_notified(SMS_QUEUE)
                    nursery.cancel_scope.cancel()
    print(f"wake-up after the crash restart: {latency * 1000:.1f} ms")
