"""Payments across time and failures: reconcile, expire, provider timeouts, restarts."""

from __future__ import annotations

from pathlib import Path

from daemon.payments import jobs, mock_provider
from tests.payments_harness import paymentd, wait_for


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
