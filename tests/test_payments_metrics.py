"""Payments on /metrics: created and final states per provider, and provider call latency."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.payments_harness import ADMIN, paymentd, wait_for


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name
    }


async def test_final_states_and_provider_calls_are_counted_on_metrics(
    db_url: str, tmp_path: Path, aio_loop: None
) -> None:
    async with paymentd(db_url, tmp_path) as pay:
        for n, mock in enumerate(("succeed", "succeed", "decline", "refund_fail")):
            r = await pay.create(key=f"create-{n}", metadata={"mock": mock})
            assert r.status_code == 201, r.text
        replay = await pay.create(key=f"create-{n}", metadata={"mock": mock})
        assert replay.json()["id"] == r.json()["id"]  # the same payment: not created again
        listed = await pay.http.get("/api/v1/payments", headers=ADMIN)
        ids = [p["id"] for p in listed.json()["payments"]]
        for payment_id in ids:
            await pay.wait_status(payment_id, "succeeded", "failed")
        paid = [p for p in ids if (await pay.get(p))["metadata"].get("mock") == "refund_fail"]
        refund = await pay.post(f"/payments/{paid[0]}/refunds", {"amount": 100})
        assert refund.status_code == 201, refund.text

        async def refund_failed() -> bool:
            query = "SELECT status FROM refunds WHERE id = $1"
            got = await pay.db.fetchval(query, refund.json()["id"])
            return bool(got == "failed")

        await wait_for(refund_failed)

        async def counted() -> str | None:
            text = (await pay.http.get("/metrics")).text
            finished = samples(text, "paymentd_payments_finished_total")
            done = finished.get((("provider", "mock"), ("status", "succeeded")), 0) == 3
            return text if done else None

        text = await wait_for(counted)
    assert samples(text, "paymentd_payments_created_total") == {(("provider", "mock"),): 4}
    finished = samples(text, "paymentd_payments_finished_total")
    assert finished == {
        (("provider", "mock"), ("status", "succeeded")): 3,
        (("provider", "mock"), ("status", "failed")): 1,
    }
    refunds = samples(text, "paymentd_refunds_finished_total")
    assert refunds == {(("provider", "mock"), ("status", "failed")): 1}
    calls = samples(text, "paymentd_payment_provider_call_seconds_count")
    assert calls[(("operation", "create"), ("outcome", "ok"), ("provider", "mock"))] == 3
    assert calls[(("operation", "create"), ("outcome", "declined"), ("provider", "mock"))] == 1
    assert calls[(("operation", "refund"), ("outcome", "ok"), ("provider", "mock"))] == 1
    sums = samples(text, "paymentd_payment_provider_call_seconds_sum")
    assert sums[(("operation", "create"), ("outcome", "ok"), ("provider", "mock"))] > 0


async def test_a_payment_the_scheduler_reconciles_is_counted_too(
    db_url: str, tmp_path: Path, aio_loop: None
) -> None:
    async with paymentd(
        db_url, tmp_path, reconcile_after_seconds=0.2, reconcile_interval_seconds=0.2
    ) as pay:
        metadata = {"mock": "processing", "mock_seconds": "0.3"}
        r = await pay.create(metadata=metadata, headers={"Prefer": "wait=10"})
        assert r.json()["status"] == "processing"
        await pay.wait_status(r.json()["id"], "succeeded")
        history = await pay.http.get(f"/api/v1/payments/{r.json()['id']}/events", headers=ADMIN)

        async def counted() -> str | None:
            # Counted once published, just after the commit the status shows.
            text = (await pay.http.get("/metrics")).text
            return text if samples(text, "paymentd_payments_finished_total") else None

        text = await wait_for(counted)
    last = [e for e in history.json()["events"] if e["kind"] == "transition"][-1]
    assert last["actor"] == "reconcile"
    finished = samples(text, "paymentd_payments_finished_total")
    assert finished == {(("provider", "mock"), ("status", "succeeded")): 1}
    calls = samples(text, "paymentd_payment_provider_call_seconds_count")
    assert calls[(("operation", "retrieve"), ("outcome", "ok"), ("provider", "mock"))] >= 1
