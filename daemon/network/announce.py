"""What partners hear when a reconnection task ends: ``reconnection.*`` / ``disconnection.*``.

Called by the task store (``tasks.finish``, ``tasks.fail_unfinished``) inside the
transaction that records the final state, so the event exists exactly when the outcome
committed, whichever path (handler, dead letter) ended the task. A superseded task is
not announced: nothing happened on the device, and the task that superseded it will be.

``TaskOutcome`` is the ``data`` of those events and, through the OpenAPI ``webhooks``
section, their documented schema: what is emitted is validated against what is
documented. It carries ids, the ONU location and the error, never the client's name or
phone, nor the OLT's output (device details a partner has no use for).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from daemon.platform import outbox
from daemon.platform.db import Conn

if TYPE_CHECKING:
    from daemon.network.tasks import Task

# An error is a device's error line or our sentence about it; past this it is noise.
MAX_ERROR_CHARS = 1000

EVENT_TYPES = {
    ("activate", "succeeded"): "reconnection.succeeded",
    ("activate", "failed"): "reconnection.failed",
    ("deactivate", "succeeded"): "disconnection.succeeded",
    ("deactivate", "failed"): "disconnection.failed",
}


class TaskOutcome(BaseModel):
    """A reconnection (activate) or disconnection (deactivate) task that ended."""

    task_id: int = Field(description="the task (GET /api/v1/tasks/{task_id})")
    action: Literal["activate", "deactivate"]
    state: Literal["succeeded", "failed"]
    service_id: int = Field(description="the UISP CRM service")
    client_id: int | None = Field(description="the UISP CRM client")
    olt: str = Field(description="the OLT's name in paymentd")
    onu: str = Field(description="the ONU's location on that OLT, frame/slot/port:onu")
    attempts: int
    error: str | None = Field(description="why it failed; null on success")
    webhook_uuid: uuid.UUID | None = Field(description="the UISP webhook that asked for it")
    finished_at: dt.datetime


async def task_finished(tx: Conn, task: Task) -> None:
    """Emit the task's outcome event in ``tx`` (nothing for a superseded task)."""
    kind = EVENT_TYPES.get((task.action, task.state))
    if kind is None:
        return
    assert task.finished_at is not None
    data = TaskOutcome(
        task_id=task.id,
        action=task.action,  # type: ignore[arg-type]  # the table's CHECK says which
        state=task.state,  # type: ignore[arg-type]
        service_id=task.service_id,
        client_id=task.client_id,
        olt=task.olt_name,
        onu=task.onu,
        attempts=task.attempts,
        error=None if task.last_error is None else task.last_error[:MAX_ERROR_CHARS],
        webhook_uuid=task.webhook_uuid,
        finished_at=task.finished_at,
    )
    await outbox.emit(tx, kind, data.model_dump(mode="json"), subject=f"task:{task.id}")
