"""The live event bus: publishing never waits for subscribers, and they are capped."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from daemon.platform.deps import Deps
from daemon.platform.events import EventBus, TooManySubscribers
from tests.http_fixtures import ADMIN, assert_problem, deps_fixture, serving  # noqa: F401


async def test_a_slow_subscriber_skips_ahead_and_is_told_how_many_it_missed() -> None:
    bus = EventBus(ring_size=8)
    with trio.fail_after(5), bus.subscribe() as fast, bus.subscribe() as slow:
        seen_fast = []
        for n in range(20):
            bus.publish("sms.sent", n=n)
            seen_fast.append((await fast.receive()).data["n"])
        assert seen_fast == list(range(20))
        # The slow one read nothing meanwhile: the bus kept only the last 8 for it.
        dropped = await slow.receive()
        assert (dropped.kind, dropped.data) == ("dropped", {"count": 12})
        assert [(await slow.receive()).data["n"] for _ in range(8)] == list(range(12, 20))
        with pytest.raises(trio.WouldBlock):
            slow.receive_nowait()
        assert slow.missed == 12 and fast.missed == 0


async def test_every_parked_subscriber_wakes_for_each_publish() -> None:
    bus = EventBus()
    got: dict[int, list[int]] = {}

    async def listen(n: int, task_status: trio.TaskStatus[None]) -> None:
        with bus.subscribe() as sub:
            task_status.started()
            got[n] = [(await sub.receive()).id for _ in range(3)]

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for n in range(50):
                await nursery.start(listen, n)
            published = []
            for _ in range(3):
                # Everyone parked again: each publish must reach all of them (the wake-up
                # is passed on subscriber to subscriber, not by the producer).
                await trio.testing.wait_all_tasks_blocked()
                published.append(bus.publish("task.queued").id)
    assert got == {n: published for n in range(50)}
    assert bus.subscriber_count == 0


def test_subscribers_are_capped() -> None:
    bus = EventBus(max_subscribers=2)
    with bus.subscribe(), bus.subscribe():
        assert bus.full
        with pytest.raises(TooManySubscribers), bus.subscribe():
            pass
    with bus.subscribe():  # slots come back when subscribers leave
        assert bus.subscriber_count == 1


async def test_the_event_stream_answers_503_when_every_slot_is_taken(deps: Deps) -> None:
    deps.events = EventBus(max_subscribers=1)
    with trio.fail_after(20), deps.events.subscribe():
        async with serving(deps) as client:
            response = await client.get("/api/v1/events", headers=ADMIN)
        assert_problem(response, 503)
