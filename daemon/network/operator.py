"""Operator-requested reconnections: ``paymentd onu activate|deactivate SERVICE_ID``.

The request becomes an ordinary task (``daemon.network.tasks``), planned exactly as a UISP
webhook's (``uisp.decide.plan_for_service``: the ONU from the override or the service's
custom attributes, the client's name and phone from UISP) and queued on ``reconnect``, so
the running daemon's reconnect consumer executes it: it is in the task log with who asked,
ordered per service with every other task (a newer task supersedes an older one still
waiting, whatever produced either), retried, and shown by ``paymentd tasks``.

SMS: an operator's activation follows the one rule every activation follows
(``network.reconnect``): the client gets the reconnection SMS if this activation
reconnects the service (its previous successful task was not an activation) and has a
phone in UISP; a service that was already reconnected gets none. So activating by hand a
client whose suspension webhook was lost sends the SMS once, and UISP's later
``suspend_cancel`` for the same client sends no second one.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from daemon.network import tasks
from daemon.platform.config import UispConfig
from daemon.platform.db import Database
from daemon.uisp import client as uisp
from daemon.uisp.decide import DecisionError, PlannedTask, plan_for_service

ACTIONS = ("activate", "deactivate")


@dataclass(frozen=True)
class Requested:
    task_id: int
    planned: PlannedTask
    # What UISP says about the service now, for the operator to see a disagreement.
    uisp_suspended: bool


def dedupe_key(action: str, service_id: int) -> str:
    # Every request is a new task: an operator who asks twice means it twice.
    return f"{action}:service:{service_id}:operator:{uuid.uuid4()}"


async def request(
    db: Database,
    client: uisp.UispClient,
    cfg: UispConfig,
    service_id: int,
    action: str,
    *,
    requested_by: str,
) -> Requested:
    """Plan and queue the task; raises ``uisp.UispError`` / ``DecisionError`` before
    anything is written when UISP, the ONU location or the OLT's device row say no."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    planned, service = await plan_for_service(db, client, cfg, service_id, action)
    # A webhook's task for an unknown OLT is recorded as failed (UISP sent it anyway); an
    # operator can be told before anything is written.
    if await db.fetchval("SELECT 1 FROM olt_devices WHERE name = $1", planned.olt_name) is None:
        raise DecisionError(
            f"service {planned.service_id} is on OLT {planned.olt_name!r}, which paymentd has"
            " no device for: add it with 'paymentd olt add' (or correct the service's ONU"
            " location in UISP)"
        )
    async with db.transaction() as tx:
        task_id = await tasks.create(
            tx,
            dedupe_key=dedupe_key(action, service_id),
            webhook_uuid=None,
            action=action,
            service_id=planned.service_id,
            olt_name=planned.olt_name,
            onu=planned.onu,
            client_id=planned.client_id,
            client_name=planned.client_name,
            phone=planned.phone,
            service_name=planned.service_name,
        )
        if task_id is None:  # pragma: no cover - the key is a fresh uuid
            raise AssertionError("operator task dedupe key collided")
        await tasks.add_event(tx, task_id, "requested", by=requested_by, source="operator")
    return Requested(task_id, planned, _suspended(service))


def _suspended(service: dict[str, Any]) -> bool:
    return service.get("status") == uisp.SERVICE_SUSPENDED
