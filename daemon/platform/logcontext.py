"""Context bound to log lines: the request id, task id or webhook uuid being worked on.

A ``contextvars`` mapping, so it follows trio tasks (each task starts with a copy of its
parent's context) and never leaks from one request or message to the next. The log
formatter (``daemon.platform.logs``) adds ``current()`` to every record.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "paymentd_log_context", default=None
)


def current() -> dict[str, Any]:
    """The fields bound in this task (a copy; empty when nothing is bound)."""
    return dict(_context.get() or {})


@contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Bind ``fields`` for the duration of the block (nested binds add to the outer ones)."""
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)
