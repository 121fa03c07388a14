"""The keys that sign checkout links (and the checkout form's CSRF tokens), derived from
the secrets keyring on first use, the way the webhook API loads it."""

from __future__ import annotations

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

    def path(self, payment_id: str, origin: str = "") -> tuple[str, int]:
        ttl = self._deps.config.payments.checkout_link_ttl_seconds
        expires = int(time.time() + ttl)
        token = links.sign(self.keys()[0], links.Link(payment_id, expires, origin))
        return f"/checkout/{token}", expires

    def url(self, payment_id: str) -> str | None:
        """A top-level link on ``payments.public_base_url``; None without a keyring."""
        try:
            path, _ = self.path(payment_id)
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
