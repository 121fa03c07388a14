"""A second SMS provider: the SMS goes out through the fallback when the primary keeps
failing transiently, once, and its row says which provider accepted it. Real PostgreSQL,
both fakes over real HTTP."""

from __future__ import annotations

import pytest
import trio

from daemon.notifications import providers
from daemon.notifications.sms import LabsMobile
from daemon.platform.config import ConfigError, from_mapping
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


async def test_labsmobile_down_the_sms_goes_out_through_twilio_once(
    db: Database, fakes: Fakes
) -> None:
    deps = make_deps(db, labsmobile(fakes), twilio(fakes), fallback_after=2)
    fakes.sink.fail_next(100, status=503)  # LabsMobile is down for the rest of the test
    waits = []
    with trio.fail_after(20):
        sms_id = await queue_sms(db, body="Tu servicio vuelve a estar activo")
        for _ in range(3):
            msg = await deliver(deps)
            assert msg is not None
            waits.append(await next_visible(deps))
            await skip_wait(deps, msg)
        sms = await row(db, sms_id)
        kinds = await timeline(db, sms_id)
        await close(deps)
    [sent] = fakes.twilio.messages
    assert sms["state"] == "sent" and sms["attempts"] == 3
    assert (sms["provider"], sms["provider_ref"]) == ("twilio", sent["sid"])
    assert (sent["to"], sent["body"]) == ("+34600111222", "Tu servicio vuelve a estar activo")
    assert fakes.sink.messages == [] and len(fakes.sink.requests) == 2
    # The first retry waits the backoff; past the threshold the fallback is tried at once.
    assert waits[0] is not None and 25 < waits[0] <= 30
    assert waits[1] is not None and waits[1] <= 1.0
    assert waits[2] is None  # archived
    assert kinds == ["sms_retry", "sms_retry", "sms_sent"]


async def test_twilio_as_primary_and_labsmobile_as_fallback(db: Database, fakes: Fakes) -> None:
    deps = make_deps(db, twilio(fakes), labsmobile(fakes), fallback_after=1)
    fakes.twilio.fail_next(1, status=429, code=20429)
    with trio.fail_after(20):
        sms_id = await queue_sms(db)
        msg = await deliver(deps)
        assert msg is not None
        await skip_wait(deps, msg)
        await deliver(deps)
        sms = await row(db, sms_id)
        await close(deps)
    assert (sms["state"], sms["provider"], sms["attempts"]) == ("sent", "labsmobile", 2)
    assert sms["provider_ref"] == f"paymentd-sms-{sms_id}"
    assert len(fakes.sink.messages) == 1 and fakes.twilio.messages == []


async def test_a_permanent_error_from_the_primary_fails_without_the_fallback(
    db: Database, fakes: Fakes
) -> None:
    deps = make_deps(db, labsmobile(fakes), twilio(fakes))
    fakes.sink.fail_next(1, code="27")  # invalid characters: the message itself is wrong
    with trio.fail_after(20):
        sms_id = await queue_sms(db)
        await deliver(deps)
        sms = await row(db, sms_id)
        assert await next_visible(deps) is None
        await close(deps)
    assert (sms["state"], sms["provider"], sms["attempts"]) == ("failed", "labsmobile", 1)
    assert fakes.twilio.requests == []


async def test_both_down_they_take_turns_until_max_attempts(db: Database, fakes: Fakes) -> None:
    deps = make_deps(db, labsmobile(fakes), twilio(fakes), max_attempts=5, fallback_after=2)
    fakes.sink.fail_next(100, status=503)
    fakes.twilio.fail_next(100, status=429, code=20429)
    with trio.fail_after(30):
        sms_id = await queue_sms(db)
        for _ in range(5):
            msg = await deliver(deps)
            assert msg is not None
            await skip_wait(deps, msg)
        sms = await row(db, sms_id)
        assert await next_visible(deps) is None
        await close(deps)
    assert sms["state"] == "failed" and sms["last_error"].startswith("gave up after 5 attempts")
    # labsmobile, labsmobile, twilio, labsmobile, twilio
    assert len(fakes.sink.requests) == 3 and len(fakes.twilio.requests) == 2


def test_provider_order_per_attempt() -> None:
    a, b = object(), object()
    order = [providers.for_attempt(a, b, 2, n) for n in range(1, 7)]  # type: ignore[arg-type]
    assert order == [a, a, b, a, b, a]
    assert [providers.for_attempt(a, None, 2, n) for n in (1, 3)] == [a, a]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sms", "message"),
    [
        ({"provider": "twilio", "fallback": "twilio"}, "sms.fallback: must differ"),
        ({"provider": "none", "fallback": "twilio"}, "sms.fallback: needs a primary"),
        ({"fallback": "twilio", "fallback_after": 5}, "sms.fallback_after: must be less than"),
        ({"fallback": "whapi"}, 'sms.fallback: must be one of "", labsmobile, twilio'),
    ],
)
def test_fallback_mistakes_are_one_line_naming_the_key(
    sms: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        from_mapping({"sms": sms}, env={})
    assert str(info.value).startswith(message)


async def test_a_primary_that_refuses_our_credentials_hands_over_to_the_fallback(
    db: Database, fakes: Fakes
) -> None:
    """A revoked LabsMobile token (or its IP filter, 403) refuses every SMS: that is the
    provider being unusable, not this message being wrong, so the fallback sends it."""
    broken = LabsMobile(base_url=fakes.sink_url, username="ops@example.com", token="revoked",
                        sender="ISP", default_country_code="34", timeout=2.0)  # fmt: skip
    deps = make_deps(db, broken, twilio(fakes), fallback_after=1)
    with trio.fail_after(20):
        sms_id = await queue_sms(db)
        msg = await deliver(deps)
        assert msg is not None
        retry = await row(db, sms_id)
        await skip_wait(deps, msg)
        await deliver(deps)
        sms = await row(db, sms_id)
        await close(deps)
    assert retry["state"] == "queued" and "HTTP 401" in retry["last_error"]
    [sent] = fakes.twilio.messages
    assert (sms["state"], sms["provider"], sms["provider_ref"]) == ("sent", "twilio", sent["sid"])
    assert fakes.sink.messages == []


async def test_refused_credentials_without_a_fallback_still_fail_the_sms(
    db: Database, fakes: Fakes
) -> None:
    broken = LabsMobile(base_url=fakes.sink_url, username="ops@example.com", token="revoked",
                        sender="ISP", default_country_code="34", timeout=2.0)  # fmt: skip
    deps = make_deps(db, broken)
    with trio.fail_after(20):
        sms_id = await queue_sms(db)
        await deliver(deps)
        sms = await row(db, sms_id)
        assert await next_visible(deps) is None
        await close(deps)
    assert (sms["state"], sms["attempts"]) == ("failed", 1)
    assert "check username/token" in sms["last_error"]
