"""The webhook dispatcher against real receivers on 127.0.0.1 and a real database:
signatures a third-party verifier accepts, the retry schedule at its exact instants,
410, redirects, SSRF refusals, capped answers, and fairness under a hanging endpoint."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
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


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


async def receiver(nursery: trio.Nursery, respond: object = None) -> WebhookReceiver:
    r = WebhookReceiver(respond) if respond else WebhookReceiver()  # type: ignore[arg-type]
    await nursery.start(r.serve)
    return r


def verified(secret: str, r: Received) -> dict[str, object]:
    """What the standardwebhooks package makes of the request (raises if it is bad)."""
    payload: dict[str, object] = Webhook(secret).verify(r.body, r.headers)
    return payload


async def test_deliveries_verify_with_standardwebhooks_and_every_attempt_is_logged(
    db: Database, nursery: trio.Nursery
) -> None:
    rx = await receiver(nursery)
    with trio.fail_after(30):
        async with dispatcher(db) as d:
            ep, secret = await d.endpoint(rx.url(), event_types=["payment.*"])
            _, legacy_secret = await d.endpoint(rx.url("/legacy"), legacy_signature=True)
            event = await d.emit("payment.succeeded", {"id": "pay_1", "amount": 1250})
            await d.emit("sms.sent", {"task_id": 1})  # only the legacy endpoint takes it
            await rx.wait_for(1, "/hook")
            await rx.wait_for(2, "/legacy")
    [r] = [r for r in rx.received if r.path == "/hook"]
    payload = verified(secret, r)
    assert payload["id"] == event.id and payload["type"] == "payment.succeeded"
    assert payload["data"] == {"id": "pay_1", "amount": 1250}
    assert r.headers["webhook-id"] == event.id
    assert "x-webhook-signature" not in r.headers
    for lr in (r for r in rx.received if r.path == "/legacy"):
        verified(legacy_secret, lr)
        expected = hmac.new(legacy_secret.encode(), lr.body, hashlib.sha256).hexdigest()
        assert lr.headers["x-webhook-signature"] == expected
    [delivery] = await deliveries.list_deliveries(db, endpoint_id=ep.id)
    assert delivery.state == "succeeded" and delivery.attempts == 1
    [attempt] = await attempts_of(db, delivery.id)
    assert attempt["status_code"] == 200 and attempt["response_body"] == "ok"
    assert attempt["address"] == f"127.0.0.1:{rx.port}" and attempt["error"] is None


async def test_rotation_signs_with_both_secrets_during_the_overlap_then_only_the_new(
    db: Database, nursery: trio.Nursery
) -> None:
    rx = await receiver(nursery)
    clock = ManualClock()
    with trio.fail_after(30):
        async with dispatcher(db, clock=clock) as d:
            ep, old = await d.endpoint(rx.url())
            async with db.transaction() as tx:
                # The overlap ends 1 h after the database's now (the clock started at it).
                new = await endpoints.rotate_secret(tx, BOX, ep.id, overlap_seconds=3600)
            await d.emit("sms.sent", {"n": 1})
            [during] = await rx.wait_for(1)
            clock.advance(3600 + 5)
            await d.emit("sms.sent", {"n": 2})
            after = (await rx.wait_for(2))[1]
    assert len(during.headers["webhook-signature"].split()) == 2
    verified(old, during)
    verified(new, during)
    assert len(after.headers["webhook-signature"].split()) == 1
    verified(new, after)
    with pytest.raises(Exception, match="signature"):
        verified(old, after)


async def test_four_failures_then_success_lands_on_the_fifth_attempt_at_the_schedule(
    db: Database, nursery: trio.Nursery
) -> None:
    async def fail_four(r: Received) -> Answer:
        return Answer(500, b"down") if len(rx.received) <= 4 else Answer(204, b"")

    rx = await receiver(nursery, fail_four)
    clock = ManualClock()
    t0 = clock.now()
    # rand 0.5 is "no jitter"; a safety poll longer than the schedule, so every sleep
    # the dispatcher takes is until the next attempt.
    async with dispatcher(db, clock=clock, rand=lambda: 0.5, safety_poll_seconds=86400) as d:
        with trio.fail_after(60):
            await d.endpoint(rx.url())
            await d.emit("reconnection.succeeded", {"task_id": 9})
            expected = [t0]
            for delay in (5, 300, 1800, 7200):
                expected.append(expected[-1] + dt.timedelta(seconds=delay))
            for i, due in enumerate(expected):
                await rx.wait_for(i + 1)
                assert clock.now() == due
                if i + 1 < len(expected):
                    # It sleeps exactly until the next scheduled attempt, no earlier.
                    assert await clock.wait_asleep(expected[i + 1]) == expected[i + 1]
                    assert len(rx.received) == i + 1
                    clock.advance_to(expected[i + 1])
            [delivery] = await deliveries.list_deliveries(db)
            await wait_until("succeeded", partial(_state_is, db, delivery.id, "succeeded"))
    log = await attempts_of(db, delivery.id)
    assert [a["status_code"] for a in log] == [500, 500, 500, 500, 204]
    assert [a["attempt"] for a in log] == [1, 2, 3, 4, 5]
    assert [a["started_at"] for a in log] == expected
    done = await deliveries.get(db, delivery.id)
    assert done is not None and done.attempts == 5 and done.next_attempt_at is None
    assert len({r.headers["webhook-id"] for r in rx.received}) == 1  # stable across retries


async def _state_is(db: Database, delivery_id: int, state: str) -> bool:
    d = await deliveries.get(db, delivery_id)
    return d is not None and d.state == state


async def test_410_disables_the_endpoint_and_announces_it(
    db: Database, nursery: trio.Nursery
) -> None:
    rx = await receiver(nursery, lambda r: _answer(410))
    watcher = await receiver(nursery)
    with trio.fail_after(30):
        async with dispatcher(db) as d:
            gone, _ = await d.endpoint(rx.url(), event_types=["sms.*"])
            _, watch_secret = await d.endpoint(watcher.url(), event_types=["endpoint.disabled"])
            await d.emit("sms.sent", {"n": 1})
            await rx.wait_for(1)

            async def disabled() -> bool:
                ep = await endpoints.get(db, gone.id)
                return ep is not None and not ep.enabled

            await wait_until("disabled", disabled)
            await d.fan_out()  # the endpoint.disabled event
            [notice] = await watcher.wait_for(1)
    ep = await endpoints.get(db, gone.id)
    assert ep is not None and ep.disabled_reason == "gone" and ep.disabled_at is not None
    payload = verified(watch_secret, notice)
    assert payload["type"] == "endpoint.disabled"
    assert payload["data"]["endpoint_id"] == gone.id  # type: ignore[index]
    [delivery] = await deliveries.list_deliveries(db, endpoint_id=gone.id)
    assert delivery.state == "failed" and delivery.attempts == 1
    assert len(rx.received) == 1


async def _answer(status: int, **kw: object) -> Answer:
    return Answer(status, **kw)  # type: ignore[arg-type]


async def test_a_redirect_is_a_failure_and_is_not_followed(
    db: Database, nursery: trio.Nursery
) -> None:
    async def redirect(r: Received) -> Answer:
        return Answer(307, b"", [("location", rx.url("/elsewhere"))])

    rx = await receiver(nursery, redirect)
    with trio.fail_after(30):
        async with dispatcher(db) as d:
            await d.endpoint(rx.url())
            await d.emit("sms.sent", {})

            async def logged() -> bool:
                return len(await attempts_of(db)) == 1

            await wait_until("attempt logged", logged)
    [attempt] = await attempts_of(db)
    assert attempt["status_code"] == 307 and attempt["error"] == "HTTP 307"
    [delivery] = await deliveries.list_deliveries(db)
    assert delivery.state == "pending" and delivery.attempts == 1  # a retry is scheduled
    assert [r.path for r in rx.received] == ["/hook"]


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_a_target_resolving_to_a_private_address_is_refused(
    db: Database, nursery: trio.Nursery, host: str
) -> None:
    rx = await receiver(nursery)
    with trio.fail_after(30):
        # The defaults: no private targets.
        async with dispatcher(db, allowed_cidrs=()) as d:
            await d.endpoint(rx.url(host=host))
            await d.emit("sms.sent", {})

            async def logged() -> bool:
                return len(await attempts_of(db)) == 1

            await wait_until("attempt logged", logged)
    [attempt] = await attempts_of(db)
    assert attempt["status_code"] is None and attempt["address"] is None
    assert attempt["error"].startswith("refused: ") and "not a public address" in attempt["error"]
    assert rx.received == []


async def test_an_answer_with_nul_bytes_and_bad_utf8_is_logged_readably(
    db: Database, nursery: trio.Nursery
) -> None:
    rx = await receiver(nursery, lambda r: _answer(500, body=b"a\x00b\xffc"))
    with trio.fail_after(30):
        async with dispatcher(db) as d:
            await d.endpoint(rx.url())
            await d.emit("sms.sent", {})

            async def logged() -> bool:
                return len(await attempts_of(db)) == 1

            await wait_until("attempt logged", logged)
    [attempt] = await attempts_of(db)
    assert attempt["status_code"] == 500 and attempt["response_body"] == "a\ufffdb\ufffdc"


async def test_the_logged_answer_is_capped_at_64_kb(db: Database, nursery: trio.Nursery) -> None:
    rx = await receiver(nursery, lambda r: _answer(200, body=b"x" * 200_000))
    with trio.fail_after(30):
        async with dispatcher(db) as d:
            await d.endpoint(rx.url())
            await d.emit("sms.sent", {})

            async def logged() -> bool:
                return len(await attempts_of(db)) == 1

            await wait_until("attempt logged", logged)
    [attempt] = await attempts_of(db)
    assert attempt["status_code"] == 200 and attempt["response_truncated"]
    assert len(attempt["response_body"]) == 64 * 1024


async def test_a_hanging_endpoint_does_not_delay_a_healthy_one(
    db: Database, nursery: trio.Nursery
) -> None:
    async def hang(r: Received) -> Answer:
        await trio.sleep_forever()
        raise AssertionError

    stuck = await receiver(nursery, hang)
    healthy = await receiver(nursery)
    # A long exchange deadline: every hanging exchange is still open when the test ends.
    async with dispatcher(db, timeout_seconds=60, lease_seconds=120) as d:
        good, secret = await d.endpoint(healthy.url())
        bad, _ = await d.endpoint(stuck.url())
        async with db.transaction() as tx:
            for i in range(100):
                await outbox.emit(tx, "payment.succeeded", {"n": i})
        await d.fan_out()
        with trio.fail_after(50):
            got = await healthy.wait_for(100)
        # The hanging endpoint holds its own slots (4) and nothing else.
        assert len(stuck.received) == 4
        assert sorted(json.loads(r.body)["data"]["n"] for r in got) == list(range(100))
        for r in got:
            verified(secret, r)

        async def all_recorded() -> bool:
            done = await deliveries.list_deliveries(db, endpoint_id=good.id, limit=200)
            return all(x.state == "succeeded" for x in done)

        await wait_until("outcomes written", all_recorded)
        pending = await deliveries.list_deliveries(db, state="pending", limit=200)
        assert {x.endpoint_id for x in pending} == {bad.id} and len(pending) == 100


async def test_many_hanging_endpoints_with_backlogs_do_not_starve_a_healthy_one(
    db: Database, nursery: trio.Nursery
) -> None:
    """20 endpoints that accept and never answer, each with an older backlog than the
    healthy endpoint's events, against 8 slots: without the failing endpoints' cap their
    backlogs (the oldest due rows) would take every freed slot for minutes."""

    async def hang(r: Received) -> Answer:
        await trio.sleep_forever()
        raise AssertionError

    stuck = await receiver(nursery, hang)
    healthy = await receiver(nursery)
    async with dispatcher(db, max_in_flight=8, timeout_seconds=0.5, lease_seconds=6) as d:
        for i in range(20):
            await d.endpoint(stuck.url(f"/dead{i}"), event_types=["sms.sent"])
        async with db.transaction() as tx:
            for i in range(50):  # 1000 deliveries: 62 s of timeouts at 8 at a time
                await outbox.emit(tx, "sms.sent", {"n": i})
        await d.fan_out()
        await stuck.wait_for(8)  # every slot is hanging now
        _, secret = await d.endpoint(healthy.url(), event_types=["payment.*"])
        async with db.transaction() as tx:
            for i in range(30):
                await outbox.emit(tx, "payment.succeeded", {"n": i})
        await d.fan_out()
        with trio.fail_after(40):
            got = await healthy.wait_for(30)
    assert sorted(json.loads(r.body)["data"]["n"] for r in got) == list(range(30))
    for r in got:
        verified(secret, r)
    # The dead endpoints were still tried (confined, not starved in turn).
    assert len({r.path for r in stuck.received}) > 2


async def test_a_trickled_answer_is_cut_at_the_exchange_deadline(
    db: Database, nursery: trio.Nursery
) -> None:
    rx = await receiver(nursery, lambda r: _answer(200, body=b"x" * 1000, trickle_seconds=0.1))
    with trio.fail_after(30):
        async with dispatcher(db, timeout_seconds=1.0, lease_seconds=10) as d:
            await d.endpoint(rx.url())
            await d.emit("sms.sent", {})

            async def logged() -> bool:
                return len(await attempts_of(db)) == 1

            await wait_until("attempt logged", logged)
    [attempt] = await attempts_of(db)
    # The receiver said 200: delivered; what it trickled afterwards is cut off.
    assert attempt["status_code"] == 200 and attempt["response_truncated"]
    assert attempt["error"] == "answer body not complete within 1 s"
    assert 0 < len(attempt["response_body"]) < 1000
    assert 1000 <= attempt["duration_ms"] < 5000
    [delivery] = await deliveries.list_deliveries(db)
    assert delivery.state == "succeeded"


async def test_a_receivers_cookie_is_not_sent_back(db: Database, nursery: trio.Nursery) -> None:
    rx = await receiver(nursery, lambda r: _answer(200, headers=[("set-cookie", "s=1; Path=/")]))
    with trio.fail_after(30):
        async with dispatcher(db) as d:
            await d.endpoint(rx.url())
            await d.emit("sms.sent", {})
            await rx.wait_for(1)
            await d.emit("sms.sent", {})
            await rx.wait_for(2)
    assert all("cookie" not in r.headers for r in rx.received)
