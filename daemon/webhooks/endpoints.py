"""Webhook endpoints and their signing secrets: every statement on ``webhook_endpoints``
and ``webhook_secrets``; callers get typed rows.

A signing secret is ``whsec_`` + base64 of at least 24 random bytes (Standard Webhooks);
the base64 part is the HMAC key. Secrets are stored as keyring tokens bound to their row
(``secret_aad``), listed in ``ENCRYPTED_COLUMNS`` so ``paymentd secrets rotate`` covers them.
Rotation adds a new secret and gives the old ones an ``expires_at``: until then every
request carries a signature from each (receivers can switch at their own pace).

An endpoint's ``event_types`` are filters: an exact type, ``prefix.*`` or ``*``.
``*`` is every partner event: it does not cover ``OPERATOR_TYPES`` (news about other
endpoints), which go only to endpoints naming them (exactly or by ``prefix.*``).
Disabling an endpoint (410 Gone, failing too long, or the operator) fails its pending
deliveries and, unless the operator did it, emits ``endpoint.disabled`` in the same
transaction: its data is the endpoint's id, the reason and times, never its URL (a
partner's URL may hold a token, and the event goes to other endpoints).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import logging
import math
import re
import secrets as pysecrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from daemon.platform import outbox
from daemon.platform.db import Conn, Executor
from daemon.platform.secrets import Keyring

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
MIN_SECRET_BYTES = 24
DEFAULT_OVERLAP_SECONDS = 24 * 3600.0
MAX_OVERLAP_SECONDS = 30 * 86400.0

log = logging.getLogger(__name__)

DisabledReason = str  # "gone" | "failing" | "operator"

# About one endpoint, for whoever operates them all: '*' (a partner's "everything") does
# not take these; an endpoint gets them only by naming them ('endpoint.disabled',
# 'endpoint.*'). Kept equal in ``matches`` and ``MATCH_SQL``.
OPERATOR_TYPES: Final = ("endpoint.disabled",)
# Sent only where asked (``deliveries.send_test``), never by filters: no filter names them.
DIRECTED_TYPES: Final = ("webhook.test",)

_COLUMNS = (
    "id, url, description, event_types, enabled, disabled_reason, disabled_at,"
    " rate_limit_per_second, max_concurrency, legacy_signature, failing_since,"
    " created_at, updated_at"
)
_TYPE = re.compile(r"^[a-z_]+(\.[a-z_]+)+$")
_WILDCARD = re.compile(r"^[a-z_]+(\.[a-z_]+)*\.\*$")


class EndpointError(ValueError):
    """Bad input for an endpoint (the message says what to fix)."""


class EndpointNotFound(LookupError):
    pass


@dataclass(frozen=True)
class Endpoint:
    id: str
    url: str
    description: str
    event_types: tuple[str, ...]
    enabled: bool
    disabled_reason: str | None
    disabled_at: dt.datetime | None
    rate_limit_per_second: int | None
    max_concurrency: int | None
    legacy_signature: bool
    failing_since: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime

    def wants(self, event_type: str) -> bool:
        return matches(self.event_types, event_type)


@dataclass(frozen=True)
class SigningSecret:
    """A secret's metadata; the value itself only leaves through ``active_secrets``."""

    id: int
    endpoint_id: str | None
    created_at: dt.datetime
    expires_at: dt.datetime | None


def _endpoint(row: Any) -> Endpoint:
    return Endpoint(**{**dict(row), "event_types": tuple(row["event_types"])})


def new_endpoint_id() -> str:
    return "ep_" + pysecrets.token_hex(12)


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(pysecrets.token_bytes(SECRET_BYTES)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret (its base64 part, decoded)."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)


def check_secret(secret: str) -> str:
    """A caller-given secret must look like one we would generate."""
    if not secret.startswith(SECRET_PREFIX):
        raise EndpointError(f"secret: must start with {SECRET_PREFIX!r} followed by base64")
    try:
        key = secret_key(secret)
    except (binascii.Error, ValueError):
        raise EndpointError(f"secret: the part after {SECRET_PREFIX!r} is not base64") from None
    if len(key) < MIN_SECRET_BYTES:
        raise EndpointError(f"secret: must encode at least {MIN_SECRET_BYTES} random bytes")
    return secret


def secret_aad(secret_id: int) -> bytes:
    """Associated data binding a sealed secret to its ``webhook_secrets`` row."""
    return f"webhook_secret:{secret_id}".encode()


def check_url(url: str) -> str:
    """http(s), a host, no credentials (they would show in logs and listings)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise EndpointError(f"url: not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EndpointError("url: must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise EndpointError("url: must not contain credentials (user:password@)")
    if port == 0 or len(url) > 2048 or any(c.isspace() for c in url):
        raise EndpointError("url: invalid port, whitespace or longer than 2048 characters")
    return url


def check_event_types(filters: Iterable[str]) -> tuple[str, ...]:
    """Each filter is ``*``, an announced type, or ``prefix.*`` covering at least one."""
    out = tuple(dict.fromkeys(filters))
    if not out:
        raise EndpointError("event_types: give at least one filter ('*' for every event)")
    for f in out:
        if f == "*":
            continue
        if f in DIRECTED_TYPES:
            raise EndpointError(
                f"event_types: {f!r} is sent on request only (the endpoint's test), not by filters"
            )
        if _WILDCARD.match(f):
            if not any(matches((f,), t) for t in _filterable()):
                raise EndpointError(f"event_types: {f!r} matches no event type")
        elif not _TYPE.match(f) or f not in outbox.EVENT_TYPES:
            raise EndpointError(
                f"event_types: unknown event type {f!r} (known: {', '.join(_filterable())};"
                " or 'prefix.*', or '*')"
            )
    return out


def _filterable() -> list[str]:
    return [t for t in outbox.EVENT_TYPES if t not in DIRECTED_TYPES]


def matches(filters: Sequence[str], event_type: str) -> bool:
    """The same rule as ``MATCH_SQL``."""
    return any(
        (f == "*" and event_type not in OPERATOR_TYPES)
        or f == event_type
        or (f.endswith(".*") and event_type.startswith(f[:-1]))
        for f in filters
    )


# An endpoint's filters match type $1 (kept equal to ``matches``).
MATCH_SQL = (
    "EXISTS (SELECT 1 FROM unnest(event_types) f WHERE"
    f" (f = '*' AND $1 <> ALL('{{{','.join(OPERATOR_TYPES)}}}'::text[])) OR f = $1"
    " OR (right(f, 2) = '.*' AND starts_with($1, left(f, -1))))"
)


def _check_limits(rate_limit_per_second: int | None, max_concurrency: int | None) -> None:
    for name, value in (
        ("rate_limit_per_second", rate_limit_per_second),
        ("max_concurrency", max_concurrency),
    ):
        if value is not None and (isinstance(value, bool) or value < 1):
            raise EndpointError(f"{name}: must be a positive integer, or null for none")


async def create(
    tx: Conn,
    box: Keyring,
    *,
    url: str,
    description: str = "",
    event_types: Iterable[str] = ("*",),
    enabled: bool = True,
    rate_limit_per_second: int | None = None,
    max_concurrency: int | None = None,
    legacy_signature: bool = False,
    secret: str | None = None,
) -> tuple[Endpoint, str]:
    """Create an endpoint with its first secret (generated when not given).

    Returns the endpoint and the secret, which is shown once to whoever created it.
    """
    check_url(url)
    types = check_event_types(event_types)
    _check_limits(rate_limit_per_second, max_concurrency)
    secret = check_secret(secret) if secret is not None else generate_secret()
    row = await tx.fetchrow(
        f"INSERT INTO webhook_endpoints (id, url, description, event_types, enabled,"
        " disabled_reason, disabled_at, rate_limit_per_second, max_concurrency, legacy_signature)"
        " VALUES ($1, $2, $3, $4, $5, CASE WHEN $5 THEN NULL ELSE 'operator' END,"
        " CASE WHEN $5 THEN NULL ELSE now() END, $6, $7, $8)"
        f" RETURNING {_COLUMNS}",
        new_endpoint_id(),
        url,
        description,
        list(types),
        enabled,
        rate_limit_per_second,
        max_concurrency,
        legacy_signature,
    )
    endpoint = _endpoint(row)
    await _add_secret(tx, box, endpoint.id, secret)
    return endpoint, secret


async def _add_secret(tx: Conn, box: Keyring, endpoint_id: str | None, secret: str) -> int:
    # The row id is part of the associated data, so take it before sealing.
    secret_id: int = await tx.fetchval(
        "SELECT nextval(pg_get_serial_sequence('webhook_secrets', 'id'))"
    )
    await tx.execute(
        "INSERT INTO webhook_secrets (id, endpoint_id, secret_enc) VALUES ($1, $2, $3)",
        secret_id,
        endpoint_id,
        box.encrypt(secret, aad=secret_aad(secret_id)),
    )
    return secret_id


async def get(db: Executor, endpoint_id: str) -> Endpoint | None:
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM webhook_endpoints WHERE id = $1", endpoint_id)
    return None if row is None else _endpoint(row)


async def list_endpoints(
    db: Executor, *, enabled: bool | None = None, after: str | None = None, limit: int = 100
) -> list[Endpoint]:
    """Ordered by id; ``after`` is the last id of the previous page."""
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM webhook_endpoints"
        " WHERE ($1::boolean IS NULL OR enabled = $1) AND ($2::text IS NULL OR id > $2)"
        " ORDER BY id LIMIT $3",
        enabled,
        after,
        limit,
    )
    return [_endpoint(r) for r in rows]


async def matching(db: Executor, event_type: str) -> list[Endpoint]:
    """The enabled endpoints whose filters take ``event_type``."""
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM webhook_endpoints WHERE enabled AND {MATCH_SQL} ORDER BY id",
        event_type,
    )
    return [_endpoint(r) for r in rows]


_UNSET: Final[Any] = object()


async def update(
    tx: Conn,
    endpoint_id: str,
    *,
    url: str = _UNSET,
    description: str = _UNSET,
    event_types: Iterable[str] = _UNSET,
    enabled: bool = _UNSET,
    rate_limit_per_second: int | None = _UNSET,
    max_concurrency: int | None = _UNSET,
    legacy_signature: bool = _UNSET,
) -> Endpoint:
    """Change the given fields. Enabling clears the disabled reason and the failure run;
    disabling (the operator) fails the pending deliveries."""
    changes: dict[str, Any] = {}
    if url is not _UNSET:
        changes["url"] = check_url(url)
    if description is not _UNSET:
        changes["description"] = description
    if event_types is not _UNSET:
        changes["event_types"] = list(check_event_types(event_types))
    if rate_limit_per_second is not _UNSET or max_concurrency is not _UNSET:
        _check_limits(
            None if rate_limit_per_second is _UNSET else rate_limit_per_second,
            None if max_concurrency is _UNSET else max_concurrency,
        )
    if rate_limit_per_second is not _UNSET:
        changes["rate_limit_per_second"] = rate_limit_per_second
    if max_concurrency is not _UNSET:
        changes["max_concurrency"] = max_concurrency
    if legacy_signature is not _UNSET:
        changes["legacy_signature"] = legacy_signature
    current = await _lock(tx, endpoint_id)
    if enabled is not _UNSET and enabled != current.enabled:
        if enabled:
            changes |= {
                "enabled": True,
                "disabled_reason": None,
                "disabled_at": None,
                "failing_since": None,
            }
        else:
            return await _disable(tx, current, "operator", changes, announce=False)
    if not changes:
        return current
    return await _apply(tx, endpoint_id, changes)


async def _lock(tx: Conn, endpoint_id: str) -> Endpoint:
    row = await tx.fetchrow(
        f"SELECT {_COLUMNS} FROM webhook_endpoints WHERE id = $1 FOR UPDATE", endpoint_id
    )
    if row is None:
        raise EndpointNotFound(endpoint_id)
    return _endpoint(row)


async def _apply(tx: Conn, endpoint_id: str, changes: dict[str, Any]) -> Endpoint:
    # Column names come from this module, never from callers.
    sets = ", ".join(f"{k} = ${i}" for i, k in enumerate(changes, start=2))
    row = await tx.fetchrow(
        f"UPDATE webhook_endpoints SET {sets}, updated_at = now() WHERE id = $1"
        f" RETURNING {_COLUMNS}",
        endpoint_id,
        *changes.values(),
    )
    if row is None:
        raise EndpointNotFound(endpoint_id)
    return _endpoint(row)


async def disable(tx: Conn, endpoint_id: str, reason: DisabledReason, detail: str = "") -> bool:
    """Disable an enabled endpoint (410 Gone: ``gone``, failing too long: ``failing``),
    fail its pending deliveries and emit ``endpoint.disabled``. False if it already was."""
    current = await _lock(tx, endpoint_id)
    if not current.enabled:
        return False
    await _disable(tx, current, reason, {}, announce=True, detail=detail)
    return True


async def _disable(
    tx: Conn,
    current: Endpoint,
    reason: str,
    changes: dict[str, Any],
    *,
    announce: bool,
    detail: str = "",
) -> Endpoint:
    changes = changes | {"enabled": False, "disabled_reason": reason}
    await _apply(tx, current.id, changes)
    row = await tx.fetchrow(
        f"UPDATE webhook_endpoints SET disabled_at = now() WHERE id = $1 RETURNING {_COLUMNS}",
        current.id,
    )
    endpoint = _endpoint(row)
    await tx.execute(
        "UPDATE webhook_deliveries SET state = 'failed', next_attempt_at = NULL,"
        " leased_until = NULL, finished_at = now(), updated_at = now(),"
        " last_error = coalesce(last_error || '; ', '') || 'endpoint disabled'"
        " WHERE endpoint_id = $1 AND state = 'pending'",
        current.id,
    )
    if announce:
        assert endpoint.disabled_at is not None
        # No URL, no description: they are the partner's, and this goes to others.
        await outbox.emit(
            tx,
            "endpoint.disabled",
            {
                "endpoint_id": endpoint.id,
                "reason": reason,
                "disabled_at": _iso(endpoint.disabled_at),
                "failing_since": _iso(endpoint.failing_since),
            },
            subject=f"endpoint:{endpoint.id}",
        )
        log.warning("webhook endpoint %s disabled (%s): %s", endpoint.id, reason, detail)
    return endpoint


def _iso(when: dt.datetime | None) -> str | None:
    return None if when is None else when.isoformat().replace("+00:00", "Z")


async def delete(db: Executor, endpoint_id: str) -> bool:
    """Delete the endpoint with its secrets, deliveries and attempts."""
    status = await db.execute("DELETE FROM webhook_endpoints WHERE id = $1", endpoint_id)
    return status == "DELETE 1"


async def rotate_secret(
    tx: Conn,
    box: Keyring,
    endpoint_id: str,
    *,
    overlap_seconds: float = DEFAULT_OVERLAP_SECONDS,
    secret: str | None = None,
) -> str:
    """Add a new secret; the endpoint's other active secrets keep signing for
    ``overlap_seconds`` (0: stop now). Returns the new secret."""
    check_overlap(overlap_seconds)
    await _lock(tx, endpoint_id)
    secret = check_secret(secret) if secret is not None else generate_secret()
    await tx.execute(
        "UPDATE webhook_secrets SET expires_at = now() + make_interval(secs => $2::float8)"
        " WHERE endpoint_id = $1 AND (expires_at IS NULL"
        "  OR expires_at > now() + make_interval(secs => $2::float8))",
        endpoint_id,
        float(overlap_seconds),
    )
    await _add_secret(tx, box, endpoint_id, secret)
    return secret


def check_overlap(overlap_seconds: float) -> float:
    # NaN, inf or centuries would only fail later, in PostgreSQL's interval arithmetic.
    if not (math.isfinite(overlap_seconds) and 0 <= overlap_seconds <= MAX_OVERLAP_SECONDS):
        raise EndpointError(f"overlap_seconds: give 0 to {MAX_OVERLAP_SECONDS:.0f} seconds")
    return overlap_seconds


async def secrets_of(db: Executor, endpoint_id: str | None) -> list[SigningSecret]:
    """Metadata of an endpoint's secrets (None: the callback secrets), newest first."""
    rows = await db.fetch(
        "SELECT id, endpoint_id, created_at, expires_at FROM webhook_secrets"
        " WHERE endpoint_id IS NOT DISTINCT FROM $1 ORDER BY id DESC",
        endpoint_id,
    )
    return [SigningSecret(**dict(r)) for r in rows]


async def active_secrets(
    db: Executor, box: Keyring, endpoint_id: str | None, now: dt.datetime | None = None
) -> list[str]:
    """The secrets that sign now (newest first); ``endpoint_id`` None: the daemon-wide
    callback secrets. ``now`` defaults to the database's clock."""
    rows = await db.fetch(
        "SELECT id, secret_enc FROM webhook_secrets WHERE endpoint_id IS NOT DISTINCT FROM $1"
        " AND (expires_at IS NULL OR expires_at > coalesce($2, now())) ORDER BY id DESC",
        endpoint_id,
        now,
    )
    return [box.decrypt(r["secret_enc"], aad=secret_aad(r["id"])) for r in rows]


async def signing_secrets(
    db: Executor, box: Keyring, endpoint_id: str | None, now: dt.datetime
) -> tuple[list[str], dt.datetime | None]:
    """``active_secrets`` at ``now``, plus when that set next changes by itself (the
    earliest expiry among them; None: not until someone rotates), for caching."""
    rows = await db.fetch(
        "SELECT id, secret_enc, expires_at FROM webhook_secrets"
        " WHERE endpoint_id IS NOT DISTINCT FROM $1"
        " AND (expires_at IS NULL OR expires_at > $2) ORDER BY id DESC",
        endpoint_id,
        now,
    )
    expiries = [r["expires_at"] for r in rows if r["expires_at"] is not None]
    secrets = [box.decrypt(r["secret_enc"], aad=secret_aad(r["id"])) for r in rows]
    return secrets, min(expiries, default=None)


async def ensure_callback_secret(tx: Conn, box: Keyring) -> None:
    """Create the daemon-wide callback secret if there is none (idempotent)."""
    await tx.execute("SELECT pg_advisory_xact_lock(hashtext('webhook_callback_secret'))")
    present = await tx.fetchval(
        "SELECT 1 FROM webhook_secrets WHERE endpoint_id IS NULL"
        " AND (expires_at IS NULL OR expires_at > now())"
    )
    if not present:
        await _add_secret(tx, box, None, generate_secret())


async def rotate_callback_secret(
    tx: Conn,
    box: Keyring,
    *,
    overlap_seconds: float = DEFAULT_OVERLAP_SECONDS,
    secret: str | None = None,
) -> str:
    """The daemon-wide callback secret's rotation (same overlap rule as an endpoint's)."""
    check_overlap(overlap_seconds)
    secret = check_secret(secret) if secret is not None else generate_secret()
    await tx.execute("SELECT pg_advisory_xact_lock(hashtext('webhook_callback_secret'))")
    await tx.execute(
        "UPDATE webhook_secrets SET expires_at = now() + make_interval(secs => $1::float8)"
        " WHERE endpoint_id IS NULL AND (expires_at IS NULL"
        "  OR expires_at > now() + make_interval(secs => $1::float8))",
        float(overlap_seconds),
    )
    await _add_secret(tx, box, None, secret)
    return secret


async def record_outcome(
    tx: Conn, endpoint_id: str, *, ok: bool, at: dt.datetime
) -> dt.datetime | None:
    """After an attempt: a success ends the failure run; a failure starts one if none is
    running. Returns the start of the current failure run (None after a success)."""
    since: dt.datetime | None = await tx.fetchval(
        "UPDATE webhook_endpoints SET failing_since = CASE WHEN $2 THEN NULL"
        " ELSE coalesce(failing_since, $3) END"
        # A success while nothing is failing writes nothing (no row lock per delivery).
        " WHERE id = $1 AND (failing_since IS NOT NULL OR NOT $2) RETURNING failing_since",
        endpoint_id,
        ok,
        at,
    )
    return since
