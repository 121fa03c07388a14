"""The LabsMobile client against the fake LabsMobile (sms_sink) over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from daemon.fakes import sms_sink
from daemon.notifications.sms import (
    LabsMobile,
    SmsPermanentError,
    SmsTransientError,
    make_provider,
    normalise_msisdn,
)
from daemon.platform.config import SmsConfig


@pytest.fixture
async def sink(nursery: trio.Nursery) -> AsyncIterator[tuple[sms_sink.SmsSink, str]]:
    fake = sms_sink.SmsSink(username="ops@example.com", token="t0ken", credits=2)
    url: str = await nursery.start(sms_sink.serve, fake)
    yield fake, url


def client(url: str, *, token: str = "t0ken", **kw: object) -> LabsMobile:
    cfg = SmsConfig(
        base_url=url, username="ops@example.com", token=token, sender="ISP",
        default_country_code="34", timeout_seconds=5.0, **kw,  # type: ignore[arg-type]
    )  # fmt: skip
    provider = make_provider(cfg)
    assert isinstance(provider, LabsMobile)
    return provider


async def test_send_succeeds_and_returns_our_subid(sink: tuple[sms_sink.SmsSink, str]) -> None:
    fake, url = sink
    with trio.fail_after(10):
        lm = client(url)
        ref = await lm.send("+34 600-111 222", "Hola Ana", subid="paymentd-sms-7")
        assert await lm.balance() == "1.00"
        await lm.aclose()
    assert ref == "paymentd-sms-7"
    assert fake.messages == [
        {"msisdn": "34600111222", "message": "Hola Ana", "subid": "paymentd-sms-7",
         "tpoa": "ISP", "test": False}
    ]  # fmt: skip


async def test_test_mode_sets_the_test_flag_and_uses_no_credit(
    sink: tuple[sms_sink.SmsSink, str],
) -> None:
    fake, url = sink
    with trio.fail_after(10):
        lm = client(url, test_mode=True)
        for n in range(3):  # more than the sink's 2 credits: test sends are free
            await lm.send("600111222", f"test {n}", subid=f"s{n}")
        await lm.aclose()
    assert [m["test"] for m in fake.messages] == [True, True, True]
    assert fake.credits == 2


async def test_bad_credentials_are_permanent(sink: tuple[sms_sink.SmsSink, str]) -> None:
    fake, url = sink
    with trio.fail_after(10):
        lm = client(url, token="wrong")
        with pytest.raises(SmsPermanentError, match="401"):
            await lm.send("600111222", "x", subid="s")
        await lm.aclose()
    assert fake.messages == []


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        ({"code": "35"}, SmsTransientError),
        ({"code": "30"}, SmsTransientError),
        ({"code": "21"}, SmsPermanentError),
        ({"code": "39"}, SmsPermanentError),
        ({"status": 503}, SmsTransientError),
        ({"status": 429}, SmsTransientError),
        ({"status": 403}, SmsPermanentError),
    ],
)
async def test_failures_map_to_transient_or_permanent(
    sink: tuple[sms_sink.SmsSink, str], failure: dict[str, object], error: type[Exception]
) -> None:
    fake, url = sink
    fake.fail_next(1, **failure)  # type: ignore[arg-type]
    with trio.fail_after(10):
        lm = client(url)
        with pytest.raises(error):
            await lm.send("600111222", "x", subid="s1")
        # The failure was one-off: the same message goes through next time.
        assert await lm.send("600111222", "x", subid="s1") == "s1"
        await lm.aclose()
    assert len(fake.messages) == 1


async def test_the_sink_validates_like_labsmobile(sink: tuple[sms_sink.SmsSink, str]) -> None:
    fake, url = sink
    with trio.fail_after(10):
        lm = client(url)
        with pytest.raises(SmsPermanentError, match="code 21"):
            await lm.send("600111222", "   ", subid="s")
        await lm.send("600111222", "one", subid="a")
        await lm.send("600111222", "two", subid="b")
        with pytest.raises(SmsTransientError, match="code 35"):  # credit ran out
            await lm.send("600111222", "three", subid="c")
        await lm.aclose()
    assert [m["message"] for m in fake.messages] == ["one", "two"]


async def test_timeouts_and_connection_errors_are_transient(
    sink: tuple[sms_sink.SmsSink, str],
) -> None:
    fake, url = sink
    fake.fail_next(1, delay=1.0)
    with trio.fail_after(10):
        lm = LabsMobile(base_url=url, username="ops@example.com", token="t0ken", sender="ISP",
                        timeout=0.2)  # fmt: skip
        with pytest.raises(SmsTransientError, match="timed out"):
            await lm.send("34600111222", "x", subid="s")
        await lm.aclose()
        dead = LabsMobile(base_url="http://127.0.0.1:9", username="u", token="t", sender="ISP")
        with pytest.raises(SmsTransientError):
            await dead.send("34600111222", "x", subid="s")
        await dead.aclose()


@pytest.mark.parametrize(
    ("phone", "cc", "expected"),
    [
        ("+34 600 111 222", "34", "34600111222"),
        ("0034-600-111-222", "", "34600111222"),
        ("600 111 222", "34", "34600111222"),
        ("34600111222", "34", "34600111222"),  # already has the code
        ("07700 900123", "44", "447700900123"),  # trunk 0 dropped
        ("(+1) 415.555.0100", "34", "14155550100"),
        ("34600111222", "", "34600111222"),  # no default code: taken as international
    ],
)
def test_phone_normalisation(phone: str, cc: str, expected: str) -> None:
    assert normalise_msisdn(phone, cc) == expected


@pytest.mark.parametrize("phone", ["", "   ", "12345", "+34 600 ABC 222", "+1234567890123456"])
def test_invalid_phone_numbers_are_permanent(phone: str) -> None:
    with pytest.raises(SmsPermanentError):
        normalise_msisdn(phone, "34")


def test_provider_none_means_no_provider() -> None:
    assert make_provider(SmsConfig(provider="none")) is None
