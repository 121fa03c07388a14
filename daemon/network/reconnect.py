"""Run one reconnection task on its OLT and record the outcome (``reconnect`` queue handler).

At-least-once: the task row says where it stands, so a redelivered message for a finished
task is only archived, and a task interrupted mid-command (crash, SIGKILL) simply runs
again — activating an active ONU is harmless and the driver confirms the final state.
The success, the SMS that goes with it and the archive of the message commit together.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import trio

from daemon.network import tasks
from daemon.network.olt.types import (
    OltCircuitOpen,
    OltCommandError,
    OltResult,
    OltTransientError,
    OltUnknownDevice,
    OnuRef,
)
from daemon.platform import queues
from daemon.platform.backoff import backoff
from daemon.platform.config import OltConfig, SmsConfig
from daemon.platform.db import Conn, Database
from daemon.platform.events import EventBus
from daemon.platform.metrics import Metrics
from daemon.platform.queues import Message

log = logging.getLogger(__name__)

OUTPUT_EXCERPT = 4000


@dataclass
class ReconnectDeps:
    db: Database
    pool: Any  # OltPool: execute(device, onu, action) -> OltResult
    olt: OltConfig
    sms: SmsConfig
    metrics: Metrics
    events: EventBus

    @property
    def task_deadline(self) -> float:
        # Connect + login + about a dozen commands (a cold Huawei operation: enable, undo
        # smart, infoswitch, scroll, config, interface, the change, display, quits), twice:
        # the pool retries once on a fresh session. The queue's vt is set above this.
        return 2 * (self.olt.connect_timeout_seconds + 12 * self.olt.command_timeout_seconds)


DEFAULT_SMS = "Your payment was received and your service is active again."


def sms_text(template: str, task: dict[str, Any]) -> str:
    values = {
        "client_name": task.get("client_name") or "",
        "client_id": task.get("client_id") or 0,
        "service_id": task.get("service_id") or 0,
        "service_name": task.get("service_name") or "",
    }
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError, TypeError):
        # The config check formats the template with sample values, but a format spec can
        # still clash with real data; a plain SMS beats a reconnection with none.
        log.exception(
            "sms.template cannot be formatted for task %s; sending the default", task.get("id")
        )
        return DEFAULT_SMS


async def handle(deps: ReconnectDeps, msg: Message) -> None:
    task_id = int(msg.message["task_id"])
    db = deps.db
    async with db.transaction() as tx:
        row = await tx.fetchrow("SELECT * FROM reconnect_tasks WHERE id = $1 FOR UPDATE", task_id)
        if row is None or row["state"] in ("succeeded", "failed", "superseded"):
            await queues.archive(tx, queues.RECONNECT, msg.msg_id)
            return
        newer = await tx.fetchval(
            "SELECT max(id) FROM reconnect_tasks WHERE service_id = $1 AND id > $2",
            row["service_id"],
            task_id,
        )
        if newer is not None:
            # A later event for this service carries the latest intent: running this one
            # now (e.g. a deactivate stuck in retry after the client paid) would undo it.
            await tx.execute(
                "UPDATE reconnect_tasks SET state = 'superseded', finished_at = now(),"
                " updated_at = now() WHERE id = $1",
                task_id,
            )
            await tasks.add_event(tx, task_id, "superseded", by_task=newer)
            await queues.archive(tx, queues.RECONNECT, msg.msg_id)
            deps.events.publish("task.superseded", task_id=task_id, by_task=newer)
            return
        attempt: int = await tx.fetchval(
            "UPDATE reconnect_tasks SET state = 'running', attempts = attempts + 1,"
            " started_at = coalesce(started_at, now()), updated_at = now()"
            " WHERE id = $1 RETURNING attempts",
            task_id,
        )
        await tasks.add_event(tx, task_id, "running", attempt=attempt)
    task = dict(row)
    deps.events.publish(
        "task.running",
        task_id=task_id,
        attempt=attempt,
        olt=task["olt_name"],
        onu=task["onu"],
        action=task["action"],
    )
    try:
        onu = OnuRef.parse(task["onu"])
    except ValueError as exc:
        await _fail(deps, msg, task, f"bad ONU location {task['onu']!r}: {exc}", "")
        return
    try:
        with trio.fail_after(deps.task_deadline):
            result = await deps.pool.execute(task["olt_name"], onu, task["action"])
    except OltCommandError as exc:
        await _fail(deps, msg, task, str(exc), getattr(exc, "output", ""))
    except OltUnknownDevice:
        await _fail(
            deps,
            msg,
            task,
            f"OLT {task['olt_name']!r} is not configured: add it with 'paymentd olt add'",
            "",
        )
    except OltCircuitOpen as exc:
        # The device is known to be down (VPN, power): waiting for the breaker is not an
        # attempt on the device, so it must not use up the task's attempts.
        await _retry_or_fail(deps, msg, task, attempt, str(exc), refund=True)
    except (OltTransientError, trio.TooSlowError) as exc:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, trio.TooSlowError):
            reason = f"OLT operation took longer than {deps.task_deadline:.0f} s"
        await _retry_or_fail(deps, msg, task, attempt, reason)
    else:
        await _succeed(deps, msg, task, result)


async def _succeed(
    deps: ReconnectDeps, msg: Message, task: dict[str, Any], result: OltResult
) -> None:
    task_id = task["id"]
    sms_id = None
    async with deps.db.transaction() as tx:
        await tx.execute(
            "UPDATE reconnect_tasks SET state = 'succeeded', last_error = NULL, olt_output = $2,"
            " finished_at = now(), updated_at = now() WHERE id = $1",
            task_id,
            result.output[-OUTPUT_EXCERPT:],
        )
        await tasks.add_event(tx, task_id, "succeeded", state=result.state, seconds=result.seconds)
        previous = await tx.fetchrow(
            "SELECT id, action FROM reconnect_tasks WHERE service_id = $1 AND id < $2"
            " AND state = 'succeeded' ORDER BY id DESC LIMIT 1",
            task["service_id"],
            task_id,
        )
        if (
            task["action"] == "activate"
            and previous is not None
            and previous["action"] == "activate"
        ):
            # Already reconnected (e.g. by payment.add in reactivate_onu mode, then UISP's
            # own suspend_cancel): one reconnection, one SMS.
            await tasks.add_event(
                tx, task_id, "sms_skipped", reason=f"already reconnected by task {previous['id']}"
            )
        elif task["action"] == "activate":
            if task["phone"]:
                sms_id = await tx.fetchval(
                    "INSERT INTO sms_messages (task_id, phone, body, provider)"
                    " VALUES ($1, $2, $3, $4) ON CONFLICT (task_id) DO NOTHING RETURNING id",
                    task_id,
                    task["phone"],
                    sms_text(deps.sms.template, task),
                    deps.sms.provider,
                )
                if sms_id is not None:
                    await queues.send(tx, queues.SMS, {"sms_id": sms_id})
                    await tasks.add_event(tx, task_id, "sms_queued", sms_id=sms_id)
            else:
                await tasks.add_event(
                    tx, task_id, "sms_skipped", reason="no phone in UISP contacts"
                )
        await queues.archive(tx, queues.RECONNECT, msg.msg_id)
    deps.metrics.jobs.labels(queues.RECONNECT, "succeeded").inc()
    deps.events.publish("task.succeeded", task_id=task_id, state=result.state, sms_id=sms_id)
    log.info("task %s: %s %s/%s succeeded", task_id, task["action"], task["olt_name"], task["onu"])


async def _fail(
    deps: ReconnectDeps, msg: Message, task: dict[str, Any], error: str, output: str
) -> None:
    task_id = task["id"]
    async with deps.db.transaction() as tx:
        await tx.execute(
            "UPDATE reconnect_tasks SET state = 'failed', last_error = $2, olt_output = $3,"
            " finished_at = now(), updated_at = now() WHERE id = $1",
            task_id,
            error,
            output[-OUTPUT_EXCERPT:] or None,
        )
        await tasks.add_event(tx, task_id, "failed", error=error)
        await queues.archive(tx, queues.RECONNECT, msg.msg_id)
    deps.metrics.jobs.labels(queues.RECONNECT, "failed").inc()
    deps.events.publish("task.failed", task_id=task_id, error=error)
    log.warning("task %s failed: %s", task_id, error)


async def on_poison(tx: Conn, msg: Message) -> None:
    """A reconnect message that keeps crashing its handler: fail its task visibly."""
    task_id = int(msg.message.get("task_id", 0))
    status = await tx.execute(
        "UPDATE reconnect_tasks SET state = 'failed', finished_at = now(), updated_at = now(),"
        " last_error = $2 WHERE id = $1 AND state IN ('queued', 'running')",
        task_id,
        f"no outcome after {msg.read_ct} deliveries; see the daemon log",
    )
    if status.endswith(" 1"):
        await tasks.add_event(tx, task_id, "failed", error="poison message")


async def _retry_or_fail(
    deps: ReconnectDeps,
    msg: Message,
    task: dict[str, Any],
    attempt: int,
    reason: str,
    *,
    refund: bool = False,
) -> None:
    if refund:
        await _wait_for_breaker(deps, msg, task, attempt - 1, reason)
        return
    if attempt >= deps.olt.max_attempts:
        await _fail(deps, msg, task, f"gave up after {attempt} attempts: {reason}", "")
        return
    delay = backoff(deps.olt.retry_backoff_seconds, attempt, cap=600.0)
    async with deps.db.transaction() as tx:
        await tx.execute(
            "UPDATE reconnect_tasks SET state = 'queued', last_error = $2, attempts = $3,"
            " updated_at = now() WHERE id = $1",
            task["id"],
            reason,
            attempt,
        )
        await tasks.add_event(tx, task["id"], "retry_scheduled", error=reason, in_seconds=delay)
        await queues.set_vt(tx, queues.RECONNECT, msg.msg_id, delay)
    _retry_scheduled(deps, task, reason, delay)


async def _wait_for_breaker(
    deps: ReconnectDeps, msg: Message, task: dict[str, Any], attempts: int, reason: str
) -> None:
    """Wait out an open circuit without using up an attempt.

    A fresh delayed message replaces this one (archive + send in one transaction), so the
    delivery counter that guards against poison messages starts again too: a long VPN
    outage delays the reconnection, it does not drop it.
    """
    delay = deps.olt.breaker_reset_seconds
    async with deps.db.transaction() as tx:
        await tx.execute(
            "UPDATE reconnect_tasks SET state = 'queued', last_error = $2, attempts = $3,"
            " updated_at = now() WHERE id = $1",
            task["id"],
            reason,
            attempts,
        )
        await tasks.add_event(tx, task["id"], "waiting_for_device", error=reason, in_seconds=delay)
        await queues.archive(tx, queues.RECONNECT, msg.msg_id)
        await queues.send(tx, queues.RECONNECT, {"task_id": task["id"]}, max(1, round(delay)))
    _retry_scheduled(deps, task, reason, delay)


def _retry_scheduled(deps: ReconnectDeps, task: dict[str, Any], reason: str, delay: float) -> None:
    deps.metrics.jobs.labels(queues.RECONNECT, "retry").inc()
    deps.events.publish("task.retry", task_id=task["id"], error=reason, in_seconds=delay)
    log.info("task %s: transient failure (%s); retry in %.0f s", task["id"], reason, delay)
