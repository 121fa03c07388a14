"""The SMS sender actor: delivers queued SMS through the configured provider, with retries.

Consumes: the ``sms`` queue (``{"sms_id": n}``, enqueued with the ``sms_messages`` row in
the same transaction as the reconnection it reports), woken by the listener.
Produces: the row's final state (sent / failed / skipped), task timeline events,
``sms.*`` live events and ``paymentd_sms`` metrics.
Owns: nothing long-lived; the provider (and its HTTP pool) belongs to the composition root.

Delivery is at-least-once. The row is marked ``sending`` (attempts + 1) and committed
before the provider is called, so a crash mid-send is visible; the redelivered message
then sends again. A crash exactly between the provider accepting the SMS and our commit
therefore duplicates it; every send carries ``subid = paymentd-sms-{id}`` so such a
duplicate can be traced in the provider's logs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from daemon.network import tasks
from daemon.notifications.sms import SmsError, SmsPermanentError, SmsProvider
from daemon.platform import queues
from daemon.platform.backoff import backoff
from daemon.platform.config import Config
from daemon.platform.consumer import ConsumerSettings, Wakeups, consume
from daemon.platform.db import Conn, Database
from daemon.platform.deps import Deps
from daemon.platform.events import EventBus
from daemon.platform.metrics import Metrics
from daemon.platform.queues import Message

log = logging.getLogger(__name__)

FINAL_STATES = ("sent", "failed", "skipped")
MAX_BACKOFF_SECONDS = 3600.0


@dataclass(frozen=True)
class SmsSettings:
    max_attempts: int = 5
    retry_backoff_seconds: float = 30.0
    # Whole-send deadline: httpx's timeout is per phase (connect, write, read), not total.
    send_deadline_seconds: float = 35.0
    visibility_timeout_seconds: int = 60
    notify_throttle_seconds: float = 0.1

    @classmethod
    def from_config(cls, cfg: Config) -> SmsSettings:
        return cls(
            max_attempts=cfg.sms.max_attempts,
            retry_backoff_seconds=cfg.sms.retry_backoff_seconds,
            send_deadline_seconds=2 * cfg.sms.timeout_seconds + 5,
            visibility_timeout_seconds=cfg.database.visibility_timeout_seconds,
            notify_throttle_seconds=cfg.database.notify_throttle_ms / 1000,
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


def _subid(sms_id: int) -> str:
    return f"paymentd-sms-{sms_id}"


async def handle_sms(deps: SmsDeps, msg: Message) -> None:
    """Handle one ``sms`` queue message; idempotent under redelivery."""
    sms_id = int(msg.message["sms_id"])
    provider = deps.provider
    deadline = deps.settings.send_deadline_seconds
    finished: tuple[str, str] | None = None  # (state, reason) when decided without sending
    async with deps.db.transaction() as tx:
        row = await tx.fetchrow(
            "SELECT *, state = 'sending' AND updated_at > now() - make_interval(secs => $2::float8)"
            " AS in_flight FROM sms_messages WHERE id = $1 FOR UPDATE",
            sms_id,
            deadline,
        )
        if row is None or row["state"] in FINAL_STATES:
            await queues.archive(tx, queues.SMS, msg.msg_id)
            return
        if row["in_flight"]:
            # A second queue message for the same SMS while another handler may still be
            # sending it: look again once that send must have ended, rather than duplicate.
            await queues.set_vt(tx, queues.SMS, msg.msg_id, deadline + 5)
            return
        sms = dict(row)
        if provider is None:
            finished = ("skipped", 'sms.provider is "none"')
        elif sms["attempts"] >= deps.settings.max_attempts:
            # Only reachable when earlier attempts were cut short (crash while 'sending').
            finished = ("failed", f"gave up after {sms['attempts']} interrupted attempts")
        else:
            sms["attempts"] = await tx.fetchval(
                "UPDATE sms_messages SET state = 'sending', attempts = attempts + 1,"
                " provider = $2, updated_at = now() WHERE id = $1 RETURNING attempts",
                sms_id,
                provider.name,
            )
        if finished is not None:
            name = provider.name if provider is not None else "none"
            await _finish(tx, msg, sms, *finished, provider=name)
    if finished is not None or provider is None:
        state, reason = finished or ("skipped", "")
        _report(deps, sms, state, provider, error=reason)
        return
    # The 'sending' mark is committed: a crash from here on is visible in the row.
    try:
        with trio.fail_after(deadline):
            ref = await provider.send(sms["phone"], sms["body"], subid=_subid(sms_id))
    except SmsPermanentError as exc:
        async with deps.db.transaction() as tx:
            await _finish(tx, msg, sms, "failed", str(exc), provider=provider.name)
        _report(deps, sms, "failed", provider, error=str(exc))
    except (SmsError, trio.TooSlowError) as exc:
        error = str(exc) or f"no answer within {deadline:.0f} s"
        await _retry_or_fail(deps, msg, sms, provider, error)
    else:
        async with deps.db.transaction() as tx:
            await _finish(tx, msg, sms, "sent", None, provider=provider.name, ref=ref)
        _report(deps, sms, "sent", provider, ref=ref)


async def _retry_or_fail(
    deps: SmsDeps, msg: Message, sms: dict[str, Any], provider: SmsProvider, error: str
) -> None:
    attempts = int(sms["attempts"])
    if attempts >= deps.settings.max_attempts:
        error = f"gave up after {attempts} attempts: {error}"
        async with deps.db.transaction() as tx:
            await _finish(tx, msg, sms, "failed", error, provider=provider.name)
        _report(deps, sms, "failed", provider, error=error)
        return
    delay = deps.settings.backoff(attempts)
    async with deps.db.transaction() as tx:
        await tx.execute(
            "UPDATE sms_messages SET state = 'queued', last_error = $2, updated_at = now()"
            " WHERE id = $1",
            sms["id"],
            error,
        )
        if sms["task_id"] is not None:
            await tasks.add_event(tx, sms["task_id"], "sms_retry", sms_id=sms["id"],
                                  attempt=attempts, delay=delay, error=error)  # fmt: skip
        # The message stays in the queue, invisible until the backoff is over.
        await queues.set_vt(tx, queues.SMS, msg.msg_id, delay)
    _report(deps, sms, "retry", provider, error=error, delay=delay)


async def _finish(
    tx: Conn,
    msg: Message,
    sms: dict[str, Any],
    state: str,
    error: str | None,
    *,
    provider: str,
    ref: str | None = None,
) -> None:
    """Record a final state and archive the message, in the caller's transaction."""
    await tx.execute(
        "UPDATE sms_messages SET state = $2, last_error = $3, provider = $4,"
        " provider_ref = coalesce($5, provider_ref),"
        " sent_at = CASE WHEN $2 = 'sent' THEN now() ELSE sent_at END, updated_at = now()"
        " WHERE id = $1",
        sms["id"],
        state,
        error,
        provider,
        ref,
    )
    if sms["task_id"] is not None:
        detail: dict[str, Any] = {"sms_id": sms["id"], "attempt": sms["attempts"]}
        detail.update({"error": error} if error else {"provider_ref": ref} if ref else {})
        await tasks.add_event(tx, sms["task_id"], f"sms_{state}", **detail)
    await queues.archive(tx, queues.SMS, msg.msg_id)
    sms["state"] = state


def _report(
    deps: SmsDeps,
    sms: dict[str, Any],
    outcome: str,
    provider: SmsProvider | None,
    **extra: Any,
) -> None:
    name = provider.name if provider is not None else "none"
    deps.metrics.sms.labels(name, outcome).inc()
    deps.metrics.jobs.labels(queues.SMS, outcome).inc()
    deps.events.publish(
        f"sms.{outcome}", task_id=sms["task_id"], sms_id=sms["id"], provider=name,
        attempt=sms["attempts"], **extra,
    )  # fmt: skip
    level = logging.WARNING if outcome in ("failed", "retry") else logging.INFO
    log.log(level, "sms %s (task %s): %s via %s %s", sms["id"], sms["task_id"], outcome, name,
            extra or "")  # fmt: skip


async def on_poison(tx: Conn, msg: Message) -> None:
    """An SMS message that keeps crashing its handler: mark the SMS failed, visibly."""
    await tx.execute(
        "UPDATE sms_messages SET state = 'failed', updated_at = now(), last_error = $2"
        " WHERE id = $1 AND state IN ('queued', 'sending')",
        int(msg.message.get("sms_id", 0)),
        f"no outcome after {msg.read_ct} deliveries; see the daemon log",
    )


async def run(
    deps: Deps,
    provider: SmsProvider | None,
    wakeups: Wakeups,
    stop: trio.Event,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Consume the ``sms`` queue until ``stop`` is set (then finish in-flight sends).

    ``provider`` is ``daemon.notifications.sms.make_provider(config.sms)``; the caller closes it.
    """
    sms = SmsDeps(
        deps.db, provider, deps.metrics, deps.events, SmsSettings.from_config(deps.config)
    )
    s = sms.settings
    settings = ConsumerSettings(
        queues.SMS,
        # The message must stay invisible for longer than one send may take.
        vt_seconds=max(s.visibility_timeout_seconds, int(s.send_deadline_seconds) + 30),
        throttle_seconds=s.notify_throttle_seconds,
        concurrency=4,  # providers rate-limit; a handful in flight is plenty
        on_poison=on_poison,
    )

    async def on_sms(msg: Message) -> None:
        await handle_sms(sms, msg)

    await consume(
        deps.db, settings, wakeups.receiver(queues.SMS), on_sms, deps.metrics,
        stop=stop, notified=partial(wakeups.take_notified, queues.SMS), task_status=task_status,
    )  # fmt: skip
