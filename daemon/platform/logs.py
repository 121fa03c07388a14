"""Log output: one JSON object per line (or a readable line on a terminal), secrets redacted.

Every record, whichever logger emits it (ours, hypercorn's, asyncpg's, httpx's), goes
through one handler on the root logger whose formatter

- adds the fields bound with ``daemon.platform.logcontext.bind`` (request id, task id,
  webhook uuid) to the line;
- replaces every registered secret value by ``***`` in the message (after its ``%``
  arguments are merged), the exception text, the stack text and the context values.

Secrets are registered once at start-up from the loaded config (``register_config``; the
CLI does it right after loading), or one by one with ``register_secret``. Redacting the
final text, not the format string, is what makes the guarantee hold for arguments and
tracebacks too: a token echoed in an exception message from a library is caught as well.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import quote, unquote, urlsplit

from daemon.platform import logcontext

MASK = "***"

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None


def _secret_text(value: Any) -> str:
    # The typed config holds secrets in wrapper types (``config.Secret``: ``reveal()``;
    # pydantic's SecretStr: ``get_secret_value()``) whose str() is a mask.
    for name in ("reveal", "get_secret_value"):
        reveal = getattr(value, name, None)
        if callable(reveal):
            value = reveal()
            break
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def register_secret(value: Any) -> None:
    """From now on, ``value`` (and its URL-encoded forms) never appears in a log line.

    Empty values are ignored (an empty token means "feature disabled", not a secret).
    """
    text = _secret_text(value)
    if not text:
        return
    global _pattern
    with _lock:
        # A token in a URL path or query string may be logged percent-encoded.
        _secrets.update({text, quote(text, safe=""), quote(text)})
        # Longest first, so a secret that contains another is masked whole.
        ordered = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(_alternative(s) for s in ordered))


# Shorter secrets are masked only where they stand alone (between characters that cannot
# be part of a token), so a one-letter test token does not turn "starting" into "s***ar…".
_SHORT = 8
_TOKEN_CHAR = r"[A-Za-z0-9_\-]"


def _alternative(secret: str) -> str:
    if len(secret) >= _SHORT:
        return re.escape(secret)
    return f"(?<!{_TOKEN_CHAR}){re.escape(secret)}(?!{_TOKEN_CHAR})"


def forget_secrets() -> None:
    """Drop every registered secret (tests that register their own call this after)."""
    global _pattern
    with _lock:
        _secrets.clear()
        _pattern = None


def register_config(cfg: Any) -> None:
    """Register the secrets a loaded config holds.

    Read with ``getattr`` so that it keeps working while the config moves to typed models:
    a section or key that does not exist is simply skipped.
    """
    for section, key in (
        ("http", "admin_token"),
        ("uisp", "webhook_token"),
        ("uisp", "app_key"),
        ("sms", "token"),
        ("twilio", "auth_token"),
        ("olt", "key"),
        ("secrets", "key"),
    ):
        register_secret(getattr(getattr(cfg, section, None), key, None))
    for old in getattr(getattr(cfg, "secrets", None), "old_keys", ()) or ():
        register_secret(old)
    payments = getattr(cfg, "payments", None)
    register_secret(getattr(payments, "stripe_api_key", None))
    for whsec in getattr(payments, "stripe_webhook_secrets", ()) or ():
        register_secret(whsec)
    url = _secret_text(getattr(getattr(cfg, "database", None), "url", None))
    if url:
        try:
            password = urlsplit(url).password
        except ValueError:
            password = None
        if password:
            register_secret(password)
            register_secret(unquote(password))


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    pattern = _pattern
    if pattern is None or not text:
        return text
    return pattern.sub(MASK, text)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    return redact(str(value))


# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """Context bound in the emitting task, plus ``extra=`` fields, redacted."""
    fields: dict[str, Any] = dict(logcontext.current())
    for key, value in vars(record).items():
        if key not in _RESERVED and not key.startswith("_"):
            fields[key] = value
    return {key: _redact_value(value) for key, value in fields.items()}


class _Base(logging.Formatter):
    def _texts(self, record: logging.LogRecord) -> tuple[str, str | None, str | None]:
        message = redact(record.getMessage())
        exc = None
        if record.exc_info:
            # Not cached on the record: another handler (pytest's caplog) may format it
            # without redaction, and we must not hand it our text or take its.
            exc = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            exc = redact(record.exc_text)
        stack = redact(self.formatStack(record.stack_info)) if record.stack_info else None
        return message, exc, stack


class JsonFormatter(_Base):
    """One JSON object per line: ts, level, logger, message, [exception], [stack], context."""

    def format(self, record: logging.LogRecord) -> str:
        message, exc, stack = self._texts(record)
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        if exc:
            line["exception"] = exc
        if stack:
            line["stack"] = stack
        for key, value in _fields(record).items():
            # Context never overwrites the core keys a log pipeline relies on.
            line[key if key not in line else f"ctx_{key}"] = value
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(_Base):
    """``2026-12-02 00:30:00,123 INFO    logger: message [key=value ...]`` for people."""

    def format(self, record: logging.LogRecord) -> str:
        message, exc, stack = self._texts(record)
        when = self.formatTime(record)
        line = f"{when} {record.levelname:<7} {record.name}: {message}"
        fields = _fields(record)
        if fields:
            line += " [" + " ".join(f"{k}={v}" for k, v in fields.items()) + "]"
        for extra in (exc, stack):
            if extra:
                line += "\n" + extra
        return line


class Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The daemon's one output handler (marked so ``setup`` can replace it)."""


def setup(
    level: str | int,
    *,
    stream: IO[str] | None = None,
    json_lines: bool | None = None,
    quiet: Iterable[str] = (),
) -> Handler:
    """Install the handler on the root logger (replacing an earlier one of ours).

    ``json_lines`` defaults to "stream is not a terminal" (journald, files, pipes).
    ``quiet`` loggers are held at WARNING or above.
    """
    stream = sys.stderr if stream is None else stream
    if json_lines is None:
        isatty = getattr(stream, "isatty", None)
        json_lines = not (callable(isatty) and isatty())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, Handler)]:
        root.removeHandler(old)
        old.close()
    handler = Handler(stream)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else getattr(logging, level.upper()))
    for name in quiet:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    return handler
