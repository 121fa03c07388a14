"""A card payment closes the loop to the network: recorded in UISP, whose unsuspend
webhook reconnects the customer's ONU, with one SMS — as for a payment at the office;
or (``uisp_mode = "reconnect"``) fed to the reconnection policy directly."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import httpx
import trio

from daemon.app import Running, run_daemon
from daemon.fakes import uisp_server
from daemon.network.olt.types import OnuRef
from daemon.platform.config import PaymentsConfig
from tests.flow_harness import ADMIN_TOKEN, WEBHOOK_TOKEN, make_config, register, world
from tests.payments_harness import wait_for

ANA_ONU = OnuRef(0, 1, 3, 7)
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def test_a_card_payment_on_the_mock_is_recorded_in_uisp_and_reconnects_with_one_sms(
    db_url: str, tmp_path: Path, aio_loop: None
) -> None:
    async with world(db_url, tmp_path) as w:
        hw = w.devices["olt-hw"]
        assert not hw.is_active(ANA_ONU)
        cfg = make_config(w.db_url, w.tmp, w.fake_url, w.sink_url).replace(
            payments=PaymentsConfig(
                provider="mock", uisp_record_payments=True, uisp_payment_method_id="card-m1"
            )
        )
        await register(w.db_url, cfg, list(w.devices.values()))
        async with trio.open_nursery() as nursery:
            with trio.fail_after(30):
                running: Running = await nursery.start(
                    partial(run_daemon, cfg, env={}, handle_signals=False)
                )
            w.fake.webhook_url = f"{running.base_url}/webhooks/uisp/{WEBHOOK_TOKEN}"
            async with httpx.AsyncClient(base_url=running.base_url, timeout=30) as http:
                r = await http.post(
                    "/api/v1/payments",
                    json={"amount": 3000, "currency": "EUR", "method": "hosted_checkout",
                          "uisp_client_id": 1, "customer": "ana"},
                    headers={**ADMIN, "Prefer": "wait=10", "Idempotency-Key": "ana-dec"},
                )  # fmt: skip
                payment = r.json()
                assert r.status_code == 201 and payment["status"] == "pending", r.text
                paid = await http.post(f"/mock/pay/{payment['provider_ref']}/pay")
                assert paid.status_code == 200
                await w.sink.wait_messages(1)

                async def recorded() -> bool:
                    got = await http.get(f"/api/v1/payments/{payment['id']}", headers=ADMIN)
                    return got.json()["uisp_payment_id"] is not None

                await wait_for(recorded, 30)
                await trio.sleep(1.0)  # anything extra the daemon might (wrongly) do
            running.shutdown.set()
        assert hw.is_active(ANA_ONU)
        assert len(w.sink.messages) == 1
        [uisp_payment] = [
            p for p in w.fake.payments.values() if p["providerPaymentId"] == payment["id"]
        ]
        assert uisp_payment["clientId"] == 1 and uisp_payment["amount"] == 30.0
        assert uisp_payment["methodId"] == "card-m1"
        assert [s["status"] for s in w.fake.services.values() if s["clientId"] == 1] == [
            uisp_server.SERVICE_ACTIVE
        ]


async def test_a_card_payment_in_reconnect_mode_reconnects_with_one_sms_and_uisp_is_not_told(
    db_url: str, tmp_path: Path, aio_loop: None
) -> None:
    async with world(db_url, tmp_path) as w:
        hw = w.devices["olt-hw"]
        assert not hw.is_active(ANA_ONU)
        payments_before = dict(w.fake.payments)
        cfg = make_config(w.db_url, w.tmp, w.fake_url, w.sink_url).replace(
            payments=PaymentsConfig(provider="mock", uisp_mode="reconnect")
        )
        await register(w.db_url, cfg, list(w.devices.values()))
        async with trio.open_nursery() as nursery:
            with trio.fail_after(30):
                running: Running = await nursery.start(
                    partial(run_daemon, cfg, env={}, handle_signals=False)
                )
            w.fake.webhook_url = f"{running.base_url}/webhooks/uisp/{WEBHOOK_TOKEN}"
            async with httpx.AsyncClient(base_url=running.base_url, timeout=30) as http:
                r = await http.post(
                    "/api/v1/payments",
                    json={"amount": 3000, "currency": "EUR", "method": "hosted_checkout",
                          "uisp_client_id": 1, "customer": "ana"},
                    headers={**ADMIN, "Prefer": "wait=10", "Idempotency-Key": "ana-rec"},
                )  # fmt: skip
                payment = r.json()
                assert r.status_code == 201 and payment["status"] == "pending", r.text
                paid = await http.post(f"/mock/pay/{payment['provider_ref']}/pay")
                assert paid.status_code == 200
                await w.sink.wait_messages(1)

                async def reconnected() -> list[dict[str, object]] | None:
                    rows = await w.db.fetch(
                        "SELECT action, dedupe_key, service_id, state FROM reconnect_tasks"
                        " WHERE state = 'succeeded'"
                    )
                    return [dict(r) for r in rows] or None

                [task] = await wait_for(reconnected, 30)
                history = await http.get(f"/api/v1/payments/{payment['id']}/events", headers=ADMIN)
                await trio.sleep(1.0)  # anything extra the daemon might (wrongly) do
            running.shutdown.set()
        assert hw.is_active(ANA_ONU)
        assert len(w.sink.messages) == 1
        service_id = task["service_id"]
        assert task["action"] == "activate" and task["dedupe_key"] == (
            f"activate:service:{service_id}:payment:{payment['id']}"
        )
        assert await w.db.fetchval("SELECT count(*) FROM reconnect_tasks") == 1
        # UISP recorded no payment and still has the service suspended: it was not told.
        assert w.fake.payments == payments_before
        assert [s["status"] for s in w.fake.services.values() if s["clientId"] == 1] == [
            uisp_server.SERVICE_SUSPENDED
        ]
        kinds = [e["kind"] for e in history.json()["events"]]
        assert "uisp_reconnect_queued" in kinds and "uisp_recorded" not in kinds
