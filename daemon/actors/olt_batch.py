"""Bursts batched per board: how a device actor serves the requests queued for it.

After a billing run hundreds of reconnections wait for the same OLT, and each costs a full
CLI sequence (enter config, the board's interface, the change, the read-back, leave:
about six commands at seconds each on a slow device). So whenever the device actor
becomes free it takes what is queued for it (``drain``; those not started yet still
count as waiting towards the device queue's bound, at least two full sequences) and
``plan`` cuts it into sequences: changes (``set``) to the same board (frame/slot) share
one sequence of up to ``max_batch`` ONUs — the driver enters the interface once, sends
each ONU's command and confirms them all (``OltDriver.set_onus``) — and anything else (a
probe) runs alone.

Each request keeps its own outcome: a device error about one ONU (unknown ONU, wrong
read-back state) is that request's answer and the others succeed; only what concerns the
whole sequence (the device unreachable, the breaker open, the session lost twice) is
every member's answer. A request whose caller gave up (its deadline passed) before its
sequence started is left out, as a single one is; a caller that gives up later only loses
the answer. The caller's own retry, SMS and ordering rules are the reconnect handler's, as
before: nothing here is durable.

Order: sequences run in the order their first request arrived; a request never joins a
sequence that already holds its ONU (an activate and a deactivate of one ONU read back the
same flag), so the later one goes to a later sequence, and nothing queued after a
non-``set`` request joins a sequence started before it. ``max_batch = 1`` is one sequence
per request, as before batching.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

import trio

from daemon.network.olt.driver import BatchResult, OltDriver
from daemon.network.olt.ssh import CliSession
from daemon.network.olt.types import OltError, OnuChange, OnuRef

if TYPE_CHECKING:
    from daemon.actors.olt_pool import _DeviceActor, _Reply, _Request

__all__ = ["drain", "plan", "serve"]

log = logging.getLogger(__name__)


class _Plannable(Protocol):
    @property
    def kind(self) -> str: ...
    @property
    def onu(self) -> OnuRef | None: ...


R = TypeVar("R", bound=_Plannable)


def drain(receive: trio.MemoryReceiveChannel[R], limit: int) -> list[R]:
    """What is queued right now, at most ``limit``, without waiting."""
    taken: list[R] = []
    while len(taken) < limit:
        try:
            taken.append(receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    return taken


def plan(requests: Sequence[R], max_batch: int) -> list[list[R]]:
    """Cut requests (in arrival order) into sequences; see the module docstring."""
    sequences: list[list[R]] = []
    open_by_board: dict[tuple[int, int], list[R]] = {}
    for request in requests:
        onu = request.onu
        if request.kind != "set" or onu is None:
            sequences.append([request])
            open_by_board.clear()  # a barrier: later changes do not overtake it
            continue
        board = (onu.frame, onu.slot)
        current = open_by_board.get(board)
        if current is None or len(current) >= max_batch or any(r.onu == onu for r in current):
            current = open_by_board[board] = []
            sequences.append(current)
        current.append(request)
    return sequences


async def serve(actor: _DeviceActor, requests: list[_Request]) -> None:
    """Serve drained requests, every one answered (or its channel closed) on every way
    out, cancellation included."""
    actor.in_hand = len(requests)  # still waiting: they count towards the queue's bound
    try:
        for sequence in plan(requests, actor.pool.settings.max_batch):
            actor.in_hand -= len(sequence)
            waiting = [r for r in sequence if _caller_waiting(actor, r)]
            if len(waiting) == 1:
                await actor._serve(waiting[0])
            elif waiting:
                await _serve_batch(actor, waiting)
    finally:
        actor.in_hand = 0
        for request in requests:
            request.reply.close()  # idempotent; a caller left waiting sees "stopped"


def _caller_waiting(actor: _DeviceActor, request: _Request) -> bool:
    if request.reply.statistics().open_receive_channels > 0:
        return True
    # Its task deadline passed while this request waited its turn: nobody would record
    # the outcome, and the task will run again.
    log.info("%s: caller gone before its turn; skipping %s", actor.name, request.kind)
    request.reply.close()
    return False


async def _serve_batch(actor: _DeviceActor, requests: list[_Request]) -> None:
    from daemon.actors.olt_pool import _answer  # the pool imports this module

    started = trio.current_time()
    changes = []
    for r in requests:
        assert r.onu is not None
        changes.append(OnuChange(r.onu, r.action == "activate"))

    async def operation(session: CliSession, driver: OltDriver) -> BatchResult:
        return await driver.set_onus(session, changes)

    deadline = actor.pool.settings.batch_deadline(len(changes))
    results, outcome = await actor._guarded(lambda: actor._on_device(operation, deadline))
    if isinstance(results, OltError) and outcome == "transient":
        # The whole sequence broke (its retry on a fresh session included): perhaps one
        # ONU's command hangs or drops the session. Run each change alone, so that ONU
        # fails by itself instead of costing its board-mates their attempts (their
        # retries would batch together again and fail the same way). In an outage this
        # is cheap: the breaker, now open, answers each one at once.
        log.warning(
            "%s: a sequence of %d changes failed (%s); running them one by one",
            actor.name,
            len(changes),
            results,
        )
        actor.pool._metrics.olt_batch_size.observe(len(changes))
        for request in requests:
            await actor._serve(request)
        return
    seconds = trio.current_time() - started
    actor.pool._metrics.olt_batch_size.observe(len(changes))
    for i, request in enumerate(requests):
        reply: _Reply
        if isinstance(results, OltError):
            # One failure of the whole sequence, each caller its own copy to raise (one
            # exception object raised in many tasks would share its traceback).
            reply = copy.copy(results).with_traceback(None)
            own = outcome
        else:
            reply = results[i]
            own = "ok" if not isinstance(reply, OltError) else "device_error"
        _answer(request, reply)
        actor._observe(request, own, seconds, batch=len(changes))
    log.info(
        "%s: %d ONU changes in one sequence (%s) in %.1f s",
        actor.name,
        len(changes),
        outcome if isinstance(results, OltError) else "ok",
        seconds,
    )
