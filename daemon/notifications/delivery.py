"""The ``sms`` queue handler: delivers queued SMS through the configured provider, with retries.

Consumes ``{"sms_id": n}`` (enqueued with the ``sms_messages`` row in the same transaction
as the reconnection it reports). Produces the row's final state (sent / failed /
skipped), task timeline events, ``sms.*`` live events and ``paymentd_sms`` metrics.

The row is marked ``sending`` (attempts + 1, the attempt marker) and committed before the
provider is called, so a crash mid-send is visible. Attempts go through the primary
provider, and through the fallback once the primary has failed transiently
``sms.fallback_after`` times (``providers.for_attempt``). An attempt whose outcome is
unknown (a crash, or a timeout after the request went out) is looked up first when its
provider can list what it sent (Twilio, ``recovery.py``), so it is not sent twice. With
LabsMobile such an SMS is sent again; every send carries ``subid = paymentd-sms-{id}`` so
that duplicate can be traced in LabsMobile's logs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import trio

from daemon.network import tasks
from daemon.notifications import messages, providers, recovery
from daemon.notifications.messages import Sms
from daemon.notifications.sms import (
    SentLookup,
    SmsAccountError,
    SmsError,
    SmsOutcomeUnknown,
    SmsPermanentError,
    SmsProvider,
)
from daemon.platform import queues
from daemon.platform.backoff import backoff
from daemon.platform.config import Config
from daemon.platform.consumer import Lease
from daemon.platform.db import Conn, Database, DatabaseError
from daemon.platform.events import EventBus
from daemon.platform.metrics import Metrics
from daemon.platform.queues import Message

log = logging.getLogger(__name__)

QUEUE = messages.QUEUE
MAX_BACKOFF_SECONDS = 3600.0
# The primary has failed fallback_after times: the fallback is tried after this, not the backoff.
FALLBACK_DELAY_SECONDS = 1.0


@dataclass(frozen=True)
class SmsSettings:
    max_attempts: int = 5
    retry_backoff_seconds: float = 30.0
    # Whole-send deadline: httpx's timeout is per phase (connect, write, read), not total.
    send_deadline_seconds: float = 35.0
    # Transient failures through the primary before an attempt goes through the fallback.
    fallback_after: int = 2
    # An unconfirmed attempt not in the provider's list is taken as not sent once this old.
    lookup_settle_seconds: float = 60.0

    @classmethod
    def from_config(cls, cfg: Config) -> SmsSettings:
        timeout = max(cfg.sms.timeout_seconds, cfg.twilio.timeout_seconds)
        return cls(
            max_attempts=cfg.sms.max_attempts,
            retry_backoff_seconds=cfg.sms.retry_backoff_seconds,
            send_deadline_seconds=2 * timeout + 5,
            fallback_after=cfg.sms.fallback_after,
            lookup_settle_seconds=cfg.twilio.lookup_settle_seconds,
        )

    def backoff(self, attempts: int) -> float:
        """Delay before attempt ``attempts + 1``: doubling from the base, capped at 1 h."""
        return backoff(self.retry_backoff_seconds, attempts, cap=MAX_BACKOFF_SECONDS)


@dataclass
class SmsDeps:
    db: Database
    provider: SmsProvider | None  # None: sms.provider = "none", every SMS is skipped
    metrics: Metrics
    events: EventBus
    settings: SmsSettings
    fallback: SmsProvider | None = None  # sms.fallback; None without one

    def provider_for(self, attempt: int) -> SmsProvider | None:
        if self.provider is None:
            return None
        return providers.for_attempt(
            self.provider, self.fallback, self.settings.fallback_after, attempt
        )


def _subid(sms_id: int) -> str:
    return f"paymentd-sms-{sms_id}"


async def handle_sms(deps: SmsDeps, msg: Message, lease: Lease | None = None) -> None:
    """Handle one ``sms`` queue message; idempotent under redelivery."""
    sms_id = int(msg.message["sms_id"])
    provider = deps.provider
    deadline = deps.settings.send_deadline_seconds
    finished: tuple[str, str] | None = None  # (state, reason) when decided without sending
    looker = None  # set when the last attempt's outcome must be looked up first
    async with deps.db.transaction() as tx:
        locked = await messages.lock(tx, sms_id, deadline)
        if locked is None or locked[0].state in messages.FINAL_STATES:
            await queues.archive(tx, QUEUE, msg.msg_id)
            return
        sms, in_flight = locked
        if in_flight:
            # A second queue message for the same SMS while another handler may still be
            # sending it: look again once that send must have ended, rather than duplicate.
            await queues.set_vt(tx, QUEUE, msg.msg_id, deadline + 5)
            return
        if provider is None:
            finished = ("skipped", 'sms.provider is "none"')
        elif (looker := recovery.lookup_for(sms, (deps.provider, deps.fallback))) is not None:
            pass  # looked up below, outside this transaction
        elif sms.attempts >= deps.settings.max_attempts:
            # Only reachable when earlier attempts were cut short (crash while 'sending').
            finished = ("failed", f"gave up after {sms.attempts} interrupted attempts")
        else:
            provider = deps.provider_for(sms.attempts + 1)
            assert provider is not None
            sms.attempts = await messages.mark_sending(tx, sms_id, provider.name)
        if finished is not None:
            name = provider.name if provider is not None else "none"
            await _finish(tx, msg, sms, *finished, provider=name)
    if looker is not None:
        if await recovery.resolve(deps, msg, sms, looker, _finish, _report):
            return
        # It was not accepted, and the row is queued again: an ordinary attempt now.
        await handle_sms(deps, msg, lease)
        return
    if finished is not None or provider is None:
        state, reason = finished or ("skipped", "")
        _report(deps, sms, state, provider, error=reason)
        return
    # The 'sending' mark is committed: a crash from here on is visible in the row.
    try:
        with trio.fail_after(deadline):
            ref = await provider.send(sms.phone, sms.body, subid=_subid(sms_id))
    except SmsAccountError as exc:
        if deps.fallback is None:
            await _fail(deps, msg, sms, provider, str(exc))
        else:  # this provider is unusable, not the message: the other one may send it
            await _retry_or_fail(deps, msg, sms, provider, str(exc))
    except SmsPermanentError as exc:
        await _fail(deps, msg, sms, provider, str(exc))
    except (SmsError, trio.TooSlowError) as exc:
        error = str(exc) or f"no answer within {deadline:.0f} s"
        # No answer, or one that may hide an acceptance: look it up before the next attempt.
        unknown = isinstance(exc, SmsOutcomeUnknown | trio.TooSlowError)
        await _retry_or_fail(deps, msg, sms, provider, error, unconfirmed=unknown)
    else:
        await _record_sent(deps, msg, sms, provider, ref)
        _report(deps, sms, "sent", provider, ref=ref)


async def _fail(deps: SmsDeps, msg: Message, sms: Sms, provider: SmsProvider, error: str) -> None:
    async with deps.db.transaction() as tx:
        await _finish(tx, msg, sms, "failed", error, provider=provider.name)
    _report(deps, sms, "failed", provider, error=error)


async def _record_sent(
    deps: SmsDeps, msg: Message, sms: Sms, provider: SmsProvider, ref: str
) -> None:
    """The provider accepted it: record that, riding out a database blip.

    Giving up here would send the SMS again once the message comes back; keep trying
    while the lease holds (its keeper stops this handler if the outage outlasts it).
    """
    delay = 0.5
    while True:
        try:
            async with deps.db.transaction() as tx:
                await messages.lock_refs(tx)  # a lookup's claim of the same ref waits (recovery)
                await _finish(tx, msg, sms, "sent", None, provider=provider.name, ref=ref)
            return
        except DatabaseError as exc:
            log.warning("sms %s sent but not yet recorded (%s); retrying", sms.id, exc)
            await trio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def _retry_or_fail(
    deps: SmsDeps,
    msg: Message,
    sms: Sms,
    provider: SmsProvider,
    error: str,
    *,
    unconfirmed: bool = False,
) -> None:
    attempts = sms.attempts
    if attempts >= deps.settings.max_attempts and unconfirmed and isinstance(provider, SentLookup):
        # The last attempt may have been accepted: give up only once the lookup says it was
        # not (recovery.resolve, at the next delivery), or a sent SMS is reported failed.
        delay = deps.settings.lookup_settle_seconds
        async with deps.db.transaction() as tx:
            await messages.back_to_queued(tx, sms.id, error, unconfirmed=True)
            await queues.set_vt(tx, QUEUE, msg.msg_id, delay)
        _report(deps, sms, "retry", provider, error=error, delay=delay)
        return
    if attempts >= deps.settings.max_attempts:
        error = f"gave up after {attempts} attempts: {error}"
        async with deps.db.transaction() as tx:
            await _finish(
                tx, msg, sms, "failed", error, provider=provider.name, unconfirmed=unconfirmed
            )
        _report(deps, sms, "failed", provider, error=error)
        return
    delay = deps.settings.backoff(attempts)
    following = deps.provider_for(attempts + 1)
    if attempts == deps.settings.fallback_after and following is not provider:
        delay = min(delay, FALLBACK_DELAY_SECONDS)  # the primary failed: over to the fallback now
    async with deps.db.transaction() as tx:
        await messages.back_to_queued(tx, sms.id, error, unconfirmed=unconfirmed)
        if sms.task_id is not None:
            await tasks.add_event(tx, sms.task_id, "sms_retry", sms_id=sms.id,
                                  attempt=attempts, delay=delay, error=error,
                                  next_provider=getattr(following, "name", None))  # fmt: skip
        # The message stays in the queue, invisible until the backoff is over.
        await queues.set_vt(tx, QUEUE, msg.msg_id, delay)
    _report(deps, sms, "retry", provider, error=error, delay=delay)


async def _finish(
    tx: Conn,
    msg: Message,
    sms: Sms,
    state: str,
    error: str | None,
    *,
    provider: str,
    ref: str | None = None,
    unconfirmed: bool = False,
) -> None:
    """Record a final state and archive the message, in the caller's transaction."""
    await messages.finish(tx, sms.id, state, error, provider, ref, unconfirmed=unconfirmed)
    if sms.task_id is not None:
        detail: dict[str, Any] = {"sms_id": sms.id, "attempt": sms.attempts}
        detail.update({"error": error} if error else {"provider_ref": ref} if ref else {})
        await tasks.add_event(tx, sms.task_id, f"sms_{state}", **detail)
    await queues.archive(tx, QUEUE, msg.msg_id)
    sms.state = state


def _report(
    deps: SmsDeps,
    sms: Sms,
    outcome: str,
    provider: SmsProvider | None,
    **extra: Any,
) -> None:
    name = provider.name if provider is not None else "none"
    deps.metrics.sms.labels(name, outcome).inc()
    deps.metrics.jobs.labels(QUEUE, outcome).inc()
    deps.events.publish(
        f"sms.{outcome}", task_id=sms.task_id, sms_id=sms.id, provider=name,
        attempt=sms.attempts, **extra,
    )  # fmt: skip
    level = logging.WARNING if outcome in ("failed", "retry") else logging.INFO
    log.log(level, "sms %s (task %s): %s via %s %s", sms.id, sms.task_id, outcome, name,
            extra or "")  # fmt: skip


async def on_poison(tx: Conn, msg: Message, reason: str) -> None:
    """An SMS message that keeps crashing its handler: mark the SMS failed, visibly."""
    await messages.fail_unfinished(tx, int(msg.message.get("sms_id", 0)), reason)


async def on_replay(tx: Conn, message: dict[str, Any]) -> None:
    """Replaying a dead-lettered SMS message: a failed SMS is tried afresh."""
    await messages.reset_for_replay(tx, int(message.get("sms_id", 0)))
