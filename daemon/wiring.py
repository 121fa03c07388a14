"""What the daemon is made of, declared once: its queues, its jobs, its shared resources.

``QUEUES`` is the only list of queues: the migrations create them and enable their
insert notifications, the listener LISTENs to them, ``Wakeups`` has a flag for each, and
the composition root (``daemon.app``) starts one supervised consumer per entry. Each
entry says who handles it, how many at once, the lease, and what a dead-lettered message
means for its domain rows (and what replaying one resets). ``jobs`` lists the periodic
jobs the scheduler runs; ``Resources`` is everything long-lived the actors share, built
by ``open_resources`` (also used by the CLI, the demo, the tests and the benches).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, Literal, TypeVar

import trio

from daemon.actors import listener, queue_consumer, scheduler, webhook_dispatcher
from daemon.actors.olt_pool import OltPool, OltPoolSettings
from daemon.network import devices, drift, reconnect, tasks
from daemon.notifications import delivery, messages, providers
from daemon.notifications.sms import SmsProvider
from daemon.payments import idempotency, metered, processor, stripe_events, stripe_process
from daemon.payments import jobs as payment_jobs
from daemon.payments import providers as payment_providers
from daemon.payments.provider import PaymentProvider
from daemon.payments.stripe_provider import StripeProvider
from daemon.platform import queues, retention
from daemon.platform.config import Config
from daemon.platform.consumer import ConsumerSettings, Lease, Wakeups
from daemon.platform.db import Database
from daemon.platform.deps import Deps
from daemon.platform.queues import Message, PoisonHandler, ReplayHandler
from daemon.platform.scheduler import Job
from daemon.platform.secrets import SecretBox, load_keyring
from daemon.uisp import process, webhooks
from daemon.uisp.client import UispClient
from daemon.webhooks import fanout
from daemon.webhooks.timing import Doorbell, SystemClock

log = logging.getLogger(__name__)

D = TypeVar("D")


@dataclass
class Resources:
    """The long-lived things actors share. Built once per daemon by ``open_resources``."""

    deps: Deps  # config, database, metrics, event bus, health
    box: SecretBox
    pool: OltPool
    uisp: UispClient
    sms_provider: SmsProvider | None
    sms_fallback: SmsProvider | None = None
    # Rung by the outbox fan-out when deliveries were added; the webhook dispatcher waits on it.
    webhook_doorbell: Doorbell = field(default_factory=Doorbell)
    payment_provider: PaymentProvider | None = None  # payments.provider; None for "none"

    @property
    def config(self) -> Config:
        return self.deps.config

    @property
    def db(self) -> Database:
        return self.deps.db


@dataclass(frozen=True)
class QueueDecl(Generic[D]):
    name: str
    handler: Callable[[D, Message, Lease], Awaitable[None]]
    make_deps: Callable[[Resources], D]
    concurrency: int
    on_poison: PoisonHandler
    on_replay: ReplayHandler
    description: str
    # The handler's lease on a message, extended while it works; None: the configured
    # database.visibility_timeout_seconds. A crash costs at most this before a retry.
    lease_seconds: int | None = None

    def consumer_settings(self, cfg: Config) -> ConsumerSettings:
        return ConsumerSettings(
            self.name,
            lease_seconds=self.lease_seconds or cfg.database.visibility_timeout_seconds,
            concurrency=self.concurrency,
            throttle_seconds=cfg.database.notify_throttle_ms / 1000,
            on_poison=self.on_poison,
        )

    def bind(self, res: Resources) -> Callable[[Message, Lease], Awaitable[None]]:
        """The handler with its dependencies, as the consumer calls it."""
        return partial(self.handler, self.make_deps(res))


def _uisp_deps(r: Resources) -> process.UispDeps:
    return process.UispDeps(r.db, r.uisp, r.config.uisp, r.deps.metrics, r.deps.events)


def _reconnect_deps(r: Resources) -> reconnect.ReconnectDeps:
    return reconnect.ReconnectDeps(
        r.db, r.pool, r.config.olt, r.config.sms, r.deps.metrics, r.deps.events
    )


def _sms_deps(r: Resources) -> delivery.SmsDeps:
    return delivery.SmsDeps(
        r.db,
        r.sms_provider,
        r.deps.metrics,
        r.deps.events,
        delivery.SmsSettings.from_config(r.config),
        r.sms_fallback,
    )


def _fanout_deps(r: Resources) -> fanout.FanoutDeps:
    return fanout.FanoutDeps(r.db, r.webhook_doorbell, SystemClock())


def _payments_deps(r: Resources) -> processor.ProcessorDeps:
    return processor.ProcessorDeps(
        r.db, r.payment_provider, r.config.payments, r.deps.events, r.uisp, r.config.uisp,
        r.deps.metrics,
    )  # fmt: skip


def _stripe_deps(r: Resources) -> stripe_process.StripeEventDeps:
    provider = metered.unwrap(r.payment_provider)
    stripe = provider if isinstance(provider, StripeProvider) else None
    return stripe_process.StripeEventDeps(r.db, stripe, _payments_deps(r))


QUEUES: tuple[QueueDecl[Any], ...] = (
    QueueDecl(
        webhooks.QUEUE,
        process.handle,
        _uisp_deps,
        concurrency=8,
        on_poison=process.on_poison,
        on_replay=process.on_replay,
        description="stored UISP webhooks → confirmed with UISP → reconnection tasks",
    ),
    QueueDecl(
        tasks.QUEUE,
        reconnect.handle,
        _reconnect_deps,
        # Waiting for a device holds no slot (lease.detached): these bound database work.
        concurrency=16,
        on_poison=reconnect.on_poison,
        on_replay=reconnect.on_replay,
        description="reconnection tasks → the OLT (activate/deactivate an ONU) → SMS",
    ),
    QueueDecl(
        messages.QUEUE,
        delivery.handle_sms,
        _sms_deps,
        concurrency=4,  # providers rate-limit; a handful in flight is plenty
        on_poison=delivery.on_poison,
        on_replay=delivery.on_replay,
        description="SMS to customers → the SMS provider",
    ),
    QueueDecl(
        fanout.QUEUE,
        fanout.handle,
        _fanout_deps,
        concurrency=4,
        on_poison=fanout.on_poison,
        on_replay=fanout.on_replay,
        description="emitted events → one webhook delivery per matching endpoint",
    ),
    QueueDecl(
        processor.QUEUE,
        processor.handle,
        _payments_deps,
        concurrency=8,  # bounded by the provider's rate limits more than by us
        on_poison=processor.on_poison,
        on_replay=processor.on_replay,
        description="payments and refunds → the payment provider, to their final state",
    ),
    QueueDecl(
        stripe_events.QUEUE,
        stripe_process.handle,
        _stripe_deps,
        concurrency=4,
        on_poison=stripe_process.on_poison,
        on_replay=stripe_process.on_replay,
        description="stored Stripe events → the object re-fetched from Stripe → payment state",
    ),
)
QUEUE_NAMES: tuple[str, ...] = tuple(q.name for q in QUEUES)
BY_NAME: dict[str, QueueDecl[Any]] = {q.name: q for q in QUEUES}


@dataclass(frozen=True)
class ActorDecl:
    """One supervised actor: its name (health, metrics) and its run function, bound."""

    name: str
    run: Callable[..., Awaitable[Any]]  # async def run(*, task_status)
    # "stop": finishes what it holds once the daemon's stop event is set (consumers);
    # "cancelled": runs until its group is cancelled, after the others (the listener).
    until: Literal["stop", "cancelled"]


def worker_actors(res: Resources, url: str, wakeups: Wakeups, stop: trio.Event) -> list[ActorDecl]:
    """The actors that run under the instance lock: the listener, one consumer per
    declared queue, the webhook dispatcher, the scheduler. (The OLT pool and the HTTP
    ingress run outside it.)"""
    cfg, deps = res.config, res.deps
    listen = listener.ListenerDeps(
        url,
        QUEUE_NAMES,
        wakeups,
        deps.metrics,
        deps.events,
        cfg.database.safety_poll_seconds,
        cfg.database.notify_throttle_ms,
    )
    actors = [ActorDecl("listener", partial(listener.run, listen), "cancelled")]
    for decl in QUEUES:
        consumer = queue_consumer.ConsumerDeps(
            res.db, decl.consumer_settings(cfg), decl.bind(res), wakeups, deps.metrics, stop
        )
        actors.append(
            ActorDecl(f"consumer:{decl.name}", partial(queue_consumer.run, consumer), "stop")
        )
    dispatch = webhook_dispatcher.DispatcherDeps(
        res.db, res.box, cfg.webhooks, res.webhook_doorbell, deps.metrics, stop
    )
    actors.append(
        ActorDecl("webhook_dispatcher", partial(webhook_dispatcher.run, dispatch), "stop")
    )
    sched = scheduler.SchedulerDeps(res.db, jobs(deps, res), deps.metrics, deps.events, stop)
    actors.append(ActorDecl("scheduler", partial(scheduler.run, sched), "stop"))
    return actors


def retention_targets() -> list[retention.Target]:
    """What retention deletes, per capability; never a webhook still waiting to run."""
    targets = [
        retention.Target("uisp_webhooks", "received_at", "state <> 'queued'"),
        retention.Target("task_events", "at"),
        retention.Target("failed_messages", "failed_at"),
        # Old runs' counts; never the latest finished one (the drift list reads it).
        retention.Target(
            "drift_runs",
            "started_at",
            "id < (SELECT coalesce(max(id), 0) FROM drift_runs WHERE state = 'finished')",
        ),
        retention.Target("webhook_attempts", "started_at"),
        # Finished deliveries (their attempts go with them); a pending one is a live timer.
        retention.Target("webhook_deliveries", "finished_at", "state <> 'pending'"),
        # Announced events, once nothing still needs them: no delivery of theirs is pending
        # and no fan-out message for them is waiting (deleting an event deletes its
        # deliveries). Payment and task histories live in their own tables.
        retention.Target(
            "events",
            "occurred_at",
            "NOT EXISTS (SELECT 1 FROM webhook_deliveries d"
            " WHERE d.event_id = events.id AND d.state = 'pending')"
            " AND NOT EXISTS (SELECT 1 FROM pgmq.q_event_fanout q"
            " WHERE q.message->>'event_id' = events.id)",
        ),
        retention.Target("stripe_events", "received_at", "state <> 'queued'"),
    ]
    targets += [retention.Target(f"pgmq.a_{q}", "archived_at") for q in QUEUE_NAMES]
    return targets


def jobs(deps: Deps, res: Resources | None = None) -> list[Job]:
    """The scheduler's periodic jobs.

    ``res``: the daemon's resources; without them (the CLI) a job that needs the OLT pool,
    the UISP client or the payment provider opens its own for the run.
    """
    cfg = deps.config.retention
    drift_cfg = deps.config.drift
    pay = deps.config.payments
    payment_provider = res.payment_provider if res is not None else None

    async def reconcile_network() -> str:
        report = await reconcile_drift(deps, res, fix=drift_cfg.fix, trigger="schedule")
        return report.summary()

    async def reconcile() -> str:
        async with payment_providers.processor_deps(
            pay, deps.db, deps.events, payment_provider, deps.metrics
        ) as p:
            return await payment_jobs.reconcile(p)

    async def expire() -> str:
        async with payment_providers.processor_deps(
            pay, deps.db, deps.events, payment_provider, deps.metrics
        ) as p:
            summary = await payment_jobs.expire(p)
        pruned = await idempotency.prune(deps.db)
        return summary + (f"; {pruned} expired idempotency key(s) deleted" if pruned else "")

    async def prune() -> str:
        pruned = await retention.prune(
            deps.db,
            retention_targets(),
            keep_days=cfg.keep_days,
            batch_size=cfg.batch_size,
            metrics=deps.metrics,
        )
        total = sum(pruned.values())
        detail = ", ".join(f"{k} {v}" for k, v in pruned.items() if v)
        return f"pruned {total} row(s) older than {cfg.keep_days} days" + (
            f" ({detail})" if detail else ""
        )

    declared = [
        Job(
            "retention",
            cfg.interval_seconds,
            prune,
            "delete webhooks, task history, dead letters and queue archives past retention",
        ),
        Job(
            "drift",
            drift_cfg.interval_seconds,
            reconcile_network,
            "compare UISP, the task log and the OLTs; report (and with drift.fix, fix) drift",
            # Not in the middle of start-up (and of a fresh install's first minutes).
            first_run_delay_seconds=600.0,
        ),
    ]
    if pay.provider != "none":  # without a provider there is nothing to ask
        declared += [
            Job(
                "payments_reconcile",
                pay.reconcile_interval_seconds,
                reconcile,
                "re-fetch payments pending/processing/unknown untouched past a threshold",
            ),
            Job(
                "payments_expire",
                pay.expire_interval_seconds,
                expire,
                "cancel and expire payments pending past payments.pending_ttl_seconds",
            ),
        ]
    return declared


async def reconcile_drift(
    deps: Deps, res: Resources | None, *, fix: bool, trigger: str
) -> drift.Report:
    """One drift run: on the daemon's OLT pool (its warm sessions) when ``res`` is given,
    else (``paymentd network reconcile``) on resources opened for this run."""
    if res is not None:
        return await drift.reconcile(_drift_deps(res), fix=fix, trigger=trigger)
    box = load_keyring(deps.config.secrets)
    async with open_resources(deps, box) as own, trio.open_nursery() as nursery:
        await nursery.start(own.pool.run)
        try:
            return await drift.reconcile(_drift_deps(own), fix=fix, trigger=trigger)
        finally:
            nursery.cancel_scope.cancel()


def _drift_deps(r: Resources) -> drift.DriftDeps:
    return drift.DriftDeps(
        r.db, r.uisp, r.pool, r.config.uisp, r.config.drift, r.deps.metrics, r.deps.events
    )


async def replay_dead(db: Database, dead_ids: Sequence[int]) -> list[queues.DeadLetter]:
    """Send dead-lettered messages again, each after its queue's domain reset.

    All or nothing, in one transaction: ``DeadLetterNotFound`` for an unknown id (or one
    already replayed) replays none of them.
    """
    replayed = []
    async with db.transaction() as tx:
        for dead_id in dead_ids:
            dead = await queues.take_dead(tx, dead_id)
            decl = BY_NAME.get(dead.queue)
            if decl is not None:
                await decl.on_replay(tx, dead.message)
            await queues.send(tx, dead.queue, dead.message)
            replayed.append(dead)
    return replayed


async def replay_webhooks(db: Database, uuids: Sequence[str]) -> list[webhooks.Webhook]:
    """``paymentd uisp replay`` / the admin route: re-run stored webhooks, whatever their
    state. All or nothing: ``WebhookNotFound`` for an unknown uuid replays none.

    A replay's tasks get new dedupe keys (the replay count is part of them), so a replay
    of a processed webhook really acts again — that is what an operator asks for.
    """
    async with db.transaction() as tx:
        return [await webhooks.requeue(tx, u, replay=True) for u in uuids]


def make_pool(deps: Deps, box: SecretBox) -> OltPool:
    """The OLT pool (the daemon's, and ``paymentd olt test``'s)."""
    return OltPool(
        OltPoolSettings.from_config(deps.config.olt),
        partial(devices.load_spec, deps.db, box),
        deps.metrics,
        deps.events,
    )


@contextlib.asynccontextmanager
async def open_resources(deps: Deps, box: SecretBox) -> AsyncIterator[Resources]:
    """Build the shared clients; closes them all in one shielded, bounded step."""
    cfg = deps.config
    pool = make_pool(deps, box)
    deps.olt_pool = pool  # for the console (its sessions, breakers, test connection)
    await drift.restore_metrics(deps.db, deps.metrics)  # the latest run's, across restarts
    async with contextlib.AsyncExitStack() as stack:
        uisp = UispClient.from_config(cfg.uisp)
        stack.push_async_callback(_bounded_close, uisp.aclose)
        provider, fallback = providers.configured(cfg)
        for sms_client in (provider, fallback):
            if sms_client is not None:
                stack.push_async_callback(_bounded_close, sms_client.aclose)
        payment_provider = payment_providers.make(cfg.payments, deps.db)
        if cfg.payments.provider == "mock":
            # Said at every start: the mock charges nothing, and whoever holds a payment's
            # hosted-page link can mark it paid. Right for the demo, wrong with real money.
            log.warning(
                'payments.provider = "mock": no money moves and anyone with a payment\'s'
                " link can pay it; use stripe in production"
            )
        if payment_provider is not None:
            stack.push_async_callback(_bounded_close, payment_provider.aclose)
            payment_provider = metered.MeteredProvider(payment_provider, deps.metrics)
        yield Resources(
            deps, box, pool, uisp, provider, fallback, payment_provider=payment_provider
        )


async def _bounded_close(close: Callable[[], Awaitable[None]]) -> None:
    with trio.move_on_after(5, shield=True):
        await close()


__all__ = [
    "BY_NAME",
    "QUEUES",
    "QUEUE_NAMES",
    "ActorDecl",
    "QueueDecl",
    "Resources",
    "jobs",
    "open_resources",
    "reconcile_drift",
    "replay_dead",
    "replay_webhooks",
    "retention_targets",
    "worker_actors",
]
