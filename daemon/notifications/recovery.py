"""Attempts whose outcome is unknown, looked up before the SMS goes out again.

An attempt is marked before the provider is called (``messages.mark_sending``: provider,
attempt number, ``attempt_started_at``, ``unconfirmed``). If the process dies before the
answer is recorded, or the answer may hide an acceptance (a read timeout, a dropped
connection, a 5xx), the row keeps ``unconfirmed``. LabsMobile cannot be asked, so such an
SMS is sent again (the one duplicate window left, with LabsMobile only). A provider that
lists what it accepted (``SentLookup``: Twilio) is asked first:

- a listed message to that number with that body, created since the row was (less a
  clock-skew allowance), that no other row claims: the SMS was sent — recorded with that
  reference, nothing sent again;
- none, and the attempt began at least ``lookup_settle_seconds`` ago: it was not
  accepted — queued again, and the handler sends it as usual;
- none, but the attempt is younger than that: Twilio's list may not show it yet — asked
  again once it is;
- the lookup fails: asked again later (with backoff), never guessed.

Why claiming by number, body and time is enough: Twilio's message list echoes nothing of
ours (no metadata, no StatusCallback). Two SMS rows with the same number and body are
interchangeable to the customer, and each listed message is claimed by one row at most
(``messages.lock_refs`` serialises the claims), so each row that is recorded as sent
stands for a distinct message the customer got.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

import trio

from daemon.network import tasks
from daemon.notifications import messages
from daemon.notifications.messages import Sms
from daemon.notifications.sms import SentLookup, SmsError, SmsProvider
from daemon.platform import queues
from daemon.platform.db import Conn
from daemon.platform.queues import Message

if TYPE_CHECKING:
    from daemon.notifications.delivery import SmsDeps

log = logging.getLogger(__name__)

# Twilio's clock and the database's may differ; a message created this much before the
# row still counts as a candidate (harmless: claimed messages are excluded).
CLOCK_SKEW = dt.timedelta(minutes=2)

Finish = Callable[..., Awaitable[None]]  # delivery._finish
Report = Callable[..., None]  # delivery._report


def lookup_for(sms: Sms, providers: Iterable[SmsProvider | None]) -> SentLookup | None:
    """The provider to ask about ``sms``'s last attempt: when its outcome is unknown and
    the provider it went to is configured and can list what it sent."""
    if not sms.unconfirmed:
        return None
    for provider in providers:
        if provider is not None and provider.name == sms.provider:
            return provider if isinstance(provider, SentLookup) else None
    return None


async def resolve(
    deps: SmsDeps, msg: Message, sms: Sms, looker: SentLookup, finish: Finish, report: Report
) -> bool:
    """Settle an unconfirmed attempt. True: dealt with (recorded as sent, or deferred);
    False: it was not accepted and the row is queued again — the caller sends it."""
    settings = deps.settings
    since = (sms.created_at or sms.attempt_started_at or dt.datetime.now(dt.UTC)) - CLOCK_SKEW
    try:
        with trio.fail_after(settings.send_deadline_seconds):
            refs = await looker.find_sent(sms.phone, sms.body, since=since)
    except (SmsError, trio.TooSlowError) as exc:
        await _lookup_failed(deps, msg, sms, looker, str(exc) or "lookup timed out", report)
        return True
    found: str | None = None
    async with deps.db.transaction() as tx:
        await messages.lock_refs(tx)
        locked = await messages.lock(tx, sms.id, 0)
        current = locked[0] if locked is not None else None
        if current is None or _moved_on(current, sms):
            # Another handler dealt with it meanwhile: let the row say what happens next.
            if current is None or current.state in messages.FINAL_STATES:
                await queues.archive(tx, messages.QUEUE, msg.msg_id)
            else:
                await queues.set_vt(tx, messages.QUEUE, msg.msg_id, settings.send_deadline_seconds)
            return True
        claimed = await messages.claimed_refs(tx, looker.name, refs)
        free = [ref for ref in refs if ref not in claimed]
        if free:
            found = free[-1]  # the oldest unclaimed one (the list is most recent first)
            if sms.task_id is not None:
                await tasks.add_event(tx, sms.task_id, "sms_found", sms_id=sms.id,
                                      attempt=sms.attempts, provider_ref=found)  # fmt: skip
            await finish(tx, msg, sms, "sent", None, provider=looker.name, ref=found)
        else:
            age = await _attempt_age(tx, sms.id)
            if age < deps.settings.lookup_settle_seconds:
                # Twilio's list can lag behind a send: ask again once it must show it.
                wait = deps.settings.lookup_settle_seconds - age + 1
                await queues.set_vt(tx, messages.QUEUE, msg.msg_id, wait)
                log.info("sms %s: attempt %s not listed by %s yet; asking again in %.0f s",
                         sms.id, sms.attempts, looker.name, wait)  # fmt: skip
                return True
            error = (
                f"attempt {sms.attempts} via {looker.name} was not accepted (not in its"
                f" message list {age:.0f} s later)"
            )
            await messages.back_to_queued(tx, sms.id, error)
            if sms.task_id is not None:
                await tasks.add_event(tx, sms.task_id, "sms_not_found", sms_id=sms.id,
                                      attempt=sms.attempts, provider=looker.name)  # fmt: skip
    if found is not None:
        report(deps, sms, "sent", looker, ref=found, recovered=True)
        return True
    log.info("sms %s: attempt %s via %s was not accepted; sending it again",
             sms.id, sms.attempts, looker.name)  # fmt: skip
    return False


def _moved_on(current: Sms, seen: Sms) -> bool:
    return (current.state, current.attempts, current.unconfirmed) != (
        seen.state,
        seen.attempts,
        True,
    )


async def _attempt_age(tx: Conn, sms_id: int) -> float:
    """Seconds since the last attempt began, on the database's clock (inf if unknown)."""
    age = await tx.fetchval(
        "SELECT extract(epoch FROM now() - attempt_started_at)::float8 FROM sms_messages"
        " WHERE id = $1",
        sms_id,
    )
    return float("inf") if age is None else float(age)


async def _lookup_failed(
    deps: SmsDeps, msg: Message, sms: Sms, looker: SentLookup, error: str, report: Report
) -> None:
    """Cannot tell whether it was accepted: ask again later, never send meanwhile."""
    delay = deps.settings.backoff(max(1, msg.read_ct))
    error = f"cannot tell whether attempt {sms.attempts} was accepted: {error}"
    async with deps.db.transaction() as tx:
        locked = await messages.lock(tx, sms.id, 0)
        if locked is not None and not _moved_on(locked[0], sms):
            # The attempt is over either way; its outcome stays unknown.
            await messages.back_to_queued(tx, sms.id, error, unconfirmed=True)
        await queues.set_vt(tx, messages.QUEUE, msg.msg_id, delay)
    report(deps, sms, "retry", looker, error=error, delay=delay)
