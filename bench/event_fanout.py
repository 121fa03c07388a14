"""What one ``EventBus.publish`` costs the producer, by number of live-stream subscribers.

Each subscriber is a trio task doing what an SSE stream does with an event: render it
(``daemon.platform.http.admin.format_event``) and hand the bytes on (here: counted). The
producer publishes ``--events`` events one at a time and, between two, lets every
subscriber catch up (``trio.testing.wait_all_tasks_blocked``), as between two webhooks.

Two buses, same run, same subscribers:

* **channels** - the bus before defect 22 (kept here as the baseline): one memory
  channel per subscriber, ``publish`` loops over them with ``send_nowait``;
* **ring** - ``daemon.platform.events.EventBus``: one shared ring buffer; a publish wakes
  two parked subscribers, each of which wakes two more.

Printed per subscriber count: the producer's time inside ``publish()`` (median, p99) and
the loop's total work per event until every subscriber has it (publish -> all
blocked again; the fan-out work all subscribers share, rendering included). The last
column is the ring's publish cost relative to its cost at the smallest non-zero count
(with none, nobody is parked and publish wakes no one).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from contextlib import suppress
from typing import Any

import _common
import trio
import trio.testing

from daemon.platform.events import Event, EventBus
from daemon.platform.http.admin import format_event


class ChannelBus:
    """The previous EventBus: one memory channel per subscriber, fanned out in publish."""

    def __init__(self, buffer: int = 256) -> None:
        self._buffer = buffer
        self._subscribers: set[Any] = set()
        self._ids = itertools.count(1)

    def publish(self, kind: str, **data: Any) -> Event:
        event = Event(next(self._ids), kind, time.time(), data)
        for send in list(self._subscribers):
            with suppress(trio.WouldBlock):
                send.send_nowait(event)
        return event

    async def consume(self, delivered: list[int], task_status: trio.TaskStatus[None]) -> None:
        send, receive = trio.open_memory_channel[Event](self._buffer)
        self._subscribers.add(send)
        task_status.started()
        async for event in receive:
            delivered[0] += len(format_event(event))


async def ring_consume(
    bus: EventBus, delivered: list[int], task_status: trio.TaskStatus[None]
) -> None:
    with bus.subscribe() as sub:
        task_status.started()
        async for event in sub:
            delivered[0] += len(event.rendered(format_event))


async def measure(kind: str, subscribers: int, events: int) -> tuple[list[float], list[float]]:
    publish: list[float] = []
    fanout: list[float] = []
    delivered = [0]
    bus: Any = ChannelBus() if kind == "channels" else EventBus(max_subscribers=subscribers + 1)
    async with trio.open_nursery() as nursery:
        for _ in range(subscribers):
            if kind == "channels":
                await nursery.start(bus.consume, delivered)
            else:
                await nursery.start(ring_consume, bus, delivered)
        await trio.testing.wait_all_tasks_blocked()
        for n in range(events):
            t0 = time.perf_counter()
            bus.publish("webhook.received", uuid=f"u-{n}", entity_id=n, outcome="queued")
            t1 = time.perf_counter()
            await trio.testing.wait_all_tasks_blocked()
            t2 = time.perf_counter()
            publish.append(t1 - t0)
            fanout.append(t2 - t0)
        nursery.cancel_scope.cancel()
    return publish, fanout


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f}"


async def bench(args: argparse.Namespace) -> int:
    rows = []
    ring_first = None  # the ring's publish p50 at the smallest non-zero count
    for n in args.subscribers:
        row: list[object] = [n]
        for kind in ("channels", "ring"):
            publish, fanout = await measure(kind, n, args.events)
            p50 = statistics.median(publish)
            row += [us(p50), us(_common.percentile(publish, 99)), us(statistics.median(fanout))]
            if kind == "ring" and n:
                ring_first = ring_first if ring_first is not None else p50
                row.append(_common.ratio(p50, ring_first))
            elif kind == "ring":
                row.append("")
        rows.append(row)
        print(f"  {n} subscribers done", file=sys.stderr, flush=True)
    print()
    print(
        f"event_fanout: {args.events} events per point; times in microseconds; "
        "publish = producer's time in publish(), fan-out = publish -> every subscriber done"
    )
    print()
    print(
        _common.table(
            [
                "subscribers",
                "channels publish p50",
                "p99",
                "fan-out p50",
                "ring publish p50",
                "p99",
                "fan-out p50",
                "ring publish vs first",
            ],
            rows,
        )
    )
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=300)
    p.add_argument(
        "--subscribers",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[0, 10, 100, 400, 800],
    )
    args = p.parse_args()
    return trio.run(bench, args)


if __name__ == "__main__":
    sys.exit(main())
