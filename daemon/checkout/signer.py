"""The keys that sign checkout links (and the checkout form's CSRF tokens), derived from
the secrets keyring on first use, the way the webhook API loads it."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import time

from daemon.checkout import links
from daemon.platform.deps import Deps
from daemon.platform.http.problem import Problem
from daemon.platform.secrets import SecretKeyError, load_keyring


class Signer:
    """The link keys, derived from the keyring on first use (as the webhook API loads it)."""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self._keys: list[bytes] | None = None

    def keys(self) -> list[bytes]:
        if self._keys is None:
            try:
                ring = load_keyring(self._deps.config.secrets)
            except SecretKeyError:
                raise Problem(
                    503, "the secrets keyring cannot be loaded: see secrets.key_file"
                ) from None
            self._keys = ring.derive(links.PURPOSE)
        return self._keys

    def path(self, payment_id: str, expires: int, origin: str = "") -> str:
        token = links.sign(self.keys()[0], links.Link(payment_id, expires, origin))
        return f"/checkout/{token}"

    def embed_expiry(self, payment_expires: dt.datetime) -> int:
        """An SDK link's expiry: ``checkout_link_ttl_seconds`` from now, never past the
        payment's own expiry."""
        ttl = self._deps.config.payments.checkout_link_ttl_seconds
        return int(min(time.time() + ttl, payment_expires.timestamp()))

    def url(self, payment_id: str, expires: dt.datetime) -> str | None:
        """The API's ``checkout_url``: a top-level link on ``payments.public_base_url``
        valid while the payment can be paid (until its ``expires_at``). The same link on
        every read, so an idempotent replay answers exactly the first answer. None
        without a keyring."""
        try:
            path = self.path(payment_id, int(expires.timestamp()))
        except Problem:
            return None
        return self._deps.config.payments.public_base_url.rstrip("/") + path

    def csrf(self, token: str) -> str:
        return hmac.new(self.keys()[0], b"csrf\0" + token.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, token: str, given: str) -> bool:
        return any(
            hmac.compare_digest(
                hmac.new(k, b"csrf\0" + token.encode(), hashlib.sha256).hexdigest(), given
            )
            for k in self.keys()
        )
