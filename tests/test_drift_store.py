"""The drift store on a real PostgreSQL: runs, their rows, what the task log says."""

from __future__ import annotations

from daemon import wiring
from daemon.network import drift_store, tasks
from daemon.network.drift_store import Counts, DriftItem
from daemon.platform import retention
from daemon.platform.db import Database
from daemon.platform.metrics import Metrics


def item(service_id: int, kind: str = "uisp_vs_paymentd") -> DriftItem:
    return DriftItem(service_id, kind, "deactivated", "active", None, "olt", "0/1/3:7", "why")


async def test_a_run_cut_short_is_marked_failed_and_only_the_latest_keeps_its_rows(
    db: Database,
) -> None:
    assert await drift_store.latest(db) is None
    first = await drift_store.start_run(db, "report", "test")
    await drift_store.finish_run(db, first, Counts(services=2), [item(1), item(2, "onu_missing")])
    interrupted = await drift_store.start_run(db, "fix", "test")  # the process dies here
    second = await drift_store.start_run(db, "report", "test")
    runs = {r.id: r for r in await drift_store.last_runs(db)}
    assert runs[interrupted].state == "failed" and "interrupted" in (runs[interrupted].error or "")
    assert runs[second].state == "running"
    found = await drift_store.latest(db)
    assert found is not None and found[0].id == first
    assert [i.service_id for i in found[1]] == [1, 2]

    await drift_store.finish_run(db, second, Counts(services=1), [item(3)])
    found = await drift_store.latest(db)
    assert found is not None
    run, items = found
    assert (run.id, run.drifts, run.services) == (second, 1, 1)
    assert items == [item(3)]
    assert await db.fetchval("SELECT count(*) FROM drift_items") == 1

    # Retention prunes old runs' counts, never the latest finished run.
    await db.execute("UPDATE drift_runs SET started_at = now() - interval '400 days'")
    targets = [t for t in wiring.retention_targets() if t.table == "drift_runs"]
    pruned = await retention.prune(db, targets, keep_days=90, batch_size=10, metrics=Metrics())
    assert pruned == {"drift_runs": 2}
    assert [r.id for r in await drift_store.last_runs(db)] == [second]


async def test_applied_state_is_the_last_succeeded_task_and_queued_ones_are_in_flight(
    db: Database,
) -> None:
    plan = [(1, "activate"), (1, "deactivate"), (1, "activate"), (2, "activate")]
    ids: list[int] = []
    async with db.transaction() as tx:
        for n, (sid, action) in enumerate(plan):
            task_id = await tasks.create(
                tx,
                dedupe_key=f"k{n}",
                webhook_uuid=None,
                action=action,
                service_id=sid,
                olt_name="olt",
                onu="0/1/3:7",
            )
            assert task_id is not None
            ids.append(task_id)
        for task_id in ids[:2]:
            await tasks.finish(tx, task_id, "succeeded")
        await tasks.finish(tx, ids[2], "failed")
    applied = await tasks.applied_states(db)
    assert set(applied) == {1}
    assert (applied[1].task_id, applied[1].state) == (ids[1], "deactivated")
    assert await tasks.in_flight(db) == {2}
    assert await tasks.newest_id(db, 1) == ids[2]
    assert await tasks.newest_id(db) == ids[3] and await tasks.newest_id(db, 9) == 0


async def test_a_finished_run_prunes_check_times_of_onus_no_service_maps_any_more(
    db: Database,
) -> None:
    await drift_store.record_checks(db, "olt-a", [("0/1/3:7", "active"), ("0/1/3:8", "missing")])
    await drift_store.record_checks(db, "olt-b", [("0/1/3:7", "deactivated")])
    failed = await drift_store.start_run(db, "report", "test")
    await drift_store.fail_run(db, failed, "UispTransientError")  # a partial list prunes nothing
    assert len(await drift_store.check_times(db, "olt-a")) == 2

    run_id = await drift_store.start_run(db, "report", "test")
    # olt-a 0/1/3:7 is still mapped (listed, maybe not read this run); the rest are not.
    await drift_store.finish_run(db, run_id, Counts(), [], [("olt-a", "0/1/3:7")])
    assert set(await drift_store.check_times(db, "olt-a")) == {"0/1/3:7"}
    assert await drift_store.check_times(db, "olt-b") == {}

    last = await drift_store.start_run(db, "report", "test")
    await drift_store.finish_run(db, last, Counts(), [])  # no mapped ONU left at all
    assert await db.fetchval("SELECT count(*) FROM drift_onu_checks") == 0
