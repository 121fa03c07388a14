"""A PGMQ consumer driven by wake-ups and database-computed deadlines, holding short leases.

The loop reads until the queue is empty, then sleeps until the first of:

- a wake-up from the listener (NOTIFY on insert, a reconnect drain, or its safety tick);
- the earliest ``vt`` in the queue (a retry backoff or a lapsed lease);
- the notify throttle window after a wake-up: ``enable_notify_insert`` only fires on the
  leading edge, so inserts inside the window arrive silently and need one more read.

**Leases.** A message is read with a short visibility timeout (``lease_seconds``) and a
keeper task extends it every third of that while its handler runs. So a handler may work
as long as it must, yet a crash of the process costs at most one lease before another
reader takes the message, and an unexpected exception in a handler makes the message
visible again after a short backoff (at most one lease). Correctness therefore depends
neither on releasing messages at start-up nor on the single-instance lock.

The handler owns the outcome: it archives the message (or sets its vt for a retry) in the
same transaction that records the result. A message delivered more than ``max_deliveries``
times without an outcome is dead-lettered (``failed_messages``) together with what that
means for its domain rows (``on_poison``); it can be replayed later.

Each message is handled in its own task, at most ``concurrency`` at a time. A handler that
must wait for something slow and unrelated to the database (an OLT device) does so inside
``lease.detached()``: the wait holds no slot, so one slow device never starves the queue.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import trio

from daemon.platform import queues
from daemon.platform.backoff import backoff
from daemon.platform.db import Database, DatabaseError
from daemon.platform.metrics import Metrics
from daemon.platform.queues import Message, PoisonHandler

log = logging.getLogger(__name__)


class Wakeups:
    """One coalescing wake-up per queue: a memory channel of size 1 used as a flag.

    ``wake`` never blocks (it is called from asyncpg's asyncio-side callbacks): when a wake
    is already pending, the new one is the same news, so dropping it is the overflow rule.
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self._channels = {q: trio.open_memory_channel[None](1) for q in self.names}
        self._notified = dict.fromkeys(self.names, False)

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
    lease_seconds: int = 60  # visibility timeout per read; extended while the handler runs
    batch: int = 10
    concurrency: int = 8
    throttle_seconds: float = 0.1  # the queue's notify throttle; re-read once after it
    max_deliveries: int = 25  # delivered this often without an outcome: dead-lettered
    on_poison: PoisonHandler | None = None
    crash_backoff_seconds: float = 1.0  # first delay after a crash; doubles, capped at the lease


class _Slot:
    """One of a queue's handler slots, held by one lease (the limiter's borrower).

    Not the msg_id: a lease that lapsed while its handler still runs lets the same message
    be read again, and its second handler needs a slot of its own.
    """

    def __init__(self, limiter: trio.CapacityLimiter) -> None:
        self._limiter = limiter
        self.held = False

    def take_nowait(self) -> None:
        self._limiter.acquire_on_behalf_of_nowait(self)
        self.held = True

    async def take(self) -> None:
        await self._limiter.acquire_on_behalf_of(self)
        self.held = True

    def give_back(self) -> None:
        if self.held:
            self.held = False
            self._limiter.release_on_behalf_of(self)


class Lease:
    """A handler's hold on its message: kept alive by a keeper task while the handler runs.

    If another reader takes the message (the lease lapsed, e.g. the database stalled for
    longer than a lease), ``lost`` is set and the handler is cancelled: the new holder
    does the work, as after a crash.
    """

    def __init__(self, msg: Message, slot: _Slot, on_slot_free: Callable[[], None]) -> None:
        self.msg = msg
        self.vt: dt.datetime = msg.vt  # the vt we last set; extensions are conditional on it
        self.lost = trio.Event()
        self._slot = slot
        self._on_slot_free = on_slot_free
        self.scope = trio.CancelScope()  # the handler's; cancelled when the lease is lost

    @contextlib.asynccontextmanager
    async def detached(self) -> AsyncIterator[None]:
        """Wait for something slow without holding one of the queue's handler slots."""
        self._slot.give_back()
        self._on_slot_free()
        try:
            yield
        finally:
            # Back under the concurrency bound for the database work that follows. (If
            # cancelled while waiting, no slot is held and run_one gives none back.)
            await self._slot.take()


Handler = Callable[[Message, Lease], Awaitable[None]]


async def _keep_lease(db: Database, queue: str, lease: Lease, seconds: int) -> None:
    interval = max(seconds / 3, 0.05)
    # When the lease runs out by our clock (the read set it a moment before we got here).
    expires = trio.current_time() + seconds
    while True:
        await trio.sleep(interval)
        try:
            with trio.fail_after(interval):
                new_vt = await queues.extend_lease(db, queue, lease.msg.msg_id, lease.vt, seconds)
        except (DatabaseError, trio.TooSlowError) as exc:
            if trio.current_time() + interval < expires:
                log.warning(
                    "%s: lease of message %s not extended: %s", queue, lease.msg.msg_id, exc
                )
                continue
            # It would lapse before the next try, and another reader could take the
            # message: stop now rather than work on it twice at once (it runs again,
            # as after a crash).
            log.warning(
                "%s: lease of message %s could not be extended (%s); stopping this handler",
                queue,
                lease.msg.msg_id,
                exc,
            )
            _lose(lease)
            return
        if new_vt is None:
            # Archived or re-timed by the handler (it is finishing): nothing to keep. Or
            # read again by someone else after the lease lapsed: the handler must stop.
            if await _taken_over(db, queue, lease):
                log.warning(
                    "%s: lease of message %s lapsed and another reader took it; "
                    "stopping this handler",
                    queue,
                    lease.msg.msg_id,
                )
                _lose(lease)
            return
        lease.vt = new_vt
        expires = trio.current_time() + seconds


def _lose(lease: Lease) -> None:
    lease.lost.set()
    lease.scope.cancel()


async def _taken_over(db: Database, queue: str, lease: Lease) -> bool:
    with trio.move_on_after(5), contextlib.suppress(DatabaseError):
        read_ct = await db.fetchval(
            f"SELECT read_ct FROM pgmq.q_{queues.check_name(queue)} WHERE msg_id = $1",
            lease.msg.msg_id,
        )
        return read_ct is not None and int(read_ct) > lease.msg.read_ct
    return False


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

    async def run_one(msg: Message, slot: _Slot) -> None:
        lease = Lease(msg, slot, poke_now)
        try:
            if msg.read_ct > settings.max_deliveries:
                await _dead_letter(db, settings, msg, metrics)
                return
            async with trio.open_nursery() as keeper:
                keeper.start_soon(_keep_lease, db, q, lease, settings.lease_seconds)
                try:
                    with lease.scope:
                        await handler(msg, lease)
                finally:
                    keeper.cancel_scope.cancel()
            if lease.lost.is_set():
                metrics.jobs.labels(q, "lease_lost").inc()
        except Exception:
            delay = min(
                backoff(settings.crash_backoff_seconds, msg.read_ct, cap=settings.lease_seconds),
                settings.lease_seconds,
            )
            log.exception(
                "%s: handler failed on message %s (delivery %d); again in %.0f s",
                q,
                msg.msg_id,
                msg.read_ct,
                delay,
            )
            metrics.jobs.labels(q, "crash").inc()
            await _after_crash(db, q, lease, delay)
        finally:
            slot.give_back()
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
                log.debug("%s: database unavailable (%s); retrying in 1 s", q, exc)
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


async def _after_crash(db: Database, queue: str, lease: Lease, delay: float) -> None:
    """Make a crashed handler's message visible again soon (not at the end of its lease)."""
    # If the database is down too, the lease lapses by itself, at most one lease from now.
    with trio.move_on_after(5), contextlib.suppress(DatabaseError):
        await queues.extend_lease(db, queue, lease.msg.msg_id, lease.vt, delay)


async def _dead_letter(
    db: Database, settings: ConsumerSettings, msg: Message, metrics: Metrics
) -> None:
    q = settings.queue
    reason = (
        f"delivered {msg.read_ct} times without an outcome (more than "
        f"{settings.max_deliveries}); see the daemon log for the handler's errors"
    )
    log.error("%s: message %s dead-lettered: %s: %s", q, msg.msg_id, reason, msg.message)
    async with db.transaction() as tx:
        if settings.on_poison is not None:
            await settings.on_poison(tx, msg, reason)
        await queues.dead_letter(tx, q, msg, reason)
    metrics.jobs.labels(q, "poison").inc()


async def _drain(
    db: Database,
    settings: ConsumerSettings,
    limiter: trio.CapacityLimiter,
    handlers: trio.Nursery,
    run_one: Callable[[Message, _Slot], Awaitable[None]],
    metrics: Metrics,
) -> bool:
    """Read and dispatch until the queue is empty (True) or every slot is busy (False).

    Slots are taken before reading (a detached handler may take one back while the read
    is in flight), and those the read did not fill are given back.
    """
    q = settings.queue
    while True:
        slots: list[_Slot] = []
        while len(slots) < settings.batch:
            slot = _Slot(limiter)
            try:
                slot.take_nowait()
            except trio.WouldBlock:
                break
            slots.append(slot)
        if not slots:
            return False
        try:
            batch = await queues.read(db, q, settings.lease_seconds, len(slots))
        except BaseException:
            for slot in slots:
                slot.give_back()
            raise
        now = time.time()
        for msg, slot in zip(batch, slots, strict=False):
            if msg.read_ct == 1:
                metrics.queue_pickup.labels(q).observe(max(0.0, now - msg.enqueued_at.timestamp()))
            handlers.start_soon(run_one, msg, slot, name=f"{q}:{msg.msg_id}")
        for slot in slots[len(batch) :]:
            slot.give_back()
        if len(batch) < len(slots):
            return True
