"""Drift reconciliation: UISP, what paymentd applied and the OLTs, compared and fixed.

The real daemon (its OLT pool, its task queue) against the fake UISP and the OLT
simulator over real sockets, on a real PostgreSQL database.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from daemon.network import drift, drift_store, tasks
from daemon.network.drift import Report
from daemon.network.olt.types import OnuRef
from daemon.platform import config as configmod
from daemon.platform.db import Database
from daemon.platform.events import EventBus
from daemon.platform.metrics import Metrics
from daemon.uisp.client import SERVICE_SUSPENDED
from tests.flow_harness import ADMIN_TOKEN, Flow, World, daemon, make_config, world

ROOT = Path(__file__).resolve().parent.parent
ANA_ONU = OnuRef(0, 1, 3, 7)
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
async def w(db_url: str, tmp_path: Path, aio_loop: None) -> AsyncIterator[World]:
    async with world(db_url, tmp_path) as running_world:
        yield running_world


async def reconcile(flow: Flow, *, fix: bool = False, **drift_settings: Any) -> Report:
    """A run through the daemon's own OLT pool (its warm sessions), as the scheduled job
    does; on the test's database handle, which lives on the test's asyncio loop (the
    daemon's is on its own). ``drift_settings`` override ``[drift]`` for this run."""
    res = flow.running.resources
    cfg = msgspec.structs.replace(res.config.drift, **drift_settings)
    deps = drift.DriftDeps(
        flow.db, res.uisp, res.pool, res.config.uisp, cfg, res.deps.metrics, res.deps.events
    )
    with trio.fail_after(60):
        return await drift.reconcile(deps, fix=fix, trigger="test")


async def ana_paid_and_reconnected(w: World, flow: Flow) -> dict[str, Any]:
    await w.fake.record_payment(1, 30.0)
    [task] = await flow.wait_task_state("succeeded")
    await w.sink.wait_messages(1)
    assert w.devices["olt-hw"].is_active(ANA_ONU)
    return task


def drift_gauges(metrics: str) -> dict[str, float]:
    return {
        s.labels["kind"]: s.value
        for f in text_string_to_metric_families(metrics)
        if f.name == "paymentd_drift"
        for s in f.samples
    }


async def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [sys.executable, "-m", "daemon.cli", *argv],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=90,
        )
    )


def suspend_without_webhook(w: World, service_id: int) -> None:
    """UISP suspends the service, and its webhook never reaches paymentd (a restart)."""
    w.fake._set_suspended(service_id, True)  # builds the webhooks; nobody delivers them
    assert w.fake.services[service_id]["status"] == SERVICE_SUSPENDED


async def test_a_webhook_never_delivered_is_drift_and_fix_queues_the_deactivation(
    w: World,
) -> None:
    hw = w.devices["olt-hw"]
    async with daemon(w) as flow:
        await ana_paid_and_reconnected(w, flow)
        suspend_without_webhook(w, 1)

        report = await reconcile(flow)
        [item] = report.items
        assert (item.service_id, item.kind) == (1, "uisp_vs_paymentd")
        assert (item.uisp_state, item.applied_state, item.olt_state) == (
            "deactivated",
            "active",
            "active",
        )
        assert item.task_id is None and report.counts.tasks_queued == 0
        assert hw.is_active(ANA_ONU)  # report mode changes nothing
        assert len(await flow.task_rows()) == 1

        # The admin API lists the latest run's drift; the metrics count it per kind.
        resp = await flow.http.get("/api/v1/network/drift", headers=ADMIN)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["run"]["id"] == report.run_id and body["run"]["mode"] == "report"
        assert body["counts"]["uisp_vs_paymentd"] == 1 and body["counts"]["onu_missing"] == 0
        assert [(d["service_id"], d["kind"]) for d in body["drift"]] == [(1, "uisp_vs_paymentd")]
        filtered = await flow.http.get("/api/v1/network/drift?kind=onu_missing", headers=ADMIN)
        assert filtered.json()["drift"] == []
        assert (await flow.http.get("/api/v1/network/drift")).status_code == 401
        document = (await flow.http.get("/openapi.json")).json()
        operation = document["paths"]["/api/v1/network/drift"]["get"]
        assert operation["security"] == [{"bearer": ["admin"]}]
        assert "kind" in {p["name"] for p in operation["parameters"]}
        bad = await flow.http.get("/api/v1/network/drift?kind=nope", headers=ADMIN)
        assert bad.status_code == 400
        assert bad.headers["content-type"].startswith("application/problem+json")
        samples = drift_gauges((await flow.http.get("/metrics")).text)
        assert samples["uisp_vs_paymentd"] == 1 and samples["olt_vs_paymentd"] == 0

        fixed = await reconcile(flow, fix=True)
        [item] = fixed.items
        assert item.kind == "uisp_vs_paymentd" and item.task_id is not None
        rows = await flow.wait_task_state("succeeded", count=2)
        task = rows[-1]
        assert (task["id"], task["action"], task["service_id"]) == (item.task_id, "deactivate", 1)
        assert task["dedupe_key"] == f"deactivate:service:1:drift:{fixed.run_id}"
        assert task["webhook_uuid"] is None
        assert not hw.is_active(ANA_ONU)

        again = await reconcile(flow)
        assert again.items == []
        await flow.settle()
    assert len(w.sink.messages) == 1  # the reconnection's; a deactivation sends none
    # Only the latest run keeps its drift rows.
    assert await w.db.fetchval("SELECT count(*) FROM drift_items") == 0
    assert await w.db.fetchval("SELECT count(*) FROM drift_runs WHERE state = 'finished'") == 3


async def test_an_onu_disabled_by_hand_on_the_olt_is_drift_and_fixed_without_a_second_sms(
    w: World,
) -> None:
    hw = w.devices["olt-hw"]
    async with daemon(w) as flow:
        await ana_paid_and_reconnected(w, flow)
        hw.set_active(ANA_ONU, False)  # an operator, on the OLT's CLI

        report = await reconcile(flow)
        [item] = report.items
        assert item.kind == "olt_vs_paymentd"
        assert (item.uisp_state, item.applied_state, item.olt_state) == (
            "active",
            "active",
            "deactivated",
        )
        assert (item.olt_name, item.onu) == ("olt-hw", "0/1/3:7")
        assert report.counts.device_reads >= 1
        # The read went through the daemon's pool: the session its task used, no new one.
        assert hw.sessions_opened == 1
        assert "display ont info 0 1 3 7" in hw.command_log

        fixed = await reconcile(flow, fix=True)
        [item] = fixed.items
        assert item.task_id is not None
        rows = await flow.wait_task_state("succeeded", count=2)
        assert rows[-1]["action"] == "activate" and rows[-1]["notify"] is False
        assert hw.is_active(ANA_ONU)
        await flow.settle()
        assert await sms_skipped(flow, item.task_id) == "the task corrects the network (notify off)"
    # One reconnection, one SMS: the fix corrects the network and texts nobody.
    assert len(w.sink.messages) == 1


async def sms_skipped(flow: Flow, task_id: int) -> str | None:
    """Why the task sent no SMS (its ``sms_skipped`` event), None if it may have sent one."""
    reason: str | None = await flow.db.fetchval(
        "SELECT detail->>'reason' FROM task_events WHERE task_id = $1 AND kind = 'sms_skipped'",
        task_id,
    )
    return reason


async def test_fixing_an_onu_off_on_the_olt_of_a_customer_paymentd_never_touched_sends_no_sms(
    w: World,
) -> None:
    """The first fix run on an existing network: UISP says active, the ONU was switched off
    by hand, paymentd never changed it. The fix switches it on; the customer paid nothing
    now and must not read "your payment was received"."""
    hw = w.devices["olt-hw"]
    w.fake.services[1]["status"] = 1  # Ana active in UISP (no webhook: before paymentd)
    async with daemon(w) as flow:
        fixed = await reconcile(flow, fix=True)
        [item] = fixed.items
        assert (item.kind, item.uisp_state, item.olt_state) == (
            "olt_vs_uisp",
            "active",
            "deactivated",
        )
        assert item.task_id is not None
        [task] = await flow.wait_task_state("succeeded")
        assert (task["id"], task["action"], task["notify"]) == (item.task_id, "activate", False)
        assert hw.is_active(ANA_ONU)
        await flow.settle()
        assert await sms_skipped(flow, item.task_id) == "the task corrects the network (notify off)"
        [requested] = await flow.db.fetch(
            "SELECT detail FROM task_events WHERE task_id = $1 AND kind = 'requested'", item.task_id
        )
        assert requested["detail"] == {
            "source": "drift",
            "run": fixed.run_id,
            "drift_kind": "olt_vs_uisp",
        }
    assert w.sink.messages == []


async def test_fixing_a_lost_reconnection_webhook_sends_the_reconnection_sms_once(
    w: World,
) -> None:
    """paymentd applied Ana's suspension; UISP then reactivated her (she paid) and that
    webhook was lost. The fix is the reconnection the webhook would have made: one SMS."""
    hw = w.devices["olt-hw"]
    async with daemon(w) as flow:
        for body in w.fake._set_suspended(1, True):  # the suspension reaches paymentd
            await w.fake._deliver(body)
        [suspended] = await flow.wait_task_state("succeeded")
        assert suspended["action"] == "deactivate"
        w.fake._set_suspended(1, False)  # the reactivation's webhooks never arrive

        fixed = await reconcile(flow, fix=True)
        [item] = fixed.items
        assert (item.kind, item.uisp_state, item.applied_state) == (
            "uisp_vs_paymentd",
            "active",
            "deactivated",
        )
        rows = await flow.wait_task_state("succeeded", count=2)
        assert (rows[-1]["id"], rows[-1]["action"], rows[-1]["notify"]) == (
            item.task_id,
            "activate",
            True,
        )
        assert hw.is_active(ANA_ONU)
        await w.sink.wait_messages(1)
        await flow.settle()
        assert await sms_skipped(flow, item.task_id) is None
    [message] = w.sink.messages
    assert message["msisdn"].endswith("600111222")


async def test_mappings_to_a_missing_onu_or_olt_are_their_own_kinds_not_a_crash(
    w: World, tmp_path: Path
) -> None:
    fake = w.fake
    bruno = fake.add_client("Bruno", "Díaz", "+34 600 333 444")
    ghost_hw = fake.add_service(bruno["id"], olt="olt-hw", onu="0/1/3:99")["id"]
    ghost_zte = fake.add_service(bruno["id"], olt="olt-zte", onu="1/2/1:9")["id"]
    nowhere = fake.add_service(bruno["id"], olt="olt-nope", onu="0/0/0:1")["id"]
    garbled = fake.add_service(bruno["id"], olt="olt-hw", onu="port seven")["id"]
    fake.add_service(bruno["id"], name="no mapping")
    zte_fine = fake.add_service(bruno["id"], olt="olt-zte", onu="1/2/1:5")["id"]  # active both
    fake.services[zte_fine]["status"] = 1
    ended = fake.add_service(bruno["id"], olt="olt-hw", onu="0/1/3:7")["id"]
    fake.services[ended]["status"] = 2  # ended: neither active nor suspended
    async with daemon(w) as flow:
        fake.requests.clear()
        # Small pages: the list is read in several (limit/offset, as UISP pages).
        report = await reconcile(flow, page_size=2)
        kinds = {i.service_id: i.kind for i in report.items}
        # Ana (service 1): suspended in UISP, never touched by paymentd, off on the OLT.
        assert kinds == {
            ghost_hw: "onu_missing",
            ghost_zte: "onu_missing",
            nowhere: "olt_unknown",
            garbled: "bad_mapping",
        }
        assert report.counts.services == 4  # Ana, the two ghosts, zte_fine
        pages = [r for r in fake.requests if r == ("GET", "/clients/services")]
        assert len(pages) == 4  # 7 active or suspended services, 2 a page: 2+2+2+1
        missing = next(i for i in report.items if i.service_id == ghost_hw)
        assert missing.detail == "olt-hw has no ONU 0/1/3:99"

    # The same from the command line, with --fix: nothing it can fix, nothing queued.
    config = tmp_path / "drift.toml"
    config.write_text(configmod.to_toml(flow.cfg))
    out = await cli("network", "reconcile", "--fix", "-c", str(config))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    listed = await cli("network", "drift", "--kind", "olt_unknown", "-c", str(config))
    assert listed.returncode == 0, listed.stderr
    [header, row] = listed.stdout.splitlines()
    assert header.startswith("run ") and "(fix, cli)" in header and "4 drift(s)" in header
    assert row.startswith(f"service {nowhere} ") and "olt-nope 0/0/0:1" in row
    # UISP unreachable: one line saying what to check, exit 2, the run recorded as failed.
    config.write_text(configmod.to_toml(flow.cfg.replace(uisp=msgspec.structs.replace(
        flow.cfg.uisp, base_url="http://127.0.0.1:9/crm/api/v1.0", timeout_seconds=2
    ))))  # fmt: skip
    down = await cli("network", "reconcile", "-c", str(config))
    assert down.returncode == 2 and "Traceback" not in down.stderr
    assert "check uisp.base_url and uisp.app_key" in down.stderr
    [last] = await drift_store.last_runs(w.db, limit=1)
    assert last.state == "failed" and "UispTransientError" in (last.error or "")
    assert "4 drift(s)" in lines[0] and "0 task(s) queued" in lines[0]
    assert any(f"service {ghost_zte}" in line and "onu_missing" in line for line in lines[1:])
    assert await w.db.fetchval("SELECT count(*) FROM reconnect_tasks") == 0
    latest = await drift_store.latest(w.db)
    assert latest is not None and latest[0].mode == "fix" and latest[0].trigger == "cli"


async def test_reconcile_exit_code_says_whether_drift_was_found_for_monitoring_scripts(
    w: World, tmp_path: Path
) -> None:
    async with daemon(w) as flow:  # registers the OLTs
        pass
    config = tmp_path / "drift.toml"
    config.write_text(configmod.to_toml(flow.cfg))
    clean = await cli("network", "reconcile", "--exit-code", "-c", str(config))
    assert clean.returncode == 0, clean.stderr
    assert "0 drift(s)" in clean.stdout
    w.devices["olt-hw"].set_active(ANA_ONU, True)  # Ana is suspended in UISP
    found = await cli("network", "reconcile", "--exit-code", "-c", str(config))
    assert found.returncode == 1, found.stderr
    assert "1 drift(s)" in found.stdout and "olt_vs_uisp" in found.stdout
    plain = await cli("network", "reconcile", "-c", str(config))  # without it: 0, as before
    assert plain.returncode == 0, plain.stderr
    assert "1 drift(s)" in plain.stdout
    helped = await cli("network", "reconcile", "--help")
    assert "--exit-code" in helped.stdout


async def test_device_reads_are_capped_per_olt_and_rotate_to_the_least_recently_checked(
    w: World,
) -> None:
    hw = w.devices["olt-hw"]
    bruno = w.fake.add_client("Bruno", "Díaz", "+34 600 333 444")
    for onu_id in (8, 9):
        hw.add_onu(0, 1, 3, onu_id, active=True)
        w.fake.add_service(bruno["id"], olt="olt-hw", onu=f"0/1/3:{onu_id}")
    async with daemon(w) as flow:
        seen: list[set[str]] = []
        for _ in range(3):
            before = len(hw.command_log)
            report = await reconcile(flow, device_reads_per_run=2)
            assert report.counts.device_reads == 2 and report.items == []
            reads = [c for c in hw.command_log[before:] if c.startswith("display ont info")]
            seen.append(set(reads))
    assert all(len(s) == 2 for s in seen)
    # Three ONUs, two reads a run: the second run reads the one the first skipped.
    assert len(seen[0] | seen[1]) == 3


async def test_an_onu_whose_service_ended_loses_its_check_time_at_the_next_run(
    w: World,
) -> None:
    hw = w.devices["olt-hw"]
    bruno = w.fake.add_client("Bruno", "Díaz", "+34 600 333 444")
    hw.add_onu(0, 1, 3, 8, active=True)
    bruno_service = w.fake.add_service(bruno["id"], olt="olt-hw", onu="0/1/3:8")["id"]
    async with daemon(w) as flow:
        assert (await reconcile(flow)).counts.device_reads == 2
        assert set(await drift_store.check_times(w.db, "olt-hw")) == {"0/1/3:7", "0/1/3:8"}
        w.fake.services[bruno_service]["status"] = 2  # ended: no longer on the network
        # No reads this run: Ana's ONU is still mapped and keeps its check time unread.
        report = await reconcile(flow, device_reads_per_run=0)
        assert report.counts.device_reads == 0
    assert set(await drift_store.check_times(w.db, "olt-hw")) == {"0/1/3:7"}


async def test_the_scheduled_job_runs_in_the_daemon_and_reports_an_onu_switched_on_by_hand(
    w: World,
) -> None:
    hw = w.devices["olt-hw"]
    hw.set_active(ANA_ONU, True)  # Ana is suspended in UISP; paymentd never touched her ONU
    # Due now (a new job's first run is otherwise 10 minutes after start-up).
    await w.db.execute(
        "INSERT INTO scheduled_jobs (name, interval_seconds, next_run_at)"
        " VALUES ('drift', 21600, now())"
    )
    async with daemon(w) as flow:
        found = await flow.wait_for(lambda: drift_store.latest(w.db), "a drift run")
        run, items = found
        await flow.settle()
    assert (run.trigger, run.mode, run.services) == ("schedule", "report", 1)
    assert [(i.service_id, i.kind, i.olt_state) for i in items] == [(1, "olt_vs_uisp", "active")]
    assert hw.is_active(ANA_ONU)  # reported, not fixed: drift.fix is off by default
    [job] = [s for s in await w.db.fetch("SELECT * FROM scheduled_jobs") if s["name"] == "drift"]
    assert job["runs"] == 1 and job["last_outcome"].startswith(f"run {run.id}: 1 service(s)")

    # After a restart the gauges show the latest run's drift again, not zero.
    async with daemon(w) as flow:
        assert drift_gauges((await flow.http.get("/metrics")).text)["olt_vs_uisp"] == 1
    assert await w.db.fetchval("SELECT count(*) FROM drift_runs") == 1  # not due again yet


async def test_an_olt_that_cannot_be_read_is_counted_not_drift_and_the_others_are_read(
    w: World,
) -> None:
    zte = w.devices["olt-zte"]
    bruno = w.fake.add_client("Bruno", "Díaz", "+34 600 333 444")
    for onu_id in (5, 6):
        zte.add_onu(1, 2, 1, onu_id, active=True)
        w.fake.add_service(bruno["id"], olt="olt-zte", onu=f"1/2/1:{onu_id}")
    zte.refuse_logins = True
    async with daemon(w) as flow:
        w.devices["olt-hw"].set_active(ANA_ONU, True)  # so a read of olt-hw finds drift
        report = await reconcile(flow)
    # One refused login and olt-zte is not tried again this run; olt-hw is read.
    assert (report.counts.read_errors, report.counts.device_reads) == (1, 1)
    assert zte.auth_attempts == 1
    assert [(i.service_id, i.kind) for i in report.items] == [(1, "olt_vs_uisp")]


async def test_a_run_from_another_process_shows_in_the_daemons_metrics(w: World) -> None:
    """``paymentd network reconcile`` runs in its own process, with its own registry: the
    daemon's ``paymentd_drift`` must follow the database (what the admin API lists), not
    stay at the daemon's last own run until the next scheduled one, hours later."""
    hw = w.devices["olt-hw"]
    async with daemon(w) as flow:
        assert drift_gauges((await flow.http.get("/metrics")).text)["olt_vs_uisp"] == 0
        hw.set_active(ANA_ONU, True)  # Ana is suspended in UISP: the ONU was switched on
        res = flow.running.resources
        other_process = drift.DriftDeps(
            flow.db, res.uisp, res.pool, res.config.uisp, res.config.drift,
            Metrics(), EventBus(),
        )  # fmt: skip
        with trio.fail_after(60):
            report = await drift.reconcile(other_process, fix=False, trigger="cli")
        assert [i.kind for i in report.items] == ["olt_vs_uisp"]
        api = (await flow.http.get("/api/v1/network/drift", headers=ADMIN)).json()
        assert api["counts"]["olt_vs_uisp"] == 1

        async def gauge_follows() -> bool:
            text = (await flow.http.get("/metrics")).text
            if drift_gauges(text)["olt_vs_uisp"] == 1:
                return True
            await trio.sleep(0.25)
            return False

        # A scrape refreshes the database-backed gauges at most every few seconds.
        await flow.wait_for(gauge_follows, "the daemon's drift gauge", seconds=30)


async def test_a_webhook_applied_while_the_run_reads_the_olts_is_not_reported_as_drift(
    w: World,
) -> None:
    """The run reads the task log first and the devices after (minutes, at 2 reads/s per
    OLT). A suspension that arrives and is applied in between leaves the ONU off while the
    run still holds "paymentd applied active": that is paymentd working, not drift."""
    hw = w.devices["olt-hw"]
    async with daemon(w) as flow:
        await ana_paid_and_reconnected(w, flow)
        assert (await reconcile(flow)).items == []  # Ana's ONU now has a check time
        bruno = w.fake.add_client("Bruno", "Díaz", "+34 600 333 444")
        hw.add_onu(0, 1, 3, 8, active=True)
        w.fake.add_service(bruno["id"], olt="olt-hw", onu="0/1/3:8")
        reads = len([c for c in hw.command_log if c.startswith("display ont info")])
        found: list[Report] = []

        async def run() -> None:
            # Never-checked ONUs first: Bruno's, then Ana's 10 s later.
            found.append(await reconcile(flow, device_reads_per_second=0.1))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)

            async def bruno_read() -> bool:
                log = [c for c in hw.command_log if c.startswith("display ont info")]
                return len(log) > reads

            await flow.wait_for(bruno_read, "the run's first read")
            for body in w.fake._set_suspended(1, True):  # UISP suspends Ana, webhooks sent
                await w.fake._deliver(body)
            await flow.wait_task_state("succeeded", count=2)
            assert not hw.is_active(ANA_ONU)
        [report] = found
        await flow.settle()
    assert report.items == []
    assert report.counts.device_reads == 2


async def test_a_webhook_task_committing_while_the_fix_checks_wins_over_the_fix(
    w: World,
) -> None:
    """The fix's "is there a newer task?" and its insert are one step under the service's
    lock, which every task creation takes. A webhook's task created (not yet committed)
    just before the check makes the fix wait, then see it, and queue nothing: queued after
    it, the fix's task would have superseded the webhook's, the fresher intent."""
    async with daemon(w) as flow:
        await ana_paid_and_reconnected(w, flow)
        suspend_without_webhook(w, 1)  # drift: uisp_vs_paymentd, the fix would deactivate
        found: list[Report] = []

        async def waiting_for_the_service_lock() -> bool:
            waiting: int = await w.db.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND classid = 1 AND objid = 1 AND objsubid = 2"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            return waiting > 0

        async with (
            Database.open(w.db_url, min_size=1, max_size=1) as webhook_db,
            trio.open_nursery() as nursery,  # the run goes on after the commit
            webhook_db.transaction() as tx,
        ):
            # The suspension webhook's task, created while the run compares.
            held = await tasks.create(
                tx,
                dedupe_key="deactivate:service:1:webhook:late",
                webhook_uuid=None,
                action="deactivate",
                service_id=1,
                olt_name="olt-hw",
                onu="0/1/3:7",
            )

            async def run() -> None:
                found.append(await reconcile(flow, fix=True))

            nursery.start_soon(run)
            # Generous: the run reads UISP and the OLT first, slow on a loaded machine.
            await flow.wait_for(waiting_for_the_service_lock, "the fix at the lock", seconds=60)
        [report] = found
        [item] = report.items
        assert item.kind == "uisp_vs_paymentd" and item.task_id is None
        assert item.detail.endswith(f"not fixed: task {held} is newer")
        assert report.counts.tasks_queued == 0
        rows = await flow.wait_task_state("succeeded", count=2)
        assert [r["dedupe_key"] for r in rows][1:] == ["deactivate:service:1:webhook:late"]
        assert not w.devices["olt-hw"].is_active(ANA_ONU)
        await flow.settle()


async def test_network_drift_says_when_runs_failed_rather_than_that_none_ran(
    w: World, tmp_path: Path
) -> None:
    config = tmp_path / "drift.toml"
    config.write_text(configmod.to_toml(make_config(w.db_url, tmp_path, w.fake_url, w.sink_url)))
    never = await cli("network", "drift", "-c", str(config))
    assert never.returncode == 2
    assert "no drift run yet: run 'paymentd network reconcile'" in never.stderr
    run_id = await drift_store.start_run(w.db, "report", "schedule")
    await drift_store.fail_run(w.db, run_id, "UispTransientError: UISP GET /clients/services")
    failed = await cli("network", "drift", "-c", str(config))
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    [line] = failed.stderr.splitlines()
    assert f"no drift run has finished; the latest (run {run_id}" in line
    assert "failed: UispTransientError: UISP GET /clients/services" in line
