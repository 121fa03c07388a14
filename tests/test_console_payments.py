"""The console's payment pages over plain HTTP against a whole paymentd with the mock
provider: the list's filters and cursor pages, a payment's history and refunds, and
refund / capture / cancel from the page through the same service the API uses — a form
sent twice refunds once, refusals are shown on the page with their status, amounts are
read and shown with the currency's exponent."""

from __future__ import annotations

import datetime as dt
import html
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from daemon.console.payments import BadAmount, parse_amount
from daemon.payments import store
from daemon.payments.service import Caller, CreateParams, PaymentService
from tests.console_fixtures import add_operator, csrf_token, sign_in
from tests.payments_harness import Pay, paymentd, wait_for

_KEY = re.compile(r'name="idempotency_key" value="([^"]+)"')


@pytest.fixture
async def pay(db_url: str, tmp_path: Path, aio_loop: None) -> AsyncIterator[Pay]:
    async with paymentd(db_url, tmp_path) as running:
        await add_operator(running.db)
        await sign_in(running.http)
        yield running


async def succeeded(pay: Pay, **body: Any) -> dict[str, Any]:
    r = await pay.create(metadata={"mock": "succeed"}, headers={"Prefer": "wait=10"}, **body)
    assert r.status_code == 201, r.text
    payment: dict[str, Any] = await pay.wait_status(r.json()["id"], "succeeded")
    return payment


def form_of(page: str, test_id: str) -> dict[str, str]:
    """The hidden fields (CSRF token, idempotency key) of one form on the page."""
    start = page.index(f'data-test-id="{test_id}"')
    chunk = page[start : page.index("</form>", start)]
    key = _KEY.search(chunk)
    assert key is not None, f"{test_id} has no idempotency_key"
    return {"csrf_token": csrf_token(chunk), "idempotency_key": key.group(1)}


def text(page: str, test_id: str) -> str:
    """The text of the element with that data-test-id (tags stripped)."""
    match = re.search(rf'data-test-id="{test_id}"[^>]*>(.*?)</(dd|span|p|table)>', page, re.S)
    assert match is not None, test_id
    return html.unescape(re.sub(r"<[^>]+>", "", match.group(1))).strip()


def test_amounts_are_read_with_the_currency_exponent_and_never_rounded() -> None:
    assert parse_amount("12.5", "EUR") == 1250
    assert parse_amount("12,50", "EUR") == 1250
    assert parse_amount("500", "JPY") == 500
    assert parse_amount("1.234", "BHD") == 1234
    assert parse_amount("  ", "EUR") is None
    for bad, code in (("1.234", "EUR"), ("1.5", "JPY"), ("0", "EUR"), ("-1", "EUR"), ("x", "EUR")):
        with pytest.raises(BadAmount):
            parse_amount(bad, code)
    with pytest.raises(BadAmount, match="no decimals"):
        parse_amount("1.5", "JPY")


async def test_the_list_filters_by_status_customer_and_day_and_pages_by_cursor(pay: Pay) -> None:
    # Stored through the service, as the API stores them (the processor may move them on).
    cfg = pay.running.deps.config.payments
    service = PaymentService(pay.db, cfg, pay.running.deps.events)
    caller = Caller("test", "test")
    ids = []
    for n in range(55):
        outcome = await service.create(
            caller, CreateParams(amount=100 + n, currency="JPY", customer=f"c{n % 2}"), None
        )
        ids.append(outcome.body["id"])
    await pay.db.execute(
        "UPDATE payments SET created_at = now() - interval '3 days' WHERE id = $1", ids[0]
    )
    with trio.fail_after(20):
        first = await pay.http.get("/console/payments")
        assert first.status_code == 200
        shown = [i for i in ids if f'data-payment="{i}"' in first.text]
        assert len(shown) == 50 and ids[-1] in shown and ids[0] not in shown  # newest first
        assert "¥" not in first.text and "154 JPY" in first.text  # exponent 0: no decimals
        cursor = re.search(r'href="[^"]*cursor=([0-9]+)[^"]*" data-test-id="older"', first.text)
        assert cursor is not None
        older = await pay.http.get("/console/payments", params={"cursor": cursor.group(1)})
        rest = [i for i in ids if f'data-payment="{i}"' in older.text]
        assert sorted(rest + shown) == sorted(ids)
        by_customer = await pay.http.get("/console/payments", params={"customer": "c1"})
        assert by_customer.text.count("data-payment=") == 27
        today = dt.datetime.now(dt.UTC).date()
        old = await pay.http.get(
            "/console/payments", params={"created_to": (today - dt.timedelta(days=2)).isoformat()}
        )
        assert [i for i in ids if f'data-payment="{i}"' in old.text] == [ids[0]]
        recent = await pay.http.get("/console/payments", params={"created_from": today.isoformat()})
        assert ids[0] not in recent.text and ids[-1] in recent.text
        assert "created_from=" in recent.text.split('data-test-id="older"')[0][-200:]
        none = await pay.http.get("/console/payments", params={"status": "expired"})
        assert 'data-test-id="no-payments"' in none.text
        for bad in ({"status": "lost"}, {"created_from": "yesterday"}, {"cursor": "x"}):
            r = await pay.http.get("/console/payments", params=bad)
            assert r.status_code == 400, bad


async def test_a_partial_refund_from_the_page_once_however_often_the_form_is_sent(
    pay: Pay, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    payment = await succeeded(pay, amount=1250, currency="EUR", description="Fibra 300")
    path = f"/console/payments/{payment['id']}"
    with trio.fail_after(30):
        page = (await pay.http.get(path)).text
        assert text(page, "amount") == "12.50 EUR" and text(page, "refundable") == "12.50 EUR"
        assert 'data-test-id="no-refunds"' in page and "Fibra 300" in page
        form = {**form_of(page, "refund-form"), "amount": "2.50", "reason": "outage"}
        r = await pay.http.post(f"{path}/refund", data=form)
        assert r.status_code == 303 and r.headers["location"].endswith("notice=refunded")
        again = await pay.http.post(f"{path}/refund", data=form)  # a resubmitted form
        assert again.status_code == 303
        [refund] = await store.refunds_of(pay.db, payment["id"])
        assert refund.amount == 250 and refund.reason == "outage"
        assert refund.created_by == "console:alice"
        page = (await pay.http.get(r.headers["location"])).text
        assert text(page, "refundable") == "10.00 EUR" and text(page, "refunded") == "2.50 EUR"
        assert f'data-refund="{refund.id}"' in page and "Refund requested" in page
        # More than is left: the service's refusal, on the page, with its status.
        too_much = {**form_of(page, "refund-form"), "amount": "10.01"}
        r = await pay.http.post(f"{path}/refund", data=too_much)
        assert r.status_code == 422 and "exceeds the 1000 left to refund" in html.unescape(r.text)
        assert 'data-test-id="notice"' in r.text and 'value="10.01"' in r.text
        # More decimals than EUR has: refused before the service is asked.
        r = await pay.http.post(f"{path}/refund", data={**too_much, "amount": "1.001"})
        assert r.status_code == 400 and "EUR takes 2 decimal places" in html.unescape(r.text)
        # The same key for another amount is the idempotency store's 422, not a refund.
        r = await pay.http.post(f"{path}/refund", data={**form, "amount": "1.00"})
        assert r.status_code == 422 and "Idempotency-Key" in html.unescape(r.text)
        assert len(await store.refunds_of(pay.db, payment["id"])) == 1

        async def refund_done() -> bool:
            page = (await pay.http.get(path)).text
            return (
                f'data-refund="{refund.id}"' in page
                and "state-succeeded"
                in page.split(f'data-refund="{refund.id}"')[1].split("</tr>")[0]
            )

        await wait_for(refund_done)
        history = (await pay.http.get(path)).text
        assert "refund_created" in history and "console:alice" in history
    assert any("refund requested by console:alice" in m for m in caplog.messages)


async def test_refusals_without_a_token_or_key_and_invalid_transitions(pay: Pay) -> None:
    payment = await succeeded(pay, amount=500, currency="JPY")
    path = f"/console/payments/{payment['id']}"
    with trio.fail_after(30):
        page = (await pay.http.get(path)).text
        assert text(page, "refundable") == "500 JPY"
        assert 'data-test-id="cancel-form"' not in page  # final: no cancel offered
        fields = form_of(page, "refund-form")
        no_csrf = await pay.http.post(f"{path}/refund", data={"idempotency_key": "k1"})
        assert no_csrf.status_code == 403
        assert no_csrf.headers["content-type"] == "application/problem+json"
        no_key = await pay.http.post(f"{path}/refund", data={"csrf_token": fields["csrf_token"]})
        assert no_key.status_code == 400
        # A cancel of a succeeded payment (a stale page): the service's 409, shown.
        cancel = await pay.http.post(
            f"{path}/cancel", data={**fields, "idempotency_key": "stale-cancel"}
        )
        assert cancel.status_code == 409 and "only a payment that is not final" in cancel.text
        assert 'data-test-id="notice"' in cancel.text
        missing = await pay.http.post(
            "/console/payments/pay_nope/refund", data={**fields, "idempotency_key": "x"}
        )
        assert missing.status_code == 404
        assert (await pay.http.get("/console/payments/pay_nope")).status_code == 404
        assert await store.refunds_of(pay.db, payment["id"]) == []


async def test_a_manual_payment_is_captured_in_part_and_another_cancelled(pay: Pay) -> None:
    r = await pay.create(
        amount=1000,
        capture_method="manual",
        metadata={"mock": "succeed"},
        headers={"Prefer": "wait=10"},
    )
    held = await pay.wait_status(r.json()["id"], "requires_capture")
    path = f"/console/payments/{held['id']}"
    with trio.fail_after(30):
        page = (await pay.http.get(path)).text
        assert 'data-test-id="capture-form"' in page and 'data-test-id="refund-form"' not in page
        r = await pay.http.post(
            f"{path}/capture", data={**form_of(page, "capture-form"), "amount": "6"}
        )
        assert r.status_code == 303 and r.headers["location"].endswith("notice=captured")
        done = await pay.wait_status(held["id"], "succeeded")
        assert done["amount_captured"] == 600
        page = (await pay.http.get(path)).text
        assert text(page, "captured") == "6.00 EUR" and text(page, "refundable") == "6.00 EUR"

        fresh = await pay.create(amount=300)  # created: the provider has not been asked yet
        other = fresh.json()["id"]
        page = (await pay.http.get(f"/console/payments/{other}")).text
        r = await pay.http.post(
            f"/console/payments/{other}/cancel", data=form_of(page, "cancel-form")
        )
        assert r.status_code == 303
        assert (await pay.wait_status(other, "canceled"))["status"] == "canceled"
        page = (await pay.http.get(f"/console/payments/{other}")).text
        assert "console:alice" in page and 'data-test-id="no-actions"' in page
