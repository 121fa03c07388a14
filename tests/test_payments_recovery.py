"""Payments across time and failures: reconcile, expire, provider timeouts, restarts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from daemon.payments import jobs, mock_provider
from tests.payments_harness import ADMIN, paymentd, wait_for


async def test_a_payment_left_processing_is_reconciled_to_its_final_state(
    db_url: str, tmp_path: Path, aio_loop: None
) -> None:
    async with paymentd(db_url, tmp_path, reconcile_after_seconds=0.1) as pay:
        r = await pay.create(metadata={"mock": "processing", "mock_seconds": "0.3"},
                             headers={"Prefer": "wait=10"})  # fmt: skip
        payment = r.json()
        assert payment["status"] == "processing"
        deps = pay.processor()

        async def reconciled() -> bool:
            await jobs.reconcile(deps)
            return bool((await pay.get(payment["id"]))["status"] == "succeeded")

        await wait_for(reconciled)
        history = await pay.db.fetch(
            "SELECT actor, to_status FROM payment_events WHERE payment_id = $1"
            " AND kind = 'transition' ORDER BY id",
            payment["id"],
        )
        assert (history[-1]["actor"], history[-1]["to_status"]) == ("reconcile", "succeeded")


async def test_a_pending_payment_past_its_ttl_is_cancelled_at_the_provider_and_expired(
    db_url: str, tmp_path: Path, aio_loop: None
) -> None:
    async with paymentd(db_url, tmp_path, pending_ttl_seconds=0.5) as pay:
        payment = (await pay.create(headers={"Prefer": "wait=10"})).json()
        fresh = (await pay.create(headers={"Prefer": "wait=10"})).json()
        assert payment["status"] == "pending"
        deps = pay.processor()
        # Not yet due: nothing happens to either.
        await pay.db.execute(
            "UPDATE payments SET expires_at = now() + interval '1 hour' WHERE id = $1", fresh["id"]
        )

        async def expired() -> bool:
            await jobs.expire(deps)
            return bool((await pay.get(payment["id"]))["status"] == "expired")

        await wait_for(expired)
        at_provider = await pay.db.fetchval(
            "SELECT status FROM mock_provider_objects WHERE payment_id = $1", payment["id"]
        )
        assert at_provider == "canceled"
        assert (await pay.get(fresh["id"]))["status"] == "pending"
        types = await pay.db.fetch(
            "SELECT type FROM events WHERE subject = $1 ORDER BY seq", f"payment:{payment['id']}"
        )
        assert [t["type"] for t in types][-1] == "payment.expired"


async def test_a_provider_timeout_is_unknown_until_reconcile_finds_the_one_object(
    db_url: str, tmp_path: Path, aio_loop: None
) -> None:
    async with paymentd(
        db_url, tmp_path, provider_timeout_seconds=0.5, reconcile_after_seconds=0.1
    ) as pay:
        payment = (await pay.create(metadata={"mock": "timeout"})).json()
        await pay.wait_status(payment["id"], "unknown")
        deps = pay.processor()

        async def resolved() -> bool:
            await jobs.reconcile(deps)
            return bool((await pay.get(payment["id"]))["status"] == "pending")

        await wait_for(resolved)
        # Asked twice with the same idempotency key: one object at the provider.
        assert await mock_provider.count_objects(pay.db, payment["id"]) == (1, 2)
        after = await pay.get(payment["id"])
        assert after["client_secret"] and after["provider_ref"]


async def test_an_idempotency_key_survives_a_restart(
    db_url: str, tmp_path: Path, aio_loop: None
) -> None:
    async with paymentd(db_url, tmp_path) as pay:
        first = await pay.create(key="survivor", amount=777)
        assert first.status_code == 201
    async with paymentd(db_url, tmp_path) as pay:
        again = await pay.create(key="survivor", amount=777)
        assert again.status_code == 201
        assert again.json() == first.json()
        assert again.headers["idempotent-replayed"] == "true"
        other = await pay.create(key="survivor", amount=778)
        assert other.status_code == 422
        assert await pay.db.fetchval("SELECT count(*) FROM payments") == 1


async def test_a_declined_payment_fails_with_the_providers_code(
    db_url: str, tmp_path: Path, aio_loop: None
) -> None:
    async with paymentd(db_url, tmp_path) as pay:
        payment = (await pay.create(metadata={"mock": "decline"})).json()
        failed = await pay.wait_status(payment["id"], "failed")
        assert failed["failure_code"] == "card_declined"
        types = await pay.db.fetch(
            "SELECT type FROM events WHERE subject = $1 ORDER BY seq", f"payment:{payment['id']}"
        )
        assert [t["type"] for t in types] == ["payment.created", "payment.failed"]


async def _pending_refund(pay: Any) -> tuple[str, str]:
    """A paid payment whose refund the provider answered "pending": (payment, refund) ids."""
    metadata = {"mock": "refund_pending", "mock_seconds": "0"}
    payment = (await pay.create(metadata=metadata, headers={"Prefer": "wait=10"})).json()
    assert payment["status"] == "succeeded"
    r = await pay.post(f"/payments/{payment['id']}/refunds", {"amount": 400})
    assert r.status_code == 201, r.text
    refund_id = r.json()["id"]

    async def answered() -> bool:
        ref = await pay.db.fetchval("SELECT provider_ref FROM refunds WHERE id = $1", refund_id)
        return ref is not None

    await wait_for(answered)
    assert await pay.db.fetchval("SELECT status FROM refunds WHERE id = $1", refund_id) == (
        "pending"
    )
    return payment["id"], refund_id


async def _refund_calls(pay: Any, refund_id: str) -> tuple[int, int]:
    """(refunds at the mock for this refund, create calls for its key)."""
    row = await pay.db.fetchrow(
        "SELECT count(*) AS n, coalesce(sum(create_calls), 0) AS calls"
        " FROM mock_provider_refunds WHERE idempotency_key = $1",
        f"paymentd:{refund_id}:refund",
    )
    return int(row["n"]), int(row["calls"])


async def test_a_pending_refund_is_reconciled_by_re_fetching_it_not_by_asking_again(
    db_url: str, tmp_path: Path, aio_loop: None
) -> None:
    # A repeated create would replay the first answer ("pending") forever, as Stripe does.
    async with paymentd(db_url, tmp_path, reconcile_after_seconds=0.1) as pay:
        payment_id, refund_id = await _pending_refund(pay)
        deps = pay.processor()

        async def finished() -> bool:
            await jobs.reconcile(deps)
            r = await pay.http.get(f"/api/v1/refunds/{refund_id}", headers=ADMIN)
            return bool(r.json()["status"] == "succeeded")

        await wait_for(finished)
        assert await _refund_calls(pay, refund_id) == (1, 1)
        after = await pay.get(payment_id)
        assert after["amount_refunded"] == 400


async def test_a_refund_whose_answer_was_lost_is_asked_again_with_its_key_then_re_fetched(
    db_url: str, tmp_path: Path, aio_loop: None
) -> None:
    async with paymentd(db_url, tmp_path, reconcile_after_seconds=0.1) as pay:
        _, refund_id = await _pending_refund(pay)
        # As if the first create timed out: attempted, but we never learnt its id.
        await pay.db.execute(
            "UPDATE refunds SET provider_ref = NULL, provider_status = NULL WHERE id = $1",
            refund_id,
        )
        deps = pay.processor()

        async def finished() -> bool:
            await jobs.reconcile(deps)
            row = await pay.db.fetchrow("SELECT status FROM refunds WHERE id = $1", refund_id)
            return bool(row["status"] == "succeeded")

        await wait_for(finished)
        # The repeat (same key) found the one refund; the end came from re-fetching it.
        assert await _refund_calls(pay, refund_id) == (1, 2)


async def test_a_refund_attempted_beyond_the_keys_lifetime_is_not_created_again(
    db_url: str, tmp_path: Path, aio_loop: None
) -> None:
    async with paymentd(db_url, tmp_path, reconcile_after_seconds=0.1) as pay:
        _, refund_id = await _pending_refund(pay)
        await pay.db.execute(
            "UPDATE refunds SET provider_ref = NULL, attempted_at = now() - interval '2 days',"
            " updated_at = now() - interval '1 hour' WHERE id = $1",
            refund_id,
        )
        summary = await jobs.reconcile(pay.processor())
        assert "1 pending refund(s) asked again, 0 finished" in summary
        assert await pay.db.fetchval("SELECT status FROM refunds WHERE id = $1", refund_id) == (
            "pending"
        )
        assert await _refund_calls(pay, refund_id) == (1, 1)
