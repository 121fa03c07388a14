"""The operator's webhook actions, shared by the admin API and the CLI.

Each is one transaction on the stores (``endpoints``, ``deliveries``) plus what both
front ends would otherwise repeat: the not-found errors, the log line (which names the
endpoint and who acted, never a secret), and the test ping. Mistakes raise
``endpoints.EndpointError`` / ``ManageError`` with a message that says what to fix;
the HTTP routes turn them into 400/404/409 problems, the CLI into one line and exit 2.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from daemon.platform.db import Database
from daemon.platform.secrets import Keyring
from daemon.webhooks import deliveries, endpoints
from daemon.webhooks.deliveries import Delivery, DeliveryDetail
from daemon.webhooks.endpoints import Endpoint, SigningSecret

log = logging.getLogger(__name__)

_ENDPOINT_ID = re.compile(r"ep_[0-9a-f]{24}")


class ManageError(Exception):
    """An operator mistake; ``status`` is the HTTP answer it maps to (404, 409, 400)."""

    def __init__(self, status: int, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.field = field


def endpoint_missing(endpoint_id: str) -> ManageError:
    return ManageError(404, f"no webhook endpoint {endpoint_id[:40]!r}")


def delivery_missing(delivery_id: int) -> ManageError:
    return ManageError(404, f"no webhook delivery {delivery_id}")


@dataclass(frozen=True)
class EndpointDetail:
    """An endpoint with its secrets' metadata (never their values)."""

    endpoint: Endpoint
    secrets: list[SigningSecret]


@dataclass(frozen=True)
class TestSent:
    event_id: str
    delivery: Delivery


def _check_id(endpoint_id: str) -> str:
    if not _ENDPOINT_ID.fullmatch(endpoint_id):
        raise endpoint_missing(endpoint_id)
    return endpoint_id


async def create(db: Database, box: Keyring, *, by: str, **fields: Any) -> tuple[Endpoint, str]:
    """A new endpoint and its secret (the only time the secret is returned)."""
    async with db.transaction() as tx:
        endpoint, secret = await endpoints.create(tx, box, **fields)
    # The host only: partners sometimes put a token in the URL's path or query.
    host = urlsplit(endpoint.url).hostname
    log.info("webhook endpoint %s (host %s) created by %s", endpoint.id, host, by)
    return endpoint, secret


async def describe(db: Database, endpoint_id: str) -> EndpointDetail:
    endpoint = await endpoints.get(db, _check_id(endpoint_id))
    if endpoint is None:
        raise endpoint_missing(endpoint_id)
    return EndpointDetail(endpoint, await endpoints.secrets_of(db, endpoint_id))


async def update(db: Database, endpoint_id: str, *, by: str, **changes: Any) -> Endpoint:
    try:
        async with db.transaction() as tx:
            endpoint = await endpoints.update(tx, _check_id(endpoint_id), **changes)
    except endpoints.EndpointNotFound:
        raise endpoint_missing(endpoint_id) from None
    log.info("webhook endpoint %s updated by %s (%s)", endpoint_id, by, ", ".join(changes))
    return endpoint


async def remove(db: Database, endpoint_id: str, *, by: str) -> None:
    if not await endpoints.delete(db, _check_id(endpoint_id)):
        raise endpoint_missing(endpoint_id)
    log.info("webhook endpoint %s deleted by %s", endpoint_id, by)


async def rotate_secret(
    db: Database,
    box: Keyring,
    endpoint_id: str,
    *,
    overlap_seconds: float,
    by: str,
    secret: str | None = None,
) -> tuple[str, EndpointDetail]:
    """A new secret; the old ones keep signing for ``overlap_seconds``."""
    try:
        async with db.transaction() as tx:
            new = await endpoints.rotate_secret(
                tx, box, _check_id(endpoint_id), overlap_seconds=overlap_seconds, secret=secret
            )
    except endpoints.EndpointNotFound:
        raise endpoint_missing(endpoint_id) from None
    log.info(
        "webhook endpoint %s: secret rotated by %s; the old one signs %.0f s more",
        endpoint_id,
        by,
        overlap_seconds,
    )
    return new, await describe(db, endpoint_id)


async def rotate_callback_secret(
    db: Database, box: Keyring, *, overlap_seconds: float, by: str, secret: str | None = None
) -> tuple[str, list[SigningSecret]]:
    """A new daemon-wide callback secret (it signs payments' status_callback_url
    deliveries); the old ones keep signing for ``overlap_seconds``. The first rotation is
    how an admin learns one: the dispatcher's own first secret is never shown."""
    async with db.transaction() as tx:
        new = await endpoints.rotate_callback_secret(
            tx, box, overlap_seconds=overlap_seconds, secret=secret
        )
    log.info("webhook callback secret rotated by %s; the old one signs %.0f s more",
             by, overlap_seconds)  # fmt: skip
    return new, await endpoints.secrets_of(db, None)


def _disabled(endpoint_id: str) -> ManageError:
    return ManageError(409, f"webhook endpoint {endpoint_id} is disabled; enable it first")


async def send_test(db: Database, endpoint_id: str, *, by: str) -> TestSent:
    """A ``webhook.test`` event delivered to this endpoint only (not by its filters)."""
    try:
        async with db.transaction() as tx:
            event, delivery_id = await deliveries.send_test(tx, _check_id(endpoint_id))
            delivery = await deliveries.get(tx, delivery_id)
    except deliveries.EndpointDisabled:
        raise _disabled(endpoint_id) from None
    except LookupError:
        raise endpoint_missing(endpoint_id) from None
    assert delivery is not None
    log.info("webhook endpoint %s: test event %s queued by %s", endpoint_id, event.id, by)
    return TestSent(event.id, delivery)


async def recover(db: Database, endpoint_id: str, since: dt.datetime, *, by: str) -> int:
    """Send again every failed delivery of the endpoint since ``since``; how many."""
    if since.tzinfo is None:
        raise ManageError(400, "since: give a time zone (e.g. 2026-01-31T12:00:00Z)", "since")
    try:
        async with db.transaction() as tx:
            count = await deliveries.recover(tx, _check_id(endpoint_id), since)
    except deliveries.EndpointDisabled:
        # They would fail again at once (a disabled endpoint is sent nothing).
        raise _disabled(endpoint_id) from None
    except LookupError:
        raise endpoint_missing(endpoint_id) from None
    log.info("webhook endpoint %s: %d failed deliveries re-sent by %s", endpoint_id, count, by)
    return count


async def delivery(db: Database, delivery_id: int) -> DeliveryDetail:
    found = await deliveries.get_detail(db, delivery_id)
    if found is None:
        raise delivery_missing(delivery_id)
    return found


async def retry(db: Database, delivery_id: int, *, by: str) -> Delivery:
    """Send a delivery again now (whatever its state)."""
    try:
        async with db.transaction() as tx:
            retried = await deliveries.retry_now(tx, delivery_id)
    except deliveries.DeliveryNotFound:
        raise delivery_missing(delivery_id) from None
    except deliveries.EndpointDisabled:
        raise ManageError(
            409, f"the endpoint of webhook delivery {delivery_id} is disabled; enable it first"
        ) from None
    log.info("webhook delivery %d re-sent by %s", delivery_id, by)
    return retried
