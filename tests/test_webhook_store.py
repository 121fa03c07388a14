"""The webhook stores: endpoints with encrypted, rotating secrets; deliveries fanned out
from the outbox, listed, retried and recovered."""

from __future__ import annotations

import datetime as dt

import pytest

from daemon.platform import outbox, secrets
from daemon.platform.db import Database
from daemon.platform.secrets import Keyring
from daemon.webhooks import deliveries, endpoints
from daemon.webhooks.endpoints import EndpointError

BOX = Keyring(bytes(range(32)))


async def _endpoint(db: Database, **kw: object) -> tuple[endpoints.Endpoint, str]:
    async with db.transaction() as tx:
        return await endpoints.create(tx, BOX, url="https://partner.example/hook", **kw)  # type: ignore[arg-type]


async def test_an_endpoint_stores_its_generated_secret_encrypted_and_reads_back(
    db: Database,
) -> None:
    ep, secret = await _endpoint(db, description="ISP partner", event_types=["payment.*"])
    assert secret.startswith("whsec_") and len(endpoints.secret_key(secret)) == 32
    stored = await db.fetchval("SELECT secret_enc FROM webhook_secrets")
    assert secret not in stored and "whsec" not in stored
    assert await endpoints.active_secrets(db, BOX, ep.id) == [secret]
    assert await endpoints.get(db, ep.id) == ep
    assert ep.wants("payment.succeeded") and not ep.wants("sms.sent")
    assert [e.id for e in await endpoints.list_endpoints(db)] == [ep.id]
    # secrets rotate covers the column (re-encrypts under a new key, still readable).
    new = Keyring(bytes(range(1, 33)), [bytes(range(32))])
    report = await secrets.rotate(db, new)
    assert report.rewritten["webhook_secrets.secret_enc"] == 1
    assert await endpoints.active_secrets(db, new, ep.id) == [secret]


async def test_bad_endpoint_input_is_refused_with_what_to_fix(db: Database) -> None:
    async with db.transaction() as tx:
        for kw, word in (
            ({"url": "ftp://x"}, "url"),
            ({"url": "https://user:pw@x.example/"}, "credentials"),
            ({"url": "https://x.example/", "event_types": ["payment.exploded"]}, "unknown"),
            ({"url": "https://x.example/", "event_types": ["nothing.*"]}, "matches no"),
            ({"url": "https://x.example/", "event_types": []}, "at least one"),
            # The test ping is sent on request only; a filter for it would never match.
            ({"url": "https://x.example/", "event_types": ["webhook.test"]}, "on request"),
            ({"url": "https://x.example/", "event_types": ["webhook.*"]}, "matches no"),
            ({"url": "https://x.example/", "secret": "whsec_c2hvcnQ="}, "24"),
            ({"url": "https://x.example/", "max_concurrency": 0}, "positive"),
        ):
            with pytest.raises(EndpointError, match=word):
                await endpoints.create(tx, BOX, **kw)  # type: ignore[arg-type]


async def test_rotation_keeps_the_old_secret_for_the_overlap_only(db: Database) -> None:
    ep, old = await _endpoint(db)
    async with db.transaction() as tx:
        new = await endpoints.rotate_secret(tx, BOX, ep.id, overlap_seconds=3600)
    now = dt.datetime.now(dt.UTC)
    assert await endpoints.active_secrets(db, BOX, ep.id, now) == [new, old]
    later = now + dt.timedelta(seconds=3601)
    assert await endpoints.active_secrets(db, BOX, ep.id, later) == [new]
    metas = await endpoints.secrets_of(db, ep.id)
    assert metas[0].expires_at is None and metas[1].expires_at is not None


async def test_fan_out_makes_one_delivery_per_matching_enabled_endpoint_once(
    db: Database,
) -> None:
    pay, _ = await _endpoint(db, event_types=["payment.*"])
    everything, _ = await _endpoint(db)
    await _endpoint(db, event_types=["sms.sent"])
    off, _ = await _endpoint(db, enabled=False)
    assert off.disabled_reason == "operator"
    async with db.transaction() as tx:
        event = await outbox.emit(tx, "payment.succeeded", {"id": "pay_1"})
    # emit queued the fan-out in its transaction
    assert await db.fetchval(f"SELECT count(*) FROM pgmq.q_{outbox.QUEUE}") == 1
    now = dt.datetime.now(dt.UTC)
    async with db.transaction() as tx:
        assert await deliveries.fan_out(tx, event.id, event.type, now) == 2
        assert await deliveries.fan_out(tx, event.id, event.type, now) == 0
    listed = await deliveries.list_deliveries(db)
    assert {d.endpoint_id for d in listed} == {pay.id, everything.id}
    assert all(d.state == "pending" and d.event_type == "payment.succeeded" for d in listed)
    page1 = await deliveries.list_deliveries(db, limit=1)
    page2 = await deliveries.list_deliveries(db, limit=1, before_id=page1[0].id)
    assert [page1[0].id, page2[0].id] == [d.id for d in listed]
    assert await deliveries.list_deliveries(db, endpoint_id=pay.id, state="pending")
    assert not await deliveries.list_deliveries(db, state="failed")


async def test_disabling_fails_pending_deliveries_and_announces_it(db: Database) -> None:
    ep, _ = await _endpoint(db)
    async with db.transaction() as tx:
        event = await outbox.emit(tx, "sms.sent", {})
        await deliveries.fan_out(tx, event.id, event.type, dt.datetime.now(dt.UTC))
        assert await endpoints.disable(tx, ep.id, "gone", "410 Gone")
        assert not await endpoints.disable(tx, ep.id, "gone")
    (d,) = await deliveries.list_deliveries(db, event_id=event.id)
    assert d.state == "failed" and d.next_attempt_at is None
    disabled = await db.fetchrow("SELECT type, data FROM events WHERE type = 'endpoint.disabled'")
    assert disabled["data"]["endpoint_id"] == ep.id and disabled["data"]["reason"] == "gone"
    # A disabled endpoint's deliveries are not retried until it is enabled again.
    async with db.transaction() as tx:
        with pytest.raises(deliveries.EndpointDisabled):
            await deliveries.retry_now(tx, d.id)
        with pytest.raises(deliveries.EndpointDisabled):
            await deliveries.recover(tx, ep.id, d.created_at)
    # recover puts failed ones back; enabling clears the reason
    async with db.transaction() as tx:
        again = await endpoints.update(tx, ep.id, enabled=True)
        assert again.enabled and again.disabled_reason is None
        assert await deliveries.recover(tx, ep.id, d.created_at) == 1
    detail = await deliveries.get_detail(db, d.id)
    assert detail is not None and detail.delivery.state == "pending" and detail.attempts == []
    async with db.transaction() as tx:
        retried = await deliveries.retry_now(tx, d.id)
        assert retried.state == "pending"
        with pytest.raises(deliveries.DeliveryNotFound):
            await deliveries.retry_now(tx, 999999)
    assert await endpoints.delete(db, ep.id)
    assert await deliveries.get(db, d.id) is None


async def test_endpoint_disabled_tells_no_partner_another_partners_url(db: Database) -> None:
    # A partner's URL may hold a token; the notice carries the id, reason and time only,
    # and reaches only endpoints that ask for it by name, not every '*' subscriber.
    gone, _ = await _endpoint(db, event_types=["sms.*"])
    async with db.transaction() as tx:
        await tx.execute(
            "UPDATE webhook_endpoints SET url = 'https://a.example/hook?token=s3cr3t'"
            " WHERE id = $1",
            gone.id,
        )
    everything, _ = await _endpoint(db)
    payments, _ = await _endpoint(db, event_types=["payment.*", "sms.*"])
    by_name, _ = await _endpoint(db, event_types=["endpoint.disabled"])
    by_prefix, _ = await _endpoint(db, event_types=["endpoint.*"])
    async with db.transaction() as tx:
        assert await endpoints.disable(tx, gone.id, "gone", "answered 410 Gone")
    event_id, data = await db.fetchrow(
        "SELECT id, data FROM events WHERE type = 'endpoint.disabled'"
    )
    assert set(data) == {"endpoint_id", "reason", "disabled_at", "failing_since"}
    assert data["endpoint_id"] == gone.id and data["reason"] == "gone"
    assert data["failing_since"] is None
    assert (
        dt.datetime.fromisoformat(data["disabled_at"])
        == (await endpoints.get(db, gone.id)).disabled_at
    )  # type: ignore[union-attr]
    assert "s3cr3t" not in str(data) and "a.example" not in str(data)
    now = dt.datetime.now(dt.UTC)
    async with db.transaction() as tx:
        assert await deliveries.fan_out(tx, event_id, "endpoint.disabled", now) == 2
    got = {d.endpoint_id for d in await deliveries.list_deliveries(db, event_id=event_id)}
    assert got == {by_name.id, by_prefix.id}
    assert [e.id for e in await endpoints.matching(db, "endpoint.disabled")] == sorted(
        [by_name.id, by_prefix.id]
    )
    assert not everything.wants("endpoint.disabled") and by_prefix.wants("endpoint.disabled")
    assert everything.wants("sms.sent") and not payments.wants("endpoint.disabled")


async def test_a_callback_delivery_targets_a_url_once_per_event(db: Database) -> None:
    async with db.transaction() as tx:
        event = await outbox.emit(tx, "payment.succeeded", {"id": "pay_2"})
        first = await deliveries.add_callback(tx, event.id, "https://shop.example/cb")
        assert first is not None
        assert await deliveries.add_callback(tx, event.id, "https://shop.example/cb") is None
        await endpoints.ensure_callback_secret(tx, BOX)
        await endpoints.ensure_callback_secret(tx, BOX)
    assert len(await endpoints.active_secrets(db, BOX, None)) == 1
    d = await deliveries.get(db, first)
    assert d is not None and d.target_url == "https://shop.example/cb" and d.endpoint_id is None


async def test_old_attempts_are_pruned_by_retention(db: Database) -> None:
    from daemon import wiring
    from daemon.platform import retention
    from daemon.platform.metrics import Metrics

    await _endpoint(db)
    async with db.transaction() as tx:
        event = await outbox.emit(tx, "sms.sent", {})
        await deliveries.fan_out(tx, event.id, event.type, dt.datetime.now(dt.UTC))
    [d] = await deliveries.list_deliveries(db)
    for age_days in (100, 1):
        await db.execute(
            "INSERT INTO webhook_attempts (delivery_id, attempt, started_at, duration_ms, url)"
            " VALUES ($1, 1, now() - make_interval(days => $2), 5, 'https://x.example/')",
            d.id,
            age_days,
        )
    pruned = await retention.prune(
        db, wiring.retention_targets(), keep_days=90, batch_size=100, metrics=Metrics()
    )
    assert pruned["webhook_attempts"] == 1
    [kept] = await deliveries.attempts(db, d.id)
    assert kept.started_at > dt.datetime.now(dt.UTC) - dt.timedelta(days=2)


async def test_retention_prunes_finished_deliveries_and_events_but_never_live_ones(
    db: Database,
) -> None:
    from daemon import wiring
    from daemon.platform import retention
    from daemon.platform.metrics import Metrics

    await _endpoint(db)
    now = dt.datetime.now(dt.UTC)
    ids = {}
    for name in ("old_done", "old_pending", "old_unfanned", "new_done"):
        async with db.transaction() as tx:
            event = await outbox.emit(tx, "sms.sent", {"n": name})
            if name != "old_unfanned":
                await deliveries.fan_out(tx, event.id, event.type, now)
        ids[name] = event.id
    # old_unfanned still has its fan-out message waiting in PGMQ (emit queued it).
    await db.execute(
        "DELETE FROM pgmq.q_event_fanout WHERE message->>'event_id' <> $1", ids["old_unfanned"]
    )
    for name in ("old_done", "new_done"):
        await db.execute(
            "UPDATE webhook_deliveries SET state = 'succeeded', next_attempt_at = NULL,"
            " finished_at = now() - make_interval(days => $2) WHERE event_id = $1",
            ids[name],
            100 if name == "old_done" else 1,
        )
    await db.execute(
        "UPDATE events SET occurred_at = now() - interval '100 days' WHERE id = ANY($1)",
        [ids["old_done"], ids["old_pending"], ids["old_unfanned"]],
    )

    pruned = await retention.prune(
        db, wiring.retention_targets(), keep_days=90, batch_size=100, metrics=Metrics()
    )

    assert pruned["webhook_deliveries"] == 1
    assert pruned["events"] == 1
    left = {r["id"] for r in await db.fetch("SELECT id FROM events")}
    assert left == {ids["old_pending"], ids["old_unfanned"], ids["new_done"]}
    pending = await db.fetchval(
        "SELECT count(*) FROM webhook_deliveries WHERE state = 'pending' AND event_id = $1",
        ids["old_pending"],
    )
    assert pending == 1
