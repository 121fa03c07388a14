"""Stripe's webhook signing secrets (``whsec_…``), kept in the keyring.

Each secret is a row of ``stripe_webhook_secrets`` (migration 020), encrypted with the
keyring (``daemon.platform.secrets``: AES-256-GCM, bound to its row id, re-encrypted by
``paymentd secrets rotate``). At most ``MAX_ACTIVE`` (two) are active at once: during a
rotation at Stripe ("roll secret", with the old one valid for a while) both verify;
``retire`` ends the old one. Operators manage them with ``paymentd payments
stripe-secret add | list | retire`` (``daemon.cli.stripe_secrets``); nothing ever shows
a secret once stored (``list`` shows ids and times).

``VerifyingSecrets`` is what ``POST /webhooks/stripe`` asks: the active secrets,
decrypted once and kept in memory for ``payments.stripe_webhook_secrets_refresh_seconds``,
so verifying an event costs no query. A signature no cached secret verifies triggers one
early refresh (at most once a second), so a secret just added works at its first event;
a retired one stops verifying within the refresh time. The config's
``payments.stripe_webhook_secrets`` are accepted too, after the keyring's: older configs
keep working, and an operator moves them with ``stripe-secret add`` and then removes
them from the config.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import secrets
from dataclasses import dataclass
from typing import Any

import trio

from daemon.platform import logs
from daemon.platform.config import PaymentsConfig, Secret, SecretsConfig
from daemon.platform.db import Database, DatabaseError, Executor
from daemon.platform.secrets import Keyring, SecretKeyError, load_keyring

log = logging.getLogger(__name__)

MAX_ACTIVE = 2
PREFIX = "whsec_"
# A miss (no cached secret verifies) refreshes early at most this often: a flood of
# forged signatures costs one query a second, not one per request.
MISS_REFRESH_SECONDS = 1.0


class SigningSecretError(Exception):
    """A refused change; the message says what to do (never shows a secret)."""


class SigningSecretsUnavailable(Exception):
    """The stored secrets cannot be read now (keyring or database): answer 503."""


@dataclass(frozen=True)
class SigningSecret:
    id: str
    note: str | None
    created_at: dt.datetime
    retired_at: dt.datetime | None

    @property
    def active(self) -> bool:
        return self.retired_at is None


def aad(secret_id: str) -> bytes:
    """The associated data a secret is sealed with: its row (a token copied elsewhere fails)."""
    return f"stripe_webhook_secret:{secret_id}".encode()


def check(text: str) -> str:
    """The secret as stored, or ``SigningSecretError`` saying what is wrong with it."""
    value = text.strip()
    if not value.startswith(PREFIX) or len(value) < len(PREFIX) + 8:
        raise SigningSecretError(
            "not a Stripe signing secret: expected whsec_ and at least 8 more characters"
            " (Dashboard → Developers → Webhooks → your endpoint → Signing secret)"
        )
    if len(value) > 200 or any(c.isspace() for c in value):
        raise SigningSecretError("not a Stripe signing secret: one line, at most 200 characters")
    return value


_COLUMNS = "id, note, created_at, retired_at"


def _row(row: Any) -> SigningSecret:
    return SigningSecret(row["id"], row["note"], row["created_at"], row["retired_at"])


async def add(db: Database, box: Keyring, secret: str, note: str | None = None) -> SigningSecret:
    """Store ``secret`` (checked) encrypted; refused if it is already active or if
    ``MAX_ACTIVE`` are."""
    value = check(secret)
    async with db.transaction() as tx:
        # Adds one at a time: two racing adds cannot make three active.
        await tx.execute("SELECT pg_advisory_xact_lock(hashtext('stripe_webhook_secrets'))")
        active = await tx.fetch(
            "SELECT id, secret_enc FROM stripe_webhook_secrets WHERE retired_at IS NULL"
            " ORDER BY created_at"
        )
        for row in active:
            stored = box.decrypt(row["secret_enc"], aad=aad(row["id"]))
            if hmac.compare_digest(stored.encode(), value.encode()):
                raise SigningSecretError(f"that secret is already active as {row['id']}")
        if len(active) >= MAX_ACTIVE:
            ids = ", ".join(r["id"] for r in active)
            raise SigningSecretError(
                f"{MAX_ACTIVE} secrets are active already ({ids}): retire the old one first"
                " with 'paymentd payments stripe-secret retire ID'"
            )
        secret_id = "sws_" + secrets.token_hex(8)
        row = await tx.fetchrow(
            "INSERT INTO stripe_webhook_secrets (id, secret_enc, note) VALUES ($1, $2, $3)"
            f" RETURNING {_COLUMNS}",
            secret_id,
            box.encrypt(value, aad=aad(secret_id)),
            note,
        )
    return _row(row)


async def retire(db: Executor, secret_id: str) -> SigningSecret:
    row = await db.fetchrow(
        "UPDATE stripe_webhook_secrets SET retired_at = now()"
        f" WHERE id = $1 AND retired_at IS NULL RETURNING {_COLUMNS}",
        secret_id,
    )
    if row is not None:
        return _row(row)
    known = await db.fetchrow(f"SELECT {_COLUMNS} FROM stripe_webhook_secrets WHERE id = $1",
                              secret_id)  # fmt: skip
    if known is None:
        raise SigningSecretError(
            f"no signing secret {secret_id!r} (see 'paymentd payments stripe-secret list')"
        )
    return _row(known)  # retired already: nothing to do


async def listing(db: Executor) -> list[SigningSecret]:
    """Every secret, active first, newest first (ids and times only)."""
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM stripe_webhook_secrets"
        " ORDER BY retired_at IS NOT NULL, created_at DESC"
    )
    return [_row(r) for r in rows]


class VerifyingSecrets:
    """The secrets ``POST /webhooks/stripe`` verifies with: the keyring's active ones,
    cached; then the config's. One per HTTP app."""

    def __init__(self, payments: PaymentsConfig, secrets_cfg: SecretsConfig) -> None:
        self._config = [s for s in payments.stripe_webhook_secrets if s]
        self._secrets_cfg = secrets_cfg
        self._ttl = payments.stripe_webhook_secrets_refresh_seconds
        self._box: Keyring | None = None
        self._stored: list[Secret] | None = None
        self._loaded_at = -float("inf")
        self._missed_at = -float("inf")  # the last early refresh after a miss
        self._lock = trio.Lock()

    def __repr__(self) -> str:
        held = "unloaded" if self._stored is None else f"{len(self._stored)} stored"
        return f"VerifyingSecrets({held}, {len(self._config)} from config)"

    async def candidates(self, db: Database) -> list[Secret]:
        """Stored (active) secrets first, then the config's; refreshed past the TTL."""
        if trio.current_time() - self._loaded_at >= self._ttl:
            await self._refresh(db, min_age=self._ttl)
        return [*(self._stored or []), *self._config]

    async def refresh_after_miss(self, db: Database) -> bool:
        """No candidate verified: re-read now (unless just done); whether anything changed."""
        if trio.current_time() - self._missed_at < MISS_REFRESH_SECONDS:
            return False
        self._missed_at = trio.current_time()
        before = [s.reveal() for s in self._stored or []]
        await self._refresh(db, min_age=0)
        return [s.reveal() for s in self._stored or []] != before

    async def _refresh(self, db: Database, *, min_age: float) -> None:
        async with self._lock:
            if trio.current_time() - self._loaded_at < min_age:
                return  # another request just did
            try:
                rows = await db.fetch(
                    "SELECT id, secret_enc FROM stripe_webhook_secrets WHERE retired_at IS NULL"
                    " ORDER BY created_at DESC"
                )
                stored = [Secret(self._decrypt(r["id"], r["secret_enc"])) for r in rows]
            except (DatabaseError, SecretKeyError) as exc:
                if self._stored is None and not self._config:
                    raise SigningSecretsUnavailable(str(exc)) from None
                # Keep verifying with what we had (or the config's) until it reads again.
                log.warning("Stripe signing secrets not refreshed (kept the last ones): %s", exc)
                self._loaded_at = trio.current_time()
                return
            for s in stored:
                logs.register_secret(s)  # never in a log line, whatever logs it
            self._stored, self._loaded_at = stored, trio.current_time()

    def _decrypt(self, secret_id: str, token: str) -> str:
        if self._box is None:
            self._box = load_keyring(self._secrets_cfg)
        return self._box.decrypt(token, aad=aad(secret_id))


__all__ = [
    "MAX_ACTIVE",
    "SigningSecret",
    "SigningSecretError",
    "SigningSecretsUnavailable",
    "VerifyingSecrets",
    "aad",
    "add",
    "check",
    "listing",
    "retire",
]
