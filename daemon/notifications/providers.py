"""Which SMS provider an attempt goes through: the primary, and the fallback after it.

``sms.provider`` is the primary and ``sms.fallback`` the other one. Attempts 1 to
``sms.fallback_after`` of a message go through the primary; after that the fallback and
the primary take turns (a fallback that fails transiently too must not keep a recovered
primary from sending). Only transient failures lead there, and a provider that refuses our
account (``SmsAccountError``, 401/403): a permanent one about the message (a bad number, a
bad message) fails the SMS, as it would with the other provider.
"""

from __future__ import annotations

from daemon.notifications import twilio
from daemon.notifications.sms import LabsMobile, SmsProvider
from daemon.notifications.twilio import Twilio
from daemon.platform.config import Config

__all__ = ["check", "configured", "for_attempt", "make", "names"]


def make(cfg: Config, name: str) -> SmsProvider:
    """The provider called ``name``, from its config section; ``ConfigError`` when that
    section lacks what the provider needs (it names the key)."""
    if name == "labsmobile":
        return LabsMobile.from_config(cfg.sms)
    if name == "twilio":
        return Twilio.from_config(cfg.twilio, cfg.sms)
    raise ValueError(f"unknown SMS provider {name!r}")


def names(cfg: Config) -> list[str]:
    """The configured providers' names, primary first."""
    return [n for n in (cfg.sms.provider, cfg.sms.fallback) if n and n != "none"]


def check(cfg: Config) -> None:
    """``ConfigError`` when a configured provider's section lacks what it needs."""
    if "twilio" in names(cfg):
        t = cfg.twilio
        twilio.check(t.account_sid, t.auth_token.reveal(), t.from_number, t.messaging_service_sid)


def configured(cfg: Config) -> tuple[SmsProvider | None, SmsProvider | None]:
    """The primary (None for ``provider = "none"``) and the fallback (None when unset)."""
    primary = None if cfg.sms.provider == "none" else make(cfg, cfg.sms.provider)
    # (If the fallback's section is wrong, the primary's client has opened no connection
    # yet: an httpx client connects on its first request.)
    fallback = make(cfg, cfg.sms.fallback) if cfg.sms.fallback and primary is not None else None
    return primary, fallback


def for_attempt(
    primary: SmsProvider, fallback: SmsProvider | None, fallback_after: int, attempt: int
) -> SmsProvider:
    """The provider for attempt number ``attempt`` (1-based) of a message."""
    if fallback is None or attempt <= fallback_after:
        return primary
    return fallback if (attempt - fallback_after) % 2 == 1 else primary
