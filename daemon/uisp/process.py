"""The ``uisp_events`` queue handler: decide what a stored UISP webhook means, durably.

Consumes ``{"uuid"}`` messages (one per stored webhook, from intake, a redelivery of a
failed one, or a replay). Produces reconnection tasks (``reconnect`` queue) in the same
transaction as the webhook's outcome and the archive of its message.

No payment is ever dropped: while UISP is unreachable the webhook is retried on a
slowing schedule (5 s doubling up to 30 min) for ``uisp.retry_for_seconds`` (3 days by
default) from when it was queued; each retry is a fresh message (``queues.requeue``) so
an outage never counts towards the poison threshold. Past the window, or on a permanent
error (a bad app key, an entity UISP no longer has, no ONU location), the webhook is
``failed`` with its reason: UISP redelivering it, or ``paymentd uisp replay``, queues it
again.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from daemon.network import tasks
from daemon.platform import queues
from daemon.platform.backoff import backoff
from daemon.platform.config import UispConfig
from daemon.platform.consumer import Lease
from daemon.platform.db import Conn, Database
from daemon.platform.events import EventBus
from daemon.platform.metrics import Metrics
from daemon.platform.queues import Message
from daemon.uisp import client as uisp
from daemon.uisp import webhooks
from daemon.uisp.decide import DecisionError, PlannedTask, decide
from daemon.uisp.webhooks import Webhook

log = logging.getLogger(__name__)

QUEUE = webhooks.QUEUE
RETRY_FIRST_SECONDS = 5.0
RETRY_MAX_SECONDS = 1800.0


@dataclass
class UispDeps:
    db: Database
    client: uisp.UispClient
    config: UispConfig
    metrics: Metrics
    events: EventBus

    @property
    def decide_deadline(self) -> float:
        # A decision makes at most a handful of UISP calls, each bounded by the timeout.
        return 6 * self.config.timeout_seconds


def dedupe_key(action: str, service_id: int, webhook: Webhook) -> str:
    key = f"{action}:service:{service_id}:webhook:{webhook.uuid}"
    # A replay is an operator asking to act again: its tasks are new ones.
    return f"{key}:replay:{webhook.replays}" if webhook.replays else key


async def queue_planned(
    tx: Conn,
    planned: Sequence[PlannedTask],
    key: Callable[[PlannedTask], str],
    *,
    webhook_uuid: uuid.UUID | None = None,
) -> list[int]:
    """Create and queue the planned tasks (the webhook path and drift's --fix share it);
    the ids of those not already there (a dedupe key seen before creates nothing)."""
    created: list[int] = []
    # tasks.create takes each service's lock: always in one order, so two producers
    # planning the same services (a payment's several) never wait on each other in a ring.
    for t in sorted(planned, key=lambda t: t.service_id):
        task_id = await tasks.create(
            tx,
            dedupe_key=key(t),
            webhook_uuid=webhook_uuid,
            action=t.action,
            service_id=t.service_id,
            olt_name=t.olt_name,
            onu=t.onu,
            client_id=t.client_id,
            client_name=t.client_name,
            phone=t.phone,
            service_name=t.service_name,
            notify=t.notify,
        )
        if task_id is not None:
            created.append(task_id)
    return created


async def handle(p: UispDeps, msg: Message, lease: Lease) -> None:
    db = p.db
    webhook = await webhooks.get(db, msg.message["uuid"])
    if webhook is None or webhook.state != "queued":
        await queues.archive(db, QUEUE, msg.msg_id)
        return
    try:
        with trio.fail_after(p.decide_deadline):
            decision = await decide(webhook, p.client, p.config, db)
    except (uisp.UispTransientError, trio.TooSlowError) as exc:
        reason = str(exc) or f"no answer from UISP within {p.decide_deadline:.0f} s"
        await _retry_or_fail(p, msg, webhook, reason)
        return
    except (uisp.UispError, DecisionError) as exc:
        # Permanent: bad app key, an entity UISP no longer has, no ONU location. Logged
        # loudly and kept on the webhook row so an operator can fix it and replay.
        log.error("webhook %s (%s): %s", webhook.uuid, webhook.event_name, exc)
        await _finish(p, msg, webhook, "failed", f"error: {exc}")
        return
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        # UISP answered with data of a shape we do not understand: retrying will not
        # change it, so record it on the webhook instead of crashing until poisoned.
        log.exception("webhook %s: unexpected data from UISP", webhook.uuid)
        await _finish(p, msg, webhook, "failed", f"error: unexpected data from UISP: {exc!r}")
        return
    async with db.transaction() as tx:
        created = await queue_planned(
            tx,
            decision.tasks,
            lambda t: dedupe_key(t.action, t.service_id, webhook),
            webhook_uuid=webhook.uuid,
        )
        await webhooks.record_outcome(tx, webhook, "processed", decision.outcome)
        await queues.archive(tx, QUEUE, msg.msg_id)
    p.metrics.jobs.labels(QUEUE, "processed").inc()
    for task_id in created:
        p.events.publish("task.queued", task_id=task_id, webhook=str(webhook.uuid))
    p.events.publish("webhook.processed", uuid=str(webhook.uuid), outcome=decision.outcome)
    log.info("webhook %s (%s): %s", webhook.uuid, webhook.event_name, decision.outcome)


async def _retry_or_fail(p: UispDeps, msg: Message, webhook: Webhook, reason: str) -> None:
    window = p.config.retry_for_seconds
    since = dt.datetime.now(dt.UTC) - webhook.queued_at
    if since.total_seconds() >= window:
        outcome = (
            f"error: UISP unavailable for {since.total_seconds() / 3600:.1f} h "
            f"({webhook.attempts + 1} attempts): {reason}; replay it with "
            f"'paymentd uisp replay {webhook.uuid}'"
        )
        log.error("webhook %s: giving up: %s", webhook.uuid, outcome)
        await _finish(p, msg, webhook, "failed", outcome)
        return
    async with p.db.transaction() as tx:
        attempts = await webhooks.count_attempt(tx, webhook.uuid, reason)
        delay = backoff(RETRY_FIRST_SECONDS, attempts, cap=RETRY_MAX_SECONDS)
        await queues.requeue(tx, QUEUE, msg, delay)
    log.warning("webhook %s: UISP unavailable (%s); retry in %.0f s", webhook.uuid, reason, delay)
    p.metrics.jobs.labels(QUEUE, "retry").inc()


async def _finish(
    p: UispDeps, msg: Message, webhook: Webhook, state: webhooks.State, outcome: str
) -> None:
    async with p.db.transaction() as tx:
        await webhooks.record_outcome(tx, webhook, state, outcome)
        await queues.archive(tx, QUEUE, msg.msg_id)
    p.metrics.jobs.labels(QUEUE, "error").inc()
    p.events.publish("webhook.processed", uuid=str(webhook.uuid), outcome=outcome)


async def on_poison(tx: Conn, msg: Message, reason: str) -> None:
    """A webhook whose processing keeps crashing: record that on the webhook row."""
    await webhooks.fail_unfinished(tx, str(msg.message.get("uuid")), reason)


async def on_replay(tx: Conn, message: dict[str, Any]) -> None:
    """Replaying a dead-lettered message: the webhook is queued again (by ``requeue``)."""
    await webhooks.mark_queued(tx, str(message.get("uuid")))
