"""The SQL entry point (migration 015): ``paymentd.create_payment`` in the caller's own
transaction, ``CALL paymentd.create_payment_sync`` waiting for the processor, and a role
holding only the documented grants (docs/sql-api.md). Real PostgreSQL, the real daemon."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import trio

from daemon.payments import currency, service, sql_api
from daemon.payments.errors import PaymentsError
from daemon.payments.service import Caller, CreateParams, PaymentService
from daemon.platform.config import PaymentsConfig
from daemon.platform.db import Database
from daemon.platform.events import EventBus
from tests.payments_harness import ADMIN, Pay, paymentd

SYNC = (
    "CALL paymentd.create_payment_sync(amount => $1, currency => $2, timeout_seconds => $3,"
    " description => $4)"
)


async def counts(db: Database) -> dict[str, int]:
    row = await db.fetchrow(
        "SELECT (SELECT count(*) FROM payments) AS payments,"
        " (SELECT count(*) FROM payment_events) AS history,"
        " (SELECT count(*) FROM events) AS outbox,"
        " (SELECT count(*) FROM idempotency_keys) AS keys,"
        " (SELECT count(*) FROM pgmq.q_payments) AS queued"
    )
    assert row is not None
    return dict(row)


@pytest.fixture
async def mockdb(db: Database) -> AsyncIterator[Database]:
    """A database as a daemon with the mock provider left it (no daemon running)."""
    await sql_api.publish_settings(db, PaymentsConfig(provider="mock"))
    yield db


@pytest.fixture
async def pay(db_url: str, tmp_path: Path, aio_loop: None) -> AsyncIterator[Pay]:
    async with paymentd(db_url, tmp_path) as running:
        yield running


async def test_the_currency_table_the_migration_fills_is_currency_py(db: Database) -> None:
    rows = await db.fetch("SELECT code, exponent FROM paymentd.currencies")
    assert {r["code"]: r["exponent"] for r in rows} == currency.EXPONENTS
    assert currency.EXPONENTS["JPY"] == 0 and currency.EXPONENTS["BHD"] == 3


# Each refused the same way by service.validate and by paymentd.create_payment.
BAD: list[dict[str, Any]] = [
    {"amount": 0},
    {"amount": -5},
    {"amount": 10**12 + 1},
    {"currency": "EURO"},
    {"currency": "e1r"},
    {"currency": "xau"},
    {"currency": "ZZZ"},
    {"method": "cash"},
    {"kind": "weekly"},
    {"capture_method": "later"},
    {"kind": "recurring", "method": "hosted_checkout"},
    {"kind": "recurring", "method": "intent", "interval": "week"},
    {
        "kind": "recurring",
        "interval": "month",
        "method": "payment_link",
        "capture_method": "manual",
    },
    {"interval": "month"},
    {"metadata": {f"k{i}": "v" for i in range(51)}},
    {"metadata": {"": "v"}},
    {"metadata": {"k": "x" * 501}},
    {"status_callback_url": "ftp://example.com/x"},
    {"status_callback_url": "http:///nohost"},
    {"status_callback_url": "http://[::1/cb"},
    {"uisp_client_id": -1},
    {"description": "d" * 1001},
    {"customer": ""},
    {"customer": "c" * 201},
]


async def sql_create(db: Any, **params: Any) -> Any:
    names = list(params)
    args = ", ".join(
        f'"{n}" => ${i + 1}' + ("::jsonb" if n == "metadata" else "") for i, n in enumerate(names)
    )
    return await db.fetchval(f"SELECT paymentd.create_payment({args})", *params.values())


@pytest.mark.parametrize(
    "bad", BAD, ids=lambda b: ",".join(f"{k}={str(v)[:12]}" for k, v in b.items())
)
async def test_sql_refuses_what_the_service_refuses_with_the_same_words(
    mockdb: Database, bad: dict[str, Any]
) -> None:
    params = {"amount": 1000, "currency": "EUR", **bad}
    with pytest.raises(PaymentsError) as refused:
        service.validate(CreateParams(**params))
    with pytest.raises(asyncpg.PostgresError) as sql_refused:
        await sql_create(mockdb, **params)
    err = sql_refused.value
    assert err.sqlstate == "22023"
    assert err.message == refused.value.detail
    assert err.detail == refused.value.type_uri
    assert await counts(mockdb) == dict.fromkeys(
        ("payments", "history", "outbox", "keys", "queued"), 0
    )


async def test_good_input_is_accepted_and_normalized_like_the_service(mockdb: Database) -> None:
    params = {
        "amount": 500, "currency": "jpy", "kind": "recurring", "interval": "month",
        "method": "payment_link", "metadata": {"plan": "fibra"}, "customer": "cli-9",
        "status_callback_url": "HTTPS://shop.example/cb", "uisp_client_id": 42,
    }  # fmt: skip
    new = service.validate(CreateParams(**params))
    pid = await sql_create(mockdb, **params)
    row = await mockdb.fetchrow(
        'SELECT amount, currency, method, kind, "interval", capture_method, description,'
        " customer, metadata, status_callback_url, uisp_client_id, created_by, provider"
        " FROM payments WHERE id = $1",
        pid,
    )
    assert row is not None
    assert {k: row[k] for k in vars(new)} == vars(new)
    assert row["created_by"] == "sql:postgres" and row["provider"] == "mock"
    # Like the HTTP API, a recurring payment without a method is a hosted one.
    hosted = await sql_create(mockdb, amount=900, currency="EUR", kind="recurring", interval="week")
    method = await mockdb.fetchval("SELECT method FROM payments WHERE id = $1", hosted)
    assert method == "hosted_checkout"


async def test_sql_writes_what_the_service_writes(mockdb: Database) -> None:
    """Row, history, outbox event and queue message: the same, field for field."""
    params = {"amount": 1234, "currency": "BHD", "customer": "cli-5", "metadata": {"a": "b"},
              "capture_method": "manual", "description": "Fibra"}  # fmt: skip
    cfg = PaymentsConfig(provider="mock")
    service_made = await PaymentService(mockdb, cfg, EventBus()).create(
        Caller(scope="admin", actor="api:admin"), CreateParams(**params), "same-1"
    )
    sql_made = await sql_create(mockdb, **params, request_id="same-1")
    ids = (service_made.resource_id, sql_made)

    async def written(pid: str) -> dict[str, Any]:
        row = await mockdb.fetchrow("SELECT * FROM payments WHERE id = $1", pid)
        history = await mockdb.fetch(
            "SELECT kind, from_status, to_status, detail, refund_id FROM payment_events"
            " WHERE payment_id = $1",
            pid,
        )
        outbox = await mockdb.fetch(
            "SELECT type, subject, data FROM events WHERE subject = $1", f"payment:{pid}"
        )
        queued = await mockdb.fetch(
            "SELECT message FROM pgmq.q_payments WHERE message->>'payment_id' = $1", pid
        )
        key = await mockdb.fetchrow(
            "SELECT operation, status, response_status, resource_id FROM idempotency_keys"
            " WHERE resource_id = $1",
            pid,
        )
        assert row is not None and key is not None
        skip = {"id", "seq", "created_by", "created_at", "updated_at", "expires_at"}
        return {
            "row": {k: v for k, v in dict(row).items() if k not in skip},
            "ttl": row["expires_at"] - row["created_at"],
            "history": [dict(h) for h in history],
            "outbox": [
                (
                    o["type"],
                    o["subject"].replace(pid, "<id>"),
                    {k: v for k, v in dict(o["data"]).items() if k != "id"}
                    | {"id": o["data"]["id"] == pid},
                )
                for o in outbox
            ],
            "queued": [
                {k: "<id>" if v == pid else v for k, v in dict(q["message"]).items()}
                for q in queued
            ],
            "key": (key["operation"], key["status"], key["response_status"]),
        }

    by_service, by_sql = await written(ids[0]), await written(ids[1])
    assert by_sql == by_service
    assert len(by_sql["queued"]) == 1 and len(by_sql["outbox"]) == 1 and len(by_sql["history"]) == 1


async def test_create_payment_in_a_rolled_back_transaction_leaves_nothing(
    mockdb: Database,
) -> None:
    class Abandon(Exception):
        pass

    with pytest.raises(Abandon):
        async with mockdb.transaction() as tx:
            pid = await sql_create(tx, amount=1000, currency="EUR", request_id="order-1")
            assert (await counts_in(tx))["payments"] == 1  # it was there, inside
            assert pid.startswith("pay_")
            raise Abandon
    assert await counts(mockdb) == dict.fromkeys(
        ("payments", "history", "outbox", "keys", "queued"), 0
    )
    # The request id was not spent either: the retry makes the payment.
    async with mockdb.transaction() as tx:
        again = await sql_create(tx, amount=1000, currency="EUR", request_id="order-1")
    assert again != pid
    assert await counts(mockdb) == {
        "payments": 1,
        "history": 1,
        "outbox": 1,
        "keys": 1,
        "queued": 1,
    }


async def counts_in(tx: Any) -> dict[str, int]:
    return {"payments": await tx.fetchval("SELECT count(*) FROM payments")}


async def test_request_id_makes_a_repeat_return_the_first_payment(mockdb: Database) -> None:
    first = await sql_create(mockdb, amount=1000, currency="EUR", request_id="order-7")
    again = await sql_create(mockdb, amount=1000, currency="eur", request_id="order-7")
    assert again == first
    with pytest.raises(asyncpg.PostgresError) as reused:
        await sql_create(mockdb, amount=2000, currency="EUR", request_id="order-7")
    assert reused.value.sqlstate == "PD422"
    assert "order-7" in reused.value.message
    assert (await counts(mockdb))["payments"] == 1
    scope = await mockdb.fetchval("SELECT scope FROM idempotency_keys")
    assert scope == "sql:postgres"


async def test_two_transactions_with_one_request_id_make_one_payment(mockdb: Database) -> None:
    """The second waits on the first's claim, then answers the first's payment."""
    results: list[str] = []
    first_in = trio.Event()
    release = trio.Event()

    async def first() -> None:
        async with mockdb.transaction() as tx:
            results.append(await sql_create(tx, amount=1000, currency="EUR", request_id="r"))
            first_in.set()
            await release.wait()

    async def second() -> None:
        await first_in.wait()
        async with mockdb.transaction() as tx:
            results.append(await sql_create(tx, amount=1000, currency="EUR", request_id="r"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        nursery.start_soon(second)
        await first_in.wait()
        await trio.sleep(0.3)  # let the second reach the key and block on it
        assert len(results) == 1
        release.set()
    assert results[0] == results[1]
    assert (await counts(mockdb))["payments"] == 1


async def test_a_committed_sql_payment_is_processed_like_an_http_one(pay: Pay) -> None:
    async with pay.db.transaction() as tx:
        pid = await sql_create(tx, amount=1500, currency="EUR", customer="cli-3")
    done = await pay.wait_status(pid, "pending")
    assert done["client_secret"].startswith(done["provider_ref"])
    assert done["customer"] == "cli-3" and done["amount"] == 1500
    r = await pay.create(amount=1500, customer="cli-3")
    http_id = r.json()["id"]
    await pay.wait_status(http_id, "pending")

    async def shape(payment_id: str) -> tuple[Any, ...]:
        history = await pay.db.fetch(
            "SELECT kind, from_status, to_status FROM payment_events WHERE payment_id = $1"
            " ORDER BY id",
            payment_id,
        )
        outbox = await pay.db.fetch(
            "SELECT type, data FROM events WHERE subject = $1 ORDER BY seq", f"payment:{payment_id}"
        )
        created = dict(outbox[0]["data"])
        return (
            [tuple(h) for h in history],
            [o["type"] for o in outbox],
            sorted(created),
            {k: v for k, v in created.items() if k != "id"},
        )

    assert await shape(pid) == await shape(http_id)
    # The HTTP API reads it like any other.
    r = await pay.http.get(f"/api/v1/payments/{pid}", headers=ADMIN)
    assert r.status_code == 200 and r.json()["client_secret"] == done["client_secret"]


async def test_create_payment_sync_returns_the_client_secret_within_its_timeout(pay: Pay) -> None:
    row = await pay.db.fetchrow(SYNC, 2500, "EUR", 3.0, "sync")
    assert row is not None
    assert row["status"] == "pending"
    assert row["client_secret"] and row["hosted_url"] is None
    stored = await pay.get(row["payment_id"])
    assert stored["client_secret"] == row["client_secret"]
    hosted = await pay.db.fetchrow(
        "CALL paymentd.create_payment_sync(amount => 900, currency => 'USD',"
        " method => 'hosted_checkout')"
    )
    assert hosted is not None and hosted["hosted_url"].startswith("http")


async def test_create_payment_sync_says_clearly_when_it_timed_out(mockdb: Database) -> None:
    """No daemon runs: nobody processes the payment; it is committed all the same."""
    with pytest.raises(asyncpg.PostgresError) as timed_out:
        await mockdb.fetchrow(SYNC, 1000, "EUR", 0.3, "nobody home")
    err = timed_out.value
    assert err.sqlstate == "PD408"
    pid = await mockdb.fetchval("SELECT id FROM payments")
    assert pid in err.message and "after 0.3 s" in err.message and "status created" in err.message
    assert (await counts(mockdb))["queued"] == 1  # stored and queued: it will be processed
    with pytest.raises(asyncpg.PostgresError) as bad:
        await mockdb.fetchrow(SYNC, 1000, "EUR", 31.0, "x")
    assert bad.value.sqlstate == "22023" and "timeout_seconds" in bad.value.message


def _as_role(url: str, role: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}@{host}"))


async def test_a_role_with_the_documented_grants_can_create_and_read_nothing_else(
    mockdb: Database, db_url: str
) -> None:
    role = f"shop_{uuid.uuid4().hex[:8]}"
    grants = (Path(__file__).parents[1] / "docs" / "sql-api.md").read_text()
    block = grants.split("```sql\n-- grants\n", 1)[1].split("```", 1)[0]
    await mockdb.execute(f"CREATE ROLE {role} LOGIN")
    try:
        for statement in block.replace("shop_app", role).split(";"):
            # The role itself is made above (the doc's CREATE ROLE line would need a password).
            if statement.strip() and "CREATE ROLE" not in statement:
                await mockdb.execute(statement)
        theirs = await sql_create(mockdb, amount=10, currency="EUR")  # made by postgres
        async with Database.open(_as_role(db_url, role), min_size=1, max_size=1) as shop:
            pid = await sql_create(shop, amount=1000, currency="EUR", request_id="o-1")
            assert await mockdb.fetchval("SELECT created_by FROM payments WHERE id = $1", pid) == (
                f"sql:{role}"
            )
            status = await shop.fetchrow("SELECT * FROM paymentd.payment_status($1)", pid)
            assert status is not None and status["status"] == "created"
            assert await shop.fetchrow("SELECT * FROM paymentd.payment_status($1)", theirs) is None
            for table in (
                "payments", "events", "idempotency_keys", "api_keys", "payment_events",
                "paymentd.settings", "pgmq.q_payments",
            ):  # fmt: skip
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await shop.fetch(f"SELECT * FROM {table} LIMIT 1")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await shop.fetch("SELECT paymentd._refuse('invalid-request', 'x', 'y')")
            with trio.fail_after(10):
                with pytest.raises(asyncpg.PostgresError) as late:
                    await shop.fetchrow(SYNC, 1000, "EUR", 0.2, "sync as the role")
            assert late.value.sqlstate == "PD408"
    finally:
        await mockdb.execute(f"DROP OWNED BY {role}")
        await mockdb.execute(f"DROP ROLE {role}")


async def test_the_daemon_publishes_its_settings_for_sql_callers(pay: Pay) -> None:
    row = await pay.db.fetchrow("SELECT provider, pending_ttl_seconds FROM paymentd.settings")
    assert row is not None and row["provider"] == "mock"
    assert row["pending_ttl_seconds"] == pay.cfg.payments.pending_ttl_seconds


async def test_sql_create_refuses_while_payments_are_disabled(db: Database) -> None:
    await sql_api.publish_settings(db, PaymentsConfig(provider="none"))
    with pytest.raises(asyncpg.PostgresError) as off:
        await sql_create(db, amount=1000, currency="EUR")
    assert off.value.sqlstate == "PD503" and "payments.provider" in off.value.message


async def test_a_caller_that_can_create_in_the_daemons_schema_is_named_at_start(
    mockdb: Database, caplog: pytest.LogCaptureFixture
) -> None:
    # Such a role can shadow a function create_payment calls (format(text, bigint) beats
    # pg_catalog's variadic one) and run it with the owner's rights: said at every start.
    role = f"shop_{uuid.uuid4().hex[:8]}"
    await mockdb.execute(f"CREATE ROLE {role} LOGIN")
    try:
        await mockdb.execute(f"GRANT USAGE ON SCHEMA paymentd TO {role}")
        await mockdb.execute(
            "GRANT EXECUTE ON FUNCTION paymentd.create_payment(bigint, text, text, text, jsonb,"
            f" text, text, text, text, text, bigint, text) TO {role}"
        )
        assert role not in await sql_api.unsafe_callers(mockdb)
        await mockdb.execute(f"GRANT CREATE ON SCHEMA public TO {role}")
        assert role in await sql_api.unsafe_callers(mockdb)
        with caplog.at_level("ERROR", logger="daemon.payments.sql_api"):
            await sql_api.publish_settings(mockdb, PaymentsConfig(provider="mock"))
        assert any(role in r.getMessage() for r in caplog.records), caplog.records
        await mockdb.execute(f"REVOKE CREATE ON SCHEMA public FROM {role}")
        assert role not in await sql_api.unsafe_callers(mockdb)
    finally:
        await mockdb.execute(f"DROP OWNED BY {role}")
        await mockdb.execute(f"DROP ROLE {role}")
