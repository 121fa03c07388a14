"""The payments API over real HTTP, the processor and the mock provider, on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from daemon.payments import mock_provider
from tests.payments_harness import ADMIN, Pay, paymentd, wait_for


@pytest.fixture
async def pay(db_url: str, tmp_path: Path, aio_loop: None) -> AsyncIterator[Pay]:
    async with paymentd(db_url, tmp_path) as running:
        yield running


def problem(r: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert body["type"] == f"urn:paymentd:problem:{kind}", body
    assert body["status"] == status and body["detail"]
    return body


async def counts(pay: Pay) -> tuple[int, int, int]:
    row = await pay.db.fetchrow(
        "SELECT (SELECT count(*) FROM payments) AS p, (SELECT count(*) FROM refunds) AS r,"
        " (SELECT count(*) FROM payment_events) AS e"
    )
    return row["p"], row["r"], row["e"]


async def test_create_answers_201_stored_and_queued_then_the_processor_gets_a_client_secret(
    pay: Pay,
) -> None:
    r = await pay.create(description="Fibra 300, December", customer="cli-1")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] == "created" and body["client_secret"] is None
    assert r.headers["location"] == f"/api/v1/payments/{body['id']}"
    assert r.headers["x-request-id"]
    pending = await pay.wait_status(body["id"], "pending")
    assert pending["client_secret"].startswith(pending["provider_ref"])
    events = (await pay.http.get(f"/api/v1/payments/{body['id']}/events", headers=ADMIN)).json()
    assert [(e["from_status"], e["to_status"]) for e in events["events"]] == [
        (None, "created"),
        ("created", "pending"),
    ]
    announced = await pay.db.fetch(
        "SELECT type FROM events WHERE subject = $1 ORDER BY seq", f"payment:{body['id']}"
    )
    assert [e["type"] for e in announced] == ["payment.created", "payment.pending"]


async def test_prefer_wait_answers_with_the_client_secret(pay: Pay) -> None:
    r = await pay.create(headers={"Prefer": "wait=10"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] == "pending"
    assert body["client_secret"]
    assert r.headers["preference-applied"] == "wait=10"


async def test_prefer_wait_on_a_decline_answers_the_final_state(pay: Pay) -> None:
    r = await pay.create(metadata={"mock": "decline"}, headers={"Prefer": "wait=10"})
    body = r.json()
    assert r.status_code == 201
    assert body["status"] == "failed" and body["failure_code"] == "card_declined"


async def test_the_same_create_twice_at_once_with_one_key_makes_one_payment_and_one_provider_object(
    pay: Pay,
) -> None:
    answers: list[httpx.Response] = []

    async def send() -> None:
        answers.append(await pay.create(key="order-42", customer="cli-7"))

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(send)
    assert {a.status_code for a in answers} <= {201, 409}
    created = [a.json() for a in answers if a.status_code == 201]
    assert created and len({c["id"] for c in created}) == 1
    for a in answers:
        if a.status_code == 409:
            problem(a, 409, "idempotency-key-in-use")
    [payment_id] = {c["id"] for c in created}
    await pay.wait_status(payment_id, "pending")
    assert await pay.db.fetchval("SELECT count(*) FROM payments") == 1
    assert await mock_provider.count_objects(pay.db, payment_id) == (1, 1)
    again = await pay.create(key="order-42", customer="cli-7")
    assert again.status_code == 201 and again.json() == created[0]
    assert again.headers["idempotent-replayed"] == "true"


async def test_the_same_key_with_another_body_is_422_and_changes_nothing(pay: Pay) -> None:
    first = await pay.create(key="k-1", amount=1000)
    assert first.status_code == 201
    before = await counts(pay)
    problem(await pay.create(key="k-1", amount=2000), 422, "idempotency-key-reused")
    assert await counts(pay) == before


async def test_a_key_whose_request_is_still_running_is_409(pay: Pay) -> None:
    r = await pay.create(metadata={"mock": "succeed"}, headers={"Prefer": "wait=10"})
    payment_id = r.json()["id"]
    assert r.json()["status"] == "succeeded"
    first: list[httpx.Response] = []

    async def refund() -> None:
        first.append(await pay.post(f"/payments/{payment_id}/refunds", {"amount": 100}, key="rf-1"))

    async with trio.open_nursery() as nursery:
        # Hold the payment's row lock: the first refund claims its key, then waits on it.
        async with pay.db.transaction() as tx:
            await tx.execute("SELECT 1 FROM payments WHERE id = $1 FOR UPDATE", payment_id)
            nursery.start_soon(refund)
            await wait_for(
                lambda: pay.db.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = 'rf-1'")
            )
            second = await pay.post(f"/payments/{payment_id}/refunds", {"amount": 100}, key="rf-1")
            problem(second, 409, "idempotency-key-in-use")
    assert first[0].status_code == 201, first[0].text
    assert await pay.db.fetchval("SELECT count(*) FROM refunds") == 1
    replay = await pay.post(f"/payments/{payment_id}/refunds", {"amount": 100}, key="rf-1")
    assert replay.status_code == 201 and replay.json()["id"] == first[0].json()["id"]
