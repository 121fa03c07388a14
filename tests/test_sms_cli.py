"""``paymentd sms test PHONE`` as a real subprocess, against both fakes over real HTTP."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from daemon.fakes import sms_sink, twilio_server
from daemon.fakes.twilio_server import FakeTwilio
from daemon.platform.config import (
    Config,
    DatabaseConfig,
    SecretsConfig,
    SmsConfig,
    TwilioConfig,
    to_toml,
)

ROOT = Path(__file__).resolve().parent.parent
SID = "AC" + "7e" * 16
TOKEN = "cli-twilio-token"


@pytest.fixture
async def urls(
    nursery: trio.Nursery,
) -> AsyncIterator[tuple[sms_sink.SmsSink, FakeTwilio, str, str]]:
    sink = sms_sink.SmsSink(username="ops@example.com", token="lm-token")
    fake = FakeTwilio(SID, TOKEN)
    sink_url = await nursery.start(sms_sink.serve, sink)
    twilio_url = await nursery.start(twilio_server.serve, fake)
    yield sink, fake, sink_url, twilio_url


def config(tmp_path: Path, sink_url: str, twilio_url: str, **twilio: Any) -> Path:
    sms = SmsConfig(
        provider="labsmobile",
        fallback="twilio",
        base_url=sink_url,
        username="ops@example.com",
        token="lm-token",
        sender="ISP",
        default_country_code="34",
        timeout_seconds=5,
    )
    section: dict[str, Any] = {
        "base_url": twilio_url,
        "account_sid": SID,
        "auth_token": TOKEN,
        "from_number": "+34911000111",
        "timeout_seconds": 5,
    }
    cfg = Config().replace(sms=sms, twilio=TwilioConfig(**(section | twilio)))
    path = tmp_path / "config.toml"
    path.write_text(to_toml(cfg))
    return path


async def paymentd(*args: str) -> subprocess.CompletedProcess[str]:
    return await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [sys.executable, "-m", "daemon.cli", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    )


async def test_one_test_message_through_each_provider_one_line_each(
    urls: tuple[sms_sink.SmsSink, FakeTwilio, str, str], tmp_path: Path
) -> None:
    sink, fake, sink_url, twilio_url = urls
    path = config(tmp_path, sink_url, twilio_url)
    with trio.fail_after(60):
        proc = await paymentd("sms", "test", "600 111 222", "--config", str(path))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("labsmobile: sent (ref paymentd-test-")
    assert lines[1] == f"twilio: sent (ref {fake.messages[0]['sid']})"
    assert [m["msisdn"] for m in sink.messages] == ["34600111222"]
    assert fake.messages[0]["to"] == "+34600111222"
    assert "paymentd test message via twilio" in fake.messages[0]["body"]


async def test_a_provider_that_refuses_says_why_and_exits_1(
    urls: tuple[sms_sink.SmsSink, FakeTwilio, str, str], tmp_path: Path
) -> None:
    sink, _, sink_url, twilio_url = urls
    path = config(tmp_path, sink_url, twilio_url, auth_token="not-the-token")
    with trio.fail_after(60):
        proc = await paymentd("sms", "test", "+34600111222", "--config", str(path))
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("labsmobile: sent")
    assert lines[1].startswith("twilio: refused: Twilio send: HTTP 401")
    assert "twilio.auth_token" in lines[1]
    assert "not-the-token" not in proc.stdout + proc.stderr
    assert len(sink.messages) == 1


async def test_only_one_provider_with_provider(
    urls: tuple[sms_sink.SmsSink, FakeTwilio, str, str], tmp_path: Path
) -> None:
    sink, fake, sink_url, twilio_url = urls
    path = config(tmp_path, sink_url, twilio_url)
    with trio.fail_after(60):
        proc = await paymentd(
            "sms", "test", "+34600111222", "--provider", "twilio", "-c", str(path)
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"twilio: sent (ref {fake.messages[0]['sid']})"]
    assert sink.messages == []


@pytest.mark.parametrize(
    ("twilio", "argv", "expected"),
    [
        ({"account_sid": ""}, ["+34600111222"], "twilio.account_sid: expected AC"),
        ({"from_number": ""}, ["+34600111222"], "twilio.from_number: not set"),
        ({}, ["12"], "PHONE: invalid phone number '12'"),
        ({}, ["+34600111222", "--provider", "whapi"], "--provider: 'whapi' is not configured"),
    ],
)
async def test_configuration_and_usage_problems_are_one_line_exit_2_nothing_sent(
    urls: tuple[sms_sink.SmsSink, FakeTwilio, str, str],
    tmp_path: Path,
    twilio: dict[str, str],
    argv: list[str],
    expected: str,
) -> None:
    sink, fake, sink_url, twilio_url = urls
    path = config(tmp_path, sink_url, twilio_url, **twilio)
    with trio.fail_after(60):
        proc = await paymentd("sms", "test", *argv, "--config", str(path))
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"paymentd: error: {expected}"), line
    assert sink.requests == [] and fake.requests == []


async def test_check_config_warns_of_labsmobile_without_credentials_as_the_fallback_too(
    tmp_path: Path,
) -> None:
    """As the fallback, LabsMobile without credentials answers 401 to every SMS the
    primary could not send, and each of those SMS fails for good."""
    sms = SmsConfig(provider="twilio", fallback="labsmobile")
    twilio = TwilioConfig(account_sid=SID, auth_token=TOKEN, from_number="+34911000111")
    key = tmp_path / "secret.key"
    key.write_text("ab" * 32)
    key.chmod(0o600)
    secrets = SecretsConfig(key_file=str(key))
    # Nothing listens on port 9: the database check is a warning, not the news here.
    database = DatabaseConfig(url="postgresql://postgres@127.0.0.1:9/none")
    path = tmp_path / "config.toml"
    path.write_text(to_toml(Config().replace(sms=sms, twilio=twilio, secrets=secrets,
                                             database=database)))  # fmt: skip
    with trio.fail_after(60):
        proc = await paymentd("check-config", "--config", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "warning: sms.username / sms.token are empty" in proc.stdout
