"""The payments API over gRPC, called with grpcio's own (sync) client from a thread,
against the whole daemon (gRPC and HTTP ingress, the processor, the mock provider) on
real PostgreSQL and real sockets."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, cast

import grpc
import httpx
import msgspec
import pytest
import trio

from daemon.actors import grpc_ingress
from daemon.app import Running, run_daemon
from daemon.payments import recurring, store
from daemon.payments.stripe_provider import StripeInvoice
from daemon.payments_grpc.gen import payments_pb2 as pb
from daemon.payments_grpc.gen import payments_pb2_grpc as pb_grpc
from daemon.platform import auth
from daemon.platform.config import Config, GrpcConfig
from daemon.platform.db import Database
from daemon.platform.deps import Deps
from daemon.platform.events import EventBus
from daemon.platform.health import Health
from daemon.platform.metrics import Metrics
from tests.payments_harness import ADMIN, ADMIN_TOKEN, Pay, make_config, wait_for

ADMIN_MD = (("authorization", f"Bearer {ADMIN_TOKEN}"),)


class Grpc:
    """grpcio's blocking stub; every call runs in a worker thread (the test stays on trio)."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.PaymentsStub(self.channel)

    async def __call__(
        self,
        method: str,
        request: Any,
        metadata: Any = ADMIN_MD,
        deadline: float = 20,
    ) -> Any:
        call: Callable[..., Any] = getattr(self.stub, method)
        return await trio.to_thread.run_sync(
            partial(call, request, metadata=metadata, timeout=deadline)
        )

    async def refused(self, method: str, request: Any, **kw: Any) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as refused:
            await self(method, request, **kw)
        return refused.value


@asynccontextmanager
async def daemon(db_url: str, tmp: Path) -> AsyncIterator[tuple[Pay, Grpc]]:
    cfg = make_config(db_url, tmp).replace(grpc=GrpcConfig(enabled=True, port=0))
    async with trio.open_nursery() as nursery:
        with trio.fail_after(30):
            running: Running = await nursery.start(
                partial(run_daemon, cfg, env={}, handle_signals=False)
            )
        assert running.grpc_address is not None
        base = running.base_url
        cfg = cfg.replace(payments=msgspec.structs.replace(cfg.payments, public_base_url=base))
        client = Grpc(running.grpc_address)
        try:
            async with (
                Database.open(db_url, min_size=1, max_size=4) as db,
                httpx.AsyncClient(base_url=base, timeout=30) as http,
            ):
                yield Pay(http, db, cfg, running), client
        finally:
            client.channel.close()
            running.shutdown.set()


@pytest.fixture
async def both(db_url: str, tmp_path: Path, aio_loop: None) -> AsyncIterator[tuple[Pay, Grpc]]:
    async with daemon(db_url, tmp_path) as pair:
        yield pair


def problem_type(err: grpc.RpcError) -> str:
    return dict(err.trailing_metadata() or ())["problem-type"]  # type: ignore[attr-defined]


async def test_created_over_http_read_over_grpc_and_the_reverse(both: tuple[Pay, Grpc]) -> None:
    pay, rpc = both
    r = await pay.create(amount=2500, currency="EUR", customer="cli-1", metadata={"o": "1"})
    assert r.status_code == 201, r.text
    http_made = await pay.wait_status(r.json()["id"], "pending")
    got = await rpc("Get", pb.GetPaymentRequest(id=http_made["id"]))
    assert (got.id, got.status, got.amount, got.currency, got.customer) == (
        http_made["id"], "pending", 2500, "EUR", "cli-1",
    )  # fmt: skip
    assert got.client_secret == http_made["client_secret"] and dict(got.metadata) == {"o": "1"}
    assert got.currency_exponent == 2 and got.amount_display == http_made["amount_display"]

    made = await rpc(
        "Create",
        pb.CreatePaymentRequest(amount=500, currency="jpy", customer="cli-2", wait_seconds=10),
    )
    assert made.currency == "JPY" and made.currency_exponent == 0 and made.method == "intent"
    assert made.status == "pending" and made.client_secret  # waited for the processor
    read = await pay.get(made.id)
    assert read["client_secret"] == made.client_secret and read["amount"] == 500
    assert read["customer"] == "cli-2"
    events = await pay.http.get(f"/api/v1/payments/{made.id}/events", headers=ADMIN)
    assert [e["to_status"] for e in events.json()["events"]] == ["created", "pending"]


async def test_request_id_is_the_idempotency_key(both: tuple[Pay, Grpc]) -> None:
    pay, rpc = both
    req = pb.CreatePaymentRequest(request_id="order-1", amount=1000, currency="EUR")
    first = await rpc("Create", req)
    again = await rpc("Create", req)
    assert again.id == first.id
    other = await rpc.refused(
        "Create", pb.CreatePaymentRequest(request_id="order-1", amount=2000, currency="EUR")
    )
    assert other.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "order-1" in other.details()
    assert problem_type(other) == "urn:paymentd:problem:idempotency-key-reused"
    # The same key space as HTTP's Idempotency-Key, scoped per API key the same way.
    r = await pay.create(key="order-1", amount=1000, currency="EUR")
    assert r.status_code == 201 and r.json()["id"] == first.id
    assert r.headers["idempotent-replayed"] == "true"
    r = await pay.create(key="order-2", amount=700, currency="EUR")
    replay = await rpc(
        "Create", pb.CreatePaymentRequest(request_id="order-2", amount=700, currency="EUR")
    )
    assert replay.id == r.json()["id"]
    assert await pay.db.fetchval("SELECT count(*) FROM payments") == 2
    bad = await rpc.refused(
        "Create", pb.CreatePaymentRequest(request_id="é" * 3, amount=700, currency="EUR")
    )
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT and "request_id" in bad.details()


async def test_api_keys_in_metadata_and_their_scopes(both: tuple[Pay, Grpc]) -> None:
    pay, rpc = both
    create = pb.CreatePaymentRequest(amount=1000, currency="EUR")
    err = await rpc.refused("Create", create, metadata=())
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    err = await rpc.refused("Create", create, metadata=(("authorization", "Bearer nope"),))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED and "nope" not in err.details()
    reader = await auth.create_key(pay.db, "reader", [auth.PAYMENTS_READ])
    writer = await auth.create_key(pay.db, "writer", [auth.PAYMENTS_WRITE, auth.PAYMENTS_READ])
    err = await rpc.refused("Create", create, metadata=(("x-api-key", reader.key),))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "payments:write" in err.details() and problem_type(err) == "about:blank"
    made = await rpc("Create", create, metadata=(("authorization", f"Bearer {writer.key}"),))
    got = await rpc("Get", pb.GetPaymentRequest(id=made.id), metadata=(("x-api-key", reader.key),))
    assert got.id == made.id
    assert await pay.db.fetchval("SELECT count(*) FROM payments") == 1
    created_by = await pay.db.fetchval("SELECT created_by FROM payments")
    assert created_by == f"api:{writer.id}"


async def test_invalid_input_and_transitions_map_to_status_codes(both: tuple[Pay, Grpc]) -> None:
    pay, rpc = both
    err = await rpc.refused("Create", pb.CreatePaymentRequest(amount=0, currency="EUR"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "amount must be positive, got 0"
    assert problem_type(err) == "urn:paymentd:problem:invalid-amount"
    err = await rpc.refused("Create", pb.CreatePaymentRequest(amount=10, currency="ZZZ"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "'ZZZ'" in err.details()
    err = await rpc.refused(
        "Create", pb.CreatePaymentRequest(amount=10, currency="EUR", kind="recurring")
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "interval" in err.details()
    err = await rpc.refused("Get", pb.GetPaymentRequest(id="pay_nope"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = await rpc.refused("GetRefund", pb.GetRefundRequest(id="rf_nope"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert await pay.db.fetchval("SELECT count(*) FROM payments") == 0
    monthly = await rpc(
        "Create",
        pb.CreatePaymentRequest(amount=10, currency="EUR", kind="recurring", interval="month"),
    )
    assert monthly.method == "hosted_checkout"  # the HTTP API's default for recurring

    made = await rpc("Create", pb.CreatePaymentRequest(amount=1000, currency="EUR"))
    err = await rpc.refused("Capture", pb.CapturePaymentRequest(id=made.id))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "automatic" in err.details()
    await pay.wait_status(made.id, "pending")
    err = await rpc.refused("Refund", pb.RefundPaymentRequest(id=made.id, amount=100))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    canceled = await rpc("Cancel", pb.CancelPaymentRequest(id=made.id, request_id="c-1"))
    assert canceled.cancel_requested
    await pay.wait_status(made.id, "canceled")
    err = await rpc.refused("Cancel", pb.CancelPaymentRequest(id=made.id))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert problem_type(err) == "urn:paymentd:problem:invalid-state"


async def test_refunds_and_captures_over_grpc(both: tuple[Pay, Grpc]) -> None:
    pay, rpc = both
    paid = await rpc(
        "Create",
        pb.CreatePaymentRequest(
            amount=1000, currency="EUR", metadata={"mock": "succeed"}, wait_seconds=10
        ),
    )
    assert paid.status == "succeeded" and paid.amount_captured == 1000
    refund = await rpc("Refund", pb.RefundPaymentRequest(id=paid.id, amount=600, request_id="rf-1"))
    assert refund.payment_id == paid.id and refund.amount == 600
    assert (
        await rpc("Refund", pb.RefundPaymentRequest(id=paid.id, amount=600, request_id="rf-1"))
    ).id == refund.id
    err = await rpc.refused("Refund", pb.RefundPaymentRequest(id=paid.id, amount=600))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "400" in err.details()

    async def refund_done() -> Any:
        got = await rpc("GetRefund", pb.GetRefundRequest(id=refund.id))
        return got if got.status == "succeeded" else None

    assert (await wait_for(refund_done)).amount == 600

    held = await rpc(
        "Create",
        pb.CreatePaymentRequest(
            amount=800, currency="EUR", capture_method="manual",
            metadata={"mock": "succeed"}, wait_seconds=10,
        ),
    )  # fmt: skip
    assert held.status == "requires_capture"
    captured = await rpc("Capture", pb.CapturePaymentRequest(id=held.id, amount=500))
    assert captured.capture_requested
    done = await pay.wait_status(held.id, "succeeded")
    assert done["amount_captured"] == 500


async def test_list_pages_through_every_payment_newest_first(both: tuple[Pay, Grpc]) -> None:
    _, rpc = both
    ids = [
        (
            await rpc(
                "Create", pb.CreatePaymentRequest(amount=100 + i, currency="EUR", customer="pages")
            )
        ).id
        for i in range(5)
    ]
    await rpc("Create", pb.CreatePaymentRequest(amount=1, currency="EUR", customer="someone else"))
    seen: list[str] = []
    cursor = ""
    pages = 0
    while True:
        page = await rpc("List", pb.ListPaymentsRequest(customer="pages", limit=2, cursor=cursor))
        assert len(page.payments) <= 2
        seen += [p.id for p in page.payments]
        pages += 1
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert seen == ids[::-1] and pages == 3
    err = await rpc.refused("List", pb.ListPaymentsRequest(created_from="yesterday"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "created_from" in err.details()
    err = await rpc.refused("List", pb.ListPaymentsRequest(cursor="abc"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_client_deadline_cancels_the_handler_and_its_transaction(
    both: tuple[Pay, Grpc],
) -> None:
    """Cancel blocks on the payment's row lock (held here); the client gives up after
    0.5 s; the handler is cancelled with it: it releases its idempotency claim (only a
    cancelled or failed request does), its transaction never commits, and once the lock
    is released nothing was applied and the same request id runs again."""
    pay, rpc = both
    made = await rpc("Create", pb.CreatePaymentRequest(amount=1000, currency="EUR"))
    await pay.wait_status(made.id, "pending")

    async def claims() -> int:
        n: int = await pay.db.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = 'late'")
        return n

    async def lock_waiters() -> int:
        n: int = await pay.db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'"
        )
        return n

    async with pay.db.transaction() as tx:
        await tx.execute("SELECT 1 FROM payments WHERE id = $1 FOR UPDATE", made.id)
        err = await rpc.refused(
            "Cancel", pb.CancelPaymentRequest(id=made.id, request_id="late"), deadline=0.5
        )
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # While we still hold the lock: the handler gave its claim back, so it was cancelled.
        assert await wait_for(lambda: _zero(claims), 10)
    # The lock is free. The cancelled handler's backend (its connection dropped) ends
    # without committing; a handler that had not been cancelled would apply the cancel.
    assert await wait_for(lambda: _zero(lock_waiters), 10)
    again = await rpc("Get", pb.GetPaymentRequest(id=made.id))
    assert not again.cancel_requested and again.status == "pending"
    retried = await rpc("Cancel", pb.CancelPaymentRequest(id=made.id, request_id="late"))
    assert retried.cancel_requested


async def _zero(probe: Callable[[], Any]) -> bool:
    return bool(await probe() == 0)


async def test_a_taken_grpc_port_is_a_clear_error_not_a_shared_port(aio_loop: None) -> None:
    """grpcio's default SO_REUSEPORT would let a second daemon bind a port another
    SO_REUSEPORT socket holds; ours refuses. (No daemon here: two grpc.aio servers on
    two asyncio loops in one process collide in grpcio's poller, a test-only situation.)"""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    cfg = Config().replace(grpc=GrpcConfig(enabled=True, port=port))
    deps = Deps(cfg, cast(Database, None), Metrics(), EventBus(), Health(5, 60))
    try:
        with trio.fail_after(10), pytest.raises(grpc_ingress.GrpcListenError, match=f":{port}"):
            await grpc_ingress.run(deps, shutdown=trio.Event())
    finally:
        holder.close()


async def test_shutdown_lets_an_in_flight_call_finish_and_refuses_new_ones(
    db_url: str, tmp_path: Path, aio_loop: None
) -> None:
    """A Cancel blocked on a row lock (held here) is in flight when the daemon is told to
    stop: new calls are refused at once, the lock is released, the call completes."""
    async with daemon(db_url, tmp_path) as (pay, rpc):
        made = await rpc("Create", pb.CreatePaymentRequest(amount=1000, currency="EUR"))
        await pay.wait_status(made.id, "pending")
        address = pay.running.grpc_address
        assert address is not None
        answers: list[Any] = []

        async def waiting_on_our_lock() -> bool:
            n = await pay.db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'"
            )
            return bool(n)

        async def refuses_new_calls() -> bool:
            fresh = Grpc(address)
            try:
                await fresh("Get", pb.GetPaymentRequest(id=made.id), deadline=0.5)
                return False
            except grpc.RpcError as exc:
                return bool(exc.code() == grpc.StatusCode.UNAVAILABLE)  # type: ignore[attr-defined]
            finally:
                fresh.channel.close()

        async def in_flight() -> None:
            req = pb.CancelPaymentRequest(id=made.id, request_id="at-shutdown")
            answers.append(await rpc("Cancel", req))

        async with trio.open_nursery() as nursery, pay.db.transaction() as tx:
            await tx.execute("SELECT 1 FROM payments WHERE id = $1 FOR UPDATE", made.id)
            nursery.start_soon(in_flight)
            await wait_for(waiting_on_our_lock, 10)
            pay.running.shutdown.set()
            await wait_for(refuses_new_calls, 10)
        # Leaving the transaction released the lock; the nursery waited for the in-flight
        # call, which completed within the grace period.
        [answer] = answers
        assert answer.id == made.id and answer.cancel_requested


async def test_list_by_parent_gives_a_recurring_payments_charges(both: tuple[Pay, Grpc]) -> None:
    pay, rpc = both
    monthly = await rpc(
        "Create", pb.CreatePaymentRequest(amount=2900, currency="EUR", kind="recurring",
                                          interval="month", customer="ana")
    )  # fmt: skip
    other = await rpc("Create", pb.CreatePaymentRequest(amount=5, currency="EUR"))
    invoice = StripeInvoice("in_grpc_1", "paid", 2900, "EUR", "sub_grpc", monthly.id,
                            "subscription_cycle", amount_due=2900)  # fmt: skip
    async with pay.db.transaction() as tx:
        parent = await store.lock(tx, monthly.id)
        assert parent is not None
        charge, _ = await recurring.record_paid(tx, parent, invoice, "test")
    assert charge is not None
    page = await rpc("List", pb.ListPaymentsRequest(parent=monthly.id))
    assert [(p.id, p.kind, p.parent_payment_id, p.status, p.amount, p.customer)
            for p in page.payments] == [
        (charge.id, "recurring_charge", monthly.id, "succeeded", 2900, "ana")
    ]  # fmt: skip
    assert (await rpc("List", pb.ListPaymentsRequest(parent=other.id))).payments == []
