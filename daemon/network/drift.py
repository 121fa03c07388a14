"""Drift reconciliation: does the network still follow billing?

Three sources are compared for every UISP service that is active or suspended and has an
ONU mapping (an ``onu_overrides`` row, else the service's custom attributes — the same
rule a webhook follows):

- **UISP**: the service's status (1 active → the ONU should be ``active``, 3 suspended →
  ``deactivated``), listed page by page (``GET /clients/services?limit=&offset=``);
- **paymentd**: the last task that succeeded for the service on that same ONU;
- **the OLT**: the ONU's control state, read through the OLT pool (the device's own warm
  session, in turn with its other requests), at most ``drift.device_reads_per_run`` per
  OLT and ``device_reads_per_second``, least recently checked ONUs first.

A service with a task queued or running is converging already and is skipped, and so is
one that got a task while the run was reading the devices. Each
mismatch is a ``DriftItem`` with a kind (``drift_store.KINDS``); a run's items replace the
previous run's (admin API ``GET /api/v1/network/drift``, gauge ``paymentd_drift{kind}``,
set again from the database at start-up).

With ``fix``, every fixable drift queues the task a webhook would have queued, through
the very code path the UISP handler uses (``decide.plan_task`` + ``process.queue_planned``),
so ordering per service (a newer task supersedes an older one) and the one-SMS rule of
the reconnect handler apply unchanged. Only the fix of a lost webhook
(``uisp_vs_paymentd``) may text the customer; the other fixes are queued with
``notify=False`` and correct the network silently (``NOTIFYING``). Before queuing, the
service is read from UISP again and skipped if its status changed or a newer task
appeared meanwhile (a webhook that arrived during the run wins).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

import trio

from daemon.actors.olt_pool import OltPool
from daemon.network import devices as olt_store
from daemon.network import drift_store, tasks
from daemon.network.drift_store import Counts, DriftItem
from daemon.network.olt.types import (
    OltAuthError,
    OltCircuitOpen,
    OltError,
    OltHostKeyError,
    OltOnuNotFound,
    OltUnknownDevice,
    OnuRef,
)
from daemon.network.tasks import Applied
from daemon.platform.config import DriftConfig, UispConfig
from daemon.platform.db import Database, DatabaseError
from daemon.platform.events import EventBus
from daemon.platform.metrics import Metrics
from daemon.uisp import client as uisp
from daemon.uisp import process
from daemon.uisp.decide import DecisionError, plan_task

__all__ = ["DriftDeps", "Report", "reconcile", "restore_metrics"]

log = logging.getLogger(__name__)

_STATES = {uisp.SERVICE_ACTIVE: "active", uisp.SERVICE_SUSPENDED: "deactivated"}
_ACTIONS = {"active": "activate", "deactivated": "deactivate"}
FIXABLE = ("uisp_vs_paymentd", "olt_vs_paymentd", "olt_vs_uisp")
# The one kind whose fix is the task a lost webhook would have queued, SMS included (a
# payment's reconnection that never reached the ONU); every other fix only corrects the
# network, and its activation sends no "we received your payment" SMS.
NOTIFYING = ("uisp_vs_paymentd",)
# Reads that say the device cannot answer this run at all: stop reading it.
_DEVICE_DOWN = (OltCircuitOpen, OltUnknownDevice, OltAuthError, OltHostKeyError)


@dataclass
class DriftDeps:
    db: Database
    uisp: uisp.UispClient
    pool: OltPool
    uisp_config: UispConfig
    config: DriftConfig
    metrics: Metrics
    events: EventBus


@dataclass
class _Service:
    id: int
    state: str  # what UISP says the ONU should be
    olt_name: str
    onu: str  # normalised ("0/1/3:7")
    ref: OnuRef
    entity: dict[str, Any] = field(repr=False)


@dataclass
class Report:
    run_id: int
    fix: bool
    counts: Counts
    items: list[DriftItem]
    seconds: float

    def by_kind(self) -> dict[str, int]:
        found = {k: 0 for k in drift_store.KINDS}
        for item in self.items:
            found[item.kind] += 1
        return found

    def summary(self) -> str:
        c = self.counts
        kinds = ", ".join(f"{k} {n}" for k, n in self.by_kind().items() if n)
        text = (
            f"run {self.run_id}: {c.services} service(s) compared, {len(self.items)} drift(s)"
            f"{f' ({kinds})' if kinds else ''}; {c.device_reads} ONU read(s)"
            f"{f', {c.read_errors} failed' if c.read_errors else ''}; {c.skipped} skipped"
        )
        if self.fix:
            text += f"; {c.tasks_queued} task(s) queued"
        return text + f"; {self.seconds:.1f} s"


async def reconcile(p: DriftDeps, *, fix: bool, trigger: str) -> Report:
    """One run; recorded in ``drift_runs`` whatever happens (a failure as ``failed``)."""
    started = time.monotonic()
    run_id = await drift_store.start_run(p.db, "fix" if fix else "report", trigger)
    try:
        report = await _reconcile(p, run_id, fix)
    except BaseException as exc:
        with trio.move_on_after(5, shield=True):
            await drift_store.fail_run(p.db, run_id, f"{type(exc).__name__}: {exc}")
        raise
    report.seconds = time.monotonic() - started
    _set_gauges(p.metrics, report.items)
    p.metrics.drift_run_seconds.set(report.seconds)
    p.events.publish("drift.finished", run=run_id, drifts=len(report.items), fix=fix)
    log.info("drift: %s", report.summary())
    return report


def _set_gauges(metrics: Metrics, items: list[DriftItem]) -> None:
    found = dict.fromkeys(drift_store.KINDS, 0)
    for item in items:
        found[item.kind] += 1
    for kind, n in found.items():
        metrics.drift.labels(kind).set(n)


async def restore_metrics(db: Database, metrics: Metrics) -> None:
    """Set the drift gauges from the latest finished run: at start-up (a restart must not
    read as "no drift" until the next run, hours later) and on a scrape (a run from the
    CLI is another process, with its own registry). Best effort."""
    try:
        found = await drift_store.latest(db)
    except DatabaseError as exc:
        log.warning("drift: gauges not restored: %s", exc)
        return
    if found is None:
        _set_gauges(metrics, [])
        return
    run, items = found
    _set_gauges(metrics, items)
    if run.finished_at is not None:
        metrics.drift_run_seconds.set((run.finished_at - run.started_at).total_seconds())


async def _reconcile(p: DriftDeps, run_id: int, fix: bool) -> Report:
    counts = Counts()
    items: list[DriftItem] = []
    # Tasks created after this point are newer than anything this run compared.
    horizon = await tasks.newest_id(p.db)
    services = await _uisp_services(p, counts, items)
    known_olts = {d.name for d in await olt_store.list_devices(p.db)}
    applied = await tasks.applied_states(p.db)
    busy = await tasks.in_flight(p.db)

    compared: list[_Service] = []
    for s in services:
        if s.id in busy:
            counts.skipped += 1
        elif s.olt_name not in known_olts:
            items.append(_item(s, "olt_unknown", None, None, f"no OLT named {s.olt_name!r}"))
        else:
            compared.append(s)
    read = await _read_devices(p, compared, counts)
    # The reads take minutes: a task queued meanwhile (a webhook) may have changed the ONU
    # since the task log was read. That service is converging, not drifting.
    moved = await tasks.services_with_tasks_after(p.db, horizon)
    counts.skipped += sum(1 for s in compared if s.id in moved)
    compared = [s for s in compared if s.id not in moved]
    counts.services = len(compared)

    for s in compared:
        last = applied.get(s.id)
        # What paymentd did to another ONU (the mapping changed since) says nothing here.
        if last is not None and (last.olt_name, last.onu) != (s.olt_name, s.onu):
            last = None
        item = _compare(s, last, read.get(s.id))
        if item is not None:
            items.append(item)
    if fix:
        items = [await _fix(p, run_id, horizon, item, counts) for item in items]
    mapped = ((s.olt_name, s.onu) for s in services)  # check times of the rest are pruned
    await drift_store.finish_run(p.db, run_id, counts, items, mapped)
    return Report(run_id, fix, counts, items, 0.0)


async def _uisp_services(p: DriftDeps, counts: Counts, items: list[DriftItem]) -> list[_Service]:
    """UISP's active and suspended services that have an ONU mapping."""
    cfg = p.uisp_config
    overrides = {o.service_id: (o.olt_name, o.onu) for o in await olt_store.list_overrides(p.db)}
    found: list[_Service] = []
    statuses = list(_STATES)
    async for page in p.uisp.iter_services(statuses, page_size=p.config.page_size):
        for entity in page:
            state = _STATES.get(entity.get("status"))  # type: ignore[arg-type]
            sid = entity.get("id")
            if state is None or not isinstance(sid, int):
                counts.skipped += 1
                continue
            location = overrides.get(sid) or uisp.service_onu(
                entity, cfg.olt_attribute, cfg.onu_attribute
            )
            if location is None:
                counts.skipped += 1  # not on the network paymentd manages
                continue
            olt_name, onu_text = location
            try:
                ref = OnuRef.parse(onu_text)
            except ValueError as exc:
                items.append(
                    DriftItem(sid, "bad_mapping", state, None, None, olt_name, onu_text, str(exc))
                )
                continue
            found.append(_Service(sid, state, olt_name, str(ref), ref, entity))
    return found


async def _read_devices(p: DriftDeps, services: list[_Service], counts: Counts) -> dict[int, str]:
    """ONU states by service id (``active`` / ``deactivated`` / ``missing``); one trio
    task per OLT, reads spaced by the per-OLT rate, the least recently checked first."""
    budget = p.config.device_reads_per_run
    read: dict[int, str] = {}
    if budget == 0:
        return read
    by_olt: dict[str, list[_Service]] = defaultdict(list)
    for s in services:
        by_olt[s.olt_name].append(s)

    async def one_olt(olt_name: str, group: list[_Service]) -> None:
        checked = await drift_store.check_times(p.db, olt_name)
        # Never checked first (no entry sorts before any time), then the oldest check.
        group.sort(key=lambda s: (s.onu in checked, checked.get(s.onu), s.id))
        interval = 1.0 / p.config.device_reads_per_second
        next_at = trio.current_time()
        done: list[tuple[str, str]] = []
        states: dict[str, str] = {}  # several services may share one ONU: read it once
        attempts = 0  # failed reads count too: a sick device is not read all run long
        try:
            for s in group:
                if s.onu in states:
                    read[s.id] = states[s.onu]
                    continue
                if attempts >= budget:
                    break
                attempts += 1
                await trio.sleep_until(next_at)
                next_at = trio.current_time() + interval
                try:
                    state = await p.pool.onu_state(olt_name, s.ref)
                except OltOnuNotFound:
                    state = "missing"
                except _DEVICE_DOWN as exc:
                    counts.read_errors += 1
                    log.warning("drift: %s: %s; no more reads from it this run", olt_name, exc)
                    return
                except OltError as exc:
                    counts.read_errors += 1
                    log.warning("drift: %s %s: %s", olt_name, s.onu, exc)
                    continue
                counts.device_reads += 1
                states[s.onu] = read[s.id] = state
                done.append((s.onu, state))
        finally:
            with trio.move_on_after(5, shield=True):
                await drift_store.record_checks(p.db, olt_name, done)

    async with trio.open_nursery() as nursery:
        for olt_name, group in by_olt.items():
            nursery.start_soon(one_olt, olt_name, group, name=f"drift:{olt_name}")
    return read


def _item(s: _Service, kind: str, applied: str | None, olt: str | None, detail: str) -> DriftItem:
    return DriftItem(s.id, kind, s.state, applied, olt, s.olt_name, s.onu, detail)


def _compare(s: _Service, applied: Applied | None, olt: str | None) -> DriftItem | None:
    """The one drift of this service, if any; the first disagreement in this order wins:
    the ONU is not there; UISP vs paymentd; the device vs paymentd; the device vs UISP."""
    did = None if applied is None else applied.state
    if olt == "missing":
        return _item(s, "onu_missing", did, None, f"{s.olt_name} has no ONU {s.onu}")
    if applied is not None and did != s.state:
        return _item(
            s, "uisp_vs_paymentd", did, olt,
            f"UISP says {s.state}; paymentd last applied {did} (task {applied.task_id})",
        )  # fmt: skip
    if applied is not None and olt is not None and olt != did:
        return _item(
            s, "olt_vs_paymentd", did, olt,
            f"the OLT says {olt}; paymentd applied {did} (task {applied.task_id})",
        )  # fmt: skip
    if applied is None and olt is not None and olt != s.state:
        return _item(
            s, "olt_vs_uisp", None, olt,
            f"the OLT says {olt}; UISP says {s.state}; paymentd never changed this ONU",
        )  # fmt: skip
    return None


async def _fix(
    p: DriftDeps, run_id: int, horizon: int, item: DriftItem, counts: Counts
) -> DriftItem:
    """Queue the task that brings the ONU to UISP's state, as a webhook would have."""
    if item.kind not in FIXABLE:
        return item
    sid = item.service_id
    try:
        # UISP now, not as listed minutes ago: a webhook may have changed it since.
        service = await p.uisp.get_service(sid)
        now = _STATES.get(service.get("status"))  # type: ignore[arg-type]
        if now != item.uisp_state:
            return replace(item, detail=f"{item.detail}; not fixed: UISP now says {now}")
        planned = await plan_task(
            p.db, p.uisp, p.uisp_config, service, _ACTIONS[item.uisp_state or ""]
        )
    except (uisp.UispError, DecisionError) as exc:
        log.warning("drift: service %s not fixed: %s", sid, exc)
        return replace(item, detail=f"{item.detail}; not fixed: {exc}")
    planned = replace(planned, notify=item.kind in NOTIFYING)
    async with p.db.transaction() as tx:
        # Check and create under the service's lock (tasks.create takes it too): a webhook's
        # task committed before is seen here; one created after ours is newer and wins.
        await tasks.lock_service(tx, sid)
        newest = await tasks.newest_id(tx, sid)
        if newest > horizon:
            return replace(item, detail=f"{item.detail}; not fixed: task {newest} is newer")
        created = await process.queue_planned(
            tx, [planned], lambda t: f"{t.action}:service:{t.service_id}:drift:{run_id}"
        )
        for task_id in created:
            await tasks.add_event(
                tx, task_id, "requested", source="drift", run=run_id, drift_kind=item.kind
            )
    if not created:
        return item
    counts.tasks_queued += 1
    p.events.publish("task.queued", task_id=created[0], drift_run=run_id)
    return replace(item, task_id=created[0])
