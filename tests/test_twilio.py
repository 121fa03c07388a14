"""The Twilio client against the fake Twilio (daemon/fakes/twilio_server.py) over real HTTP."""

from __future__ import annotations

import datetime as dt
import logging
import socket
from collections.abc import AsyncIterator
from functools import partial

import httpx
import pytest
import trio

from daemon.fakes import twilio_server
from daemon.fakes.twilio_server import FakeTwilio
from daemon.notifications import providers
from daemon.notifications import twilio as twilio_mod
from daemon.notifications.sms import (
    SentLookup,
    SmsOutcomeUnknown,
    SmsPermanentError,
    SmsTransientError,
)
from daemon.notifications.twilio import Twilio
from daemon.platform import logs
from daemon.platform.config import Config, ConfigError, SmsConfig, TwilioConfig

SID = "AC" + "ab" * 16
TOKEN = "tw-secret-token"
SENDER = "+34911000111"


@pytest.fixture
async def fake(nursery: trio.Nursery) -> AsyncIterator[tuple[FakeTwilio, str]]:
    server = FakeTwilio(SID, TOKEN)
    url: str = await nursery.start(twilio_server.serve, server)
    yield server, url


def client(url: str, **kw: str) -> Twilio:
    cfg = TwilioConfig(
        base_url=url,
        account_sid=kw.pop("account_sid", SID),
        auth_token=kw.pop("auth_token", TOKEN),
        from_number=kw.pop("from_number", SENDER),
        timeout_seconds=2.0,
        **kw,  # type: ignore[arg-type]
    )
    return Twilio.from_config(cfg, SmsConfig(default_country_code="34"))


def since() -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)


async def test_send_posts_twilios_form_and_returns_the_message_sid(
    fake: tuple[FakeTwilio, str],
) -> None:
    server, url = fake
    with trio.fail_after(10):
        tw = client(url)
        sid = await tw.send("600 111 222", "Hola Ana", subid="paymentd-sms-1")
        await tw.aclose()
    [m] = server.messages
    assert sid == m["sid"] and sid.startswith("SM") and len(sid) == 34
    assert (m["to"], m["from"], m["body"]) == ("+34600111222", SENDER, "Hola Ana")
    assert m["status"] == "queued" and m["direction"] == "outbound-api"
    assert server.requests == [("POST", server.messages_path)]


async def test_a_messaging_service_sends_instead_of_a_from_number(
    fake: tuple[FakeTwilio, str],
) -> None:
    server, url = fake
    service = "MG" + "cd" * 16
    with trio.fail_after(10):
        tw = client(url, from_number="", messaging_service_sid=service)
        sid = await tw.send("+34600111222", "Hola", subid="s")
        found = await tw.find_sent("+34600111222", "Hola", since=since())
        await tw.aclose()
    [m] = server.messages
    assert (m["from"], m["messaging_service_sid"], m["status"]) == (None, service, "accepted")
    assert found == [sid]


async def test_wrong_credentials_are_permanent_and_the_token_is_never_shown(
    fake: tuple[FakeTwilio, str],
) -> None:
    _, url = fake
    with trio.fail_after(10):
        tw = client(url, auth_token="wrong-token-value")
        with pytest.raises(SmsPermanentError) as info:
            await tw.send("+34600111222", "Hola", subid="s")
        await tw.aclose()
    text = str(info.value)
    assert "HTTP 401 code 20003" in text and "twilio.auth_token" in text
    assert "wrong-token-value" not in text and "wrong-token-value" not in repr(tw)


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (429, 20429, SmsTransientError),  # too many requests: retry, nothing was accepted
        (400, 21610, SmsPermanentError),  # unsubscribed recipient
        (500, 20500, SmsOutcomeUnknown),  # may have been created: only a lookup can tell
    ],
)
async def test_twilio_errors_map_to_what_the_sender_does_next(
    fake: tuple[FakeTwilio, str], status: int, code: int, kind: type[Exception]
) -> None:
    server, url = fake
    server.fail_next(1, status=status, code=code)
    with trio.fail_after(10):
        tw = client(url)
        with pytest.raises(kind) as info:
            await tw.send("+34600111222", "Hola", subid="s")
        await tw.aclose()
    assert type(info.value) is kind
    assert f"HTTP {status}" in str(info.value)


async def test_a_number_twilio_rejects_and_a_missing_body_are_permanent(
    fake: tuple[FakeTwilio, str],
) -> None:
    server, url = fake
    with trio.fail_after(10):
        tw = client(url)
        with pytest.raises(SmsPermanentError, match="code 21211"):
            await tw.send("+0123456789", "Hola", subid="s")  # not E.164: no leading 0
        with pytest.raises(SmsPermanentError, match="code 21602"):
            await tw.send("+34600111222", "", subid="s")
        await tw.aclose()
    assert server.messages == []


async def test_an_answer_lost_after_acceptance_is_an_unknown_outcome(
    fake: tuple[FakeTwilio, str],
) -> None:
    server, url = fake
    server.fail_next(1, delay=5.0, after_accept=True)  # longer than the 2 s read timeout
    with trio.fail_after(10):
        tw = client(url)
        with pytest.raises(SmsOutcomeUnknown):
            await tw.send("+34600111222", "Hola", subid="s")
        await tw.aclose()
    assert len(server.messages) == 1  # Twilio did accept it


async def test_a_refused_connection_is_transient_and_certainly_not_sent() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    with trio.fail_after(10):
        tw = client(f"http://127.0.0.1:{port}")
        with pytest.raises(SmsTransientError) as info:
            await tw.send("+34600111222", "Hola", subid="s")
        await tw.aclose()
    assert not isinstance(info.value, SmsOutcomeUnknown)


async def test_find_sent_lists_only_this_text_to_this_number_since_then(
    fake: tuple[FakeTwilio, str],
) -> None:
    _, url = fake
    with trio.fail_after(10):
        tw = client(url)
        ours = await tw.send("+34600111222", "Tu servicio esta activo", subid="a")
        await tw.send("+34600999888", "Tu servicio esta activo", subid="b")  # other number
        await tw.send("+34600111222", "Otro texto", subid="c")  # other text
        found = await tw.find_sent("600111222", "Tu servicio esta activo", since=since())
        later = await tw.find_sent(
            "600111222",
            "Tu servicio esta activo",
            since=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5),
        )
        await tw.aclose()
    assert found == [ours]
    assert later == []


async def test_find_sent_sees_a_message_not_sent_yet_which_a_datesent_filter_misses(
    fake: tuple[FakeTwilio, str],
) -> None:
    """Why the lookup lists by number and not with DateSent>=: a queued message has no
    date_sent, and Twilio's date filters select on it."""
    server, url = fake
    server.sent_after = 3600.0  # stays 'queued'
    with trio.fail_after(10):
        tw = client(url)
        sid = await tw.send("+34600111222", "Hola", subid="s")
        found = await tw.find_sent("+34600111222", "Hola", since=since())
        today = dt.datetime.now(dt.UTC).date().isoformat()
        async with httpx.AsyncClient(base_url=url, auth=(SID, TOKEN)) as raw:
            params = {"To": "+34600111222", "DateSent>": today}
            r = await raw.get(server.messages_path, params=params)
        await tw.aclose()
    assert found == [sid]
    assert r.status_code == 200 and r.json()["messages"] == []


async def test_find_sent_follows_next_page_uri_and_gives_up_on_an_endless_list(
    fake: tuple[FakeTwilio, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, url = fake
    monkeypatch.setattr(twilio_mod, "PAGE_SIZE", 2)
    with trio.fail_after(20):
        tw = client(url)
        sids = [await tw.send("+34600111222", "Hola", subid=str(n)) for n in range(5)]
        found = await tw.find_sent("+34600111222", "Hola", since=since())
        pages = [p for m, p in server.requests if m == "GET"]
        monkeypatch.setattr(twilio_mod, "MAX_PAGES", 2)
        with pytest.raises(SmsTransientError, match="cannot tell"):
            await tw.find_sent("+34600111222", "Hola", since=since())
        await tw.aclose()
    assert found == sids[::-1]  # most recent first, all five across three pages
    assert len(pages) == 3 and "Page=2" in pages[-1] and "PageToken=" in pages[-1]


async def test_a_lookup_that_fails_raises_instead_of_answering_none(
    fake: tuple[FakeTwilio, str],
) -> None:
    server, url = fake
    server.fail_next(1, status=503, on="list")
    with trio.fail_after(10):
        tw = client(url)
        with pytest.raises(SmsTransientError):
            await tw.find_sent("+34600111222", "Hola", since=since())
        await tw.aclose()


def test_twilio_is_a_provider_that_can_look_up_and_labsmobile_is_not() -> None:
    cfg = Config().replace(
        sms=SmsConfig(provider="labsmobile", fallback="twilio", username="u", token="t"),
        twilio=TwilioConfig(account_sid=SID, auth_token=TOKEN, from_number=SENDER),
    )
    primary, fallback = providers.configured(cfg)
    assert primary is not None and primary.name == "labsmobile"
    assert fallback is not None and fallback.name == "twilio"
    assert isinstance(fallback, SentLookup) and not isinstance(primary, SentLookup)


@pytest.mark.parametrize(
    ("twilio", "key"),
    [
        ({"account_sid": "AC123"}, "twilio.account_sid"),
        ({"auth_token": ""}, "twilio.auth_token"),
        ({"from_number": ""}, "twilio.from_number"),
        ({"messaging_service_sid": "MGxyz"}, "twilio.messaging_service_sid"),
    ],
)
def test_a_twilio_section_missing_what_it_needs_names_the_key(
    twilio: dict[str, str], key: str
) -> None:
    section = {"account_sid": SID, "auth_token": TOKEN, "from_number": SENDER} | twilio
    cfg = Config().replace(sms=SmsConfig(provider="twilio"), twilio=TwilioConfig(**section))
    with pytest.raises(ConfigError, match=rf"^{key}:"):
        providers.check(cfg)
    with pytest.raises(ConfigError, match=rf"^{key}:"):
        providers.configured(cfg)


def test_the_auth_token_is_masked_in_logs_and_never_in_the_config_repr() -> None:
    cfg = Config().replace(twilio=TwilioConfig(account_sid=SID, auth_token="tw-Tok3n-secret"))
    logs.forget_secrets()
    logs.register_config(cfg)
    try:
        record = logging.LogRecord("daemon.x", logging.WARNING, __file__, 1,
                                   "twilio said no to %s", ("tw-Tok3n-secret",), None)  # fmt: skip
        line = logs.JsonFormatter().format(record)
    finally:
        logs.forget_secrets()
    assert "tw-Tok3n-secret" not in line and "***" in line
    assert "tw-Tok3n-secret" not in repr(cfg.twilio) + str(cfg.twilio.auth_token)


async def test_a_proxys_429_without_json_is_transient_not_a_failed_sms(
    nursery: trio.Nursery,
) -> None:
    """A rate limit answered by something in front of Twilio (a proxy, a WAF) in HTML: the
    message was not accepted and is worth retrying, as Twilio's own 429 is."""
    answer = (
        b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/html\r\n"
        b"Content-Length: 22\r\nConnection: close\r\n\r\n<h1>slow down</h1>\r\n\r\n"
    )

    async def proxy(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(65536)
            await stream.send_all(answer)

    [listener] = await nursery.start(partial(trio.serve_tcp, proxy, 0, host="127.0.0.1"))
    port = listener.socket.getsockname()[1]  # type: ignore[attr-defined]
    with trio.fail_after(10):
        tw = client(f"http://127.0.0.1:{port}")
        with pytest.raises(SmsTransientError) as info:
            await tw.send("+34600111222", "Hola", subid="s")
        await tw.aclose()
    assert type(info.value) is SmsTransientError and "HTTP 429" in str(info.value)
