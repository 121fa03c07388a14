"""OLT pool actor: serialised, warm SSH CLI sessions per OLT device.

Consumes: requests from ``OltPool.execute`` / ``OltPool.test_device`` (any trio task),
each carrying its own reply channel, over one bounded memory channel.
Produces: an ``OltResult`` (or one of ``OltUnknownDevice``, ``OltCommandError`` and its
permanent kin ``OltAuthError`` / ``OltHostKeyError``, ``OltTransientError``,
``OltCircuitOpen``) per request; ``olt.command`` events; ``paymentd_olt_*`` metrics.
Owns: one child actor per device, started lazily in the pool's nursery. A device actor
owns that device's ``CliSession``: it logs in once, runs requests one at a time (so
commands to one device never interleave), logs out after ``idle_close`` seconds without
work and then ends. Whenever it becomes free it takes every request queued for it and
runs changes to the same board as one CLI sequence of up to ``max_batch`` ONUs, each
request still getting its own answer (``actors/olt_batch.py``).

Before each request and each retry the actor reloads the device's row (one indexed
query): if it changed (``paymentd olt update``, which bumps its version) the session is
dropped and the breaker reset, so new settings apply within one request; a removed
device answers ``OltUnknownDevice``.

Reconnects back off exponentially; after ``breaker_failures`` consecutive failed
attempts (connects, logins, and operations that timed out or broke on a logged-in
session) the device answers ``OltCircuitOpen`` at once for ``breaker_reset`` seconds.
A rejected login or a host key mismatch is not retried at all: the device answers that
error without being contacted until its row changes. A transient failure in the middle
of an operation is retried once on a fresh session; each request has an overall
deadline (``operation_deadline``) after which its session is dropped. Longer outages are
the caller's durable retry's business. Nothing here is the only copy of work: a request
lost with the process is retried from the database.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import trio

from daemon.actors import olt_batch
from daemon.network.olt.driver import OltDriver, driver_for
from daemon.network.olt.ssh import CliSession, open_session
from daemon.network.olt.types import (
    DeviceSpec,
    OltAuthError,
    OltBusy,
    OltCircuitOpen,
    OltCommandError,
    OltError,
    OltHostKeyError,
    OltResult,
    OltTimeout,
    OltTransientError,
    OltUnknownDevice,
    OnuRef,
)
from daemon.platform.config import OltConfig
from daemon.platform.events import EventBus
from daemon.platform.metrics import Metrics
from daemon.platform.secrets import SecretKeyError

__all__ = ["DeviceStatus", "OltPool", "OltPoolSettings"]

log = logging.getLogger(__name__)

Action = Literal["activate", "deactivate"]
_Reply = OltResult | str | OltError
_Kind = Literal["set", "test", "state"]  # state: read an ONU's control state, change nothing
T = TypeVar("T")
Operation = Callable[[CliSession, OltDriver], Awaitable[T]]


@dataclass(frozen=True)
class OltPoolSettings:
    connect_timeout: float
    command_timeout: float
    idle_close: float
    breaker_failures: int
    breaker_reset: float
    known_hosts: str | None
    reconnect_backoff: float = 0.5  # first wait after a failed connect; doubles per failure
    reconnect_backoff_max: float = 10.0
    keepalive_interval: float = 30.0
    queue_size: int = 32  # requests waiting per device before callers are told to retry
    # (at least 2 * max_batch: see _DeviceActor)
    request_timeout: float | None = None  # overall, per sequence; None: operation_deadline
    max_batch: int = 64  # ONUs of one board switched in one CLI sequence; 1: one per request

    @property
    def operation_deadline(self) -> float:
        """Backstop for one request in the device actor: every step is bounded already,
        this also bounds their sum (connect + login + a dozen commands, twice, plus the
        reconnect backoff), so a device that answers slowly at every step cannot hold
        the actor for longer."""
        return self.batch_deadline(1)

    def batch_deadline(self, size: int) -> float:
        """The same backstop for a sequence switching ``size`` ONUs: at most three more
        commands per extra ONU (ZTE C600: its interface, ``admin``, a port read-back)."""
        if self.request_timeout is not None:
            return self.request_timeout
        one_try = self.connect_timeout + (12 + 3 * (size - 1)) * self.command_timeout
        return 2 * one_try + self.reconnect_backoff_max

    @classmethod
    def from_config(cls, olt: OltConfig) -> OltPoolSettings:
        return cls(
            connect_timeout=olt.connect_timeout_seconds,
            command_timeout=olt.command_timeout_seconds,
            idle_close=olt.idle_close_seconds,
            breaker_failures=olt.breaker_failures,
            breaker_reset=olt.breaker_reset_seconds,
            known_hosts=olt.known_hosts or None,
            max_batch=olt.max_batch,
        )


@dataclass(frozen=True)
class DeviceStatus:
    name: str
    session: bool  # a logged-in CLI session is open
    waiting: int  # requests queued for the device
    failures: int  # consecutive failed attempts
    breaker_open_seconds: float  # > 0: answering OltCircuitOpen for this much longer
    refused: str | None  # a rejected login or host key, until the device's row changes


@dataclass
class _Request:
    device: str
    kind: _Kind
    onu: OnuRef | None
    action: Action | None
    reply: trio.MemorySendChannel[_Reply]


@dataclass
class _Breaker:
    """Per-device health for one version of its settings; lives in the pool so it
    outlives device actors, and is replaced when the device's row changes."""

    spec: DeviceSpec | None = None  # the settings these counts are about
    failures: int = 0  # consecutive failed attempts (connect, login or operation)
    open_until: float = -math.inf
    next_connect_at: float = -math.inf  # reconnect backoff
    # A rejected login or host key: answered without contacting the device, until the
    # device's settings change (a retry would only lock the account or feed an impostor).
    refused: OltCommandError | None = None


class OltPool:
    """Front door of the OLT actor; see the module docstring."""

    def __init__(
        self,
        settings: OltPoolSettings,
        load_device: Callable[[str], Awaitable[DeviceSpec | None]],
        metrics: Metrics,
        events: EventBus,
    ) -> None:
        self.settings = settings
        self._load_device = load_device
        self._metrics = metrics
        self._events = events
        self._inbox: trio.MemorySendChannel[_Request] | None = None
        self._nursery: trio.Nursery | None = None
        self._actors: dict[str, _DeviceActor] = {}
        # Actors that stopped taking requests but may still be logging out: a successor
        # waits for them, so one device never has two of our sessions at once.
        self._retiring: dict[str, trio.Event] = {}
        self._breakers: dict[str, _Breaker] = {}

    # -- the actor -------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Route requests to device actors until cancelled. Must run inside the
        trio-asyncio loop: device actors are spawned from this task (bridge hygiene)."""
        send, receive = trio.open_memory_channel[_Request](64)
        self._actors = {}
        gauge = self._metrics.channel_buffer.labels("olt_pool")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._inbox = send
                task_status.started()
                async for request in receive:
                    gauge.set(receive.statistics().current_buffer_used)
                    self._dispatch(request)
        finally:
            self._inbox = None
            self._nursery = None
            send.close()
            _fail_pending(receive, "OLT pool stopped")

    def _dispatch(self, request: _Request) -> None:
        actor = self._actors.get(request.device)
        for _ in range(2):  # a second time if the actor ended between lookup and send
            if actor is None:
                actor = self._spawn(request.device)
            try:
                if actor.waiting() >= actor.capacity:  # queued, or drained and not started
                    raise trio.WouldBlock
                actor.inbox.send_nowait(request)
                return
            except trio.WouldBlock:
                _answer(request, OltBusy(f"{request.device}: too many queued requests"))
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                actor = None
        _answer(request, OltTransientError(f"{request.device}: device actor unavailable"))

    def _spawn(self, device: str) -> _DeviceActor:
        assert self._nursery is not None
        actor = _DeviceActor(self, device, self._retiring.get(device))
        self._actors[device] = actor
        self._nursery.start_soon(actor.run, name=f"olt:{device}")
        return actor

    # -- API for other tasks -----------------------------------------------------------
    async def execute(self, device: str, onu: OnuRef, action: Action) -> OltResult:
        """Activate or deactivate an ONU and confirm it; raises an ``OltError``."""
        if action not in ("activate", "deactivate"):
            raise ValueError(f"unknown OLT action {action!r}")
        result = await self._request(device, "set", onu, action)
        assert isinstance(result, OltResult)
        return result

    async def test_device(self, device: str) -> str:
        """Log in (or reuse the session) and run a harmless show command; its output."""
        result = await self._request(device, "test", None, None)
        assert isinstance(result, str)
        return result

    async def onu_state(self, device: str, onu: OnuRef) -> str:
        """Read an ONU's control state (``active`` / ``deactivated``) on the device's own
        session, in turn with its other requests; ``OltOnuNotFound`` if it has none."""
        result = await self._request(device, "state", onu, None)
        assert isinstance(result, str)
        return result

    def waiting(self, device: str) -> int:
        """Requests waiting for the device, not counting the sequence it is running."""
        actor = self._actors.get(device)
        return 0 if actor is None else actor.waiting()

    def status(self) -> dict[str, DeviceStatus]:
        """What the pool knows of each device it has talked to (the console shows it):
        whether a session is logged in, what is waiting, and the breaker's state."""
        now = trio.current_time()
        out: dict[str, DeviceStatus] = {}
        for name in sorted(set(self._actors) | set(self._breakers)):
            actor = self._actors.get(name)
            breaker = self._breakers.get(name)
            refused = None if breaker is None else breaker.refused
            open_for = 0.0 if breaker is None else max(0.0, breaker.open_until - now)
            out[name] = DeviceStatus(
                name=name,
                session=actor is not None and actor.session is not None,
                waiting=0 if actor is None else actor.waiting(),
                failures=0 if breaker is None else breaker.failures,
                breaker_open_seconds=open_for,
                refused=None if refused is None else str(refused),
            )
        return out

    def forget(self, device: str) -> None:
        """Drop the device's actor now: it finishes what is queued, logs out and ends;
        the next request starts a new actor and session. Settings changes need no call
        (the actor reloads the device's row before each request)."""
        actor = self._actors.pop(device, None)
        if actor is not None:
            self._retiring[device] = actor.done
            actor.inbox.close()
        self._breakers.pop(device, None)

    async def _request(
        self, device: str, kind: _Kind, onu: OnuRef | None, action: Action | None
    ) -> OltResult | str:
        inbox = self._inbox
        if inbox is None:
            raise OltTransientError("OLT pool is not running")
        reply_send, reply_receive = trio.open_memory_channel[_Reply](1)
        with reply_receive:
            try:
                await inbox.send(_Request(device, kind, onu, action, reply_send))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                reply_send.close()
                raise OltTransientError("OLT pool stopped") from None
            try:
                reply = await reply_receive.receive()
            except trio.EndOfChannel:
                raise OltTransientError(f"{device}: OLT pool stopped before answering") from None
        if isinstance(reply, OltError):
            raise reply
        return reply


def _answer(request: _Request, reply: _Reply) -> None:
    """Reply and close; a caller that gave up (cancelled) is not an error."""
    with request.reply, contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        request.reply.send_nowait(reply)


def _fail_pending(receive: trio.MemoryReceiveChannel[_Request], why: str) -> None:
    """Answer whatever is still queued (shutdown) so no caller waits forever, then close."""
    while True:
        try:
            request = receive.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            break
        _answer(request, OltTransientError(f"{request.device}: {why}"))
    receive.close()


@dataclass(eq=False)
class _DeviceActor:
    """One device: owns its session, runs its requests one at a time."""

    pool: OltPool
    name: str
    predecessor: trio.Event | None
    done: trio.Event = field(default_factory=trio.Event)
    spec: DeviceSpec | None = None
    session: CliSession | None = None
    driver: OltDriver | None = None

    def __post_init__(self) -> None:
        # Room for the next two full sequences: a burst then keeps the device busy back to
        # back instead of waiting for callers told to retry (a larger olt.max_batch than
        # the queue would never fill at all). Still less waiting than queue_size requests
        # of one sequence each; max_batch = 1 leaves the queue as it was.
        settings = self.pool.settings
        self.capacity = max(settings.queue_size, 2 * settings.max_batch)
        self.inbox, self._receive = trio.open_memory_channel[_Request](self.capacity)
        self.in_hand = 0  # taken from the queue for the next sequences, not started yet

    def waiting(self) -> int:
        return self._receive.statistics().current_buffer_used + self.in_hand

    async def run(self) -> None:
        settings = self.pool.settings
        try:
            if self.predecessor is not None:  # a forgotten actor may still be logging out
                await self.predecessor.wait()
            while True:
                request = None
                with trio.move_on_after(settings.idle_close):
                    try:
                        request = await self._receive.receive()
                    except trio.EndOfChannel:  # forgotten
                        return
                if request is None:
                    # Idle: end. There is no checkpoint between the timeout and closing the
                    # inbox (in finally), so the pool cannot slip a request in and lose it.
                    return
                # What piled up while the last sequence ran goes in one go (at most a full
                # queue: whole sequences, not one plus a straggler that would run alone).
                more = olt_batch.drain(self._receive, self.capacity - 1)
                await olt_batch.serve(self, [request, *more])
        finally:
            _fail_pending(self._receive, "device actor stopped")
            if self.pool._actors.get(self.name) is self:
                del self.pool._actors[self.name]
                self.pool._retiring[self.name] = self.done
            with trio.move_on_after(5, shield=True):
                await self._drop_session(logout=True)
            self.done.set()
            if self.pool._retiring.get(self.name) is self.done:
                del self.pool._retiring[self.name]

    async def _serve(self, request: _Request) -> None:
        # Closing the reply channel on every way out (cancellation included) means a
        # caller is never left waiting; it sees EndOfChannel -> OltTransientError.
        with request.reply:
            if request.reply.statistics().open_receive_channels == 0:
                # The caller gave up (its task deadline passed) while this request waited
                # its turn: nobody would record the outcome, and the task will run again.
                log.info("%s: caller gone before its turn; skipping %s", self.name, request.kind)
                return
            await self._serve_one(request)

    async def _serve_one(self, request: _Request) -> None:
        started = trio.current_time()
        # A caller that gives up only closes its reply channel: the operation still
        # runs to the end here, so the CLI is never left half-way through a change.
        reply, outcome = await self._guarded(lambda: self._handle(request))
        _answer(request, reply)
        self._observe(request, outcome, trio.current_time() - started)

    async def _guarded(self, work: Callable[[], Awaitable[T]]) -> tuple[T | OltError, str]:
        """Run ``work``; its result or the error to answer with, and the metrics outcome."""
        try:
            return await work(), "ok"
        except OltCircuitOpen as exc:
            return exc, "breaker_open"
        except OltAuthError as exc:
            return exc, "auth_failed"
        except OltHostKeyError as exc:
            return exc, "host_key_rejected"
        except OltCommandError as exc:
            return exc, "device_error"
        except OltUnknownDevice as exc:
            return exc, "unknown_device"
        except OltError as exc:
            return exc, "transient"
        except Exception as exc:
            # A bug must not kill the device actor or leave the caller waiting forever.
            log.exception("%s: unexpected error in OLT request", self.name)
            await self._drop_session(logout=False)
            return OltTransientError(f"{self.name}: internal error: {exc!r}"), "transient"

    def _observe(self, request: _Request, outcome: str, seconds: float, batch: int = 1) -> None:
        if request.kind != "set":
            return
        if self.spec is not None and outcome != "unknown_device":
            self.pool._metrics.olt_commands.labels(self.spec.vendor, outcome).observe(seconds)
        self.pool._events.publish(
            "olt.command",
            device=self.name,
            onu=str(request.onu),
            action=request.action,
            outcome=outcome,
            seconds=round(seconds, 3),
            batch=batch,
        )

    async def _handle(self, request: _Request) -> OltResult | str:
        async def operation(session: CliSession, driver: OltDriver) -> OltResult | str:
            if request.kind == "test":
                return await driver.probe(session)
            assert request.onu is not None
            if request.kind == "state":
                return await driver.onu_state(session, request.onu)
            return await driver.set_onu(session, request.onu, request.action == "activate")

        return await self._on_device(operation, self.pool.settings.operation_deadline)

    async def _on_device(self, operation: Operation[T], deadline: float) -> T:
        """Run ``operation`` on a logged-in session: settings reloaded, refusals and the
        breaker honoured, a transient failure retried once, the whole within ``deadline``."""
        await self._current_spec()
        breaker = self._breaker()
        if breaker.refused is not None:
            # Same message, a fresh exception: no traceback chained across requests.
            raise type(breaker.refused)(str(breaker.refused))
        remaining = breaker.open_until - trio.current_time()
        if remaining > 0:
            raise OltCircuitOpen(
                f"{self.name}: circuit open for {remaining:.1f}s more "
                f"after {breaker.failures} failed attempts",
                retry_in=remaining,
            )
        with trio.move_on_after(deadline):
            return await self._attempts(operation)
        # Every step has its own bound; this is the backstop for their sum.
        await self._drop_session(logout=False)
        self._failed(self._breaker())
        raise OltTimeout(f"{self.name}: no result within {deadline:g}s; session dropped")

    async def _attempts(self, operation: Operation[T]) -> T:
        for attempt in (1, 2):
            spec = self.spec if attempt == 1 else await self._current_spec()
            assert spec is not None
            breaker = self._breaker()
            session, driver = await self._ensure_session(spec, breaker)
            try:
                result = await operation(session, driver)
            except OltTransientError as exc:
                # A logged-in session that hangs or breaks mid-operation counts as much
                # as a failed connect: a device that always hangs must trip the breaker.
                await self._drop_session(logout=False)
                self._failed(breaker)
                if attempt == 2 or breaker.open_until > trio.current_time():
                    raise
                log.warning("%s: %s; retrying once on a fresh session", self.name, exc)
            except OltCommandError:
                self._succeeded(breaker)  # the device answered: it is healthy
                raise
            else:
                self._succeeded(breaker)
                return result
            finally:
                if self.session is not None and not self.session.usable:
                    await self._drop_session(logout=False)
        raise AssertionError("unreachable")

    def _breaker(self) -> _Breaker:
        return self.pool._breakers.setdefault(self.name, _Breaker(spec=self.spec))

    async def _current_spec(self) -> DeviceSpec:
        """The device's settings as the database has them now.

        A change drops the session (it was opened with the old settings) and resets the
        breaker; a removed device is ``OltUnknownDevice``.
        """
        try:
            spec = await self.pool._load_device(self.name)
        except OltError:
            raise
        except SecretKeyError as exc:
            # Retrying cannot fix a secret that does not decrypt: fail the task for good.
            raise OltCommandError(f"{self.name}: {exc}") from exc
        except Exception as exc:  # e.g. the database is down
            if self.spec is not None:
                # The settings we hold are the latest we know; the caller needs the
                # database to record the outcome anyway.
                log.warning(
                    "%s: reloading device settings: %r; using the last known", self.name, exc
                )
                return self.spec
            raise OltTransientError(f"{self.name}: loading device spec: {exc!r}") from exc
        if spec is None:
            if self.spec is not None:
                log.info("%s: device removed; closing its session", self.name)
            await self._drop_session(logout=True)
            self.spec = None
            self._reset_breaker(None)
            raise OltUnknownDevice(f"unknown OLT device {self.name!r}")
        if spec != self.spec:
            if self.spec is not None:
                log.info("%s: settings changed; reconnecting with the new ones", self.name)
                await self._drop_session(logout=True)
            self.spec = spec
        breaker = self.pool._breakers.get(self.name)
        if breaker is None or breaker.spec != spec:
            self._reset_breaker(spec)
        return spec

    def _reset_breaker(self, spec: DeviceSpec | None) -> None:
        old = self.pool._breakers.pop(self.name, None)
        if spec is not None:
            self.pool._breakers[self.name] = _Breaker(spec=spec)
        if old is None:
            # Nothing to clear, and no series for names that were never devices (a typo
            # in a UISP attribute must not mint metric labels).
            return
        if old.failures or old.refused is not None:
            log.info("%s: settings changed; failure counts and refusals cleared", self.name)
        metrics = self.pool._metrics
        metrics.olt_breaker_open.labels(self.name).set(0)
        metrics.olt_auth_failed.labels(self.name).set(0)
        metrics.olt_host_key_rejected.labels(self.name).set(0)

    async def _ensure_session(
        self, spec: DeviceSpec, breaker: _Breaker
    ) -> tuple[CliSession, OltDriver]:
        if self.session is not None and self.driver is not None and self.session.usable:
            return self.session, self.driver
        settings = self.pool.settings
        await trio.sleep_until(max(breaker.next_connect_at, trio.current_time()))
        try:
            session = await open_session(
                spec,
                connect_timeout=settings.connect_timeout,
                known_hosts=settings.known_hosts,
                keepalive_interval=settings.keepalive_interval,
                io_timeout=settings.command_timeout,
            )
            self.pool._metrics.olt_sessions.labels(self.name).inc()
            try:
                driver = driver_for(spec, settings.command_timeout)
                await driver.login(session, spec)
            except BaseException:
                await session.close()
                raise
        except (OltAuthError, OltHostKeyError) as exc:
            self._refuse(breaker, exc)
            raise
        except OltTransientError:
            self._failed(breaker)
            raise
        self.session, self.driver = session, driver
        return session, driver

    def _succeeded(self, breaker: _Breaker) -> None:
        if breaker.failures or breaker.open_until > -math.inf:
            log.info("%s: working again after %d failed attempts", self.name, breaker.failures)
            self.pool._metrics.olt_breaker_open.labels(self.name).set(0)
        breaker.failures = 0
        breaker.open_until = breaker.next_connect_at = -math.inf

    def _refuse(self, breaker: _Breaker, exc: OltCommandError) -> None:
        breaker.refused = exc
        metrics = self.pool._metrics
        if isinstance(exc, OltAuthError):
            metrics.olt_auth_failures.labels(self.name).inc()
            metrics.olt_auth_failed.labels(self.name).set(1)
        else:
            metrics.olt_host_key_rejected.labels(self.name).set(1)
        log.error("%s", exc)

    def _failed(self, breaker: _Breaker) -> None:
        settings = self.pool.settings
        now = trio.current_time()
        breaker.failures += 1
        backoff = settings.reconnect_backoff * 2 ** (breaker.failures - 1)
        breaker.next_connect_at = now + min(backoff, settings.reconnect_backoff_max)
        if breaker.failures >= settings.breaker_failures:
            breaker.open_until = now + settings.breaker_reset
            self.pool._metrics.olt_breaker_open.labels(self.name).set(1)
            log.warning(
                "%s: circuit open for %gs after %d failed attempts",
                self.name,
                settings.breaker_reset,
                breaker.failures,
            )

    async def _drop_session(self, *, logout: bool) -> None:
        session, driver = self.session, self.driver
        self.session = self.driver = None
        if session is None:
            return
        with trio.move_on_after(5, shield=True):
            if logout and driver is not None and session.usable:
                with trio.move_on_after(2):
                    await driver.logout(session)
            await session.close()
