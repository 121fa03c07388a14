"""Publishable keys (table ``publishable_keys``, migration 022): what a merchant's web
page gives the SDK.

A publishable key is public by design (it sits in the page's HTML), so it is not a
credential for anything but one thing: asking ``POST /checkout-links`` for a payment's
checkout link from a browser page whose ``Origin`` the key lists. Keys are created next
to API keys (``paymentd apikey publishable create --name N --origin URL``), listed and
revoked the same way. The payment id is what the merchant's server hands its own page
after creating the payment with its secret API key; ids are random (96 bits), so a key
alone reveals no payment.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from daemon.checkout.links import is_origin
from daemon.platform.auth import ApiKeyError
from daemon.platform.db import Executor

log = logging.getLogger(__name__)

PREFIX = "pk_"
KEY = re.compile(r"pk_[0-9a-f]{24}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._@:-]{0,99}")
MAX_ORIGINS = 20


class PublishableKeyError(ApiKeyError):
    """A bad name, origin or key id; the message says what to fix (the CLI exits 2)."""


@dataclass(frozen=True)
class PublishableKey:
    id: str
    name: str
    allowed_origins: list[str]
    revoked: bool

    def allows(self, origin: str) -> bool:
        return not self.revoked and origin in self.allowed_origins


def check_origins(origins: Iterable[str]) -> list[str]:
    wanted = sorted({o.strip().rstrip("/") for o in origins})
    if not wanted:
        raise PublishableKeyError("give at least one --origin, e.g. https://shop.example")
    if len(wanted) > MAX_ORIGINS:
        raise PublishableKeyError(f"at most {MAX_ORIGINS} origins per key")
    for origin in wanted:
        if not is_origin(origin):
            raise PublishableKeyError(
                f"--origin {origin!r} is not an origin: scheme://host[:port], no path,"
                " e.g. https://shop.example"
            )
    return wanted


async def create(db: Executor, name: str, origins: Iterable[str]) -> PublishableKey:
    if not _NAME.fullmatch(name):
        raise PublishableKeyError(
            "--name must be 1-100 letters, digits, spaces or ._@:- and start with a letter or digit"
        )
    allowed = check_origins(origins)
    key_id = PREFIX + secrets.token_hex(12)
    await db.execute(
        "INSERT INTO publishable_keys (id, name, allowed_origins) VALUES ($1, $2, $3)",
        key_id,
        name,
        allowed,
    )
    log.info("publishable key %s (%s) created for %s", key_id, name, ", ".join(allowed))
    return PublishableKey(key_id, name, allowed, False)


async def get(db: Executor, key_id: str) -> PublishableKey | None:
    if not KEY.fullmatch(key_id):
        return None
    row = await db.fetchrow(
        "SELECT id, name, allowed_origins, revoked_at IS NOT NULL AS revoked"
        " FROM publishable_keys WHERE id = $1",
        key_id,
    )
    if row is None:
        return None
    return PublishableKey(row["id"], row["name"], list(row["allowed_origins"]), row["revoked"])


async def list_keys(db: Executor) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT id, name, allowed_origins, created_at, revoked_at FROM publishable_keys"
        " ORDER BY created_at, id"
    )
    return [dict(r) for r in rows]


async def revoke(db: Executor, key_id: str) -> None:
    row = await db.fetchrow(
        "UPDATE publishable_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1"
        " RETURNING revoked_at = now() AS now_revoked",
        key_id,
    )
    if row is None:
        raise PublishableKeyError(
            f"no publishable key {key_id!r} (see 'paymentd apikey publishable list')"
        )
    if not row["now_revoked"]:
        raise PublishableKeyError(f"publishable key {key_id!r} was already revoked")
    log.info("publishable key %s revoked", key_id)
