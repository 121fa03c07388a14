"""One-for-one supervision of actors, with capped exponential backoff.

An actor is ``async def run(*, task_status)``. The first start is strict: an error before
the actor reports ``started()`` comes out of ``nursery.start(supervise, ...)``, so a boot
error (bad credentials, another instance running) stops the daemon with a clear message
instead of a restart loop. After that, a crash is logged with its traceback, counted,
and the actor is restarted after a backoff that doubles up to a cap and resets once the
actor has been healthy for a while. An actor that returns normally is done (the HTTP
server returns on shutdown).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from daemon.platform.health import Health
from daemon.platform.metrics import Metrics

log = logging.getLogger(__name__)

ActorFn = Callable[..., Awaitable[Any]]


class _Status(trio.TaskStatus[Any]):
    """Forwards the first ``started()`` of the first run to the supervisor's caller."""

    def __init__(self, outer: trio.TaskStatus[Any] | None, on_started: Callable[[], None]) -> None:
        self._outer = outer
        self._on_started = on_started
        self.started_once = False

    def started(self, value: Any = None) -> None:
        if self.started_once:
            raise RuntimeError("started() called twice")
        self.started_once = True
        self._on_started()
        if self._outer is not None:
            outer, self._outer = self._outer, None
            outer.started(value)


async def supervise(
    name: str,
    actor: ActorFn,
    health: Health,
    metrics: Metrics,
    *,
    backoff_min: float = 0.5,
    backoff_max: float = 30.0,
    reset_after: float = 60.0,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    outer: trio.TaskStatus[Any] | None = task_status
    backoff = backoff_min
    health.set_state(name, "starting")
    metrics.actor_up.labels(name).set(0)
    metrics.actor_restarts.labels(name)  # exported as 0 from the start, for alert rules

    def on_started() -> None:
        health.set_state(name, "running")
        metrics.actor_up.labels(name).set(1)

    while True:
        status = _Status(outer, on_started)
        began = trio.current_time()
        try:
            await actor(task_status=status)
        except Exception as exc:
            metrics.actor_up.labels(name).set(0)
            if outer is not None and not status.started_once:
                health.set_state(name, "stopped")
                raise  # boot error: let nursery.start() report it
            health.record_crash(name, f"{type(exc).__name__}: {exc}")
            metrics.actor_restarts.labels(name).inc()
            if trio.current_time() - began >= reset_after:
                backoff = backoff_min
            log.error("actor %s crashed; restarting in %.1f s", name, backoff, exc_info=exc)
            health.set_state(name, "restarting")
            await trio.sleep(backoff)
            backoff = min(backoff * 2, backoff_max)
        else:
            health.set_state(name, "stopped")
            metrics.actor_up.labels(name).set(0)
            if outer is not None and not status.started_once:
                outer.started()  # an actor that had nothing to do; don't hang the caller
            return
        finally:
            if status.started_once:
                outer = None
