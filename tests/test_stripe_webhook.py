"""``POST /webhooks/stripe``: signatures verified on the raw body, events stored once.

Real HTTP (the ingress actor on a port), real PostgreSQL; signatures made with
stripe-python's own signer, as Stripe makes them.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import stripe
import trio

from daemon.payments import stripe_events
from daemon.platform.config import PaymentsConfig
from daemon.platform.db import Database
from daemon.platform.deps import Deps
from daemon.platform.logs import forget_secrets, redact, register_config
from tests.http_fixtures import assert_problem, make_deps, serving

OLD = "whsec_old_0123456789abcdef"
NEW = "whsec_new_fedcba9876543210"
PATH = "/webhooks/stripe"


def event(event_id: str = "evt_1", type_: str = "payment_intent.succeeded") -> dict[str, Any]:
    return {
        "id": event_id,
        "object": "event",
        "type": type_,
        "created": int(time.time()),
        "livemode": False,
        "api_version": stripe.api_version,
        "data": {"object": {"id": "pi_123", "object": "payment_intent", "status": "succeeded"}},
    }


def signed(
    body: dict[str, Any], secret: str, *, age: int = 0, at: int | None = None
) -> tuple[bytes, dict[str, str]]:
    payload = json.dumps(body)
    header = stripe.WebhookSignature.generate_signature_header(
        payload, secret, timestamp=(at or int(time.time())) - age
    )
    return payload.encode(), {"Stripe-Signature": header, "Content-Type": "application/json"}


def webhook_deps(db: Database, *secrets: str, tolerance: float = 300.0) -> Deps:
    payments = PaymentsConfig(
        stripe_webhook_secrets=secrets, stripe_webhook_tolerance_seconds=tolerance
    )
    return make_deps(db, payments=payments)


async def queued(db: Database) -> list[str]:
    rows = await db.fetch("SELECT message->>'event_id' AS id FROM pgmq.q_stripe_events")
    return [r["id"] for r in rows]


async def post(client: httpx.AsyncClient, raw: bytes, headers: dict[str, str]) -> httpx.Response:
    with trio.fail_after(10):
        return await client.post(PATH, content=raw, headers=headers)


async def test_a_signed_event_is_stored_and_queued_once(db: Database) -> None:
    raw, headers = signed(event("evt_once"), OLD)
    async with serving(webhook_deps(db, OLD)) as client:
        first = await post(client, raw, headers)
        again = await post(client, raw, headers)  # Stripe redelivers
    assert (first.status_code, first.json()) == (200, {"status": "queued"})
    assert (again.status_code, again.json()) == (200, {"status": "duplicate"})
    row = await stripe_events.get(db, "evt_once")
    assert row is not None
    assert (row.type, row.object_type, row.object_id) == (
        "payment_intent.succeeded",
        "payment_intent",
        "pi_123",
    )
    assert (row.deliveries, row.state) == (2, "queued")
    assert await queued(db) == ["evt_once"]


async def test_a_forged_signature_is_refused_and_nothing_is_stored(db: Database) -> None:
    raw, headers = signed(event("evt_forged"), "whsec_not_ours")
    tampered, good = signed(event("evt_tampered"), OLD)
    tampered = tampered.replace(b"pi_123", b"pi_999")  # signed body, then changed
    async with serving(webhook_deps(db, OLD)) as client:
        forged = await post(client, raw, headers)
        changed = await post(client, tampered, good)
        unsigned = await post(client, raw, {"Content-Type": "application/json"})
        garbage = await post(client, raw, {"Stripe-Signature": "nonsense"})
    for response in (forged, changed, unsigned, garbage):
        assert_problem(response, 400)
    assert "does not match" in forged.json()["detail"]
    assert "missing Stripe-Signature" in unsigned.json()["detail"]
    assert await stripe_events.count(db) == 0
    assert await queued(db) == []


async def test_a_stale_signature_is_refused_and_the_tolerance_is_configurable(
    db: Database,
) -> None:
    raw, headers = signed(event("evt_old"), OLD, age=301)
    recent, recent_headers = signed(event("evt_recent"), OLD, age=60)
    async with serving(webhook_deps(db, OLD)) as client:
        stale = await post(client, raw, headers)
        fine = await post(client, recent, recent_headers)
    async with serving(webhook_deps(db, OLD, tolerance=30)) as client:
        strict = await post(client, *signed(event("evt_strict"), OLD, age=60))
    assert "older than 300 s" in assert_problem(stale, 400)["detail"]
    assert fine.status_code == 200
    assert "older than 30 s" in assert_problem(strict, 400)["detail"]
    assert [
        e for e in ("evt_old", "evt_recent", "evt_strict") if await stripe_events.get(db, e)
    ] == ["evt_recent"]


async def test_during_a_rotation_either_secret_verifies(db: Database) -> None:
    async with serving(webhook_deps(db, OLD, NEW)) as client:
        by_old = await post(client, *signed(event("evt_by_old"), OLD))
        by_new = await post(client, *signed(event("evt_by_new"), NEW))
        by_other = await post(client, *signed(event("evt_by_other"), "whsec_someone_else"))
        # Stripe itself, while its secret rotates, sends one v1 per secret.
        at, body = int(time.time()), event("evt_two_v1")
        raw, headers = signed(body, "whsec_expired_one", at=at)
        _, with_new = signed(body, NEW, at=at)
        headers["Stripe-Signature"] += "," + with_new["Stripe-Signature"].split(",")[1]
        both = await post(client, raw, headers)
    assert by_old.status_code == by_new.status_code == 200
    assert_problem(by_other, 400)
    assert both.status_code == 200, both.text
    assert sorted(await queued(db)) == ["evt_by_new", "evt_by_old", "evt_two_v1"]


async def test_a_verified_body_that_is_not_an_event_is_refused(db: Database) -> None:
    payload = b'{"hello": "world"}'
    header = stripe.WebhookSignature.generate_signature_header(payload.decode(), OLD)
    not_json = b"not json"
    header2 = stripe.WebhookSignature.generate_signature_header(not_json.decode(), OLD)
    async with serving(webhook_deps(db, OLD)) as client:
        shape = await post(client, payload, {"Stripe-Signature": header})
        text = await post(client, not_json, {"Stripe-Signature": header2})
        binary = await post(client, b"\xff\xfe", {"Stripe-Signature": header})
    assert "not a Stripe event" in assert_problem(shape, 400)["detail"]
    assert "not JSON" in assert_problem(text, 400)["detail"]
    assert "not UTF-8" in assert_problem(binary, 400)["detail"]
    assert await stripe_events.count(db) == 0


async def test_without_signing_secrets_the_route_is_not_there(db: Database) -> None:
    async with serving(webhook_deps(db)) as client:
        response = await post(client, *signed(event(), OLD))
    assert_problem(response, 404)
    assert await stripe_events.count(db) == 0


def test_the_stripe_key_and_signing_secrets_are_redacted_from_logs() -> None:
    cfg = make_deps(None, payments=PaymentsConfig(  # type: ignore[arg-type]
        stripe_api_key="sk_live_abcdefghijklmnop", stripe_webhook_secrets=(OLD, NEW)
    )).config  # fmt: skip
    try:
        register_config(cfg)
        line = redact(f"key sk_live_abcdefghijklmnop secrets {OLD} {NEW}")
    finally:
        forget_secrets()
    assert line == "key *** secrets *** ***"


def test_a_tolerance_under_a_second_still_refuses_stale_signatures() -> None:
    # stripe-python skips its age check for a tolerance of 0: truncating 0.5 s to an int
    # accepted an hour-old (replayed) delivery.
    from daemon.payments.stripe_webhook import BadEvent, verify
    from daemon.platform.config import Secret

    raw, headers = signed(event("evt_replayed"), OLD, age=3600)
    try:
        verify(raw, headers["Stripe-Signature"], [Secret(OLD)], tolerance_seconds=0.5)
    except BadEvent as exc:
        assert "older than 0.5 s" in str(exc)
    else:
        raise AssertionError("an hour-old signature was accepted")
