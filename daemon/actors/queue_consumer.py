"""A queue consumer actor: one per declared queue (``daemon.wiring.QUEUES``).

Consumes: its queue's messages, woken by the listener (``Wakeups``) and by the queue's
own deadlines (retry backoffs, lapsed leases).
Produces: whatever its handler produces; ``paymentd_jobs{queue,outcome}`` metrics.
Owns: the leases of the messages it holds (see ``daemon.platform.consumer``).

One supervised unit per queue, so a crash in one queue's consumer never cancels
another's work. On ``stop`` it reads nothing more and lets its handlers finish.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import trio

from daemon.platform.consumer import ConsumerSettings, Lease, Wakeups, consume
from daemon.platform.db import Database
from daemon.platform.metrics import Metrics
from daemon.platform.queues import Message


@dataclass
class ConsumerDeps:
    db: Database
    settings: ConsumerSettings
    handler: Callable[[Message, Lease], Awaitable[None]]
    wakeups: Wakeups
    metrics: Metrics
    stop: trio.Event


async def run(
    deps: ConsumerDeps, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    q = deps.settings.queue
    await consume(
        deps.db,
        deps.settings,
        deps.wakeups.receiver(q),
        deps.handler,
        deps.metrics,
        stop=deps.stop,
        notified=partial(deps.wakeups.take_notified, q),
        task_status=task_status,
    )
