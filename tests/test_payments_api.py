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


async def test_a_keyed_create_stores_the_row_it_answered_with_its_history_event_and_message(
    pay: Pay,
) -> None:
    # The keyed create writes everything in one statement from an answer made before the
    # row exists (store.fresh): the row as read back must be exactly that answer.
    r = await pay.create(
        key="one-statement", customer="cli-9", description="Fibra 600",
        metadata={"order": "9"}, capture_method="manual",
    )  # fmt: skip
    assert r.status_code == 201, r.text
    body = r.json()
    assert r.headers["location"] == f"/api/v1/payments/{body['id']}"
    row = await pay.db.fetchrow(
        "SELECT p.created_at, k.locked_at, k.status, k.response_body, k.resource_id FROM"
        " payments p JOIN idempotency_keys k ON k.resource_id = p.id WHERE p.id = $1",
        body["id"],
    )
    assert row["created_at"] == row["locked_at"]  # the claim's time is the creation's
    # The stored answer is the service's; the route adds checkout_url to every answer,
    # a replay's included (derived from the id and expiry, so it is the same each time).
    checkout_url = body.pop("checkout_url", "")
    assert checkout_url.startswith("http")
    assert row["status"] == "finished" and row["response_body"] == body
    assert await pay.db.fetchval(
        "SELECT count(*) FROM payment_events WHERE payment_id = $1 AND to_status = 'created'",
        body["id"],
    ) == 1  # fmt: skip
    [event] = await pay.db.fetch(
        "SELECT type, data FROM events WHERE subject = $1 AND type = 'payment.created'",
        f"payment:{body['id']}",
    )
    assert event["data"]["id"] == body["id"] and event["data"]["status"] == "created"
    assert "client_secret" not in event["data"] and event["data"]["metadata"] == {"order": "9"}
    # The processor may have moved it on by now: compare what it does not change.
    stored = await pay.db.fetchrow(
        "SELECT amount, currency, customer, description, capture_method, metadata,"
        " expires_at - created_at AS ttl FROM payments WHERE id = $1",
        body["id"],
    )
    assert (stored["amount"], stored["currency"], stored["customer"]) == (1000, "EUR", "cli-9")
    assert stored["description"] == "Fibra 600" and stored["capture_method"] == "manual"
    assert stored["metadata"] == {"order": "9"} and body["updated_at"] == body["created_at"]
    assert stored["ttl"].total_seconds() > 0
    got = await pay.get(body["id"])
    for name in ("id", "amount", "currency", "created_at", "expires_at", "metadata", "customer"):
        assert got[name] == body[name], name
    again = await pay.create(
        key="one-statement", customer="cli-9", description="Fibra 600",
        metadata={"order": "9"}, capture_method="manual",
    )  # fmt: skip
    assert again.status_code == 201 and again.json() == {**body, "checkout_url": checkout_url}
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

    # Hold the payment's row lock: the first refund claims its key, then waits on it.
    async with trio.open_nursery() as nursery, pay.db.transaction() as tx:
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


async def succeeded(pay: Pay, **body: Any) -> dict[str, Any]:
    r = await pay.create(metadata={"mock": "succeed"}, headers={"Prefer": "wait=10"}, **body)
    assert r.status_code == 201 and r.json()["status"] == "succeeded", r.text
    payment: dict[str, Any] = r.json()
    return payment


async def test_two_refunds_at_once_that_exceed_the_amount_one_succeeds_one_is_refused(
    pay: Pay,
) -> None:
    payment = await succeeded(pay, amount=1000)
    answers: list[httpx.Response] = []

    async def refund() -> None:
        answers.append(await pay.post(f"/payments/{payment['id']}/refunds", {"amount": 600}))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(refund)
        nursery.start_soon(refund)
    ok = [a for a in answers if a.status_code == 201]
    [refused] = [a for a in answers if a.status_code != 201]
    assert len(ok) == 1
    assert problem(refused, 422, "amount-exceeds-refundable")["refundable"] == 400
    r = await pay.http.get(f"/api/v1/refunds/{ok[0].json()['id']}", headers=ADMIN)
    assert r.status_code == 200

    async def refund_done() -> bool:
        rf = (await pay.http.get(f"/api/v1/refunds/{ok[0].json()['id']}", headers=ADMIN)).json()
        return bool(rf["status"] == "succeeded")

    await wait_for(refund_done)
    after = await pay.get(payment["id"])
    assert after["amount_refunded"] == 600 and after["amount_refundable"] == 400
    # What is left can be refunded; then nothing more.
    rest = await pay.post(f"/payments/{payment['id']}/refunds", {}, key="rest")
    assert rest.status_code == 201 and rest.json()["amount"] == 400
    problem(await pay.post(f"/payments/{payment['id']}/refunds", {"amount": 1}), 422,
            "amount-exceeds-refundable")  # fmt: skip


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ({"amount": 0}, "invalid-amount"),
        ({"amount": -5}, "invalid-amount"),
        ({"amount": 10.5}, "invalid-amount"),
        ({"amount": "1000"}, "invalid-amount"),
        ({"amount": True}, "invalid-amount"),
        ({"currency": "ZZZ"}, "invalid-currency"),
        ({"currency": "XAU"}, "invalid-currency"),
        ({"currency": "EURO"}, "invalid-currency"),
        ({"kind": "recurring"}, "invalid-request"),
        ({"kind": "recurring", "interval": "month", "method": "intent"}, "invalid-request"),
        ({"currency": "eur"}, "invalid-currency"),  # the schema lists upper-case codes
        ({"status_callback_url": "ftp://x"}, "invalid-request"),
        ({"unknown_field": 1}, "invalid-request"),
    ],
)
async def test_invalid_payments_are_4xx_and_store_nothing(
    pay: Pay, body: dict[str, Any], kind: str
) -> None:
    r = await pay.create(key="bad-1", **body)
    problem(r, 400, kind)
    assert await counts(pay) == (0, 0, 0)
    assert await pay.db.fetchval("SELECT count(*) FROM idempotency_keys") == 0
    assert await pay.db.fetchval("SELECT count(*) FROM events") == 0


async def test_invalid_transitions_are_409_and_change_nothing(pay: Pay) -> None:
    paid = await succeeded(pay)
    pending = (await pay.create(headers={"Prefer": "wait=10"})).json()
    assert pending["status"] == "pending"
    before = await counts(pay)
    problem(await pay.post(f"/payments/{paid['id']}/cancel"), 409, "invalid-state")
    problem(await pay.post(f"/payments/{paid['id']}/capture"), 409, "invalid-state")
    # No body at all (no Content-Type either) is an empty request, not a 415.
    bare = await pay.http.post(f"/api/v1/payments/{paid['id']}/capture", headers=ADMIN)
    problem(bare, 409, "invalid-state")
    problem(await pay.post(f"/payments/{pending['id']}/refunds", {"amount": 1}), 409,
            "invalid-state")  # fmt: skip
    problem(await pay.post("/payments/pay_nope/cancel"), 404, "payment-not-found")
    r = await pay.http.get("/api/v1/refunds/rf_nope", headers=ADMIN)
    problem(r, 404, "refund-not-found")
    assert await counts(pay) == before
    assert (await pay.get(paid["id"]))["status"] == "succeeded"


@pytest.mark.parametrize(
    ("code", "amount", "exponent", "display"),
    [("JPY", 500, 0, "500 JPY"), ("KRW", 15000, 0, "15000 KRW"), ("BHD", 1234, 3, "1.234 BHD"),
     ("KWD", 5, 3, "0.005 KWD"), ("EUR", 1999, 2, "19.99 EUR")],
)  # fmt: skip
async def test_zero_and_three_decimal_currencies_keep_their_minor_units(
    pay: Pay, code: str, amount: int, exponent: int, display: str
) -> None:
    r = await pay.create(amount=amount, currency=code, metadata={"mock": "succeed"},
                         headers={"Prefer": "wait=10"})  # fmt: skip
    body = r.json()
    assert r.status_code == 201
    assert body["amount"] == amount and body["currency"] == code.upper()
    assert body["currency_exponent"] == exponent and body["amount_display"] == display
    obj = await pay.db.fetchrow(
        "SELECT amount, currency FROM mock_provider_objects WHERE payment_id = $1", body["id"]
    )
    assert (obj["amount"], obj["currency"]) == (amount, code.upper())
    assert body["amount_captured"] == amount


async def test_manual_capture_of_part_of_an_authorization(pay: Pay) -> None:
    r = await pay.create(amount=1000, capture_method="manual", metadata={"mock": "succeed"},
                         headers={"Prefer": "wait=10"})  # fmt: skip
    payment = r.json()
    assert payment["status"] == "requires_capture"
    problem(await pay.post(f"/payments/{payment['id']}/capture", {"amount": 2000}), 422,
            "amount-exceeds-capturable")  # fmt: skip
    r = await pay.post(f"/payments/{payment['id']}/capture", {"amount": 600})
    assert r.status_code == 202 and r.json()["capture_requested"]
    done = await pay.wait_status(payment["id"], "succeeded")
    assert done["amount_captured"] == 600
    problem(await pay.post(f"/payments/{payment['id']}/refunds", {"amount": 700}), 422,
            "amount-exceeds-refundable")  # fmt: skip


async def test_a_second_capture_of_another_amount_is_refused_not_silently_accepted(
    pay: Pay,
) -> None:
    r = await pay.create(amount=1000, capture_method="manual", metadata={"mock": "succeed"},
                         headers={"Prefer": "wait=10"})  # fmt: skip
    payment = r.json()
    assert payment["status"] == "requires_capture"
    assert (
        await pay.post(f"/payments/{payment['id']}/capture", {"amount": 600})
    ).status_code == 202
    done = await pay.wait_status(payment["id"], "succeeded")
    # Another amount: it was answered 202 as if a capture of 100 were under way.
    problem(await pay.post(f"/payments/{payment['id']}/capture", {"amount": 100}), 409,
            "invalid-state")  # fmt: skip
    problem(await pay.post(f"/payments/{payment['id']}/capture"), 409, "invalid-state")
    # The same capture again (a retry without a key) still answers what it did.
    again = await pay.post(f"/payments/{payment['id']}/capture", {"amount": 600})
    assert again.status_code == 202 and again.json()["amount_captured"] == 600
    # All of it, then all of it again by its amount: the same capture.
    r = await pay.create(amount=700, capture_method="manual", metadata={"mock": "succeed"},
                         headers={"Prefer": "wait=10"})  # fmt: skip
    whole = r.json()
    assert (await pay.post(f"/payments/{whole['id']}/capture")).status_code == 202
    await pay.wait_status(whole["id"], "succeeded")
    assert (await pay.post(f"/payments/{whole['id']}/capture", {"amount": 700})).status_code == 202
    problem(await pay.post(f"/payments/{whole['id']}/capture", {"amount": 699}), 409,
            "invalid-state")  # fmt: skip
    assert (
        await pay.db.fetchval("SELECT amount_captured FROM payments WHERE id = $1", whole["id"])
        == 700
    )
    assert (await pay.get(payment["id"]))["amount_captured"] == done["amount_captured"] == 600
    asked = await pay.db.fetch(
        "SELECT detail FROM payment_events WHERE payment_id = $1 AND kind = 'capture_requested'",
        payment["id"],
    )
    assert [a["detail"] for a in asked] == [{"amount": 600}]  # the refusals changed nothing


async def test_cancel_a_pending_payment_cancels_it_at_the_provider(pay: Pay) -> None:
    payment = (await pay.create(headers={"Prefer": "wait=10"})).json()
    r = await pay.post(f"/payments/{payment['id']}/cancel")
    assert r.status_code == 202 and r.json()["cancel_requested"]
    await pay.wait_status(payment["id"], "canceled")
    status = await pay.db.fetchval(
        "SELECT status FROM mock_provider_objects WHERE payment_id = $1", payment["id"]
    )
    assert status == "canceled"


async def test_paying_on_the_mock_hosted_page_succeeds_the_payment(pay: Pay) -> None:
    payment = (await pay.create(method="hosted_checkout", headers={"Prefer": "wait=10"})).json()
    assert payment["status"] == "pending" and payment["hosted_url"]
    page = await pay.http.get(f"/mock/pay/{payment['provider_ref']}")
    assert page.status_code == 200 and "10.00 EUR" in page.text
    r = await pay.http.post(f"/mock/pay/{payment['provider_ref']}/pay")
    assert r.status_code == 200
    await pay.wait_status(payment["id"], "succeeded")
    types = await pay.db.fetch(
        "SELECT type FROM events WHERE subject = $1 ORDER BY seq", f"payment:{payment['id']}"
    )
    assert [t["type"] for t in types] == ["payment.created", "payment.pending", "payment.succeeded"]


async def test_list_filters_and_pages_with_a_cursor(pay: Pay) -> None:
    ids = [(await pay.create(customer="cli-9")).json()["id"] for _ in range(3)]
    await pay.create(customer="someone-else")
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"customer": "cli-9", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        r = await pay.http.get("/api/v1/payments", params=params, headers=ADMIN)
        assert r.status_code == 200, r.text
        seen += [p["id"] for p in r.json()["payments"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    r = await pay.http.get("/api/v1/payments", params={"status": "bogus"}, headers=ADMIN)
    assert r.status_code == 400


async def test_scopes_read_keys_cannot_write(pay: Pay) -> None:
    from daemon.platform import auth

    key = await auth.create_key(pay.db, "reader", [auth.PAYMENTS_READ])
    hdrs = {"Authorization": f"Bearer {key.key}"}
    r = await pay.http.post("/api/v1/payments", json={"amount": 1, "currency": "EUR"}, headers=hdrs)
    assert r.status_code == 403
    assert (await pay.http.get("/api/v1/payments", headers=hdrs)).status_code == 200
    assert (await pay.http.get("/api/v1/payments")).status_code in (401, 503)


async def test_every_payments_route_is_in_the_openapi_document(pay: Pay) -> None:
    doc = (await pay.http.get("/openapi.json")).json()
    paths = doc["paths"]
    for path, method in [
        ("/api/v1/payments", "post"), ("/api/v1/payments", "get"),
        ("/api/v1/payments/{payment_id}", "get"), ("/api/v1/payments/{payment_id}/events", "get"),
        ("/api/v1/payments/{payment_id}/cancel", "post"),
        ("/api/v1/payments/{payment_id}/capture", "post"),
        ("/api/v1/payments/{payment_id}/refunds", "post"), ("/api/v1/refunds/{refund_id}", "get"),
    ]:  # fmt: skip
        assert method in paths[path], (path, method)
    create = paths["/api/v1/payments"]["post"]
    assert "application/problem+json" in create["responses"]["422"]["content"]
