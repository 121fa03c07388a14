"""The composition root: builds the resources and channels, starts the actors.

Nothing else knows the wiring; what there is to wire is declared in ``daemon.wiring``.
Start-up order:

1. the key for secrets at rest (a missing or wrong key is a start-up error, never a new key);
2. migrations (PGMQ installed, the declared queues created, insert-notify enabled);
3. the shared resources (database pool, OLT pool, UISP and SMS clients);
4. the worker group, under the single-instance lock: the listener, one consumer per
   declared queue, the scheduler; then the HTTP ingress. READY=1 goes to systemd once
   every actor reported ``started()``.

If the instance lock's connection is lost, the worker group is stopped at once and
started again when the lock is held again (leases make that safe: an interrupted
message runs again at most one lease later). Shutdown (SIGTERM/SIGINT or
``shutdown.set()``): STOPPING=1, the HTTP server stops accepting, consumers stop
reading and finish what they hold, all within ``daemon.shutdown_grace_seconds``; then
the listener and the OLT sessions are closed.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio
import trio_asyncio

from daemon import wiring
from daemon.actors import grpc_ingress, http_ingress, instance_lock
from daemon.actors.olt_pool import OltPool
from daemon.payments import sql_api
from daemon.platform import logs
from daemon.platform.config import Config
from daemon.platform.consumer import Wakeups
from daemon.platform.db import Database, DatabaseError
from daemon.platform.deps import Deps
from daemon.platform.events import EventBus
from daemon.platform.health import Health
from daemon.platform.metrics import Metrics
from daemon.platform.migrate import migrate
from daemon.platform.sdnotify import SystemdNotifier, watchdog_loop
from daemon.platform.secrets import load_keyring, verify_key
from daemon.platform.supervisor import supervise

log = logging.getLogger("paymentd")

# Waiting for the instance lock: at start-up a previous daemon's backend may still be
# exiting; after losing the lock (a database restart) the database may need a while.
LOCK_WAIT_START_SECONDS = 2.0
LOCK_WAIT_AGAIN_SECONDS = 10.0
# Taking the lock again while the database is down: quick at first, then every 5 s.
LOCK_RETRY_FIRST_SECONDS = 0.5
LOCK_RETRY_MAX_SECONDS = 5.0


@dataclass
class Running:
    """What a started daemon exposes to whoever embeds it (tests, the demo)."""

    deps: Deps
    base_url: str
    pool: OltPool
    shutdown: trio.Event
    resources: wiring.Resources
    grpc_address: str | None = None  # host:port when [grpc] enabled


async def run_daemon(
    cfg: Config,
    *,
    env: Mapping[str, str] | None = None,
    shutdown: trio.Event | None = None,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    env = os.environ if env is None else env
    # `or` would call Event.__bool__, which trio refuses.
    shutdown = trio.Event() if shutdown is None else shutdown
    # Whoever embeds the daemon (the CLI, the demo, tests) gets its secrets redacted.
    logs.register_config(cfg)
    box = load_keyring(cfg.secrets)
    if cfg.daemon.migrate_on_start:
        report = await trio.to_thread.run_sync(
            partial(
                migrate,
                cfg.database.url.reveal(),
                queue_names=wiring.QUEUE_NAMES,
                notify_throttle_ms=cfg.database.notify_throttle_ms,
            )
        )
        log.info(
            "database ready: migrations %s, pgmq %s", report.applied or "up to date", report.pgmq
        )
    with SystemdNotifier(env) as notifier:
        async with trio_asyncio.open_loop() as loop:
            # A stray exception in an asyncio callback (asyncpg after pg_terminate_backend,
            # an asyncssh channel) would otherwise tear down the whole bridge: log it.
            loop.set_exception_handler(_log_asyncio_error)
            async with Database.open(
                cfg.database.url.reveal(),
                min_size=cfg.database.pool_min,
                max_size=cfg.database.pool_max,
                command_timeout=cfg.database.command_timeout_seconds,
            ) as db:
                await verify_key(db, box)
                await sql_api.publish_settings(db, cfg.payments)  # for SQL callers
                metrics = Metrics()
                health = Health(
                    cfg.daemon.unhealthy_restarts, cfg.daemon.restart_reset_after_seconds
                )
                deps = Deps(cfg, db, metrics, EventBus(), health)
                async with wiring.open_resources(deps, box) as res:
                    await _serve(res, notifier, shutdown, handle_signals, task_status)
    log.info("stopped")


def _supervisor(res: wiring.Resources) -> Any:
    cfg = res.config.daemon
    return partial(
        supervise,
        health=res.deps.health,
        metrics=res.deps.metrics,
        backoff_min=cfg.restart_backoff_min_seconds,
        backoff_max=cfg.restart_backoff_max_seconds,
        reset_after=cfg.restart_reset_after_seconds,
    )


async def _serve(
    res: wiring.Resources,
    notifier: SystemdNotifier,
    shutdown: trio.Event,
    handle_signals: bool,
    task_status: trio.TaskStatus[Running],
) -> None:
    cfg, deps = res.config, res.deps
    sup = _supervisor(res)
    stop = trio.Event()  # workers: read nothing more, finish what you hold
    # The ingress stops taking requests only once the workers have drained: UISP sends
    # each webhook once and gives up after ~10 s, so a restart must not leave new
    # connections unanswered for the whole drain (up to the grace period) plus the next
    # start. Intake only stores and queues, so serving while the workers finish is safe.
    front_stop = trio.Event()
    async with trio.open_nursery() as infra:
        if handle_signals:
            infra.start_soon(_signals, shutdown)
        await infra.start(sup, "olt_pool", res.pool.run)
        async with trio.open_nursery() as front:
            async with trio.open_nursery() as work:
                await work.start(partial(_worker_group, res, stop))
                base_url = await front.start(
                    sup, "http_ingress", partial(http_ingress.run, deps, shutdown=front_stop)
                )
                grpc_address = None
                if cfg.grpc.enabled:
                    grpc_address = await front.start(
                        sup, "grpc_ingress", partial(grpc_ingress.run, deps, shutdown=front_stop)
                    )
                log.info("paymentd ready on %s", base_url)
                notifier.ready(status=deps.health.status_line())
                infra.start_soon(
                    partial(watchdog_loop, notifier, lambda: not deps.health.flapping())
                )
                infra.start_soon(_status_updates, notifier, deps.health)
                task_status.started(Running(deps, base_url, res.pool, shutdown, res, grpc_address))
                await shutdown.wait()
                log.info("shutting down (grace %.0f s)", cfg.daemon.shutdown_grace_seconds)
                notifier.stopping()
                deps.health.stopping = True
                stop.set()
                # The worker group returns once its consumers finished what they hold (they
                # get the grace period; the OLT pool stays up meanwhile); a backstop in case
                # it does not.
                work.cancel_scope.deadline = (
                    trio.current_time() + cfg.daemon.shutdown_grace_seconds + 5
                )
            # The workers are done: now HTTP and gRPC drain their in-flight requests.
            front_stop.set()
        infra.cancel_scope.cancel()


async def _worker_group(
    res: wiring.Resources,
    stop: trio.Event,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The listener, the consumers and the scheduler, run while the instance lock is held."""
    cfg, deps = res.config, res.deps
    sup = _supervisor(res)
    wakeups = Wakeups(wiring.QUEUE_NAMES)
    started = False
    retry_delay = LOCK_RETRY_FIRST_SECONDS
    while True:
        if stop.is_set():
            return
        wait = LOCK_WAIT_AGAIN_SECONDS if started else LOCK_WAIT_START_SECONDS
        try:
            url = cfg.database.url.reveal()
            async with instance_lock.hold(
                url, wait_seconds=wait, ping_seconds=cfg.database.safety_poll_seconds
            ) as lost:
                actors = wiring.worker_actors(res, url, wakeups, stop)
                async with trio.open_nursery() as group:
                    group.start_soon(_cancel_when_set, lost, group.cancel_scope)
                    # Actors that run until cancelled (the listener) start first and stop
                    # last; the ones that finish their work on ``stop`` run inside.
                    for actor in actors:
                        if actor.until == "cancelled":
                            await group.start(sup, actor.name, actor.run)
                    async with trio.open_nursery() as workers:
                        for actor in actors:
                            if actor.until == "stop":
                                await workers.start(sup, actor.name, actor.run)
                        if not started:
                            started = True
                            task_status.started()
                        await stop.wait()
                        wakeups.wake_all()
                        workers.cancel_scope.deadline = (
                            trio.current_time() + cfg.daemon.shutdown_grace_seconds
                        )
                    group.cancel_scope.cancel()
                if not lost.is_set():
                    return  # shut down
        except (DatabaseError, BaseExceptionGroup) as exc:
            if isinstance(exc, BaseExceptionGroup):
                # A worker's first start after re-taking the lock failed (trio wraps it):
                # the database again, so keep trying like any outage; anything else is a bug.
                _, rest = exc.split(DatabaseError)
                if rest is not None:
                    raise
            if not started:
                raise
            # Said once per outage (the database layer logs its start and end too).
            if retry_delay == LOCK_RETRY_FIRST_SECONDS:
                log.warning("instance lock: database unavailable (%s); retrying", exc)
            await trio.sleep(retry_delay)
            retry_delay = min(retry_delay * 2, LOCK_RETRY_MAX_SECONDS)
            continue
        retry_delay = LOCK_RETRY_FIRST_SECONDS
        if stop.is_set():
            return
        log.error(
            "instance lock lost (database connection gone): workers stopped; "
            "they start again once the lock is held"
        )
        # Not ready while they are down (/readyz, the systemd status line say so).
        for actor in actors:
            deps.health.set_state(actor.name, "stopped")
        deps.events.publish("instance_lock.lost")


async def _cancel_when_set(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def _log_asyncio_error(_loop: Any, context: dict[str, Any]) -> None:
    log.error(
        "asyncio callback error (ignored): %s",
        context.get("message"),
        exc_info=context.get("exception"),
    )


async def _signals(shutdown: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s", signal.Signals(signum).name)
            shutdown.set()


async def _status_updates(notifier: SystemdNotifier, health: Health) -> None:
    last = ""
    while True:
        line = health.status_line()
        if line != last:
            notifier.status(line)
            last = line
        await trio.sleep(5)
