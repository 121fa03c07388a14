"""Signed, expiring checkout links: ``/checkout/<token>``.

``token = <payload>.<signature>``: the payload is base64url(JSON ``{"p": payment id,
"e": expiry (Unix seconds), "o": embedding origin or ""}``), the signature
base64url(HMAC-SHA256(key, payload)). The key is derived from the secrets keyring
(``Keyring.derive``), so there is nothing new to configure and nothing secret in the
URL but the signature itself; every key still in the ring verifies, so a key rotation
does not break links already handed out.

``o`` is the merchant page that embeds the checkout (the SDK's modal): the page lets
only that origin frame it (CSP ``frame-ancestors``) and posts its result only to it.
A link without one is for a top-level visit (``checkout_url`` on the payments API) and
cannot be framed at all.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass

PURPOSE = b"paymentd checkout link v1"
_PAYMENT_ID = re.compile(r"pay_[0-9a-f]{24}")
# An origin as a browser sends it: scheme, host, optional port, nothing else.
ORIGIN = re.compile(
    r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?"
)
MAX_TOKEN_CHARS = 600


class LinkRefused(Exception):
    """A checkout token that is forged, malformed or expired; ``status`` is the HTTP answer."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Link:
    payment_id: str
    expires_at: int  # Unix seconds
    origin: str  # "" when not for embedding

    @property
    def embedded(self) -> bool:
        return bool(self.origin)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, payload: str) -> bytes:
    return hmac.new(key, payload.encode("ascii"), hashlib.sha256).digest()


def sign(key: bytes, link: Link) -> str:
    doc = {"p": link.payment_id, "e": link.expires_at, "o": link.origin}
    payload = _b64(json.dumps(doc, separators=(",", ":")).encode())
    return f"{payload}.{_b64(_mac(key, payload))}"


def verify(keys: list[bytes], token: str, *, now: float | None = None) -> Link:
    """The link ``token`` stands for; ``LinkRefused`` (403 forged, 410 expired) otherwise.

    The signature is checked before anything in the payload is believed, against every
    key, each compare in constant time.
    """
    forged = LinkRefused(403, "this checkout link is not valid: ask the merchant for a new one")
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
        raise forged
    payload, signature = token.split(".")
    try:
        given = _unb64(signature)
    except (binascii.Error, ValueError):
        raise forged from None
    if not any(hmac.compare_digest(_mac(key, payload), given) for key in keys):
        raise forged
    try:
        doc = json.loads(_unb64(payload))
        link = Link(str(doc["p"]), int(doc["e"]), str(doc["o"]))
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise forged from None
    if not _PAYMENT_ID.fullmatch(link.payment_id):
        raise forged
    if link.expires_at <= (time.time() if now is None else now):
        raise LinkRefused(410, "this checkout link has expired: ask the merchant for a new one")
    return link


def is_origin(value: str) -> bool:
    return bool(ORIGIN.fullmatch(value))
