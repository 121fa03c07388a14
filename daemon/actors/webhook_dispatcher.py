"""The webhook dispatcher: sends due deliveries, signed, and schedules their retries.

Consumes: ``webhook_deliveries`` rows whose ``next_attempt_at`` has come (fanned out from
the outbox by ``daemon.webhooks.fanout``, or made due by an operator's retry/recover).
Produces: signed POSTs to endpoints and callback URLs; one ``webhook_attempts`` row per
attempt; the delivery's next attempt time or final state; ``endpoint.disabled`` events.
Owns: its HTTP client (the SSRF-guarded transport) and its leases on deliveries.

**Durable timers.** The loop claims what is due, then sleeps until the earliest future
``next_attempt_at`` in PostgreSQL, its doorbell (new deliveries, a freed slot) or a long
safety poll, whichever comes first: no polling loop, and a restart resumes from the table
— nothing lost, nothing early (a claim moves ``next_attempt_at`` to the lease's end, so a
crash mid-send retries after the lease, not at once and not twice at once).

**Fairness.** Every delivery is sent in its own task, at most ``max_in_flight`` at once,
and the claim skips targets already at their concurrency (``endpoint_concurrency`` or the
endpoint's ``max_concurrency``), so a hanging endpoint holds only its own few slots while
everyone else's deliveries are claimed around it. Each exchange has a total deadline.
An endpoint whose last attempt failed (``failing_since``, timeouts included) gets one
slot, and failing endpoints together at most half of ``max_in_flight`` (``failing_share``):
many dead endpoints, whose backlogs are the oldest due rows, cannot take every slot.
"""

from __future__ import annotations

import datetime as dt
import http.cookiejar
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import httpx
import trio

from daemon.platform.config import WebhooksConfig
from daemon.platform.db import Conn, Database, DatabaseError
from daemon.platform.metrics import Metrics
from daemon.platform.secrets import Keyring
from daemon.webhooks import deliveries, endpoints, sender, signing
from daemon.webhooks.deliveries import AttemptRecord, Claimed
from daemon.webhooks.schedule import RetryPolicy
from daemon.webhooks.ssrf import GuardedTransport, TargetPolicy
from daemon.webhooks.timing import Doorbell, SystemClock, WallClock

log = logging.getLogger(__name__)
T = TypeVar("T")

CLAIM_BATCH = 100
# Decrypted signing secrets are reused this long (and never past an expiry): a rotation
# reaches the signatures within it, and a busy endpoint costs no query per delivery.
SECRETS_CACHE_SECONDS = 1.0
DB_BACKOFF_MIN, DB_BACKOFF_MAX = 0.5, 30.0
# An outcome write that fails (a database blip) is retried until this long before the
# lease ends; then the lease lapses and the delivery is sent again (same webhook-id).
OUTCOME_WRITE_MARGIN = dt.timedelta(seconds=5)


def failing_share(max_in_flight: int) -> int:
    """How many exchanges failing endpoints may hold together: half, so the other half
    always stays for endpoints that answer (none is reserved when there is one slot)."""
    return max(1, max_in_flight // 2)


@dataclass
class DispatcherDeps:
    db: Database
    box: Keyring
    config: WebhooksConfig
    doorbell: Doorbell
    metrics: Metrics
    stop: trio.Event
    clock: WallClock = field(default_factory=SystemClock)
    rand: Callable[[], float] = random.random
    # Tests and benches may pass their own (e.g. a resolver mapping names); None: the
    # guarded transport built from the config.
    transport: httpx.AsyncBaseTransport | None = None


async def run(
    deps: DispatcherDeps, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    cfg = deps.config
    transport = deps.transport or GuardedTransport(
        TargetPolicy.from_config(cfg.allow_private_targets, cfg.allowed_cidrs)
    )
    async with httpx.AsyncClient(
        transport=transport,
        follow_redirects=False,
        trust_env=False,
        # Receivers' cookies are never kept: each delivery stands alone.
        cookies=http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[])),
        timeout=httpx.Timeout(cfg.timeout_seconds),
        headers={"user-agent": cfg.user_agent},
    ) as client:
        dispatcher = Dispatcher(deps, client)
        async with trio.open_nursery() as nursery:
            task_status.started()
            await dispatcher.loop(nursery)


class _Bucket:
    """A per-target token bucket (``rate_limit_per_second``), on the schedule clock."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.tokens = float(rate)
        self.at: dt.datetime | None = None

    def take(self, now: dt.datetime) -> float:
        """0 when a token was taken; else seconds until one is there."""
        if self.at is not None:
            elapsed = max(0.0, (now - self.at).total_seconds())
            self.tokens = min(float(self.rate), self.tokens + elapsed * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class Dispatcher:
    def __init__(self, deps: DispatcherDeps, client: httpx.AsyncClient) -> None:
        self.deps = deps
        self.cfg = deps.config
        self.client = client
        self.policy = RetryPolicy.from_config(deps.config)
        self.held: Counter[str] = Counter()  # target -> deliveries this process is sending
        self.in_flight = 0
        self.buckets: dict[str, _Bucket] = {}
        self._secrets: dict[str | None, tuple[dt.datetime, list[str]]] = {}
        self._callback_secret_ready = False
        self.idle = trio.Event()  # set while nothing is in flight (shutdown waits on it)
        self.idle.set()

    async def loop(self, nursery: trio.Nursery) -> None:
        deps = self.deps
        backoff = DB_BACKOFF_MIN
        while not deps.stop.is_set():
            try:
                wake_at = await self._round(nursery)
                backoff = DB_BACKOFF_MIN
            except DatabaseError as exc:
                # What is in flight carries on; claims resume when the database is back.
                log.warning("webhook dispatcher: %s; claiming again in %.1f s", exc, backoff)
                with trio.move_on_after(backoff):
                    await deps.stop.wait()
                backoff = min(backoff * 2, DB_BACKOFF_MAX)
                continue
            if wake_at is not None:
                await self._wait(wake_at)
        # Stop: claim nothing more; let what is in flight finish (each is bounded by the
        # exchange deadline; the supervisor's grace is the backstop, and leases cover it).
        await self.idle.wait()
        nursery.cancel_scope.cancel()

    async def _round(self, nursery: trio.Nursery) -> dt.datetime | None:
        """Claim and start what is due; return when to look again (None: at once)."""
        deps, cfg = self.deps, self.cfg
        if not self._callback_secret_ready:
            # Callbacks without a signing endpoint are signed with the daemon-wide secret.
            # Here rather than before started(): a database that is down at start (or
            # after a lost instance lock) is a blip to ride out, not a boot error.
            async with deps.db.transaction() as tx:
                await endpoints.ensure_callback_secret(tx, deps.box)
            self._callback_secret_ready = True
        now = deps.clock.now()
        free = cfg.max_in_flight - self.in_flight
        batch = min(free, CLAIM_BATCH)
        claimed: list[Claimed] = []
        if batch > 0:
            # Rings from here on are news for the next round, not this one.
            deps.doorbell.clear()
            claimed = await deliveries.claim(
                deps.db,
                now,
                limit=batch,
                lease_seconds=cfg.lease_seconds,
                default_concurrency=cfg.endpoint_concurrency,
                held=dict(self.held),
                failing_share=failing_share(cfg.max_in_flight),
            )
            for c in claimed:
                self._start(nursery, c)
        if claimed and len(claimed) == batch and self.in_flight < cfg.max_in_flight:
            return None  # a full batch: there may be more due
        wake_at = now + dt.timedelta(seconds=cfg.safety_poll_seconds)
        if self.in_flight < cfg.max_in_flight:
            # (At the global bound only a finished exchange makes room: it rings.)
            nxt = await deliveries.next_due(deps.db, now)
            if nxt is not None:
                wake_at = min(wake_at, nxt)
        return wake_at

    async def _wait(self, until: dt.datetime) -> None:
        async with trio.open_nursery() as race:

            async def sleep() -> None:
                await self.deps.clock.sleep_until(until)
                race.cancel_scope.cancel()

            async def bell() -> None:
                await self.deps.doorbell.wait()
                race.cancel_scope.cancel()

            async def stop() -> None:
                await self.deps.stop.wait()
                race.cancel_scope.cancel()

            race.start_soon(sleep)
            race.start_soon(bell)
            race.start_soon(stop)

    def _start(self, nursery: trio.Nursery, c: Claimed) -> None:
        self.held[c.target] += 1
        self.in_flight += 1
        self.idle = trio.Event() if self.idle.is_set() else self.idle
        nursery.start_soon(self._deliver, c)

    async def _deliver(self, first: Claimed) -> None:
        c: Claimed | None = first
        try:
            # A slot stays with its target while the target has due work (each next one
            # is leased in the transaction that records the previous outcome), unless
            # the global bound is reached: then it goes back to the loop's fair claim.
            while c is not None:
                c = await self._attempt(c)
        except Exception:
            # The lease lapses and the delivery is tried again then; never lost.
            assert c is not None
            log.exception("webhook delivery %d: attempt %d crashed", c.id, c.attempt)
        finally:
            self.held[first.target] -= 1
            if self.held[first.target] <= 0:
                del self.held[first.target]
            self.in_flight -= 1
            if self.in_flight == 0:
                self.idle.set()
            # Room for what a claim had to skip (a saturated target, the global bound).
            # Rings coalesce: a burst of finishes costs one claim.
            self.deps.doorbell.ring()

    async def _attempt(self, c: Claimed) -> Claimed | None:
        """One attempt; returns the target's next due delivery, leased, if this slot
        should carry on with it."""
        deps, cfg = self.deps, self.cfg
        now = deps.clock.now()
        if c.rate_limit_per_second:
            bucket = self.buckets.get(c.target)
            if bucket is None or bucket.rate != c.rate_limit_per_second:
                bucket = self.buckets[c.target] = _Bucket(c.rate_limit_per_second)
            wait = bucket.take(now)
            if wait > 0:
                await deliveries.defer(deps.db, c, now + dt.timedelta(seconds=wait))
                return None
        secrets = await self._signing_secrets(c.signing_endpoint_id, now)
        if not secrets and c.endpoint_id is None:
            # A callback whose signing endpoint is gone: the daemon-wide secret signs it.
            secrets = await self._signing_secrets(None, now)
        body = json.dumps(c.payload(), separators=(",", ":")).encode()
        started = deps.clock.now()
        if not secrets:
            exchange = sender.Exchange(None, "no active signing secret", None, False, None, 0)
        else:
            # The signature's timestamp is real time (receivers check it against theirs),
            # whatever clock the schedule runs on.
            headers = signing.headers(
                secrets, c.event_id, int(time.time()), body, legacy=c.legacy_signature
            )
            exchange = await sender.post(
                self.client,
                c.url,
                body,
                headers,
                total_seconds=cfg.timeout_seconds,
                max_body=cfg.response_body_max_bytes,
            )
        return await self._record(c, started, exchange)

    async def _endpoint_outcome(
        self, tx: Conn, endpoint_id: str, gone: bool, started: dt.datetime, now: dt.datetime
    ) -> None:
        """A failed attempt's consequences for its endpoint: 410, or failing too long."""
        since = await endpoints.record_outcome(tx, endpoint_id, ok=False, at=started)
        if gone:
            await endpoints.disable(tx, endpoint_id, "gone", "answered 410 Gone")
        elif since is not None and (now - since).total_seconds() >= (
            self.cfg.disable_after_seconds
        ):
            await endpoints.disable(
                tx, endpoint_id, "failing", f"only failed attempts since {since.isoformat()}"
            )

    async def _retrying(self, c: Claimed, write: Callable[[], Awaitable[T]]) -> T:
        """``write`` (an outcome), again after a database error while the lease allows.

        A write whose COMMIT was lost on the way back may have landed: its repeat then
        finds the lease gone (reported as lost) and logs the attempt a second time.
        """
        delay = DB_BACKOFF_MIN
        while True:
            try:
                return await write()
            except DatabaseError as exc:
                if self.deps.clock.now() + dt.timedelta(seconds=delay) >= (
                    c.leased_until - OUTCOME_WRITE_MARGIN
                ):
                    raise
                log.warning(
                    "webhook delivery %d: recording attempt %d failed (%s); retrying",
                    c.id,
                    c.attempt,
                    exc,
                )
                await trio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _signing_secrets(self, signer: str | None, now: dt.datetime) -> list[str]:
        cached = self._secrets.get(signer)
        if cached is not None and now < cached[0]:
            return cached[1]
        secrets, changes_at = await endpoints.signing_secrets(
            self.deps.db, self.deps.box, signer, now
        )
        valid_until = now + dt.timedelta(seconds=SECRETS_CACHE_SECONDS)
        if changes_at is not None:
            valid_until = min(valid_until, changes_at)
        if len(self._secrets) > 10_000:
            self._secrets.clear()  # bounded: endpoints come and go
        self._secrets[signer] = (valid_until, secrets)
        return secrets

    async def _record(
        self, c: Claimed, started: dt.datetime, ex: sender.Exchange
    ) -> Claimed | None:
        deps = self.deps
        now = deps.clock.now()
        result = "ok" if ex.ok else "error"
        deps.metrics.webhook_attempt_seconds.labels(result).observe(ex.duration_ms / 1000)
        gone = ex.status_code == 410
        delay = None
        if not ex.ok and not gone:
            delay = self.policy.delay_after(
                c.attempt,
                status_code=ex.status_code,
                timed_out=ex.timed_out,
                retry_after=ex.retry_after,
                rand=deps.rand,
            )
        state: deliveries.State
        if ex.ok:
            state, next_at, outcome = "succeeded", None, "succeeded"
        elif delay is not None:
            state, next_at = "pending", now + dt.timedelta(seconds=delay)
            outcome = "refused" if ex.refused else "retry"
        else:
            state, next_at, outcome = "failed", None, "refused" if ex.refused else "failed"
        record = AttemptRecord(
            started,
            ex.duration_ms,
            c.url,
            ex.address,
            ex.status_code,
            ex.error or (None if ex.ok else f"HTTP {ex.status_code}"),
            ex.body,
            ex.truncated,
        )
        if ex.ok:
            ours, carry_on = await self._retrying(
                c,
                partial(
                    deliveries.succeed_and_take_next,
                    deps.db,
                    c,
                    record,
                    now,
                    take_next=self.in_flight < self.cfg.max_in_flight and not deps.stop.is_set(),
                    lease_seconds=self.cfg.lease_seconds,
                ),
            )
            if not ours:
                outcome = "lost_lease"
                log.warning("webhook delivery %d: lease lost during attempt %d", c.id, c.attempt)
            deps.metrics.webhook_attempts.labels(outcome).inc()
            return carry_on

        async def write() -> bool:
            async with deps.db.transaction() as tx:
                if not await deliveries.finish(tx, c, record, state=state, next_attempt_at=next_at):
                    return False
                if c.endpoint_id is not None:
                    await self._endpoint_outcome(tx, c.endpoint_id, gone, started, now)
            return True

        if not await self._retrying(c, write):
            outcome = "lost_lease"
            log.warning("webhook delivery %d: lease lost during attempt %d", c.id, c.attempt)
        deps.metrics.webhook_attempts.labels(outcome).inc()
        log.info(
            "webhook delivery %d to %s: attempt %d failed (%s)%s",
            c.id,
            c.endpoint_id or "callback",
            c.attempt,
            record.error,
            f"; next in {delay:.0f} s" if delay is not None else "; giving up",
        )
        # A failing target gets no extra turn: its slot goes back to the loop.
        return None
