"""A PGMQ consumer loop driven by wake-ups and database-computed deadlines, not polling.

The loop reads until the queue is empty, then sleeps until the first of:

- a wake-up from the listener (NOTIFY on insert, a reconnect drain, or its safety tick);
- the earliest ``vt`` in the queue (a retry backoff or a lapsed visibility timeout);
- the notify throttle window after a wake-up: ``enable_notify_insert`` only fires on the
  leading edge, so inserts inside the window arrive silently and need one more read.

Each message is handled in its own task, at most ``concurrency`` at a time. The handler owns
the outcome: it archives the message (or sets its vt for a retry) in the same transaction
that records the result. A handler that raises leaves the message invisible until its vt
lapses, then it is read again (``read_ct`` counts the attempts).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from daemon.platform import queues
from daemon.platform.db import Conn, Database, DatabaseError
from daemon.platform.metrics import Metrics
from daemon.platform.queues import Message

log = logging.getLogger(__name__)

Handler = Callable[[Message], Awaitable[None]]
# Records, in the transaction that archives a poison message, what it means for the
# domain (e.g. the task it carried is marked failed), so nothing is left "running".
PoisonHandler = Callable[[Conn, Message], Awaitable[None]]


class Wakeups:
    """One coalescing wake-up per queue: a memory channel of size 1 used as a flag.

    ``wake`` never blocks (it is called from asyncpg's asyncio-side callbacks): when a wake
    is already pending, the new one is the same news, so dropping it is the overflow rule.
    """

    def __init__(self, names: tuple[str, ...] = queues.ALL) -> None:
        self._channels = {q: trio.open_memory_channel[None](1) for q in names}
        self._notified = dict.fromkeys(names, False)

    def wake(self, queue: str, *, notified: bool = False) -> None:
        """Wake the queue's consumer; ``notified`` when the cause is an insert NOTIFY."""
        self._notified[queue] = self._notified[queue] or notified
        send, _ = self._channels[queue]
        with contextlib.suppress(trio.WouldBlock):
            send.send_nowait(None)

    def wake_all(self) -> None:
        for q in self._channels:
            self.wake(q)

    def receiver(self, queue: str) -> trio.MemoryReceiveChannel[None]:
        return self._channels[queue][1]

    def take_notified(self, queue: str) -> bool:
        """Whether a NOTIFY arrived since the last call (and forget it)."""
        was, self._notified[queue] = self._notified[queue], False
        return was


@dataclass(frozen=True)
class ConsumerSettings:
    queue: str
    vt_seconds: int  # must exceed the handler's own deadline
    batch: int = 10
    concurrency: int = 8
    throttle_seconds: float = 0.1  # the queue's notify throttle; re-read once after it
    max_deliveries: int = 25  # a message read this often is poison: archived, logged
    on_poison: PoisonHandler | None = None


async def consume(
    db: Database,
    settings: ConsumerSettings,
    wake: trio.MemoryReceiveChannel[None],
    handler: Handler,
    metrics: Metrics,
    *,
    stop: trio.Event,
    notified: Callable[[], bool] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until ``stop`` is set; then let in-flight handlers finish and return.

    Whoever sets ``stop`` also wakes the consumer (``Wakeups.wake_all``) so it notices.
    ``notified`` (e.g. ``partial(wakeups.take_notified, queue)``) says whether a wake-up
    came from a NOTIFY; without it every wake-up is followed by the throttle re-read.
    """
    q = settings.queue
    limiter = trio.CapacityLimiter(settings.concurrency)
    # Set by a wake-up from the listener and by every finished handler: a handler that
    # scheduled a retry (set_vt) moved the queue's next deadline, so recompute it.
    poke = trio.Event()

    def poke_now() -> None:
        poke.set()

    forwarding = trio.CancelScope()

    async def forward_wakeups() -> None:
        with forwarding:
            async for _ in wake:
                poke_now()

    async def run_one(msg: Message) -> None:
        try:
            if msg.read_ct > settings.max_deliveries:
                log.error(
                    "%s: message %s read %d times; archiving it as poison: %s",
                    q,
                    msg.msg_id,
                    msg.read_ct,
                    msg.message,
                )
                async with db.transaction() as tx:
                    if settings.on_poison is not None:
                        await settings.on_poison(tx, msg)
                    await queues.archive(tx, q, msg.msg_id)
                metrics.jobs.labels(q, "poison").inc()
                return
            await handler(msg)
        except Exception:
            # The message stays invisible until its vt lapses, then it is retried.
            log.exception(
                "%s: handler failed on message %s (attempt %d)", q, msg.msg_id, msg.read_ct
            )
            metrics.jobs.labels(q, "crash").inc()
        finally:
            limiter.release_on_behalf_of(msg.msg_id)
            poke_now()

    async with trio.open_nursery() as handlers:
        handlers.start_soon(forward_wakeups)
        task_status.started()
        redrain_at = -math.inf
        while not stop.is_set():
            wait: float | None
            try:
                drained = await _drain(db, settings, limiter, handlers, run_one, metrics)
                # All slots busy: a finishing handler pokes us to read more.
                wait = await queues.seconds_until_next_visible(db, q) if drained else None
            except DatabaseError as exc:
                log.warning("%s: database unavailable (%s); retrying in 1 s", q, exc)
                wait = 1.0
            now = trio.current_time()
            if redrain_at > now:
                wait = min(wait if wait is not None else math.inf, redrain_at - now)
            with trio.move_on_after(wait if wait is not None else math.inf):
                await poke.wait()
            if poke.is_set():
                poke = trio.Event()
                # Inserts during the notify throttle window are silent: after a NOTIFY, read
                # once more when the window closes. (A safety tick or a finished handler
                # needs no such re-read; ``notified`` tells them apart when given.)
                if notified is None or notified():
                    redrain_at = trio.current_time() + settings.throttle_seconds
        # Leaving the nursery lets in-flight handlers finish; the supervisor's grace
        # deadline bounds how long that may take.
        forwarding.cancel()


async def _drain(
    db: Database,
    settings: ConsumerSettings,
    limiter: trio.CapacityLimiter,
    handlers: trio.Nursery,
    run_one: Callable[[Message], Awaitable[None]],
    metrics: Metrics,
) -> bool:
    """Read and dispatch until the queue is empty (True) or every slot is busy (False)."""
    q = settings.queue
    while True:
        free = int(limiter.available_tokens)
        if free == 0:
            return False
        batch = await queues.read(db, q, settings.vt_seconds, min(free, settings.batch))
        now = time.time()
        for msg in batch:
            if msg.read_ct == 1:
                metrics.queue_pickup.labels(q).observe(max(0.0, now - msg.enqueued_at.timestamp()))
            limiter.acquire_on_behalf_of_nowait(msg.msg_id)
            handlers.start_soon(run_one, msg, name=f"{q}:{msg.msg_id}")
        if len(batch) < min(free, settings.batch):
            return True
