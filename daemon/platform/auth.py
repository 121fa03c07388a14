"""Who may call an HTTP route: the admin token, or an API key with the route's scope.

Consumes the ``Authorization: Bearer …`` header and the ``api_keys`` table (migration
003). Produces a ``Principal`` for the route (``g.principal``) or a 401/403/503 problem.

Two kinds of credential travel in the same header:

- ``http.admin_token``: the operator's root credential, compared in constant time; it
  satisfies every scope. Empty disables it (and then a request with anything but an API
  key answers 503, so the admin API is never open by accident).
- API keys ``pd_<id>_<secret>``: ``id`` is 12 hex digits (the row, shown by ``paymentd
  apikey list``), ``secret`` 32 random bytes (URL-safe base64). Only SHA-256(secret) is
  stored: with 256 bits of entropy a brute force is hopeless whatever the hash, so a slow
  password hash (argon2, bcrypt) would add only ~50 ms of CPU per request, a lever for
  denial of service, and no safety. A key holds only the scopes it was given: ``admin``
  does not imply ``payments:write``.

Routes declare their scope with ``Guard.require(scope)`` (one route) or
``Guard.protect(blueprint, scope)`` (all of a blueprint's routes); either also documents
the requirement in ``/openapi.json``. No credential is ever logged, echoed or put in an
error: problems say what was wrong, never with what.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, TypeVar, cast

from quart import Blueprint, g, request
from quart_schema import security_scheme, security_scheme_blueprint

from daemon.platform.db import Executor
from daemon.platform.deps import Deps
from daemon.platform.http.problem import Problem

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

ADMIN = "admin"
PAYMENTS_READ = "payments:read"
PAYMENTS_WRITE = "payments:write"
WEBHOOKS_MANAGE = "webhooks:manage"
SCOPES = (ADMIN, PAYMENTS_READ, PAYMENTS_WRITE, WEBHOOKS_MANAGE)

KEY_PREFIX = "pd_"
_KEY = re.compile(r"pd_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._@:-]{0,99}")
# last_used_at is refreshed when older than this: a write per key a minute, not per request.
LAST_USED_RESOLUTION_SECONDS = 60
REALM = 'Bearer realm="paymentd"'


class ApiKeyError(ValueError):
    """A bad name, scope or key id given to create/revoke; the message says what to fix."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the admin token, or an API key (by id and name, never its secret)."""

    kind: str  # "admin_token" or "api_key"
    scopes: frozenset[str]
    key_id: str | None = None
    name: str | None = None

    def __str__(self) -> str:
        return "the admin token" if self.key_id is None else f"API key {self.key_id} ({self.name})"


@dataclass(frozen=True)
class CreatedKey:
    id: str
    name: str
    scopes: list[str]
    key: str = field(repr=False)  # shown once, never stored, never in a repr


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


def check_scopes(scopes: Iterable[str]) -> list[str]:
    wanted = sorted(set(scopes))
    if not wanted:
        raise ApiKeyError(f"give at least one --scope ({', '.join(SCOPES)})")
    unknown = [s for s in wanted if s not in SCOPES]
    if unknown:
        raise ApiKeyError(f"unknown scope {unknown[0]!r}; scopes are {', '.join(SCOPES)}")
    return wanted


async def create_key(db: Executor, name: str, scopes: Iterable[str]) -> CreatedKey:
    if not _NAME.fullmatch(name):
        raise ApiKeyError(
            "--name must be 1-100 letters, digits, spaces or ._@:- and start with a letter or digit"
        )
    wanted = check_scopes(scopes)
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    await db.execute(
        "INSERT INTO api_keys (id, name, secret_sha256, scopes) VALUES ($1, $2, $3, $4)",
        key_id,
        name,
        _digest(secret),
        wanted,
    )
    log.info("API key %s (%s) created with scopes %s", key_id, name, ", ".join(wanted))
    return CreatedKey(key_id, name, wanted, f"{KEY_PREFIX}{key_id}_{secret}")


async def list_keys(db: Executor) -> list[dict[str, Any]]:
    """Every key's id, name, scopes and dates; never the hash."""
    rows = await db.fetch(
        "SELECT id, name, scopes, created_at, last_used_at, revoked_at FROM api_keys"
        " ORDER BY created_at, id"
    )
    return [dict(r) for r in rows]


async def revoke_key(db: Executor, key_id: str) -> None:
    """Revoke a key for good; ``ApiKeyError`` if there is no such (unrevoked) key."""
    row = await db.fetchrow(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1"
        " RETURNING revoked_at = now() AS now_revoked",
        key_id,
    )
    if row is None:
        raise ApiKeyError(f"no API key {key_id!r} (see 'paymentd apikey list')")
    if not row["now_revoked"]:
        raise ApiKeyError(f"API key {key_id!r} was already revoked")
    log.info("API key %s revoked", key_id)


def _unauthorized(detail: str, *, invalid: bool = False) -> Problem:
    challenge = REALM + (', error="invalid_token"' if invalid else "")
    return Problem(401, detail, headers={"WWW-Authenticate": challenge})


def bearer_token(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("send Authorization: Bearer <http.admin_token or API key>")
    return token


async def _api_key(db: Executor, key_id: str, secret: str) -> Principal:
    row = await db.fetchrow(
        "SELECT name, secret_sha256, scopes, revoked_at,"
        " last_used_at IS NULL OR last_used_at < now() - make_interval(secs => $2) AS stale"
        " FROM api_keys WHERE id = $1",
        key_id,
        LAST_USED_RESOLUTION_SECONDS,
    )
    # A missing row still costs a digest and a compare, so the two answers look alike.
    stored = bytes(row["secret_sha256"]) if row is not None else b"\0" * 32
    genuine = hmac.compare_digest(_digest(secret), stored)
    if row is None or not genuine or row["revoked_at"] is not None:
        raise _unauthorized("the API key is not valid (unknown, wrong or revoked)", invalid=True)
    if row["stale"]:
        await db.execute("UPDATE api_keys SET last_used_at = now() WHERE id = $1", key_id)
    return Principal("api_key", frozenset(row["scopes"]), key_id, row["name"])


async def authenticate(deps: Deps, authorization: str | None, scopes: Sequence[str]) -> Principal:
    """The caller, if it may use a route that needs every one of ``scopes``; else a problem."""
    expected = deps.config.http.admin_token.reveal()
    scheme, _, raw = (authorization or "").partition(" ")
    key = _KEY.fullmatch(raw.strip()) if scheme.lower() == "bearer" else None
    if key is None:
        if not expected:
            # Without an admin token only API keys get in. An admin route says what to
            # set; elsewhere (the payments API) a missing or mistyped key is the caller's
            # mistake, and a 503 would send a merchant to look for an outage.
            if ADMIN in scopes:
                raise Problem(503, "admin API disabled: set http.admin_token")
            raise _unauthorized(
                "send Authorization: Bearer <API key> (pd_<id>_<secret>)",
                invalid=bool(authorization),
            )
        token = bearer_token(authorization)
        # Bytes, because compare_digest refuses non-ASCII str and headers are user input.
        if not hmac.compare_digest(token.encode(), expected.encode()):
            raise _unauthorized("the bearer token is not valid", invalid=True)
        return Principal("admin_token", frozenset(SCOPES))
    principal = await _api_key(deps.db, *key.groups())
    missing = [s for s in scopes if s not in principal.scopes]
    if missing:
        challenge = REALM + f', error="insufficient_scope", scope="{missing[0]}"'
        raise Problem(
            403,
            f"this API key lacks the scope {missing[0]!r}",
            headers={"WWW-Authenticate": challenge},
            scope=missing[0],
        )
    return principal


def current_principal() -> Principal:
    principal: Principal = g.principal
    return principal


class Guard:
    """Scope checks bound to one daemon's ``Deps`` (tests run several apps in a process)."""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    async def check(self, *scopes: str) -> Principal:
        principal = await authenticate(
            self._deps, request.headers.get("Authorization"), list(scopes)
        )
        g.principal = principal
        return principal

    def require(self, *scopes: str) -> Callable[[F], F]:
        """Decorate a route: it runs only for a caller holding every one of ``scopes``."""

        def decorator(func: F) -> F:
            @wraps(func)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                await self.check(*scopes)
                return await func(*args, **kwargs)

            return security_scheme([{"bearer": list(scopes)}])(cast(F, wrapper))

        return decorator

    def protect(self, blueprint: Blueprint, *scopes: str) -> None:
        """Every route of ``blueprint`` needs ``scopes`` (checked before the route runs)."""

        async def _authenticate() -> None:
            await self.check(*scopes)

        blueprint.before_request(_authenticate)
        security_scheme_blueprint(blueprint, [{"bearer": list(scopes)}])
