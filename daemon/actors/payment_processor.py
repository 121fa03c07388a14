"""The payment processor actor: turns payment events into network actions.

Consumes: the ``uisp_events`` queue (stored UISP webhooks) and the ``reconnect`` queue
(reconnection tasks), each woken by the listener.
Produces: reconnection tasks (``reconnect`` queue), OLT requests to the OLT pool over its
request channel, and SMS messages (``sms`` queue) after a successful reconnection.
Owns: nothing long-lived but its UISP API client.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from daemon.network import tasks
from daemon.network.reconnect import ReconnectDeps
from daemon.network.reconnect import handle as handle_reconnect
from daemon.network.reconnect import on_poison as reconnect_poison
from daemon.platform import queues
from daemon.platform.backoff import backoff
from daemon.platform.consumer import ConsumerSettings, Wakeups, consume
from daemon.platform.db import Conn
from daemon.platform.deps import Deps
from daemon.platform.queues import Message
from daemon.uisp import client as uisp
from daemon.uisp.decide import DecisionError, decide

log = logging.getLogger(__name__)

MAX_UISP_ATTEMPTS = 10


@dataclass
class ProcessorDeps:
    deps: Deps
    uisp: uisp.UispClient
    reconnect: ReconnectDeps

    @property
    def decide_deadline(self) -> float:
        # A decision makes at most a handful of UISP calls, each bounded by the timeout.
        return 6 * self.deps.config.uisp.timeout_seconds

    @property
    def uisp_vt(self) -> int:
        return max(
            self.deps.config.database.visibility_timeout_seconds, int(self.decide_deadline) + 15
        )


async def on_uisp_poison(tx: Conn, msg: Message) -> None:
    """A webhook whose processing keeps crashing: record that on the webhook row."""
    await tx.execute(
        "UPDATE uisp_webhooks SET processed_at = now(), outcome = $2"
        " WHERE uuid = $1::uuid AND processed_at IS NULL",
        msg.message.get("uuid"),
        f"error: no outcome after {msg.read_ct} deliveries; see the daemon log",
    )


async def handle_uisp_event(p: ProcessorDeps, msg: Message) -> None:
    db = p.deps.db
    webhook_uuid = msg.message["uuid"]
    row = await db.fetchrow("SELECT * FROM uisp_webhooks WHERE uuid = $1::uuid", webhook_uuid)
    if row is None or row["processed_at"] is not None:
        await queues.archive(db, queues.UISP_EVENTS, msg.msg_id)
        return
    webhook: dict[str, Any] = dict(row)
    try:
        # Bounded below the queue's visibility timeout, so the message can never become
        # visible (and run twice) while this decision is still being made.
        with trio.fail_after(p.decide_deadline):
            decision = await decide(webhook, p.uisp, p.deps.config.uisp, db)
    except (uisp.UispTransientError, trio.TooSlowError) as exc:
        if msg.read_ct < MAX_UISP_ATTEMPTS:
            delay = backoff(5.0, msg.read_ct, cap=600.0)
            log.warning(
                "webhook %s: UISP unavailable (%s); retry in %.0f s", webhook_uuid, exc, delay
            )
            await queues.set_vt(db, queues.UISP_EVENTS, msg.msg_id, delay)
            p.deps.metrics.jobs.labels(queues.UISP_EVENTS, "retry").inc()
            return
        await _finish(
            p, msg, webhook, f"error: UISP unavailable after {msg.read_ct} attempts: {exc}"
        )
        return
    except (uisp.UispError, DecisionError) as exc:
        # Permanent: bad app key, an entity UISP no longer has, no ONU location. Logged
        # loudly and kept on the webhook row so an operator can fix it and replay.
        log.error("webhook %s (%s): %s", webhook_uuid, webhook["event_name"], exc)
        await _finish(p, msg, webhook, f"error: {exc}")
        return
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        # UISP answered with data of a shape we do not understand: retrying will not
        # change it, so record it on the webhook instead of crashing until poisoned.
        log.exception("webhook %s: unexpected data from UISP", webhook_uuid)
        await _finish(p, msg, webhook, f"error: unexpected data from UISP: {exc!r}")
        return
    created: list[int] = []
    async with db.transaction() as tx:
        for t in decision.tasks:
            task_id = await tasks.create(
                tx,
                dedupe_key=f"{t.action}:service:{t.service_id}:webhook:{webhook_uuid}",
                webhook_uuid=webhook_uuid,
                action=t.action,
                service_id=t.service_id,
                olt_name=t.olt_name,
                onu=t.onu,
                client_id=t.client_id,
                client_name=t.client_name,
                phone=t.phone,
                service_name=t.service_name,
            )
            if task_id is not None:
                created.append(task_id)
        await _record(tx, msg, webhook_uuid, decision.outcome)
    p.deps.metrics.jobs.labels(queues.UISP_EVENTS, "processed").inc()
    for task_id in created:
        p.deps.events.publish("task.queued", task_id=task_id, webhook=str(webhook_uuid))
    p.deps.events.publish("webhook.processed", uuid=str(webhook_uuid), outcome=decision.outcome)
    log.info("webhook %s (%s): %s", webhook_uuid, webhook["event_name"], decision.outcome)


async def _record(tx: Any, msg: Message, webhook_uuid: str, outcome: str) -> None:
    await tx.execute(
        "UPDATE uisp_webhooks SET processed_at = now(), outcome = $2 WHERE uuid = $1::uuid",
        webhook_uuid,
        outcome,
    )
    await queues.archive(tx, queues.UISP_EVENTS, msg.msg_id)


async def _finish(p: ProcessorDeps, msg: Message, webhook: dict[str, Any], outcome: str) -> None:
    async with p.deps.db.transaction() as tx:
        await _record(tx, msg, str(webhook["uuid"]), outcome)
    p.deps.metrics.jobs.labels(queues.UISP_EVENTS, "error").inc()
    p.deps.events.publish("webhook.processed", uuid=str(webhook["uuid"]), outcome=outcome)


async def run(
    p: ProcessorDeps,
    wakeups: Wakeups,
    stop: trio.Event,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    cfg = p.deps.config
    throttle = cfg.database.notify_throttle_ms / 1000
    vt = cfg.database.visibility_timeout_seconds
    uisp_settings = ConsumerSettings(
        queues.UISP_EVENTS,
        vt_seconds=p.uisp_vt,
        throttle_seconds=throttle,
        on_poison=on_uisp_poison,
    )
    reconnect_settings = ConsumerSettings(
        queues.RECONNECT,
        vt_seconds=max(vt, int(p.reconnect.task_deadline) + 30),
        throttle_seconds=throttle,
        concurrency=16,  # per-device actors serialise; different OLTs work in parallel
        on_poison=reconnect_poison,
    )

    async def on_uisp(msg: Message) -> None:
        await handle_uisp_event(p, msg)

    async def on_reconnect(msg: Message) -> None:
        await handle_reconnect(p.reconnect, msg)

    async with trio.open_nursery() as nursery:
        db, metrics = p.deps.db, p.deps.metrics
        await nursery.start(
            partial(
                consume,
                db,
                uisp_settings,
                wakeups.receiver(queues.UISP_EVENTS),
                on_uisp,
                metrics,
                stop=stop,
                notified=partial(wakeups.take_notified, queues.UISP_EVENTS),
            )
        )
        await nursery.start(
            partial(
                consume,
                db,
                reconnect_settings,
                wakeups.receiver(queues.RECONNECT),
                on_reconnect,
                metrics,
                stop=stop,
                notified=partial(wakeups.take_notified, queues.RECONNECT),
            )
        )
        task_status.started()
