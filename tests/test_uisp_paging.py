"""Listing every service, page by page, the way UISP pages (``limit``/``offset``, a bare
array, no total): the UISP client against the fake UISP over real HTTP."""

from __future__ import annotations

import httpx
import pytest
import trio

from daemon.fakes import uisp_server
from daemon.uisp.client import SERVICE_ACTIVE, SERVICE_SUSPENDED, UispClient

KEY = "paging-key"


@pytest.mark.parametrize(("count", "page_size", "requests"), [(4, 2, 3), (5, 2, 3), (0, 3, 1)])
async def test_every_service_once_in_id_order_whatever_the_page_boundaries(
    nursery: trio.Nursery, count: int, page_size: int, requests: int
) -> None:
    fake = uisp_server.FakeUisp(KEY)
    client = fake.add_client("Ana", "García")
    ids = [fake.add_service(client["id"])["id"] for _ in range(count)]
    if ids:
        fake.services[ids[0]]["status"] = SERVICE_SUSPENDED
    ended = fake.add_service(client["id"], status=2)["id"]  # filtered out by statuses[]
    url: str = await nursery.start(uisp_server.serve, fake)
    with trio.fail_after(10):
        async with UispClient(url, KEY) as uisp:
            pages = [
                page
                async for page in uisp.iter_services(
                    [SERVICE_ACTIVE, SERVICE_SUSPENDED], page_size=page_size
                )
            ]
    assert [s["id"] for page in pages for s in page] == ids
    assert ended not in {s["id"] for page in pages for s in page}
    assert all(len(p) <= page_size for p in pages)
    # A full last page costs one more (empty) request: UISP sends no total.
    assert fake.requests.count(("GET", "/clients/services")) == requests


async def test_the_fake_answers_everything_without_a_limit_and_refuses_a_negative_offset(
    nursery: trio.Nursery,
) -> None:
    fake = uisp_server.FakeUisp(KEY)
    client = fake.add_client("Ana", "García")
    for _ in range(3):
        fake.add_service(client["id"])
    url: str = await nursery.start(uisp_server.serve, fake)
    headers = {"X-Auth-App-Key": KEY}
    async with httpx.AsyncClient(base_url=url, headers=headers) as http:
        assert len((await http.get("/clients/services")).json()) == 3
        page = await http.get("/clients/services", params={"limit": 2, "offset": 2})
        assert [s["id"] for s in page.json()] == [3]
        assert (await http.get("/clients/services", params={"offset": -1})).status_code == 400


@pytest.mark.parametrize("position", [0, 4, 6, None])
async def test_our_recorded_payment_is_found_on_whatever_page_it_is(
    nursery: trio.Nursery, position: int | None
) -> None:
    """A client with years of payments: ours may be past the first page (or absent)."""
    fake = uisp_server.FakeUisp(KEY)
    client = fake.add_client("Ana", "García")
    other = fake.add_client("Luis", "Pérez")
    await fake.record_payment(other["id"], 5.0, provider_payment_id="pay_ours")  # not hers
    for i in range(7):
        ref = "pay_ours" if i == position else f"office-{i}"
        await fake.record_payment(client["id"], 10.0, provider_payment_id=ref)
    url: str = await nursery.start(uisp_server.serve, fake)
    with trio.fail_after(10):
        async with UispClient(url, KEY) as uisp:
            found = await uisp.find_payment(client["id"], "pay_ours", page_size=3)
    if position is None:
        assert found is None
    else:
        assert found is not None
        assert (found["clientId"], found["providerPaymentId"]) == (client["id"], "pay_ours")
