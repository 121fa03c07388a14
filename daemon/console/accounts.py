"""Operator accounts and console sessions (migration 021): the console's only SQL.

Passwords are hashed with scrypt (``hashlib.scrypt``, N=2^14, r=8, p=1: ~16 MiB and a few
tens of ms per check), run in a worker thread so a sign-in never blocks the event loop.
A check against an unknown or disabled name still runs scrypt on a dummy hash, so timing
does not say which names exist.

A session is ``secrets.token_urlsafe(32)`` in the cookie; the table keeps only its
SHA-256 (256 random bits need no slow hash), its expiry and the per-session CSRF token.
An admin-token session keeps SHA-256 of the token it was opened with: a changed
``http.admin_token`` ends it at the next request.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass, field

import trio

from daemon.platform.db import Executor

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # scrypt over a megabyte-long "password" is a cheap way to load us
_N, _R, _P = 2**14, 8, 1
_MAXMEM = 64 * 1024 * 1024


class AccountError(ValueError):
    """A bad name or password given to add/disable; the message says what to fix."""


@dataclass(frozen=True)
class Operator:
    name: str
    created_at: dt.datetime
    disabled_at: dt.datetime | None
    last_login_at: dt.datetime | None


@dataclass(frozen=True)
class Session:
    """Who is signed in: an operator's name, or None for the admin token."""

    operator: str | None
    csrf_token: str = field(repr=False)
    expires_at: dt.datetime

    @property
    def who(self) -> str:
        return f"console:{self.operator}" if self.operator else "console:admin-token"


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, maxmem=_MAXMEM)
    b64 = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=_MAXMEM,
            dklen=len(expected),
        )
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


# Checked against when the name is unknown, so both answers cost one scrypt.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise AccountError(
            "an operator name is 1-64 letters, digits or ._@- and starts with a letter or digit"
        )
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"the password must be at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise AccountError(f"the password must be at most {MAX_PASSWORD} characters")
    return password


async def add_operator(db: Executor, name: str, password: str) -> None:
    """Create an operator; ``AccountError`` if the name is taken or a rule is broken."""
    check_name(name)
    check_password(password)
    hashed = await trio.to_thread.run_sync(hash_password, password)
    added = await db.fetchval(
        "INSERT INTO console_operators (name, password_hash) VALUES ($1, $2)"
        " ON CONFLICT (name) DO NOTHING RETURNING name",
        name,
        hashed,
    )
    if added is None:
        raise AccountError(f"an operator named {name!r} already exists")
    log.info("console operator %s added", name)


async def set_password(db: Executor, name: str, password: str) -> None:
    """Replace an operator's password and end their sessions (they sign in again)."""
    check_password(password)
    hashed = await trio.to_thread.run_sync(hash_password, password)
    found = await db.fetchval(
        "WITH changed AS (UPDATE console_operators SET password_hash = $2 WHERE name = $1"
        " RETURNING name), gone AS (DELETE FROM console_sessions WHERE operator IN"
        " (SELECT name FROM changed)) SELECT name FROM changed",
        name,
        hashed,
    )
    if found is None:
        raise AccountError(f"no operator named {name!r} (see 'paymentd operators list')")
    log.info("console operator %s: password changed", name)


async def list_operators(db: Executor) -> list[Operator]:
    rows = await db.fetch(
        "SELECT name, created_at, disabled_at, last_login_at FROM console_operators ORDER BY name"
    )
    return [Operator(**{k: r[k] for k in Operator.__dataclass_fields__}) for r in rows]


async def disable_operator(db: Executor, name: str) -> None:
    """Disable an operator and end their sessions at once (one statement)."""
    found = await db.fetchval(
        "WITH changed AS (UPDATE console_operators SET disabled_at = coalesce(disabled_at, now())"
        " WHERE name = $1 RETURNING name), gone AS (DELETE FROM console_sessions WHERE"
        " operator IN (SELECT name FROM changed)) SELECT name FROM changed",
        name,
    )
    if found is None:
        raise AccountError(f"no operator named {name!r} (see 'paymentd operators list')")
    log.info("console operator %s disabled", name)


async def enable_operator(db: Executor, name: str) -> None:
    found = await db.fetchval(
        "UPDATE console_operators SET disabled_at = NULL WHERE name = $1 RETURNING name", name
    )
    if found is None:
        raise AccountError(f"no operator named {name!r} (see 'paymentd operators list')")
    log.info("console operator %s enabled", name)


async def check_operator(db: Executor, name: str, password: str) -> bool:
    """Whether ``name`` is an enabled operator with that password (one scrypt either way)."""
    if len(password) > MAX_PASSWORD:
        return False
    row = await db.fetchrow(
        "SELECT password_hash, disabled_at FROM console_operators WHERE name = $1", name
    )
    stored = row["password_hash"] if row is not None else _DUMMY_HASH
    ok = await trio.to_thread.run_sync(verify_password, password, stored)
    return ok and row is not None and row["disabled_at"] is None


def admin_tag(admin_token: str) -> bytes:
    return hashlib.sha256(b"console-admin:" + admin_token.encode()).digest()


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii", "replace")).digest()


async def open_session(
    db: Executor, *, operator: str | None, admin_token: str | None, lifetime_seconds: float
) -> str:
    """A new session; returns the cookie value (only its hash is stored).

    Expired sessions are deleted here (indexed on ``expires_at``), so the table holds no
    more than the sessions opened within one lifetime.
    """
    token = secrets.token_urlsafe(32)
    await db.execute("DELETE FROM console_sessions WHERE expires_at <= now()")
    await db.execute(
        "INSERT INTO console_sessions (token_sha256, operator, admin_tag, csrf_token, expires_at)"
        " VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))",
        _digest(token),
        operator,
        None if admin_token is None else admin_tag(admin_token),
        secrets.token_urlsafe(32),
        lifetime_seconds,
    )
    if operator is not None:
        await db.execute(
            "UPDATE console_operators SET last_login_at = now() WHERE name = $1", operator
        )
    return token


async def find_session(db: Executor, token: str, admin_token: str) -> Session | None:
    """The live session behind a cookie value, or None (unknown, expired, or its
    operator disabled, or the admin token it was opened with changed)."""
    row = await db.fetchrow(
        "SELECT s.operator, s.admin_tag, s.csrf_token, s.expires_at FROM console_sessions s"
        " LEFT JOIN console_operators o ON o.name = s.operator"
        " WHERE s.token_sha256 = $1 AND s.expires_at > now()"
        " AND (s.operator IS NULL OR o.disabled_at IS NULL)",
        _digest(token),
    )
    if row is None:
        return None
    if row["operator"] is None and not (
        admin_token and hmac.compare_digest(bytes(row["admin_tag"]), admin_tag(admin_token))
    ):
        return None
    return Session(row["operator"], row["csrf_token"], row["expires_at"])


async def close_session(db: Executor, token: str) -> None:
    await db.execute("DELETE FROM console_sessions WHERE token_sha256 = $1", _digest(token))
