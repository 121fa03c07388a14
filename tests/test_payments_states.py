"""The state machine as the processor applies provider answers: late, repeated or out of
order answers never move a payment backwards, and each move is in the history and the
outbox of its own transaction."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from daemon.payments import mock_provider, processor, states, store
from daemon.payments.provider import ProviderPayment, ProviderRef
from daemon.platform.config import PaymentsConfig
from daemon.platform.db import Database
from daemon.platform.events import EventBus

NEW = store.NewPayment(
    amount=1000, currency="EUR", method="intent", kind="one_time", interval=None,
    capture_method="automatic", description=None, customer=None, metadata={},
    status_callback_url=None, uisp_client_id=None,
)  # fmt: skip


def seen(status: str, captured: int = 0) -> ProviderPayment:
    return ProviderPayment(
        ref=ProviderRef("payment_intent", "pi_1"), status=status,  # type: ignore[arg-type]
        provider_status=status, amount=1000, currency="EUR", amount_captured=captured,
        client_secret="pi_1_secret_x",
    )  # fmt: skip


async def apply(db: Database, payment_id: str, obs: ProviderPayment) -> str:
    async with db.transaction() as tx:
        payment = await store.lock(tx, payment_id)
        assert payment is not None
        moved, _ = await processor.apply(tx, payment, obs, "test")
    return moved.status


async def test_answers_out_of_order_end_in_the_right_final_state(db: Database) -> None:
    async with db.transaction() as tx:
        payment = await store.insert(tx, NEW, created_by="test", provider="mock", ttl_seconds=60)
    assert await apply(db, payment.id, seen("requires_payment_method")) == "pending"
    assert await apply(db, payment.id, seen("succeeded", 1000)) == "succeeded"
    # A late "processing" and a repeated "pending" arrive after the success.
    assert await apply(db, payment.id, seen("processing")) == "succeeded"
    assert await apply(db, payment.id, seen("requires_payment_method")) == "succeeded"
    after = await store.get(db, payment.id)
    assert after is not None and after.amount_captured == 1000
    history = await store.events(db, payment.id)
    assert [(e.from_status, e.to_status) for e in history if e.kind == "transition"] == [
        (None, "created"), ("created", "pending"), ("pending", "succeeded"),
    ]  # fmt: skip
    assert [e.kind for e in history][-2:] == ["provider_disagrees", "provider_disagrees"]
    types = await db.fetch("SELECT type FROM events ORDER BY seq")
    assert [t["type"] for t in types] == ["payment.created", "payment.pending", "payment.succeeded"]


async def test_the_history_is_append_only(db: Database) -> None:
    async with db.transaction() as tx:
        payment = await store.insert(tx, NEW, created_by="test", provider="mock", ttl_seconds=60)
    with pytest.raises(Exception, match="append-only"):
        await db.execute("UPDATE payment_events SET actor = 'x' WHERE payment_id = $1", payment.id)
    with pytest.raises(Exception, match="append-only"):
        await db.execute("DELETE FROM payment_events WHERE payment_id = $1", payment.id)


def test_final_states_have_no_way_out_and_every_target_is_a_known_state() -> None:
    for final in states.PAYMENT_FINAL:
        assert states.PAYMENT_TRANSITIONS[final] == frozenset()
    for targets in states.PAYMENT_TRANSITIONS.values():
        assert targets <= set(states.PAYMENT_TRANSITIONS)
    with pytest.raises(states.InvalidTransition):
        states.check_payment("succeeded", "canceled")
    with pytest.raises(states.InvalidTransition):
        states.check_refund("failed", "succeeded")


async def test_a_create_cut_short_after_our_commit_and_before_the_call_makes_one_object(
    db: Database,
) -> None:
    """What a SIGKILL right after committing ``create_attempted_at`` leaves: the mark, no
    provider object, the message still queued. The redelivery creates once."""
    async with db.transaction() as tx:
        payment = await store.insert(tx, NEW, created_by="test", provider="mock", ttl_seconds=60)
        await store.update(tx, payment.id, create_attempted_at=payment.created_at)
    provider = mock_provider.MockProvider(db, "http://127.0.0.1:1")
    deps = processor.ProcessorDeps(db, provider, PaymentsConfig(provider="mock"), EventBus())
    after = await processor.drive(deps, payment.id, actor="processor")
    assert after is not None and after.status == "pending"
    again = await processor.drive(deps, payment.id, actor="processor")  # a duplicate message
    assert again is not None and again.status == "pending"
    assert await mock_provider.count_objects(db, payment.id) == (1, 1)


async def test_a_payment_and_a_provider_answer_keep_the_client_secret_out_of_their_repr(
    db: Database,
) -> None:
    # Reprs reach logs and tracebacks; the client secret lets a browser pay the intent.
    async with db.transaction() as tx:
        payment = await store.insert(tx, NEW, created_by="test", provider="mock", ttl_seconds=60)
        payment, _ = await processor.apply(tx, payment, seen("requires_payment_method"), "test")
    assert payment.client_secret == "pi_1_secret_x"  # stored, and in the API's answer
    assert payment.public()["client_secret"] == "pi_1_secret_x"
    for shown in (repr(payment), str(payment), repr(seen("requires_payment_method"))):
        assert "pi_1_secret_x" not in shown, shown


async def test_an_answer_for_another_amount_or_currency_never_moves_the_payment(
    db: Database,
) -> None:
    # A succeeded answer closes the loop (UISP records the payment, the ONU comes back):
    # it must be for what we asked, not 10.00 USD against our 10.00 EUR.
    import dataclasses

    async with db.transaction() as tx:
        payment = await store.insert(tx, NEW, created_by="test", provider="mock", ttl_seconds=60)
    assert await apply(db, payment.id, seen("requires_payment_method")) == "pending"
    other_currency = dataclasses.replace(seen("succeeded", 1000), currency="USD")
    other_amount = dataclasses.replace(seen("succeeded", 100), amount=100)
    assert await apply(db, payment.id, other_currency) == "pending"
    assert await apply(db, payment.id, other_amount) == "pending"
    after = await store.get(db, payment.id)
    assert after is not None and after.amount_captured == 0
    history = await store.events(db, payment.id)
    assert [e.kind for e in history][-2:] == ["provider_mismatch", "provider_mismatch"]
    assert history[-2].detail["currency"] == "USD" and history[-1].detail["amount"] == 100
    assert await apply(db, payment.id, seen("succeeded", 1000)) == "succeeded"


async def test_the_one_statement_create_writes_nothing_when_its_claim_was_lost(
    db: Database,
) -> None:
    # What insert_answered's statement does for a request whose Idempotency-Key claim was
    # taken over (its locked_at is no longer the key's): no row, no history, no event, no
    # queue message, and the key keeps the other request's state.
    claimed = await db.fetchval(
        "INSERT INTO idempotency_keys (scope, key, operation, fingerprint, locked_at,"
        " expires_at) VALUES ('admin', 'k', 'payments.create', $1, clock_timestamp(),"
        " now() + interval '1 day') RETURNING locked_at",
        bytes(32),
    )
    stale = claimed - dt.timedelta(seconds=61)
    fresh = store.fresh(
        NEW, store.new_payment_id(), created_by="api:admin", provider="mock", at=stale,
        expires_at=stale + dt.timedelta(days=1),
    )  # fmt: skip
    sql, args = store.insert_answered(
        fresh, scope="admin", key="k", locked_at=stale, status=201, body=fresh.public()
    )
    assert await db.fetchrow(sql, *args) is None
    counts = await db.fetchrow(
        "SELECT (SELECT count(*) FROM payments) AS p, (SELECT count(*) FROM payment_events)"
        " AS h, (SELECT count(*) FROM events) AS e, (SELECT count(*) FROM pgmq.q_payments)"
        " AS q, (SELECT status FROM idempotency_keys WHERE key = 'k') AS k"
    )
    assert tuple(counts) == (0, 0, 0, 0, "running")
    # With the claim's own locked_at it writes all of it, the fan-out message included.
    fresh = store.fresh(
        NEW, store.new_payment_id(), created_by="api:admin", provider="mock", at=claimed,
        expires_at=claimed + dt.timedelta(days=1),
    )  # fmt: skip
    sql, args = store.insert_answered(
        fresh, scope="admin", key="k", locked_at=claimed, status=201, body=fresh.public()
    )
    assert await db.fetchrow(sql, *args) is not None
    counts = await db.fetchrow(
        "SELECT (SELECT count(*) FROM payments) AS p, (SELECT count(*) FROM payment_events)"
        " AS h, (SELECT count(*) FROM events) AS e, (SELECT count(*) FROM pgmq.q_payments)"
        " AS q, (SELECT count(*) FROM pgmq.q_event_fanout) AS f,"
        " (SELECT status FROM idempotency_keys WHERE key = 'k') AS k"
    )
    assert tuple(counts) == (1, 1, 1, 1, 1, "finished")
    assert (await store.get(db, fresh.id)) == dataclasses.replace(
        fresh,
        seq=(await store.get(db, fresh.id)).seq,  # type: ignore[union-attr]
    )
