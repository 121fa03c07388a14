"""Create → client secret latency of the Stripe provider, against localstripe.

One localstripe subprocess (``tests/localstripe.py``, as the tests start it). Each mode
creates ``--n`` PaymentIntents one after another and times each call, from just before
the call to having the client secret in hand (``time.perf_counter``, same process):

- **baseline**: a bare ``httpx.AsyncClient`` POSTing the same form to localstripe and
  parsing the JSON (keep-alive; what any client must at least pay);
- **provider**: ``StripeProvider.create`` (stripe-python's async client on httpx under
  trio, our params, idempotency key, mapping to ``ProviderPayment``) straight to
  localstripe;
- **provider via front**: the same through ``daemon/fakes/stripe_front.py`` (the extra
  hop and the idempotency store the tests use);
- **API, Prefer: wait**: the whole daemon (``run_daemon`` in process, on a throwaway
  database, ``payments.provider = "stripe"`` straight to localstripe):
  ``POST /api/v1/payments`` with an ``Idempotency-Key`` and ``Prefer: wait=10``, timed
  until its 201 carrying the client secret (durable insert, queue, processor pickup,
  the Stripe call, the event bus waking the request); at the daemon's default
  ``database.notify_throttle_ms`` (100) and at 0.

The ratio column is against the baseline's p50 in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import _common
import httpx
import msgspec
import psycopg
import trio
import trio_asyncio

from daemon.app import Running, run_daemon
from daemon.fakes import stripe_front
from daemon.payments.provider import CreateRequest, create_key
from daemon.payments.stripe_provider import StripeProvider
from daemon.platform.config import PaymentsConfig
from tests.localstripe import LocalStripe, running_localstripe
from tests.payments_harness import ADMIN, make_config


def request(i: int, mode: str) -> CreateRequest:
    payment_id = f"pay_bench_{mode}_{i}"
    return CreateRequest(
        payment_id=payment_id,
        amount=1000 + i,
        currency="EUR",
        method="intent",
        kind="one_time",
        capture_method="automatic",
        idempotency_key=create_key(payment_id),
    )


async def timed(n: int, call: Callable[[int], Awaitable[str]]) -> list[float]:
    for i in range(10):  # warm-up: connections, imports
        await call(-1 - i)
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        secret = await call(i)
        out.append(time.perf_counter() - t0)
        assert secret
    return out


async def baseline(server: LocalStripe, n: int) -> list[float]:
    async with httpx.AsyncClient(base_url=server.url, auth=(server.api_key, "")) as client:

        async def call(i: int) -> str:
            r = await client.post(
                "/v1/payment_intents",
                data={"amount": 1000 + i, "currency": "eur", "metadata[paymentd_payment_id]": i},
            )
            secret: str = r.json()["client_secret"]
            return secret

        return await timed(n, call)


async def via_provider(base_url: str, api_key: str, n: int, mode: str) -> list[float]:
    cfg = PaymentsConfig(provider="stripe", stripe_api_key=api_key, stripe_base_url=base_url)
    provider = StripeProvider.from_config(cfg)
    try:

        async def call(i: int) -> str:
            created = await provider.create(request(i, mode))
            assert created.client_secret
            return created.client_secret

        return await timed(n, call)
    finally:
        await provider.aclose()


async def via_api(
    server: LocalStripe, n: int, db_url: str, tmp: Path, throttle_ms: int
) -> list[float]:
    cfg = make_config(
        db_url,
        tmp,
        provider="stripe",
        stripe_api_key=server.api_key,
        stripe_base_url=server.url,
        provider_timeout_seconds=10.0,
    )
    cfg = cfg.replace(
        database=msgspec.structs.replace(cfg.database, notify_throttle_ms=throttle_ms)
    )
    async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
        running: Running = await nursery.start(
            partial(run_daemon, cfg, env={}, handle_signals=False)
        )
        async with httpx.AsyncClient(base_url=running.base_url, timeout=30) as http:

            async def call(i: int) -> str:
                r = await http.post(
                    "/api/v1/payments",
                    json={"amount": 1000 + abs(i), "currency": "EUR"},
                    headers={
                        **ADMIN,
                        "Idempotency-Key": f"bench-{throttle_ms}-{i}",
                        "Prefer": "wait=10",
                    },
                )
                assert r.status_code == 201, r.text
                secret: str = r.json()["client_secret"]
                assert secret, r.text
                return secret

            try:
                return await timed(n, call)
            finally:
                _stages(db_url)
                running.shutdown.set()


def _stages(db_url: str) -> None:
    """Where the API's time goes: the insert's commit → the processor's pending commit."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM p.at - c.at))"
            " FROM payment_events c JOIN payment_events p USING (payment_id)"
            " WHERE c.to_status = 'created' AND p.to_status = 'pending'"
        ).fetchone()
        print(f"  created → pending (commits) p50: {rows[0] * 1000:.1f} ms", file=sys.stderr)
        conn.execute("TRUNCATE payments, payment_events, refunds, idempotency_keys CASCADE")


async def main(n: int, db_url: str, tmp: Path) -> None:
    _common.quiet()
    rows: list[tuple[str, list[float]]] = []
    with running_localstripe() as server:
        print(f"localstripe at {server.url}; {n} creates per mode", file=sys.stderr)
        rows.append(("baseline (httpx → localstripe)", await baseline(server, n)))
        rows.append(
            ("provider → localstripe", await via_provider(server.url, server.api_key, n, "d"))
        )
        front = stripe_front.StripeFront(server.url, api_key=server.api_key)
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(stripe_front.serve, front))
            rows.append(
                ("provider → front → localstripe", await via_provider(url, server.api_key, n, "f"))
            )
            nursery.cancel_scope.cancel()
        for throttle in (100, 0):
            name = f"API, Prefer: wait, notify throttle {throttle} ms"
            rows.append((name, await via_api(server, n, db_url, tmp, throttle)))
    base = _common.percentile(rows[0][1], 50)
    print(
        _common.table(
            ["mode", "p50 ms", "p90 ms", "p99 ms", "mean ms", "p50 vs baseline"],
            [
                (
                    name,
                    _common.ms(_common.percentile(v, 50)),
                    _common.ms(_common.percentile(v, 90)),
                    _common.ms(_common.percentile(v, 99)),
                    _common.ms(statistics.fmean(v)),
                    _common.ratio(_common.percentile(v, 50), base),
                )
                for name, v in rows
            ],
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=300, help="creates per mode")
    args = parser.parse_args()
    with _common.throwaway_database() as db_url, tempfile.TemporaryDirectory() as tmp:
        trio.run(main, args.n, db_url, Path(tmp))
