"""The UISP CRM client against the fake UISP over real HTTP, and the entity helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from daemon.fakes import uisp_server
from daemon.platform.config import UispConfig
from daemon.uisp.client import (
    SERVICE_ACTIVE,
    SERVICE_SUSPENDED,
    UispAuthError,
    UispClient,
    UispError,
    UispNotFound,
    UispTransientError,
    client_name,
    client_phone,
    service_onu,
)

KEY = "app-key-123"


@pytest.fixture
async def fake(nursery: trio.Nursery) -> AsyncIterator[tuple[uisp_server.FakeUisp, str]]:
    fake = uisp_server.FakeUisp(KEY)
    uisp_server.demo_state(fake)
    url: str = await nursery.start(uisp_server.serve, fake)
    yield fake, url


def make_client(url: str, key: str = KEY) -> UispClient:
    return UispClient.from_config(UispConfig(base_url=url, app_key=key, timeout_seconds=5.0))


async def test_reads_clients_services_and_payments(
    fake: tuple[uisp_server.FakeUisp, str],
) -> None:
    state, url = fake
    with trio.fail_after(10):
        async with make_client(url) as uisp:
            client = await uisp.get_client(1)
            services = await uisp.get_client_services(1)
            suspended = await uisp.get_client_services(1, statuses=[SERVICE_SUSPENDED])
            active = await uisp.get_client_services(1, statuses=[SERVICE_ACTIVE])
            service = await uisp.get_service(3)
            await state.record_payment(2, 10.0)
            payment = await uisp.get_payment(1)
            with pytest.raises(UispNotFound):
                await uisp.get_client(99)
    assert client["accountBalance"] == -30.0 and client["hasOverdueInvoice"] is True
    assert [s["id"] for s in services] == [1] and [s["id"] for s in suspended] == [1]
    assert active == []
    assert service_onu(service, "oltName", "onuPort") == ("olt-zte-1", "1/2/1:5")
    assert payment["clientId"] == 2 and payment["creditAmount"] == 10.0
    assert ("GET", "/clients/services") in state.requests


@pytest.mark.parametrize(("key", "error"), [("wrong", UispAuthError), ("", UispAuthError)])
async def test_the_app_key_is_required(
    fake: tuple[uisp_server.FakeUisp, str], key: str, error: type[Exception]
) -> None:
    _, url = fake
    with trio.fail_after(10):
        async with make_client(url, key) as uisp:
            with pytest.raises(error) as info:
                await uisp.get_client(1)
    assert isinstance(info.value, UispError) and info.value.status == 401


async def test_a_read_only_key_cannot_cancel_a_suspension(
    fake: tuple[uisp_server.FakeUisp, str],
) -> None:
    state, url = fake
    state.read_only_keys.add("read-only")
    with trio.fail_after(10):
        async with make_client(url, "read-only") as uisp:
            assert (await uisp.get_service(1))["status"] == SERVICE_SUSPENDED
            with pytest.raises(UispAuthError, match="403"):
                await uisp.cancel_suspend(1)


async def test_webhook_events_are_confirmed_or_none(
    fake: tuple[uisp_server.FakeUisp, str],
) -> None:
    state, url = fake
    body = state.build_webhook("payment.add", "payment", 5, "insert", {"id": 5})
    with trio.fail_after(10):
        async with make_client(url) as uisp:
            assert await uisp.get_webhook_event(body["uuid"]) == body
            assert await uisp.get_webhook_event("2c6984d7-03ae-4e48-a212-7b99378837a2") is None


async def test_cancel_suspend_200_then_422_and_404(
    fake: tuple[uisp_server.FakeUisp, str],
) -> None:
    state, url = fake
    with trio.fail_after(10):
        async with make_client(url) as uisp:
            assert await uisp.cancel_suspend(1) is True
            assert (await uisp.get_service(1))["status"] == SERVICE_ACTIVE
            assert await uisp.cancel_suspend(1) is False  # 422: not suspended any more
            assert await uisp.cancel_suspend(999) is False  # 404: unknown service
    assert state.clients[1]["hasSuspendedService"] is False
    assert state.requests[-1] == ("PATCH", "/clients/services/999/cancel-suspend")


@pytest.mark.parametrize("status", [500, 502, 503, 429])
async def test_server_errors_are_transient(
    fake: tuple[uisp_server.FakeUisp, str], status: int
) -> None:
    state, url = fake
    state.fail_next(2, status=status)
    with trio.fail_after(10):
        async with make_client(url) as uisp:
            with pytest.raises(UispTransientError) as info:
                await uisp.get_client(1)
            assert info.value.status == status
            with pytest.raises(UispTransientError):
                await uisp.cancel_suspend(1)
            assert (await uisp.get_client(1))["id"] == 1


async def test_connection_refused_and_timeouts_are_transient() -> None:
    with trio.fail_after(10):
        async with UispClient("http://127.0.0.1:9/crm/api/v1.0", KEY) as uisp:
            with pytest.raises(UispTransientError):
                await uisp.get_client(1)
        # A server that accepts but never answers: the client's own timeout fires.
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        async with UispClient(f"http://127.0.0.1:{port}", KEY, timeout=0.2) as uisp:
            with pytest.raises(UispTransientError, match="timed out"):
                await uisp.get_client(1)
        for listener in listeners:
            await listener.aclose()


async def test_a_non_json_answer_is_an_error() -> None:
    # base_url pointing at UISP's web UI instead of /crm/api/v1.0 answers 200 with HTML.
    html = httpx.MockTransport(lambda req: httpx.Response(200, html="<html>login</html>"))
    with trio.fail_after(10):
        async with UispClient("http://uisp.test", KEY, transport=html) as uisp:
            with pytest.raises(UispError, match="not JSON"):
                await uisp.get_client(1)


def test_service_onu_reads_custom_attributes() -> None:
    service = {
        "attributes": [
            {"customAttributeId": 4, "name": "OLT", "key": "olt", "value": " olt-a "},
            {"customAttributeId": 5, "name": "ONU port", "key": "onuPort", "value": "0/1/3:12"},
        ]
    }
    assert service_onu(service, "olt", "onuPort") == ("olt-a", "0/1/3:12")
    assert service_onu(service, "OLT", "ONU port") == ("olt-a", "0/1/3:12")  # by name
    assert service_onu(service, "4", "5") == ("olt-a", "0/1/3:12")  # by custom attribute id
    assert service_onu(service, "olt", "missing") is None
    assert service_onu({"attributes": None}, "olt", "onuPort") is None
    empty = {"attributes": [{"key": "olt", "value": ""}, {"key": "onuPort", "value": "x"}]}
    assert service_onu(empty, "olt", "onuPort") is None


def test_client_phone_prefers_billing_then_contact() -> None:
    contacts = [
        {"phone": "111", "isBilling": False, "isContact": False},
        {"phone": " 222 ", "isBilling": False, "isContact": True},
        {"phone": "", "isBilling": True, "isContact": True},
        {"phone": "333", "isBilling": True, "isContact": False},
    ]
    assert client_phone({"contacts": contacts}) == "333"
    assert client_phone({"contacts": contacts[:3]}) == "222"
    assert client_phone({"contacts": contacts[:1]}) == "111"
    assert client_phone({"contacts": contacts[2:3]}) is None
    assert client_phone({}) is None


def test_client_name() -> None:
    assert client_name({"firstName": "Ana", "lastName": "García"}) == "Ana García"
    assert client_name({"firstName": "Ana", "lastName": None}) == "Ana"
    assert client_name({"clientType": 2, "companyName": "Acme SL", "firstName": "Jo"}) == "Acme SL"
    assert client_name({"clientType": 1, "companyName": "Acme SL"}) == "Acme SL"
    assert client_name({}) == ""
