"""The composition root: builds the resources and channels, starts the actors.

Nothing else knows the wiring. Start-up order matters:

1. the key for secrets at rest (a missing or wrong key is a start-up error, never a new key);
2. migrations (PGMQ installed, queues created, insert-notify re-enabled);
3. the listener, which takes the single-instance lock and LISTENs;
4. only then are in-flight messages released (nobody else can be working on them) and
   the workers started; READY=1 goes to systemd once every actor reported ``started()``.

Shutdown (SIGTERM/SIGINT or ``shutdown.set()``): STOPPING=1, the HTTP server stops
accepting, consumers stop reading and finish what they hold, all within
``daemon.shutdown_grace_seconds``; then the listener and the OLT sessions are closed.
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

from daemon.actors import http_ingress, listener, payment_processor, sms_sender
from daemon.actors.olt_pool import OltPool, OltPoolSettings
from daemon.network.devices import load_spec
from daemon.network.reconnect import ReconnectDeps
from daemon.notifications.sms import make_provider
from daemon.platform import queues
from daemon.platform.config import Config
from daemon.platform.consumer import Wakeups
from daemon.platform.db import Database
from daemon.platform.deps import Deps
from daemon.platform.events import EventBus
from daemon.platform.health import Health
from daemon.platform.metrics import Metrics
from daemon.platform.migrate import migrate
from daemon.platform.sdnotify import SystemdNotifier, watchdog_loop
from daemon.platform.secrets import SecretBox, load_key, verify_key
from daemon.platform.supervisor import supervise
from daemon.uisp.client import UispClient

log = logging.getLogger("paymentd")


@dataclass
class Running:
    """What a started daemon exposes to whoever embeds it (tests, the demo)."""

    deps: Deps
    base_url: str
    pool: OltPool
    shutdown: trio.Event


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
    box = SecretBox(load_key(cfg.olt))
    if cfg.daemon.migrate_on_start:
        report = await trio.to_thread.run_sync(
            partial(migrate, cfg.database.url, notify_throttle_ms=cfg.database.notify_throttle_ms)
        )
        log.info(
            "database ready: migrations %s, pgmq %s", report.applied or "up to date", report.pgmq
        )
    with SystemdNotifier(env) as notifier:
        await _with_bridge(cfg, box, notifier, shutdown, handle_signals, task_status)


async def _with_bridge(
    cfg: Config,
    box: SecretBox,
    notifier: SystemdNotifier,
    shutdown: trio.Event,
    handle_signals: bool,
    task_status: trio.TaskStatus[Running],
) -> None:
    async with trio_asyncio.open_loop() as loop:
        # A stray exception in an asyncio callback (asyncpg after pg_terminate_backend,
        # an asyncssh channel) would otherwise tear down the whole bridge: log it instead.
        loop.set_exception_handler(_log_asyncio_error)
        async with Database.open(
            cfg.database.url,
            min_size=cfg.database.pool_min,
            max_size=cfg.database.pool_max,
            command_timeout=cfg.database.command_timeout_seconds,
        ) as db:
            await verify_key(db, box)
            await _serve(cfg, db, box, notifier, shutdown, handle_signals, task_status)


async def _serve(
    cfg: Config,
    db: Database,
    box: SecretBox,
    notifier: SystemdNotifier,
    shutdown: trio.Event,
    handle_signals: bool,
    task_status: trio.TaskStatus[Running],
) -> None:
    metrics = Metrics()
    health = Health(cfg.daemon.unhealthy_restarts, cfg.daemon.restart_reset_after_seconds)
    deps = Deps(cfg, db, metrics, EventBus(), health)
    wakeups = Wakeups()
    stop = trio.Event()
    sup = partial(
        supervise,
        health=health,
        metrics=metrics,
        backoff_min=cfg.daemon.restart_backoff_min_seconds,
        backoff_max=cfg.daemon.restart_backoff_max_seconds,
        reset_after=cfg.daemon.restart_reset_after_seconds,
    )
    pool = OltPool(
        OltPoolSettings.from_config(cfg.olt),
        partial(load_spec, db, box),
        metrics,
        deps.events,
    )
    uisp = UispClient.from_config(cfg.uisp)
    provider = make_provider(cfg.sms)
    processor = payment_processor.ProcessorDeps(
        deps, uisp, ReconnectDeps(db, pool, cfg.olt, cfg.sms, metrics, deps.events)
    )
    try:
        async with trio.open_nursery() as infra:
            if handle_signals:
                infra.start_soon(_signals, shutdown)
            await infra.start(sup, "listener", partial(listener.run, deps, wakeups))
            for q in queues.ALL:
                released = await queues.release_in_flight(db, q)
                if released:
                    log.info(
                        "%s: %d message(s) in flight at the last stop will run again", q, released
                    )
            await infra.start(sup, "olt_pool", pool.run)
            async with trio.open_nursery() as workers:
                await workers.start(
                    sup,
                    "payment_processor",
                    partial(payment_processor.run, processor, wakeups, stop),
                )
                await workers.start(
                    sup, "sms_sender", partial(sms_sender.run, deps, provider, wakeups, stop)
                )
                base_url = await workers.start(
                    sup, "http_ingress", partial(http_ingress.run, deps, shutdown=shutdown)
                )
                log.info("paymentd ready on %s", base_url)
                notifier.ready(status=health.status_line())
                infra.start_soon(partial(watchdog_loop, notifier, lambda: not health.flapping()))
                infra.start_soon(_status_updates, notifier, health)
                task_status.started(Running(deps, base_url, pool, shutdown))
                await shutdown.wait()
                log.info("shutting down (grace %.0f s)", cfg.daemon.shutdown_grace_seconds)
                notifier.stopping()
                health.stopping = True
                stop.set()
                wakeups.wake_all()
                workers.cancel_scope.deadline = (
                    trio.current_time() + cfg.daemon.shutdown_grace_seconds
                )
            infra.cancel_scope.cancel()
    finally:
        with trio.move_on_after(5, shield=True):
            await uisp.aclose()
            if provider is not None:
                await provider.aclose()
    log.info("stopped")


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
