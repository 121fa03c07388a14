"""A payment's ``status_callback_url``: its terminal status, through the webhook machinery.

When a payment reaches a final state (``payment.succeeded`` / ``failed`` / ``canceled`` /
``expired``), and later if it becomes fully refunded (``payment.refunded``), the store
calls ``deliver`` in the transaction that made the change and emitted the event: one
callback delivery of that very event to the payment's URL (``deliveries.add_callback``).
From there it is a delivery like any other: the webhook dispatcher sends it with the
Standard Webhooks headers, signed with the daemon-wide callback secret
(``paymentd webhooks callback-secret rotate`` or ``POST
/api/v1/webhooks/callback-secret/rotate`` shows a new one, once, to an admin), through
the same SSRF guard and retry schedule, and logs every attempt.

The URL is checked when the payment is created (``check``: the rule endpoint URLs
follow). The SQL entry point checks only its scheme, host and length; a URL that passed
there but fails the full rule is refused here, noted in the payment's history, and never
blocks the payment's own change.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from daemon.platform.db import Conn
from daemon.webhooks import deliveries, endpoints

log = logging.getLogger(__name__)

MAX_LENGTH = 2000  # payments.status_callback_url's CHECK (migration 008)


class InvalidCallbackUrl(ValueError):
    """The message names what is wrong (no URL in it: it could hold a token)."""


def check(url: str) -> str:
    """http(s) with a host and at most 2000 characters (the words the SQL entry point
    uses too), then the endpoint URL rule: no credentials, no whitespace, a real port."""
    try:
        parts = urlsplit(url)
        scheme, netloc = parts.scheme, parts.netloc
    except ValueError:  # e.g. "http://[::1" (an unclosed IPv6 literal)
        scheme, netloc = "", ""
    if scheme not in ("http", "https") or not netloc or len(url) > MAX_LENGTH:
        raise InvalidCallbackUrl("status_callback_url must be an http(s) URL")
    try:
        endpoints.check_url(url)
    except endpoints.EndpointError as exc:
        reason = str(exc).removeprefix("url: ")
        raise InvalidCallbackUrl(f"status_callback_url: {reason}") from None
    return url


async def deliver(tx: Conn, payment_id: str, url: str, event_id: str) -> str | None:
    """Queue the callback of ``event_id`` to ``url`` in ``tx``; returns why not, if not."""
    try:
        check(url)
    except InvalidCallbackUrl as exc:
        log.warning("payment %s: callback not sent: %s", payment_id, exc)
        return str(exc)
    await deliveries.add_callback(tx, event_id, url)
    return None
