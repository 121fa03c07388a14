"""Run one reconnection task on its OLT and record the outcome (``reconnect`` queue handler).

At-least-once: the task row says where it stands, so a redelivered message for a finished
task is only archived, and a task interrupted mid-command (crash, SIGKILL) simply runs
again — activating an active ONU is harmless and the driver confirms the final state.
The success, the SMS that goes with it and the archive of the message commit together.

The wait for the device happens inside ``lease.detached()``: a slow or dead OLT holds no
handler slot, so it never delays work for other devices. A device whose request queue is
full answers ``OltBusy``; the task is deferred (a fresh message a few seconds later)
without using up an attempt.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from daemon.network import tasks
from daemon.network.olt.types import (
    OltBusy,
    OltCircuitOpen,
    OltCommandError,
    OltResult,
    OltTransientError,
    OltUnknownDevice,
    OnuRef,
)
from daemon.network.tasks import Task
from daemon.notifications import messages
from daemon.platform import queues
from daemon.platform.backoff import backoff
from daemon.platform.config import OltConfig, SmsConfig
from daemon.platform.consumer import Lease
from daemon.platform.db import Conn, Database
from daemon.platform.events import EventBus
from daemon.platform.metrics import Metrics
from daemon.platform.queues import Message

log = logging.getLogger(__name__)

OUTPUT_EXCERPT = 4000
QUEUE = tasks.QUEUE
# How long a task waits before trying again when its device's request queue is full.
BUSY_DEFER_SECONDS = 5


class DevicePool(Protocol):
    """What the handler needs from the OLT pool (``daemon.actors.olt_pool.OltPool``)."""

    async def execute(self, device: str, onu: OnuRef, action: Any) -> OltResult: ...


@dataclass
class ReconnectDeps:
    db: Database
    pool: DevicePool
    olt: OltConfig
    sms: SmsConfig
    metrics: Metrics
    events: EventBus

    @property
    def task_deadline(self) -> float:
        # Connect + login + about a dozen commands (a cold Huawei operation: enable, undo
        # smart, infoswitch, scroll, config, interface, the change, display, quits), twice:
        # the pool retries once on a fresh session. The lease is extended meanwhile.
        return 2 * (self.olt.connect_timeout_seconds + 12 * self.olt.command_timeout_seconds)


DEFAULT_SMS = "Your payment was received and your service is active again."


def sms_text(template: str, task: Task) -> str:
    values = {
        "client_name": task.client_name or "",
        "client_id": task.client_id or 0,
        "service_id": task.service_id or 0,
        "service_name": task.service_name or "",
    }
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError, TypeError):
        # The config check formats the template with sample values, but a format spec can
        # still clash with real data; a plain SMS beats a reconnection with none.
        log.exception("sms.template cannot be formatted for task %s; sending the default", task.id)
        return DEFAULT_SMS


async def handle(deps: ReconnectDeps, msg: Message, lease: Lease) -> None:
    task_id = int(msg.message["task_id"])
    db = deps.db
    async with db.transaction() as tx:
        task = await tasks.lock(tx, task_id)
        if task is None or task.state in tasks.FINAL_STATES:
            await queues.archive(tx, QUEUE, msg.msg_id)
            return
        newer = await tasks.newer_for_service(tx, task)
        if newer is not None:
            # A later event for this service carries the latest intent: running this one
            # now (e.g. a deactivate stuck in retry after the client paid) would undo it.
            await _supersede(tx, msg, task_id, newer)
            deps.events.publish("task.superseded", task_id=task_id, by_task=newer)
            return
        attempt = await tasks.mark_running(tx, task_id)
    deps.events.publish(
        "task.running",
        task_id=task_id,
        attempt=attempt,
        olt=task.olt_name,
        onu=task.onu,
        action=task.action,
    )
    try:
        onu = OnuRef.parse(task.onu)
    except ValueError as exc:
        await _fail(deps, msg, task, f"bad ONU location {task.onu!r}: {exc}", "")
        return
    # Once more, right before the device: a newer task created while our "running" mark
    # was committing must not have its command overtaken by this older one.
    newer = await tasks.newer_for_service(db, task)
    if newer is not None:
        async with db.transaction() as tx:
            await _supersede(tx, msg, task_id, newer)
        deps.events.publish("task.superseded", task_id=task_id, by_task=newer)
        return
    try:
        with trio.fail_after(deps.task_deadline):
            async with lease.detached():
                result = await deps.pool.execute(task.olt_name, onu, task.action)
    except OltCommandError as exc:
        await _fail(deps, msg, task, str(exc), getattr(exc, "output", ""))
    except OltUnknownDevice:
        await _fail(
            deps,
            msg,
            task,
            f"OLT {task.olt_name!r} is not configured: add it with 'paymentd olt add'",
            "",
        )
    except OltBusy as exc:
        await _defer(deps, msg, task, attempt - 1, str(exc), BUSY_DEFER_SECONDS, "device_busy")
    except OltCircuitOpen as exc:
        # The device is known to be down (VPN, power): waiting for the breaker is not an
        # attempt on the device, so it must not use up the task's attempts.
        delay = exc.retry_in if exc.retry_in is not None else deps.olt.breaker_reset_seconds
        await _defer(deps, msg, task, attempt - 1, str(exc), delay, "waiting_for_device")
    except (OltTransientError, trio.TooSlowError) as exc:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, trio.TooSlowError):
            reason = f"OLT operation took longer than {deps.task_deadline:.0f} s"
        await _retry_or_fail(deps, msg, task, attempt, reason)
    else:
        await _succeed(deps, msg, task, result)


async def _supersede(tx: Conn, msg: Message, task_id: int, newer: int) -> None:
    await tasks.finish(tx, task_id, "superseded")
    await tasks.add_event(tx, task_id, "superseded", by_task=newer)
    await queues.archive(tx, QUEUE, msg.msg_id)


async def _succeed(deps: ReconnectDeps, msg: Message, task: Task, result: OltResult) -> None:
    task_id = task.id
    sms_id = None
    async with deps.db.transaction() as tx:
        await tasks.lock_service(tx, task.service_id)
        await tasks.finish(tx, task_id, "succeeded", output=result.output[-OUTPUT_EXCERPT:])
        await tasks.add_event(tx, task_id, "succeeded", state=result.state, seconds=result.seconds)
        previous = await tasks.previous_success(tx, task)
        if task.action == "activate" and not task.notify:
            # A correction of the network (a drift fix of an ONU switched off by hand), not
            # a reconnection after a payment: "we received your payment" would be false.
            await tasks.add_event(
                tx, task_id, "sms_skipped", reason="the task corrects the network (notify off)"
            )
        elif task.action == "activate" and previous is not None and previous[1] == "activate":
            # Already reconnected (e.g. by payment.add in reactivate_onu mode, then UISP's
            # own suspend_cancel): one reconnection, one SMS.
            await tasks.add_event(
                tx, task_id, "sms_skipped", reason=f"already reconnected by task {previous[0]}"
            )
        elif task.action == "activate":
            if task.phone:
                sms_id = await messages.queue_for_task(
                    tx, task_id, task.phone, sms_text(deps.sms.template, task), deps.sms.provider
                )
                if sms_id is not None:
                    await tasks.add_event(tx, task_id, "sms_queued", sms_id=sms_id)
            else:
                await tasks.add_event(
                    tx, task_id, "sms_skipped", reason="no phone in UISP contacts"
                )
        await queues.archive(tx, QUEUE, msg.msg_id)
    deps.metrics.jobs.labels(QUEUE, "succeeded").inc()
    deps.events.publish("task.succeeded", task_id=task_id, state=result.state, sms_id=sms_id)
    log.info("task %s: %s %s/%s succeeded", task_id, task.action, task.olt_name, task.onu)


async def _fail(deps: ReconnectDeps, msg: Message, task: Task, error: str, output: str) -> None:
    async with deps.db.transaction() as tx:
        await tasks.finish(
            tx, task.id, "failed", error=error, output=output[-OUTPUT_EXCERPT:] or None
        )
        await tasks.add_event(tx, task.id, "failed", error=error)
        await queues.archive(tx, QUEUE, msg.msg_id)
    deps.metrics.jobs.labels(QUEUE, "failed").inc()
    deps.events.publish("task.failed", task_id=task.id, error=error)
    log.warning("task %s failed: %s", task.id, error)


async def on_poison(tx: Conn, msg: Message, reason: str) -> None:
    """A reconnect message that keeps crashing its handler: fail its task visibly."""
    task_id = int(msg.message.get("task_id", 0))
    if await tasks.fail_unfinished(tx, task_id, reason):
        await tasks.add_event(tx, task_id, "failed", error=reason)


async def on_replay(tx: Conn, message: dict[str, Any]) -> None:
    """Replaying a dead-lettered reconnect message: its failed task runs again."""
    task_id = int(message.get("task_id", 0))
    # Nothing to reset (not failed, or gone): the handler decides what the message means.
    with contextlib.suppress(tasks.TaskNotFound, tasks.TaskNotRetryable):
        await tasks.reset_for_retry(tx, task_id)


async def _retry_or_fail(
    deps: ReconnectDeps, msg: Message, task: Task, attempt: int, reason: str
) -> None:
    if attempt >= deps.olt.max_attempts:
        await _fail(deps, msg, task, f"gave up after {attempt} attempts: {reason}", "")
        return
    delay = backoff(deps.olt.retry_backoff_seconds, attempt, cap=600.0)
    async with deps.db.transaction() as tx:
        await tasks.back_to_queued(tx, task.id, error=reason, attempts=attempt)
        await tasks.add_event(tx, task.id, "retry_scheduled", error=reason, in_seconds=delay)
        await queues.set_vt(tx, QUEUE, msg.msg_id, delay)
    _retry_scheduled(deps, task, reason, delay)


async def _defer(
    deps: ReconnectDeps,
    msg: Message,
    task: Task,
    attempts: int,
    reason: str,
    delay: float,
    kind: str,
) -> None:
    """Wait out an open circuit or a full device queue without using up an attempt.

    A fresh delayed message replaces this one (``queues.requeue``), so the delivery
    counter that guards against poison messages starts again too: a long VPN outage
    delays the reconnection, it does not drop it.
    """
    async with deps.db.transaction() as tx:
        await tasks.back_to_queued(tx, task.id, error=reason, attempts=attempts)
        await tasks.add_event(tx, task.id, kind, error=reason, in_seconds=delay)
        await queues.requeue(tx, QUEUE, msg, max(1.0, delay))
    _retry_scheduled(deps, task, reason, delay)


def _retry_scheduled(deps: ReconnectDeps, task: Task, reason: str, delay: float) -> None:
    deps.metrics.jobs.labels(QUEUE, "retry").inc()
    deps.events.publish("task.retry", task_id=task.id, error=reason, in_seconds=delay)
    log.info("task %s: not done yet (%s); again in %.0f s", task.id, reason, delay)
