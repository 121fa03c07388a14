"""SMS providers behind one small interface: LabsMobile (JSON API, HTTP Basic) here,
Twilio in ``twilio.py``.

A provider's ``send`` returns the provider's reference for the message or raises:

- ``SmsTransientError``: network trouble, timeouts, 429/5xx, or a provider state an
  operator can fix without touching the message (no credit) — the caller retries later;
  ``SmsOutcomeUnknown`` (a kind of it) when the request went out and the answer may hide
  an acceptance (a read timeout, a dropped connection);
- ``SmsPermanentError``: this message (or the account's credentials) will never work as it
  is — the caller gives up on it; ``SmsAccountError`` (a kind of it) when the provider
  refuses the account (401/403) — with a fallback configured, the SMS goes there instead.

A provider that can list what it sent (``SentLookup``: Twilio) lets the sender ask, before
sending again, whether an attempt whose outcome is unknown was accepted after all.

Phone numbers are normalised to an MSISDN (international digits, no ``+``); see
``normalise_msisdn`` for the rule.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Protocol, runtime_checkable

import httpx

from daemon.platform.config import SmsConfig

__all__ = [
    "LabsMobile",
    "SentLookup",
    "SmsAccountError",
    "SmsError",
    "SmsOutcomeUnknown",
    "SmsPermanentError",
    "SmsProvider",
    "SmsTransientError",
    "make_provider",
    "normalise_msisdn",
]


class SmsError(Exception):
    """Sending failed."""


class SmsTransientError(SmsError):
    """Worth retrying later (network, provider overload, no credit)."""


class SmsOutcomeUnknown(SmsTransientError):
    """The request went out but no clear answer came back: it may have been accepted."""


class SmsPermanentError(SmsError):
    """Retrying will not help (bad number, bad message, bad credentials)."""


class SmsAccountError(SmsPermanentError):
    """The provider refuses our account (HTTP 401/403: credentials, an IP filter): no
    message gets through it until an operator acts, but another provider may send it."""


class SmsProvider(Protocol):
    """What the SMS sender needs from a provider (LabsMobile now, Twilio later)."""

    @property
    def name(self) -> str: ...

    async def send(self, phone: str, text: str, *, subid: str) -> str:
        """Send ``text`` to ``phone``; return the provider's reference for it."""
        ...

    async def aclose(self) -> None:
        """Release the provider's connections (the composition root calls this)."""
        ...


@runtime_checkable
class SentLookup(Protocol):
    """A provider that lists the messages it accepted (Twilio; LabsMobile cannot)."""

    @property
    def name(self) -> str: ...

    async def find_sent(self, phone: str, text: str, *, since: dt.datetime) -> list[str]:
        """References of accepted messages of ``text`` to ``phone`` created since ``since``
        (most recent first). Raises ``SmsError`` when it cannot tell."""
        ...


# Separators people type in phone numbers; anything else non-digit makes it invalid.
_SEPARATORS = re.compile(r"[\s\-./()]")
# E.164 allows at most 15 digits; fewer than 8 cannot be a country code plus a subscriber.
_MIN_DIGITS, _MAX_DIGITS = 8, 15


def normalise_msisdn(phone: str, default_country_code: str = "") -> str:
    """Turn what a CRM holds (``+34 600-000 000``, ``0034600000000``, ``600000000``) into
    an MSISDN (``34600000000``).

    Rule: separators (spaces, dashes, dots, slashes, parentheses) are dropped. A number
    starting with ``+`` or ``00`` is international: the prefix is dropped. Any other
    number is taken as local when ``default_country_code`` is set and the number does not
    already start with it: a national trunk ``0`` is dropped and the code prefixed. With no
    default code, the digits are sent as they are (assumed international). The result must
    be 8-15 digits, else ``SmsPermanentError``.

    Caveat: a local number that happens to begin with the country code's digits is taken
    as international; store numbers with ``+`` in the CRM to avoid any doubt.
    """
    raw = _SEPARATORS.sub("", phone or "")
    cc = default_country_code.lstrip("+").strip()
    if raw.startswith("+"):
        digits = raw[1:]
    elif raw.startswith("00"):
        digits = raw[2:]
    elif cc and not raw.startswith(cc):
        digits = cc + raw.lstrip("0")
    else:
        digits = raw
    if not digits.isdigit() or not _MIN_DIGITS <= len(digits) <= _MAX_DIGITS:
        raise SmsPermanentError(f"invalid phone number {phone!r}")
    return digits


# LabsMobile result codes. 30 (send error) is their side failing; 35 (not enough credit)
# is transient because an operator topping up the account makes the same message
# succeed, and a reconnection notice is worth delivering late rather than never.
_TRANSIENT_CODES = frozenset({"30", "35"})


class LabsMobile:
    """LabsMobile's JSON API: ``POST /json/send``, ``GET /json/balance``."""

    name = "labsmobile"

    def __init__(
        self,
        *,
        base_url: str,
        username: str,
        token: str,
        sender: str,
        default_country_code: str = "",
        test_mode: bool = False,
        timeout: float = 15.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.sender = sender
        self.default_country_code = default_country_code
        self.test_mode = test_mode
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            auth=httpx.BasicAuth(username, token),
            timeout=timeout,
            transport=transport,
        )

    @classmethod
    def from_config(cls, cfg: SmsConfig) -> LabsMobile:
        return cls(
            base_url=cfg.base_url,
            username=cfg.username,
            token=cfg.token.reveal(),
            sender=cfg.sender,
            default_country_code=cfg.default_country_code,
            test_mode=cfg.test_mode,
            timeout=cfg.timeout_seconds,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(self, phone: str, text: str, *, subid: str) -> str:
        """Send one SMS; returns LabsMobile's ``subid`` (ours echoed back)."""
        body: dict[str, Any] = {
            "message": text,
            "tpoa": self.sender,
            "recipient": [{"msisdn": normalise_msisdn(phone, self.default_country_code)}],
        }
        if subid:
            body["subid"] = subid
        if self.test_mode:
            body["test"] = 1
        data = await self._call("POST", "/json/send", body)
        return str(data.get("subid") or subid)

    async def balance(self) -> str:
        """The account's remaining credits, as LabsMobile reports them (a decimal string)."""
        data = await self._call("GET", "/json/balance", None)
        return str(data.get("credits", ""))

    async def _call(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        try:
            resp = await self._http.request(method, path, json=body)
        except httpx.TimeoutException as exc:
            raise SmsTransientError(f"LabsMobile {path}: timed out ({exc!r})") from exc
        except httpx.TransportError as exc:
            raise SmsTransientError(f"LabsMobile {path}: {exc!r}") from exc
        status = resp.status_code
        if status in (401, 403):
            raise SmsAccountError(f"LabsMobile {path}: HTTP {status} (check username/token)")
        if status == 429 or status >= 500:
            raise SmsTransientError(f"LabsMobile {path}: HTTP {status}")
        try:
            data = resp.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            # A 2xx without JSON is a proxy or an outage page; a 4xx is a request we built wrong.
            kind = SmsTransientError if status < 400 else SmsPermanentError
            raise kind(f"LabsMobile {path}: HTTP {status}, not a JSON object: {resp.text[:120]!r}")
        code = str(data.get("code", "")).strip()
        if code == "0" and status < 400:
            return data
        detail = f"LabsMobile {path}: HTTP {status} code {code or '?'}: {data.get('message', '')}"
        if code in _TRANSIENT_CODES:
            raise SmsTransientError(detail)
        raise SmsPermanentError(detail)


def make_provider(cfg: SmsConfig) -> LabsMobile | None:
    """The configured provider, or None for ``provider = "none"`` (SMS recorded as skipped)."""
    if cfg.provider == "none":
        return None
    if cfg.provider == "labsmobile":
        return LabsMobile.from_config(cfg)
    raise ValueError(f"unknown SMS provider {cfg.provider!r}")
