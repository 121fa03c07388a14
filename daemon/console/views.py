"""Small helpers page modules share: the posted form, query filters, notices after a POST.

A POST answers with a redirect (``guard.redirect_to``: POST-redirect-GET) carrying a
``notice`` code in the query string; the page it lands on shows that code's text from
its own table (``notices``), so a crafted link can only show a message we wrote.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from quart import g, request

from daemon.platform.db import BIGINT_MAX
from daemon.platform.http.problem import Problem

PAGE_SIZE = 50

# code -> (text, is_error)
Notices = Mapping[str, tuple[str, bool]]


def refuse_nul(where: str, pairs: Iterable[tuple[str, Any]]) -> None:
    """A 400 problem for a query, path or form value PostgreSQL text cannot hold (NUL)."""
    for key, value in pairs:
        if "\x00" in key or (isinstance(value, str) and "\x00" in value):
            raise Problem(400, f"the {where} contains \\u0000, which cannot be stored")


def form() -> dict[str, str]:
    """The POSTed form, already read (and its CSRF token checked) by the guard."""
    posted: dict[str, str] = g.form
    return posted


def notices(table: Notices, **values: Any) -> dict[str, Any]:
    """Template values ``notice`` / ``notice_error`` for the ``?notice=`` code, if any;
    ``values`` fill the text's ``{placeholders}`` (from the page's own data)."""
    found = table.get(request.args.get("notice", ""))
    if found is None:
        return {"notice": None, "notice_error": False}
    text, is_error = found
    return {"notice": text.format(**values), "notice_error": is_error}


def text_arg(name: str, choices: tuple[str, ...] | None = None) -> str | None:
    """An optional text filter; empty means none. With ``choices``, others are a 400."""
    value = request.args.get(name, "").strip() or None
    if value is not None and choices is not None and value not in choices:
        raise Problem(400, f"{name} must be one of {', '.join(choices)}")
    return value


def _positive(name: str, raw: str) -> int:
    # ASCII digits only: str.isdigit() also accepts "²" and the like, which int() refuses.
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= BIGINT_MAX:
        raise Problem(400, f"{name} must be a positive whole number")
    return int(raw)


def int_arg(name: str) -> int | None:
    """An optional positive integer filter (an id); anything else is a 400 problem."""
    raw = request.args.get(name, "").strip()
    if not raw:
        return None
    return _positive(name, raw)


def form_int(name: str) -> int:
    return _positive(name, form().get(name, "").strip())
