"""With Twilio, a send whose outcome is unknown is looked up before it is retried, so the
customer never gets it twice. Real PostgreSQL, the fake Twilio over real HTTP. (The same
with a real SIGKILL of the daemon: tests/test_sms_kill.py.)"""

from __future__ import annotations

import trio

from daemon.notifications.delivery import SmsDeps
from daemon.platform.db import Database
from tests.sms_fixtures import (  # noqa: F401
    Fakes,
    close,
    deliver,
    fakes_fixture,
    labsmobile,
    make_deps,
    next_visible,
    queue_sms,
    row,
    skip_wait,
    timeline,
    twilio,
)


async def make_visible(db: Database) -> None:
    await db.execute("UPDATE pgmq.q_sms SET vt = now()")


async def age_attempt(db: Database, sms_id: int, seconds: float) -> None:
    """As if ``seconds`` had passed since the last attempt began."""
    await db.execute(
        "UPDATE sms_messages SET updated_at = updated_at - make_interval(secs => $2),"
        " attempt_started_at = attempt_started_at - make_interval(secs => $2) WHERE id = $1",
        sms_id,
        seconds,
    )


async def crash_mid_send(deps: SmsDeps, fakes: Fakes, *, accepted: bool) -> None:
    """Run the handler until Twilio has the request, then cut it off as a crash would:
    nothing after the 'sending' mark is committed. ``accepted``: Twilio kept the message."""
    if not accepted:
        # The request hangs before Twilio keeps it (and would end in a 503, never accepted).
        fakes.twilio.fail_next(1, delay=30.0, status=503)
    hold = fakes.twilio.hold = trio.Event()
    seen, kept = len(fakes.twilio.requests), len(fakes.twilio.messages)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(deliver, deps)
        while len(fakes.twilio.requests) == seen:  # noqa: ASYNC110 - another task's progress
            await trio.sleep(0.01)
        if accepted:
            await fakes.twilio.wait_messages(kept + 1)
        nursery.cancel_scope.cancel()
    fakes.twilio.hold = None
    hold.set()


def posts(fakes: Fakes) -> int:
    return sum(1 for method, _ in fakes.twilio.requests if method == "POST")


async def test_a_crash_after_twilio_accepted_is_found_and_not_sent_again(
    db: Database, fakes: Fakes
) -> None:
    deps = make_deps(db, twilio(fakes), lookup_settle_seconds=5.0)
    with trio.fail_after(30), deps.events.subscribe() as live:
        sms_id = await queue_sms(db)
        await crash_mid_send(deps, fakes, accepted=True)
        left = await row(db, sms_id)
        assert (left["state"], left["unconfirmed"], left["provider"]) == ("sending", True, "twilio")
        await age_attempt(db, sms_id, 10)  # the lease lapsed, the daemon is back
        await make_visible(db)
        await deliver(deps)
        sms = await row(db, sms_id)
        assert await next_visible(deps) is None
        event = live.receive_nowait()
        kinds = await timeline(db, sms_id)
        await close(deps)
    [accepted] = fakes.twilio.messages
    assert posts(fakes) == 1
    assert (sms["state"], sms["provider_ref"], sms["attempts"]) == ("sent", accepted["sid"], 1)
    assert sms["unconfirmed"] is False
    assert kinds == ["sms_found", "sms_sent"]
    assert event.kind == "sms.sent" and event.data["recovered"] is True


async def test_a_crash_before_twilio_accepted_sends_it_once(db: Database, fakes: Fakes) -> None:
    deps = make_deps(db, twilio(fakes), lookup_settle_seconds=5.0)
    with trio.fail_after(30):
        sms_id = await queue_sms(db)
        await crash_mid_send(deps, fakes, accepted=False)
        assert fakes.twilio.messages == []
        await age_attempt(db, sms_id, 10)  # older than the settle time: the list is final
        await make_visible(db)
        await deliver(deps)
        sms = await row(db, sms_id)
        kinds = await timeline(db, sms_id)
        await close(deps)
    [sent] = fakes.twilio.messages
    assert (sms["state"], sms["provider_ref"], sms["attempts"]) == ("sent", sent["sid"], 2)
    assert kinds == ["sms_not_found", "sms_sent"]


async def test_an_answer_lost_after_acceptance_is_looked_up_not_resent(
    db: Database, fakes: Fakes
) -> None:
    """Not only a crash: a read timeout after Twilio kept the message is the same unknown."""
    deps = make_deps(db, twilio(fakes))
    fakes.twilio.fail_next(1, delay=4.0, after_accept=True)  # the client gives up after 2 s
    with trio.fail_after(30):
        sms_id = await queue_sms(db)
        msg = await deliver(deps)
        assert msg is not None
        retry = await row(db, sms_id)
        await skip_wait(deps, msg)
        await deliver(deps)
        sms = await row(db, sms_id)
        await close(deps)
    assert (retry["state"], retry["unconfirmed"]) == ("queued", True)
    [accepted] = fakes.twilio.messages
    assert posts(fakes) == 1
    assert (sms["state"], sms["provider_ref"]) == ("sent", accepted["sid"])


async def test_a_lagging_message_list_defers_instead_of_resending(
    db: Database, fakes: Fakes
) -> None:
    deps = make_deps(db, twilio(fakes), lookup_settle_seconds=30.0)
    fakes.twilio.list_lag = 3600.0  # accepted, but not in the list yet
    with trio.fail_after(30):
        sms_id = await queue_sms(db)
        await crash_mid_send(deps, fakes, accepted=True)
        await age_attempt(db, sms_id, 10)  # past the in-flight window, not the settle time
        await make_visible(db)
        await deliver(deps)
        waiting = await row(db, sms_id)
        wait = await next_visible(deps)
        fakes.twilio.list_lag = 0.0  # the list catches up
        await make_visible(db)
        await deliver(deps)
        sms = await row(db, sms_id)
        await close(deps)
    assert waiting["state"] == "sending" and posts(fakes) == 1
    assert wait is not None and 15 < wait <= 22  # until the attempt is 30 s old (+1)
    assert (sms["state"], sms["provider_ref"]) == ("sent", fakes.twilio.messages[0]["sid"])


async def test_a_failing_lookup_waits_and_never_guesses(db: Database, fakes: Fakes) -> None:
    deps = make_deps(db, twilio(fakes), labsmobile(fakes))
    with trio.fail_after(30):
        sms_id = await queue_sms(db)
        await crash_mid_send(deps, fakes, accepted=True)
        await age_attempt(db, sms_id, 10)
        fakes.twilio.fail_next(1, status=503, on="list")
        await make_visible(db)
        await deliver(deps)
        waiting = await row(db, sms_id)
        wait = await next_visible(deps)
        await make_visible(db)
        await deliver(deps)
        sms = await row(db, sms_id)
        await close(deps)
    assert (waiting["state"], waiting["unconfirmed"]) == ("queued", True)
    assert "cannot tell whether attempt 1 was accepted" in waiting["last_error"]
    assert wait is not None and wait >= 25
    # Neither provider was asked to send again while Twilio could not answer.
    assert posts(fakes) == 1 and fakes.sink.requests == []
    assert (sms["state"], sms["provider"]) == ("sent", "twilio")


async def test_a_message_another_sms_claims_is_not_taken_for_this_one(
    db: Database, fakes: Fakes
) -> None:
    """Two reconnections of one customer, same text: the first was sent and recorded; the
    second crashed before Twilio got it. Twilio's list shows one matching message, but it
    is the first SMS's, so the second is sent: two SMS, two messages."""
    deps = make_deps(db, twilio(fakes), lookup_settle_seconds=5.0)
    with trio.fail_after(30):
        first = await queue_sms(db, service=1)
        await deliver(deps)
        second = await queue_sms(db, service=2)
        await crash_mid_send(deps, fakes, accepted=False)
        await age_attempt(db, second, 10)
        await make_visible(db)
        await deliver(deps)
        rows = [await row(db, first), await row(db, second)]
        await close(deps)
    assert [r["state"] for r in rows] == ["sent", "sent"]
    assert {r["provider_ref"] for r in rows} == {m["sid"] for m in fakes.twilio.messages}
    assert len(fakes.twilio.messages) == 2


async def test_an_accepted_last_attempt_is_sent_not_given_up(db: Database, fakes: Fakes) -> None:
    deps = make_deps(db, twilio(fakes), max_attempts=1)
    with trio.fail_after(30):
        sms_id = await queue_sms(db)
        await crash_mid_send(deps, fakes, accepted=True)
        await age_attempt(db, sms_id, 10)
        await make_visible(db)
        await deliver(deps)
        sms = await row(db, sms_id)
        await close(deps)
    assert (sms["state"], sms["attempts"]) == ("sent", 1)
    assert posts(fakes) == 1


async def test_a_last_attempt_whose_answer_was_lost_is_looked_up_not_called_failed(
    db: Database, fakes: Fakes
) -> None:
    """The last allowed attempt times out after Twilio kept the message: the customer has
    it, so the row must end 'sent' (after a lookup), not 'failed' with an alert."""
    deps = make_deps(db, twilio(fakes), max_attempts=1)
    fakes.twilio.fail_next(1, delay=4.0, after_accept=True)  # the client gives up after 2 s
    with trio.fail_after(30):
        sms_id = await queue_sms(db)
        msg = await deliver(deps)
        assert msg is not None
        waiting = await row(db, sms_id)
        await age_attempt(db, sms_id, 10)  # past the settle time
        await skip_wait(deps, msg)
        await deliver(deps)
        sms = await row(db, sms_id)
        await close(deps)
    assert (waiting["state"], waiting["unconfirmed"]) == ("queued", True)
    [accepted] = fakes.twilio.messages
    assert (sms["state"], sms["provider_ref"], sms["attempts"]) == ("sent", accepted["sid"], 1)
    assert posts(fakes) == 1


async def test_a_last_attempt_twilio_never_got_fails_once_the_list_says_so(
    db: Database, fakes: Fakes
) -> None:
    deps = make_deps(db, twilio(fakes), max_attempts=1)
    fakes.twilio.fail_next(1, delay=4.0, status=503)  # no answer in time, nothing kept
    with trio.fail_after(30):
        sms_id = await queue_sms(db)
        msg = await deliver(deps)
        assert msg is not None
        await age_attempt(db, sms_id, 10)
        await skip_wait(deps, msg)
        await deliver(deps)
        sms = await row(db, sms_id)
        await close(deps)
    assert fakes.twilio.messages == [] and posts(fakes) == 1
    assert (sms["state"], sms["attempts"]) == ("failed", 1)
    assert "gave up after 1" in sms["last_error"]
    assert await next_visible(deps) is None
