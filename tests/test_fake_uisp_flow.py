"""The fake UISP behaves like UISP when a customer pays: it cancels the overdue suspension
itself and tells the webhook receiver, in UISP's exact body shape."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import hypercorn
import hypercorn.trio
import pytest
import trio
from quart import request
from quart_trio import QuartTrio

from daemon.fakes import uisp_server
from daemon.uisp.client import SERVICE_ACTIVE, SERVICE_SUSPENDED, UispClient

KEY = "flow-key"


@dataclass
class Receiver:
    """A webhook endpoint like the daemon's: records each POSTed JSON body."""

    status: int = 200
    bodies: list[dict[str, Any]] = field(default_factory=list)
    arrived: trio.Event = field(default_factory=trio.Event)

    def app(self) -> Any:
        app = QuartTrio(__name__)

        @app.post("/webhooks/uisp/secret-token")
        async def receive() -> Any:
            assert request.headers["Content-Type"] == "application/json"
            self.bodies.append(await request.get_json())
            self.arrived.set()
            self.arrived = trio.Event()
            return "", self.status

        return app


@pytest.fixture
async def world(
    nursery: trio.Nursery,
) -> AsyncIterator[tuple[uisp_server.FakeUisp, Receiver, str]]:
    receiver = Receiver()
    config = hypercorn.Config()
    config.bind = ["127.0.0.1:0"]
    binds = await nursery.start(hypercorn.trio.serve, receiver.app(), config)
    fake = uisp_server.FakeUisp(KEY, webhook_url=f"{binds[0]}/webhooks/uisp/secret-token")
    uisp_server.demo_state(fake)
    url: str = await nursery.start(uisp_server.serve, fake)
    yield fake, receiver, url


def assert_uisp_shape(body: dict[str, Any]) -> None:
    assert set(body) == {"uuid", "changeType", "entity", "entityId", "eventName", "extraData"}
    assert set(body["extraData"]) == {"entity", "entityBeforeEdit"}
    assert uuid.UUID(body["uuid"]).version == 4
    assert isinstance(body["entityId"], int)


async def test_paying_the_overdue_invoice_cancels_the_suspension_and_sends_webhooks(
    world: tuple[uisp_server.FakeUisp, Receiver, str],
) -> None:
    fake, receiver, url = world
    assert fake.services[1]["status"] == SERVICE_SUSPENDED
    with trio.fail_after(10):
        payment = await fake.record_payment(1, 30.0, "EUR")

        names = [b["eventName"] for b in receiver.bodies]
        assert names == ["payment.add", "service.edit", "service.suspend_cancel"]
        for body in receiver.bodies:
            assert_uisp_shape(body)
        pay, _, cancel = receiver.bodies
        assert pay["changeType"] == "insert" and pay["entity"] == "payment"
        assert pay["entityId"] == payment["id"]
        assert pay["extraData"] == {"entity": payment, "entityBeforeEdit": None}
        assert payment["paymentCovers"] == [{"invoiceId": 1, "amount": 30.0}]
        assert cancel["changeType"] == "unsuspend" and cancel["entity"] == "service"
        assert cancel["entityId"] == 1
        assert cancel["extraData"]["entity"]["status"] == SERVICE_ACTIVE
        assert cancel["extraData"]["entityBeforeEdit"]["status"] == SERVICE_SUSPENDED
        assert cancel["extraData"]["entity"]["attributes"][0]["value"] == "olt-huawei-1"

        # What a careful receiver does next: confirm the event and the client's state.
        async with UispClient(url, KEY) as uisp:
            assert await uisp.get_webhook_event(cancel["uuid"]) == cancel
            client = await uisp.get_client(1)
    assert client["accountBalance"] == 0.0 and client["accountOutstanding"] == 0.0
    assert client["hasOverdueInvoice"] is False and client["hasSuspendedService"] is False
    assert fake.invoices[1]["status"] == 3
    assert [d["status"] for d in fake.deliveries] == [200, 200, 200]


async def test_a_partial_payment_leaves_the_service_suspended(
    world: tuple[uisp_server.FakeUisp, Receiver, str],
) -> None:
    fake, receiver, _ = world
    with trio.fail_after(10):
        await fake.record_payment(3, 10.0)
    assert [b["eventName"] for b in receiver.bodies] == ["payment.add"]
    assert fake.services[3]["status"] == SERVICE_SUSPENDED
    assert fake.invoices[2]["status"] == 2  # partially paid
    assert fake.clients[3]["accountBalance"] == -15.0


async def test_an_overpayment_becomes_credit(
    world: tuple[uisp_server.FakeUisp, Receiver, str],
) -> None:
    fake, receiver, _ = world
    with trio.fail_after(10):
        payment = await fake.record_payment(3, 40.0)
    assert payment["creditAmount"] == 15.0
    assert fake.clients[3]["accountBalance"] == 15.0
    assert receiver.bodies[-1]["eventName"] == "service.suspend_cancel"


async def test_a_manual_suspension_survives_a_payment(
    world: tuple[uisp_server.FakeUisp, Receiver, str],
) -> None:
    fake, receiver, url = world
    with trio.fail_after(10):
        async with httpx.AsyncClient(headers={"X-Auth-App-Key": KEY}) as http:
            resp = await http.patch(
                f"{url}/clients/services/2/suspend", json={"suspensionReasonId": 7}
            )
        assert resp.status_code == 200 and resp.json()["suspensionReasonId"] == 7
        # The API call's webhooks arrive in the background, as from UISP's queue.
        deliveries = await fake.wait_deliveries(2)
        assert [d["body"]["changeType"] for d in deliveries] == ["edit", "suspend"]
        await fake.record_payment(2, 50.0)
    assert fake.services[2]["status"] == SERVICE_SUSPENDED
    assert [b["eventName"] for b in receiver.bodies][-1] == "payment.add"


async def test_cancel_suspend_through_the_api_sends_suspend_cancel(
    world: tuple[uisp_server.FakeUisp, Receiver, str],
) -> None:
    fake, receiver, url = world
    with trio.fail_after(10):
        async with UispClient(url, KEY) as uisp:
            assert await uisp.cancel_suspend(3) is True
        await fake.wait_deliveries(2)
    assert [b["eventName"] for b in receiver.bodies] == ["service.edit", "service.suspend_cancel"]
    assert fake.requests == [("PATCH", "/clients/services/3/cancel-suspend")]


async def test_a_failing_receiver_is_recorded_not_retried(
    world: tuple[uisp_server.FakeUisp, Receiver, str],
) -> None:
    fake, receiver, _ = world
    receiver.status = 500
    with trio.fail_after(10):
        body = await fake.send_webhook("client.edit", "client", 2, "edit", fake.clients[2])
    assert receiver.bodies == [body]
    assert fake.deliveries == [{"body": body, "status": 500}]
    fake.webhook_url = "http://127.0.0.1:9/nothing-listens"
    with trio.fail_after(10):
        await fake.send_webhook("test", "webhook", None, "test", None)
    assert "error" in fake.deliveries[-1]


async def test_the_demo_control_route_records_a_payment(
    world: tuple[uisp_server.FakeUisp, Receiver, str],
) -> None:
    _, receiver, url = world
    root = url.removesuffix(uisp_server.API_PREFIX)
    with trio.fail_after(10):
        async with httpx.AsyncClient() as http:
            resp = await http.post(f"{root}/_fake/clients/1/payments", json={"amount": 30})
            state = (await http.get(f"{root}/_fake/state")).json()
    assert resp.status_code == 200 and resp.json()["amount"] == 30.0
    assert receiver.bodies[-1]["eventName"] == "service.suspend_cancel"
    assert state["services"][0]["status"] == SERVICE_ACTIVE
