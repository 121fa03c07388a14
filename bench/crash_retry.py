"""Time from a handler's unexpected exception (or a killed reader) to the next attempt.

On the daemon's own consumer (``daemon.platform.consumer.consume``) with the reconnect
queue's declared settings (``daemon.wiring``) and the default config: a handler that
raises on its first delivery, timed until its second delivery starts; and a message read
by a "killed" reader (read, never finished), timed until a live consumer gets it.

Baseline, measured in the same run on the same database: the visibility timeout the old
reconnect consumer read with (``max(60, task_deadline + 30)`` = 1,620 s with the default
OLT timeouts), read back as the database's own "seconds until visible" for a message read
that way — the wait a crash cost before leases (nobody waits 27 minutes in a bench).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import sys
from functools import partial

import _common
import trio
import trio_asyncio

from daemon import wiring
from daemon.network.tasks import QUEUE
from daemon.platform import queues
from daemon.platform.config import Config
from daemon.platform.consumer import ConsumerSettings, Handler, Lease, Wakeups, consume
from daemon.platform.db import Database
from daemon.platform.metrics import Metrics
from daemon.platform.queues import Message

OLD_VT = 1620  # the old reconnect queue's read visibility timeout with default OLT settings


def _settings(lease_seconds: int) -> ConsumerSettings:
    """The reconnect queue's declared settings, with the given lease."""
    declared = wiring.BY_NAME[QUEUE].consumer_settings(Config())
    return dataclasses.replace(declared, lease_seconds=lease_seconds)


async def _consume_until(
    db: Database, lease_seconds: int, handler: Handler, done: trio.Event
) -> None:
    """Run the daemon's consumer on the queue until ``done`` is set."""
    wakeups, stop = Wakeups([QUEUE]), trio.Event()
    async with trio.open_nursery() as nursery:
        settings = _settings(lease_seconds)
        await nursery.start(
            partial(consume, db, settings, wakeups.receiver(QUEUE), handler, Metrics(), stop=stop)
        )
        await done.wait()
        stop.set()
        wakeups.wake_all()


async def crash_once(db: Database, lease_seconds: int) -> float:
    await queues.send(db, QUEUE, {"task_id": 0})
    starts: list[float] = []
    done = trio.Event()

    async def handler(msg: Message, lease: Lease) -> None:
        starts.append(trio.current_time())
        if msg.read_ct == 1:
            raise RuntimeError("an unexpected exception (bench)")
        await queues.archive(db, QUEUE, msg.msg_id)
        done.set()

    await _consume_until(db, lease_seconds, handler, done)
    return starts[1] - starts[0]


async def killed_reader(db: Database, lease_seconds: int) -> float:
    await queues.send(db, QUEUE, {"task_id": 0})
    await queues.read(db, QUEUE, lease_seconds, 1)  # the reader that was SIGKILLed
    t0 = trio.current_time()
    done = trio.Event()
    handled_at: list[float] = []

    async def handler(msg: Message, lease: Lease) -> None:
        handled_at.append(trio.current_time())
        await queues.archive(db, QUEUE, msg.msg_id)
        done.set()

    await _consume_until(db, lease_seconds, handler, done)
    return handled_at[0] - t0


async def old_wait(db: Database) -> float:
    await queues.send(db, QUEUE, {"task_id": 0})
    [msg] = await queues.read(db, QUEUE, OLD_VT, 1)
    wait = await queues.seconds_until_next_visible(db, QUEUE)
    await queues.archive(db, QUEUE, msg.msg_id)
    assert wait is not None
    return wait


async def main(args: argparse.Namespace, url: str) -> int:
    lease = Config().database.visibility_timeout_seconds
    async with trio_asyncio.open_loop(), Database.open(url, min_size=1, max_size=4) as db:
        crash = [await crash_once(db, lease) for _ in range(args.n)]
        killed = [await killed_reader(db, args.kill_lease) for _ in range(args.kills)]
        baseline = await old_wait(db)
    print(f"crash_retry: reconnect queue, lease {lease} s (database.visibility_timeout_seconds)")
    rows = [
        ("before (vt 1620 s), crash", f"{baseline:.1f}", "1.00x"),
        (
            f"leases, crash (n={args.n})",
            f"{statistics.median(crash):.2f} (max {max(crash):.2f})",
            f"{statistics.median(crash) / baseline:.5f}x",
        ),
        (
            f"leases, killed reader, lease {args.kill_lease} s (n={args.kills})",
            f"{statistics.median(killed):.2f} (max {max(killed):.2f})",
            f"{statistics.median(killed) / baseline:.5f}x",
        ),
    ]
    print(_common.table(["case", "seconds to next attempt", "vs before"], rows))
    ok = max(crash) < lease and max(killed) <= args.kill_lease + 2
    print("check:", "every retry came within one lease" if ok else "SLOWER THAN A LEASE")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=5, help="crashes to time")
    parser.add_argument("--kills", type=int, default=2, help="killed readers to time")
    parser.add_argument("--kill-lease", type=int, default=5, help="lease of the killed reader")
    args = parser.parse_args()
    _common.quiet()
    # The crashes are deliberate: their tracebacks would only drown the table.
    logging.getLogger("daemon.platform.consumer").setLevel(logging.CRITICAL)
    with _common.throwaway_database() as url:
        sys.exit(trio.run(main, args, url))
