"""The outbox queue's handler: an emitted event becomes one delivery per matching endpoint.

Consumes ``outbox.QUEUE`` messages: ``{"event_id"}`` (written by ``outbox.emit`` in the
transaction of the change) or ``{"nudge"}`` (an operator made deliveries due). The
deliveries and the archive of the message commit together; the unique (event, endpoint)
index makes a repeat (a lapsed lease, a replay) add nothing. Then it rings the
dispatcher's doorbell, in this process; a dispatcher elsewhere finds the work by its own
timer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from daemon.platform import outbox, queues
from daemon.platform.consumer import Lease
from daemon.platform.db import Conn, Database
from daemon.platform.queues import Message
from daemon.webhooks import deliveries
from daemon.webhooks.timing import Doorbell, WallClock

log = logging.getLogger(__name__)

QUEUE = outbox.QUEUE


@dataclass
class FanoutDeps:
    db: Database
    doorbell: Doorbell
    clock: WallClock


async def handle(deps: FanoutDeps, msg: Message, lease: Lease) -> None:
    body = msg.message
    created = 0
    async with deps.db.transaction() as tx:
        event_id = body.get("event_id")
        if isinstance(event_id, str):
            event_type = await tx.fetchval("SELECT type FROM events WHERE id = $1", event_id)
            if event_type is None:
                log.warning("fan-out: event %s is gone (pruned?); nothing to deliver", event_id)
            else:
                created = await deliveries.fan_out(tx, event_id, event_type, deps.clock.now())
        await queues.archive(tx, QUEUE, msg.msg_id)
    # Also without new endpoint deliveries: the transaction of the event may have added a
    # callback delivery (deliveries.add_callback).
    if created or body:
        deps.doorbell.ring()


async def on_poison(tx: Conn, msg: Message, reason: str) -> None:
    # The event stays in the outbox; replaying the dead letter fans it out then.
    log.error("fan-out of %s dead-lettered: %s", msg.message, reason)


async def on_replay(tx: Conn, message: dict[str, object]) -> None:
    return None
