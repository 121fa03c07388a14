"""Retry decisions written to the database: leases across a crash, Retry-After and
slow-downs, an endpoint failing for too long, callbacks, rate limits."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import AsyncIterator
from functools import partial

import pytest
import trio
from standardwebhooks import Webhook

from daemon.fakes.webhook_receiver import Answer, Received, WebhookReceiver
from daemon.platform import outbox
from daemon.platform.db import Database
from daemon.webhooks import deliveries, endpoints
from tests.webhook_harness import BOX, ManualClock, attempts_of, dispatcher, wait_until

NO_JITTER = 0.5


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


async def _receiver(nursery: trio.Nursery, respond: object) -> WebhookReceiver:
    r = WebhookReceiver(respond)  # type: ignore[arg-type]
    await nursery.start(r.serve)
    return r


async def _attempts(db: Database, n: int) -> bool:
    return len(await attempts_of(db)) >= n


async def test_a_claimed_delivery_is_held_for_its_lease_then_claimed_again(db: Database) -> None:
    async with db.transaction() as tx:
        ep, _ = await endpoints.create(tx, BOX, url="https://partner.example/hook")
        event = await outbox.emit(tx, "sms.sent", {})
    t0 = dt.datetime.now(dt.UTC)
    async with db.transaction() as tx:
        await deliveries.fan_out(tx, event.id, event.type, t0)
    claim = partial(
        deliveries.claim,
        db,
        limit=10,
        lease_seconds=60,
        default_concurrency=4,
        held={},
        failing_share=5,
    )
    [first] = await claim(t0)
    assert first.attempt == 1 and first.endpoint_id == ep.id
    # The dispatcher that held it "crashed": nobody gets it before the lease ends ...
    assert await claim(t0 + dt.timedelta(seconds=59)) == []
    assert await deliveries.next_due(db, t0) == first.leased_until
    # ... then it is due again, as the same attempt (none was recorded).
    [again] = await claim(t0 + dt.timedelta(seconds=60))
    assert again.id == first.id and again.attempt == 1
    # The first holder's late outcome no longer counts.
    record = deliveries.AttemptRecord(t0, 5, first.url, None, 200, None, "", False)
    async with db.transaction() as tx:
        assert not await deliveries.finish(
            tx, first, record, state="succeeded", next_attempt_at=None
        )
        assert await deliveries.finish(tx, again, record, state="succeeded", next_attempt_at=None)
    assert len(await attempts_of(db)) == 2


async def test_per_target_concurrency_is_respected_by_the_claim(db: Database) -> None:
    async with db.transaction() as tx:
        await endpoints.create(tx, BOX, url="https://a.example/", max_concurrency=2)
        await endpoints.create(tx, BOX, url="https://b.example/")
        for _ in range(5):
            event = await outbox.emit(tx, "sms.sent", {})
            await deliveries.fan_out(tx, event.id, event.type, dt.datetime.now(dt.UTC))
    now = dt.datetime.now(dt.UTC)
    got = await deliveries.claim(
        db, now, limit=100, lease_seconds=60, default_concurrency=3, held={}, failing_share=5
    )
    by_url = sorted(c.url for c in got)
    assert by_url == ["https://a.example/"] * 2 + ["https://b.example/"] * 3
    # Held elsewhere (another instance's leases count too): nothing more for now.
    assert (
        await deliveries.claim(
            db, now, limit=100, lease_seconds=60, default_concurrency=3, held={}, failing_share=5
        )
        == []
    )


async def test_failing_endpoints_get_one_slot_each_and_a_shared_cap(db: Database) -> None:
    now = dt.datetime.now(dt.UTC)
    async with db.transaction() as tx:
        failing = [
            (await endpoints.create(tx, BOX, url=f"https://dead{i}.example/"))[0] for i in range(4)
        ]
        # Their backlogs are the oldest due rows; the healthy endpoint's come after.
        for _ in range(3):
            event = await outbox.emit(tx, "sms.sent", {})
            await deliveries.fan_out(tx, event.id, event.type, now - dt.timedelta(seconds=60))
        for ep in failing:
            await endpoints.record_outcome(tx, ep.id, ok=False, at=now)
        healthy, _ = await endpoints.create(tx, BOX, url="https://ok.example/")
        for _ in range(3):
            event = await outbox.emit(tx, "sms.sent", {})
            await deliveries.fan_out(tx, event.id, event.type, now)
    claim = partial(
        deliveries.claim, db, limit=100, lease_seconds=60, default_concurrency=3, failing_share=3
    )
    # One failing endpoint already holds one lease in this process.
    got = await claim(now, held={failing[0].id: 1})
    by_target = Counter(c.endpoint_id for c in got)
    # Healthy: its own concurrency. Failing: one each, two more in all (3 minus 1 held),
    # and none for the one already sending.
    assert by_target.pop(healthy.id) == 3
    assert sum(by_target.values()) == 2 and set(by_target.values()) == {1}
    assert failing[0].id not in by_target
    # Their leases count (any instance's): the share is used up, nothing more for them.
    assert await claim(now, held={failing[0].id: 1}) == []


async def test_retry_after_and_429_set_the_next_attempt_time(
    db: Database, nursery: trio.Nursery
) -> None:
    answers = iter([Answer(503, b"", [("retry-after", "120")]), Answer(429, b"")])

    async def respond(r: Received) -> Answer:
        return next(answers)

    rx = await _receiver(nursery, respond)
    clock = ManualClock()
    t0 = clock.now()
    async with dispatcher(db, clock=clock, rand=lambda: NO_JITTER) as d:
        with trio.fail_after(30):
            await d.endpoint(rx.url())
            await d.emit("sms.sent", {})
            await wait_until("first attempt", partial(_attempts, db, 1))
            [first] = await deliveries.list_deliveries(db)
            await wait_until("rescheduled", partial(_next_at, db, first.id, t0 + _s(120)))
            clock.advance_to(t0 + _s(120))
            await wait_until("second attempt", partial(_attempts, db, 2))
            # 429: the schedule says 5 min; at least 60 s anyway — here the schedule wins.
            await wait_until("rescheduled", partial(_next_at, db, first.id, t0 + _s(420)))
    assert [a["status_code"] for a in await attempts_of(db)] == [503, 429]


def _s(seconds: float) -> dt.timedelta:
    return dt.timedelta(seconds=seconds)


async def _next_at(db: Database, delivery_id: int, when: dt.datetime) -> bool:
    d = await deliveries.get(db, delivery_id)
    return d is not None and d.next_attempt_at == when


async def test_a_timeout_waits_at_least_the_slow_down(db: Database, nursery: trio.Nursery) -> None:
    async def hang(r: Received) -> Answer:
        await trio.sleep_forever()
        raise AssertionError

    rx = await _receiver(nursery, hang)
    clock = ManualClock()
    t0 = clock.now()
    async with dispatcher(
        db, clock=clock, rand=lambda: NO_JITTER, timeout_seconds=0.5, lease_seconds=10
    ) as d:
        with trio.fail_after(30):
            await d.endpoint(rx.url())
            await d.emit("sms.sent", {})
            await wait_until("attempt", partial(_attempts, db, 1))
    [attempt] = await attempts_of(db)
    assert attempt["status_code"] is None and attempt["error"].startswith("timeout")
    [d1] = await deliveries.list_deliveries(db)
    assert d1.state == "pending" and d1.next_attempt_at == t0 + _s(60)  # not the scheduled 5 s


async def test_an_endpoint_failing_for_the_configured_period_is_disabled_and_announced(
    db: Database, nursery: trio.Nursery
) -> None:
    rx = await _receiver(nursery, lambda r: _fail())
    clock = ManualClock()
    t0 = clock.now()
    async with dispatcher(
        db,
        clock=clock,
        rand=lambda: NO_JITTER,
        retry_schedule_seconds=(0, 5, 7200, 7200),
        disable_after_seconds=3600,
        safety_poll_seconds=86400,
    ) as d:
        with trio.fail_after(30):
            ep, _ = await d.endpoint(rx.url())
            await d.emit("sms.sent", {})
            for n, at in ((1, t0), (2, t0 + _s(5)), (3, t0 + _s(7205))):
                clock.advance_to(at)
                await wait_until(f"attempt {n}", partial(_attempts, db, n))
            await wait_until("disabled", partial(_disabled, db, ep.id))
    got = await endpoints.get(db, ep.id)
    assert got is not None and got.disabled_reason == "failing"
    assert got.failing_since == t0
    [notice] = await db.fetch("SELECT data FROM events WHERE type = 'endpoint.disabled'")
    assert notice["data"]["endpoint_id"] == ep.id and notice["data"]["reason"] == "failing"
    [dead] = await deliveries.list_deliveries(db, endpoint_id=ep.id)
    assert dead.state == "failed"  # no fourth attempt
    assert len(rx.received) == 3


async def _fail() -> Answer:
    return Answer(500, b"no")


async def _disabled(db: Database, endpoint_id: str) -> bool:
    ep = await endpoints.get(db, endpoint_id)
    return ep is not None and not ep.enabled


async def test_a_status_callback_is_delivered_signed_with_the_callback_secret(
    db: Database, nursery: trio.Nursery
) -> None:
    rx = await _receiver(nursery, lambda r: _ok())
    async with dispatcher(db) as d:
        with trio.fail_after(30):
            async with db.transaction() as tx:
                event = await outbox.emit(tx, "payment.succeeded", {"id": "pay_9"})
                await deliveries.add_callback(tx, event.id, rx.url("/cb"))
            await d.fan_out()  # no endpoint matches; the callback is due anyway
            [r] = await rx.wait_for(1)
    [secret] = await endpoints.active_secrets(db, BOX, None)
    payload = Webhook(secret).verify(r.body, r.headers)
    assert payload["id"] == event.id and payload["data"] == {"id": "pay_9"}
    await wait_until("recorded", partial(_attempts, db, 1))
    [cb] = await deliveries.list_deliveries(db)
    assert cb.target_url == rx.url("/cb") and cb.endpoint_id is None


async def _ok() -> Answer:
    return Answer(200, b"")


async def test_a_rate_limited_endpoint_gets_its_backlog_spread_out(
    db: Database, nursery: trio.Nursery
) -> None:
    rx = await _receiver(nursery, lambda r: _ok())
    clock = ManualClock()
    t0 = clock.now()
    async with dispatcher(db, clock=clock) as d:
        with trio.fail_after(30):
            await d.endpoint(rx.url(), rate_limit_per_second=1)
            for _ in range(3):
                await d.emit("sms.sent", {})
            await rx.wait_for(1)

            async def deferred() -> bool:
                rows = await deliveries.list_deliveries(db, state="pending")
                return len(rows) == 2 and all(
                    r.next_attempt_at is not None and r.next_attempt_at > t0 and r.attempts == 0
                    for r in rows
                )

            await wait_until("two deferred", deferred)
            assert len(rx.received) == 1
            clock.advance(1)
            await rx.wait_for(2)
            clock.advance(1)
            await rx.wait_for(3)


async def test_an_operator_retry_wakes_the_dispatcher_through_the_outbox_queue(
    db: Database, nursery: trio.Nursery
) -> None:
    answers = iter([Answer(500, b""), Answer(200, b"")])

    async def respond(r: Received) -> Answer:
        return next(answers)

    rx = await _receiver(nursery, respond)
    clock = ManualClock()
    async with dispatcher(
        db, clock=clock, retry_schedule_seconds=(0,), safety_poll_seconds=86400
    ) as d:
        with trio.fail_after(30):
            await d.endpoint(rx.url())
            await d.emit("sms.sent", {})
            await wait_until("failed for good", partial(_all_in, db, "failed"))
            [failed] = await deliveries.list_deliveries(db)
            # An operator's retry is "now" by the database's clock; the dispatcher's is
            # moved just past it, which alone wakes nothing (it sleeps a day).
            clock.advance_to(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5))
            async with db.transaction() as tx:
                await deliveries.retry_now(tx, failed.id)
            # What the fan-out consumer does with the nudge (in the daemon: woken by the
            # listener on the queue insert); the clock has not moved.
            await d.fan_out()
            await rx.wait_for(2)
            await wait_until("succeeded", partial(_all_in, db, "succeeded"))
    assert [a["status_code"] for a in await attempts_of(db)] == [500, 200]


async def _all_in(db: Database, state: str) -> bool:
    rows = await deliveries.list_deliveries(db)
    return bool(rows) and all(r.state == state for r in rows)


async def test_a_test_ping_goes_to_the_one_endpoint_asked(
    db: Database, nursery: trio.Nursery
) -> None:
    rx = await _receiver(nursery, lambda r: _ok())
    async with dispatcher(db) as d:
        with trio.fail_after(30):
            target, secret = await d.endpoint(rx.url("/asked"))
            await d.endpoint(rx.url("/other"))  # takes "*", yet gets no ping
            async with db.transaction() as tx:
                event, _ = await deliveries.send_test(tx, target.id)
            await d.fan_out()
            [ping] = await rx.wait_for(1)
            await wait_until("recorded", partial(_all_in, db, "succeeded"))
    assert ping.path == "/asked"
    payload = Webhook(secret).verify(ping.body, ping.headers)
    assert payload["type"] == "webhook.test" and payload["id"] == event.id
    assert len(await deliveries.list_deliveries(db)) == 1
    async with db.transaction() as tx:
        await endpoints.update(tx, target.id, enabled=False)
        with pytest.raises(deliveries.EndpointDisabled):
            await deliveries.send_test(tx, target.id)


@pytest.mark.parametrize("status", [204, 500])
async def test_an_endpoint_removed_mid_exchange_ends_it_quietly(
    db: Database, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    # The operator deleted it (its deliveries with it) while a request was out: the
    # outcome has nothing left to write to, which is not a crash.
    release = trio.Event()

    async def held(r: Received) -> Answer:
        await release.wait()
        return Answer(status)

    rx = await _receiver(nursery, held)
    other = await _receiver(nursery, lambda r: _ok())
    async with dispatcher(db) as d:
        with trio.fail_after(30):
            ep, _ = await d.endpoint(rx.url(), event_types=["sms.sent"])
            await d.endpoint(other.url(), event_types=["sms.failed"])
            await d.emit("sms.sent", {})
            await rx.wait_for(1)
            assert await endpoints.delete(db, ep.id)
            release.set()
            await d.emit("sms.failed", {})  # the dispatcher carries on
            await other.wait_for(1)
            await wait_until("recorded", partial(_attempts, db, 1))
    crashes = [r for r in caplog.records if r.levelname == "ERROR"]
    assert crashes == []
    assert await db.fetchval("SELECT count(*) FROM webhook_deliveries") == 1
