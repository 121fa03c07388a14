"""Standard Webhooks signatures (standardwebhooks.com v1), and the legacy header.

``webhook-signature`` is a space-separated list of ``v1,<base64 HMAC-SHA256>`` of
``"{webhook-id}.{webhook-timestamp}.{body}"``, one per active secret, so a receiver
holding either the old or the new secret verifies during a rotation. The HMAC key is the
base64 part of ``whsec_…`` decoded.

The legacy ``X-Webhook-Signature`` (the system we replace) is the hex HMAC-SHA256 of the
body alone, keyed with the secret as the receiver was given it (the whole ``whsec_…``
text, UTF-8), with the newest secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

from daemon.webhooks.endpoints import secret_key


def signature(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.digest(secret_key(s), signed, hashlib.sha256)).decode()
        for s in secrets
    )


def legacy_signature(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def headers(
    secrets: Sequence[str],
    msg_id: str,
    timestamp: int,
    body: bytes,
    *,
    legacy: bool = False,
) -> dict[str, str]:
    """The signature headers of one attempt (``secrets`` newest first, at least one)."""
    if not secrets:
        raise ValueError("no active signing secret")
    out = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secrets, msg_id, timestamp, body),
    }
    if legacy:
        out["X-Webhook-Signature"] = legacy_signature(secrets[0], body)
    return out
