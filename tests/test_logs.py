"""Log lines: structured, with context, and never showing a secret."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from daemon.actors.http_ingress import ACCESS_LOGGER
from daemon.platform import logcontext, logs
from daemon.platform.config import Config, DatabaseConfig, HttpConfig, SmsConfig, UispConfig
from daemon.platform.deps import Deps
from tests.http_fixtures import (
    WEBHOOK_PATH,
    WEBHOOK_TOKEN,
    deps_fixture,  # noqa: F401 (the "deps" fixture)
    serving,
    uisp_event,
)


class Capture(logging.Handler):
    """Records as they reach a real handler, formatted by the daemon's formatter."""

    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(formatter)
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))


@pytest.fixture
def no_secrets() -> Iterator[None]:
    logs.forget_secrets()
    yield
    logs.forget_secrets()


@pytest.fixture
def access_log() -> Iterator[Capture]:
    capture = Capture(logs.JsonFormatter())
    logger = logging.getLogger(ACCESS_LOGGER)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(capture)
    yield capture
    logger.removeHandler(capture)
    logger.setLevel(old_level)


async def test_the_access_log_never_shows_the_webhook_token(
    deps: Deps, access_log: Capture, no_secrets: None
) -> None:
    # No secret registered: the access line itself must not carry the token.
    with trio.fail_after(20):
        async with serving(deps) as client:
            ok = await client.post(WEBHOOK_PATH, json=uisp_event())
            wrong = await client.post("/webhooks/uisp/guess-1234/x", json=uisp_event())
            health = await client.get("/healthz")
    assert (ok.status_code, wrong.status_code, health.status_code) == (200, 404, 200)
    lines = [json.loads(line)["message"] for line in access_log.lines]
    assert all(WEBHOOK_TOKEN not in line and "guess-1234" not in line for line in lines)
    for expected in (
        '"POST /webhooks/uisp/*** 1.1" 200',
        '"POST /webhooks/uisp/***/x 1.1" 404',
        '"GET /healthz 1.1" 200',
    ):
        assert any(expected in line for line in lines), (expected, lines)
    # The raw record (what any other handler, e.g. a syslog one, would see) is clean too.
    assert all(WEBHOOK_TOKEN not in r.getMessage() for r in access_log.records)


def a_config() -> Config:
    return Config().replace(
        http=HttpConfig(admin_token="admin-Tok3n"),
        uisp=UispConfig(webhook_token="hook/Tok3n", app_key="uisp-app-Key"),
        sms=SmsConfig(token="sms-Tok3n"),
        database=DatabaseConfig(url="postgresql://paymentd:db%40Pass@db.example:5432/paymentd"),
    )


SECRETS = ("admin-Tok3n", "hook/Tok3n", "hook%2FTok3n", "uisp-app-Key", "sms-Tok3n", "db@Pass")


def emit_everywhere(logger: logging.Logger) -> None:
    """A secret in the message, in the args, in an exception and in the bound context."""
    with logcontext.bind(request_id="r-1", token="sms-Tok3n"):
        logger.warning("admin token is admin-Tok3n")
        logger.warning("calling %s with key %r", "/webhooks/uisp/hook%2FTok3n", "uisp-app-Key")
        try:
            raise ConnectionError("password authentication failed: db@Pass")
        except ConnectionError:
            logger.exception("cannot connect", extra={"dsn_password": "db@Pass"})


@pytest.mark.parametrize("formatter", [logs.JsonFormatter(), logs.TextFormatter()])
def test_registered_secrets_are_masked_from_any_logger(
    formatter: logging.Formatter, no_secrets: None
) -> None:
    logs.register_config(a_config())
    capture = Capture(formatter)
    library = logging.getLogger("asyncpg.some_library_module")
    library.addHandler(capture)
    try:
        emit_everywhere(library)
    finally:
        library.removeHandler(capture)
    text = "\n".join(capture.lines)
    assert len(capture.lines) == 3
    for secret in SECRETS:
        assert secret not in text
    assert "admin token is ***" in text
    assert "/webhooks/uisp/***" in text
    assert "password authentication failed: ***" in text
    assert "Traceback" in text and "r-1" in text


def test_json_lines_carry_level_logger_context_and_exception(no_secrets: None) -> None:
    logs.register_config(a_config())
    capture = Capture(logs.JsonFormatter())
    logger = logging.getLogger("daemon.test")
    logger.addHandler(capture)
    try:
        emit_everywhere(logger)
    finally:
        logger.removeHandler(capture)
    first, _, third = (json.loads(line) for line in capture.lines)
    assert set(first) == {"ts", "level", "logger", "message", "request_id", "token"}
    assert (first["level"], first["logger"], first["request_id"]) == (
        "WARNING",
        "daemon.test",
        "r-1",
    )
    assert first["token"] == "***"
    assert third["message"] == "cannot connect"
    assert third["exception"].startswith("Traceback")
    assert "ConnectionError: password authentication failed: ***" in third["exception"]
    assert third["dsn_password"] == "***"


def test_setup_writes_json_when_not_a_terminal_and_text_on_one(no_secrets: None) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    try:
        for stream, expect_json in ((io.StringIO(), True), (Tty(), False)):
            logs.setup("info", stream=stream)
            logs.register_secret("s3cr3t-value")
            logging.getLogger("hypercorn.error").info("x s3cr3t-value y")
            out = stream.getvalue().strip().splitlines()[-1]
            parsed: Any
            if expect_json:
                parsed = json.loads(out)
                assert parsed["message"] == "x *** y"
            else:
                assert out.endswith("INFO    hypercorn.error: x *** y")
        # Setting up again replaces the daemon's handler instead of adding a second one.
        assert sum(isinstance(h, logs.Handler) for h in root.handlers) == 1
    finally:
        for h in [h for h in root.handlers if isinstance(h, logs.Handler)]:
            root.removeHandler(h)
        root.setLevel(before[0])


def test_a_short_secret_is_masked_where_it_stands_alone_only(no_secrets: None) -> None:
    logs.register_secret("t")
    assert logs.redact("paymentd starting: Bearer t, /webhooks/uisp/t") == (
        "paymentd starting: Bearer ***, /webhooks/uisp/***"
    )
