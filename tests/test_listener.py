"""The LISTEN actor: wakes consumers on insert, survives a terminated connection."""

from __future__ import annotations

import contextlib
from functools import partial

import pytest
import trio

from daemon.actors import listener
from daemon.platform import queues
from daemon.platform.config import Config, DatabaseConfig
from daemon.platform.consumer import Wakeups
from daemon.platform.db import Database
from daemon.platform.deps import Deps
from daemon.platform.events import EventBus
from daemon.platform.health import Health
from daemon.platform.metrics import Metrics


def make_deps(db: Database, **database: object) -> Deps:
    cfg = Config().replace(database=DatabaseConfig(url=db.url, **database))  # type: ignore[arg-type]
    return Deps(cfg, db, Metrics(), EventBus(), Health())


async def drain_wake(w: Wakeups, q: str) -> None:
    with contextlib.suppress(trio.WouldBlock):
        w.receiver(q).receive_nowait()


async def test_insert_wakes_the_consumer_within_milliseconds(db: Database) -> None:
    deps = make_deps(db)
    wakeups = Wakeups()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(listener.run, deps, wakeups))
            # The (re)connect drain wakes everybody once; consume that first.
            await wakeups.receiver(queues.SMS).receive()
            t0 = trio.current_time()
            await queues.send(db, queues.SMS, {"sms_id": 1})
            await wakeups.receiver(queues.SMS).receive()
            assert trio.current_time() - t0 < 1.0
            nursery.cancel_scope.cancel()


async def test_terminated_listen_connection_reconnects_and_drains(db: Database) -> None:
    deps = make_deps(db)
    wakeups = Wakeups()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(listener.run, deps, wakeups))
            await wakeups.receiver(queues.RECONNECT).receive()
            killed = await db.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
            )
            assert killed == 1
            # Work queued while nobody listens: the reconnect drain must wake the consumer.
            await queues.send(db, queues.RECONNECT, {"task_id": 1})
            await wakeups.receiver(queues.RECONNECT).receive()
            while deps.metrics.listener_reconnects._value.get() < 1:  # noqa: ASYNC110 - polls a side effect
                await trio.sleep(0.05)
            # And new inserts notify again on the new connection.
            await drain_wake(wakeups, queues.RECONNECT)
            await queues.send(db, queues.RECONNECT, {"task_id": 2})
            await wakeups.receiver(queues.RECONNECT).receive()
            nursery.cancel_scope.cancel()


async def test_a_second_daemon_on_the_same_database_is_refused(db: Database) -> None:
    deps = make_deps(db)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(listener.run, deps, Wakeups()))
            with pytest.raises(listener.InstanceLockError, match="already running"):
                await listener.run(make_deps(db), Wakeups())
            nursery.cancel_scope.cancel()


async def test_safety_tick_wakes_only_the_queue_with_unannounced_work(db: Database) -> None:
    deps = make_deps(db, safety_poll_seconds=0.3)
    wakeups = Wakeups()
    await db.execute("SELECT pgmq.disable_notify_insert('sms')")  # a NOTIFY that never comes
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(listener.run, deps, wakeups))
            for q in queues.ALL:  # the connect-time drain
                await wakeups.receiver(q).receive()
            await queues.send(db, queues.SMS, {"sms_id": 1})
            await wakeups.receiver(queues.SMS).receive()
            await trio.sleep(0.7)  # two more ticks
            nursery.cancel_scope.cancel()
    polls = deps.metrics.safety_polls
    assert polls.labels(queues.SMS)._value.get() >= 1
    assert polls.labels(queues.RECONNECT)._value.get() == 0
    assert polls.labels(queues.UISP_EVENTS)._value.get() == 0
    # Nobody else was woken by the ticks.
    with pytest.raises(trio.WouldBlock):
        wakeups.receiver(queues.RECONNECT).receive_nowait()
