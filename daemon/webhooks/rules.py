"""What an endpoint may be registered with: its URL and its event-type filter.

Both the admin API and the CLI go through these, so a mistake reads the same in either
(``EndpointError``: one sentence saying what to fix). Where a URL may point (public
addresses only, unless allowed) is decided again at delivery time, on the address it
resolves to then; here only its form is checked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from daemon.platform import outbox

MAX_URL_CHARS = 2000
MAX_FILTERS = 64
WILDCARD = "*"
# Sent only on request, to the one endpoint asked for; never fanned out by a filter.
TEST_EVENT = "webhook.test"

_CONTROL = re.compile(r"[\x00-\x20\x7f]")


class EndpointError(ValueError):
    """A bad endpoint setting; the message says what to fix (and never echoes a secret)."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail)
        self.field = field


def check_url(url: str) -> str:
    """``url`` if it is an absolute http(s) URL without credentials; else ``EndpointError``.

    The error never repeats the URL: one with credentials in it carries a password.
    """
    if len(url) > MAX_URL_CHARS:
        raise EndpointError("url", f"url is longer than {MAX_URL_CHARS} characters")
    if _CONTROL.search(url):
        raise EndpointError("url", "url contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a bad port
    except ValueError as exc:
        raise EndpointError("url", f"url is not a valid URL ({exc})") from None
    if parts.scheme not in ("https", "http"):
        raise EndpointError("url", "url must start with https:// (or http://)")
    if "@" in parts.netloc:
        raise EndpointError(
            "url",
            "url must not hold credentials (user:password@); the signature authenticates us",
        )
    if not parts.hostname:
        raise EndpointError("url", "url has no host")
    if port == 0:
        raise EndpointError("url", "url has port 0")
    if parts.fragment or url.endswith("#"):
        raise EndpointError("url", "url must not have a #fragment (it is never sent)")
    return url


def _prefixes() -> set[str]:
    return {t.split(".", 1)[0] for t in outbox.EVENT_TYPES}


def check_filters(filters: Iterable[str]) -> list[str]:
    """The filter, deduplicated and sorted: each ``*``, a declared type, or ``prefix.*``."""
    wanted = sorted(set(filters))
    if not wanted:
        raise EndpointError("event_types", "give at least one event type, or '*' for all")
    if len(wanted) > MAX_FILTERS:
        raise EndpointError("event_types", f"at most {MAX_FILTERS} event types")
    prefixes = _prefixes()
    for item in wanted:
        if item == WILDCARD:
            continue
        if item == TEST_EVENT:
            raise EndpointError(
                "event_types", f"{TEST_EVENT} is only sent on request ('test'), not by filter"
            )
        if item.endswith(".*"):
            if item[:-2] not in prefixes:
                raise EndpointError(
                    "event_types",
                    f"no event type starts with {item[:-2]!r}; prefixes are"
                    f" {', '.join(sorted(prefixes))}",
                )
            continue
        if item not in outbox.EVENT_TYPES:
            raise EndpointError(
                "event_types",
                f"unknown event type {item[:100]!r}; see the webhooks section of /openapi.json",
            )
    return wanted


def matches(filters: Iterable[str], event_type: str) -> bool:
    """Whether an endpoint with ``filters`` receives ``event_type`` (never the test ping)."""
    if event_type == TEST_EVENT:
        return False
    prefix = event_type.split(".", 1)[0]
    return any(f in (WILDCARD, event_type, f"{prefix}.*") for f in filters)
