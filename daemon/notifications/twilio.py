"""Twilio's Programmable Messaging REST API: send an SMS, and list the ones it accepted.

``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` (form body ``To``, ``From`` or
``MessagingServiceSid``, ``Body``; HTTP Basic ``AccountSid:AuthToken``) answers 201 with the
Message resource, whose ``sid`` is our reference. ``GET`` on the same path lists messages
(``To``/``From`` filters, ``PageSize``, ``next_page_uri``), which is what lets the sender
find out whether an interrupted send was accepted (``find_sent``).

The lookup deliberately does not filter on ``DateSent``: a message still ``queued`` or
``accepted`` has no ``date_sent`` yet, and Twilio's date filters work on whole days anyway.
It lists what went to that number (from our sender) and compares ``date_created`` itself.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re
from typing import Any

import httpx

from daemon.notifications.sms import (
    SmsAccountError,
    SmsOutcomeUnknown,
    SmsPermanentError,
    SmsTransientError,
    normalise_msisdn,
)
from daemon.platform.config import ConfigError, SmsConfig, TwilioConfig

__all__ = ["Twilio", "check"]

API = "/2010-04-01"
_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
_SERVICE_SID = re.compile(r"MG[0-9a-fA-F]{32}")
# Twilio error codes worth retrying: 20429 too many requests; 21611 the sender's queue of
# outgoing messages is full. Every other 4xx code is about this message or the account.
_TRANSIENT_CODES = frozenset({20429, 21611})
# A message in these states never left Twilio: it is not "sent" for the lookup.
_NEVER_SENT = frozenset({"failed", "canceled"})
PAGE_SIZE = 100
# Listing more than this many messages to one number is not a lookup any more: give up
# (the caller retries later, and never guesses).
MAX_PAGES = 10


class Twilio:
    """One Twilio account (or subaccount) and sender."""

    name = "twilio"

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        from_number: str = "",
        messaging_service_sid: str = "",
        base_url: str = "https://api.twilio.com",
        default_country_code: str = "",
        timeout: float = 15.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        check(account_sid, auth_token, from_number, messaging_service_sid)
        self.account_sid = account_sid
        self.from_number = from_number
        self.messaging_service_sid = messaging_service_sid
        self.default_country_code = default_country_code
        self._path = f"{API}/Accounts/{account_sid}/Messages.json"
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            auth=httpx.BasicAuth(account_sid, auth_token),
            timeout=timeout,
            transport=transport,
            headers={"Accept": "application/json"},
        )

    @classmethod
    def from_config(cls, cfg: TwilioConfig, sms: SmsConfig) -> Twilio:
        return cls(
            account_sid=cfg.account_sid,
            auth_token=cfg.auth_token.reveal(),
            from_number=cfg.from_number,
            messaging_service_sid=cfg.messaging_service_sid,
            base_url=cfg.base_url,
            default_country_code=sms.default_country_code,
            timeout=cfg.timeout_seconds,
        )

    def __repr__(self) -> str:
        return f"Twilio(account_sid={self.account_sid!r}, from={self._sender()!r})"

    async def aclose(self) -> None:
        await self._http.aclose()

    def e164(self, phone: str) -> str:
        return "+" + normalise_msisdn(phone, self.default_country_code)

    def _sender(self) -> str:
        return self.messaging_service_sid or self.from_number

    async def send(self, phone: str, text: str, *, subid: str) -> str:
        """Send one SMS; returns Twilio's message sid (``SM…``).

        ``subid`` is ours (``paymentd-sms-<id>``); Twilio has no field that it would echo
        back in its message list, so the lookup matches on number, body and time instead.
        """
        form = {"To": self.e164(phone), "Body": text}
        if self.messaging_service_sid:
            form["MessagingServiceSid"] = self.messaging_service_sid
        else:
            form["From"] = self.from_number
        try:
            resp = await self._http.post(self._path, data=form)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise SmsTransientError(f"Twilio send: cannot connect ({exc!r})") from exc
        except httpx.TransportError as exc:
            # The request may have reached Twilio: only a lookup can tell.
            raise SmsOutcomeUnknown(f"Twilio send: no answer ({exc!r})") from exc
        if resp.status_code >= 500:
            raise SmsOutcomeUnknown(f"Twilio send: HTTP {resp.status_code}")
        data = self._json(resp, "send")
        if resp.status_code < 300:
            sid = data.get("sid")
            if not isinstance(sid, str) or not sid:
                raise SmsOutcomeUnknown(f"Twilio send: HTTP {resp.status_code} without a sid")
            return sid
        raise self._error(resp, data, "send")

    async def find_sent(self, phone: str, text: str, *, since: dt.datetime) -> list[str]:
        """Sids of accepted messages of ``text`` to ``phone`` created at or after ``since``."""
        to = self.e164(phone)
        first = {"To": to, "PageSize": str(PAGE_SIZE)}
        if self.from_number and not self.messaging_service_sid:
            first["From"] = self.from_number
        url, params = self._path, first
        found: list[str] = []
        for _ in range(MAX_PAGES):
            page = await self._get(url, params)
            messages = page.get("messages")
            if not isinstance(messages, list):
                raise SmsTransientError("Twilio lookup: the answer has no message list")
            found += [m["sid"] for m in messages if self._is_ours(m, to, text, since)]
            next_uri = page.get("next_page_uri")
            if not next_uri:
                return found
            # Only ever follow a page of this account's list: the credentials go with it.
            if not isinstance(next_uri, str) or not next_uri.startswith(self._path + "?"):
                raise SmsTransientError("Twilio lookup: unexpected next_page_uri")
            url, params = next_uri, {}  # the next page's URI carries its query
        raise SmsTransientError(
            f"Twilio lookup: more than {MAX_PAGES * PAGE_SIZE} messages to {to}; cannot tell"
            " whether the interrupted one was accepted"
        )

    def _is_ours(self, m: Any, to: str, text: str, since: dt.datetime) -> bool:
        if not isinstance(m, dict) or not isinstance(m.get("sid"), str):
            return False
        if m.get("to") != to or not str(m.get("direction", "")).startswith("outbound"):
            return False
        if m.get("status") in _NEVER_SENT:
            return False
        if self.messaging_service_sid and m.get("messaging_service_sid") != (
            self.messaging_service_sid
        ):
            return False
        # A trial account prefixes "Sent from your Twilio trial account - ".
        if not str(m.get("body", "")).endswith(text):
            return False
        created = _parse_date(m.get("date_created"))
        # A date we cannot read counts as recent: claiming a message beats duplicating one.
        return created is None or created >= since

    async def _get(self, url: str, params: dict[str, str]) -> dict[str, Any]:
        try:
            resp = await self._http.get(url, params=params or None)
        except httpx.TransportError as exc:
            raise SmsTransientError(f"Twilio lookup: {exc!r}") from exc
        if resp.status_code >= 500:
            raise SmsTransientError(f"Twilio lookup: HTTP {resp.status_code}")
        data = self._json(resp, "lookup")
        if resp.status_code >= 300:
            raise self._error(resp, data, "lookup")
        return data

    @staticmethod
    def _json(resp: httpx.Response, what: str) -> dict[str, Any]:
        try:
            data = resp.json()
        except ValueError:
            data = None
        if isinstance(data, dict):
            return data
        detail = f"Twilio {what}: HTTP {resp.status_code}, not a JSON object: {resp.text[:120]!r}"
        if resp.status_code < 300:
            # A 2xx without JSON is a proxy in the way; for a send it may hide an acceptance.
            raise (SmsOutcomeUnknown if what == "send" else SmsTransientError)(detail)
        if resp.status_code in (401, 403):
            return {}
        if resp.status_code == 429:  # a rate limit from something in front of Twilio
            raise SmsTransientError(detail)
        raise SmsPermanentError(detail)

    @staticmethod
    def _error(resp: httpx.Response, data: dict[str, Any], what: str) -> Exception:
        status = resp.status_code
        code = data.get("code")
        detail = f"Twilio {what}: HTTP {status} code {code or '?'}: {data.get('message', '')}"
        if status == 429 or code in _TRANSIENT_CODES:
            return SmsTransientError(detail)
        if status in (401, 403):
            return SmsAccountError(f"{detail} (check twilio.account_sid and twilio.auth_token)")
        return SmsPermanentError(detail)


def check(account_sid: str, auth_token: str, from_number: str, messaging_service_sid: str) -> None:
    """``ConfigError`` naming the ``[twilio]`` key that is missing or malformed."""
    if not _ACCOUNT_SID.fullmatch(account_sid):
        raise ConfigError("twilio.account_sid: expected AC followed by 32 hex digits")
    if not auth_token:
        raise ConfigError("twilio.auth_token: not set (the account's auth token)")
    if messaging_service_sid and not _SERVICE_SID.fullmatch(messaging_service_sid):
        raise ConfigError("twilio.messaging_service_sid: expected MG followed by 32 hex digits")
    if not (from_number or messaging_service_sid):
        raise ConfigError(
            "twilio.from_number: not set (or set twilio.messaging_service_sid): Twilio needs"
            " a sender"
        )


def _parse_date(value: Any) -> dt.datetime | None:
    """Twilio's dates are RFC 2822 (``Thu, 24 Aug 2023 05:01:45 +0000``)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)
