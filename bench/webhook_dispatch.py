"""Outbound webhooks: signed deliveries per second, and a healthy endpoint's latency beside
a hanging one.

Everything over real sockets on 127.0.0.1: a real database, the real dispatcher actor
(``daemon.actors.webhook_dispatcher``, its SSRF-guarded transport allowing loopback), and
``daemon.fakes.webhook_receiver`` receivers (h11) answering 200 at once.

1. **Throughput.** ``--n`` events for one endpoint. Baselines, same run: a naive
   sequential httpx loop that signs each body the same way and POSTs it on one
   keep-alive client, writing nothing anywhere (the upper bound of one sender); and the
   same loop writing each attempt and outcome in a transaction, as the system we replace
   did (the same bookkeeping as the dispatcher). Then the dispatcher, with the same ``--n``
   deliveries already fanned out: from its start until every delivery is recorded as
   succeeded in PostgreSQL (claim with a lease, sign, POST, attempt row + outcome in one
   transaction each). With the endpoint's concurrency at the default 4 and at ``--conc``.

2. **Fairness.** ``--m`` events, one every ``--gap-ms``, each emitted in its own
   transaction and fanned out from the outbox queue as the fan-out consumer does; latency
   = just before the emitting transaction -> the healthy receiver has the request. Once
   with only the healthy endpoint subscribed, once with a second endpoint that accepts
   connections and never answers (each exchange held until the 15 s deadline).

Run: ``python bench/webhook_dispatch.py`` (about 30 s; ``--help`` for the options).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import _common
import httpx
import trio
import trio_asyncio

from daemon.fakes.webhook_receiver import Answer, Received, WebhookReceiver
from daemon.platform import outbox
from daemon.platform.db import Database
from daemon.webhooks import deliveries, endpoints, signing
from tests.webhook_harness import BOX, LOOPBACK, dispatcher


async def naive_loop(url: str, secret: str, n: int) -> float:
    """The baseline: sign and POST one after another, nothing recorded."""
    async with httpx.AsyncClient(trust_env=False) as client:
        started = time.perf_counter()
        for i in range(n):
            body = json.dumps(
                {"id": f"evt_{i:032x}", "type": "sms.sent", "timestamp": "", "data": {"n": i}},
                separators=(",", ":"),
            ).encode()
            headers = signing.headers([secret], f"evt_{i:032x}", int(time.time()), body)
            r = await client.post(url, content=body, headers=headers)
            assert r.status_code == 200
        return time.perf_counter() - started


async def recorded_loop(db: Database, rx: WebhookReceiver, n: int) -> float:
    """The old system's way: one after another, each attempt and outcome written in a
    transaction (what the dispatcher records too), no leases, no concurrency."""
    await _deliveries_for(db, rx, n, None)
    rows = await db.fetch(
        "SELECT d.id, e.id AS event_id, e.type, e.occurred_at, e.data FROM webhook_deliveries d"
        " JOIN events e ON e.id = d.event_id ORDER BY d.id"
    )
    endpoint_id = await db.fetchval("SELECT id FROM webhook_endpoints")
    [secret] = await endpoints.active_secrets(db, BOX, endpoint_id)
    async with httpx.AsyncClient(trust_env=False) as client:
        started = time.perf_counter()
        for row in rows:
            event = outbox.Event(
                row["event_id"], 0, row["type"], row["occurred_at"], None, dict(row["data"])
            )
            body = json.dumps(event.payload(), separators=(",", ":")).encode()
            headers = signing.headers([secret], event.id, int(time.time()), body)
            t = time.perf_counter()
            r = await client.post(rx.url("/d"), content=body, headers=headers)
            async with db.transaction() as tx:
                await tx.execute(
                    "INSERT INTO webhook_attempts (delivery_id, attempt, started_at,"
                    " duration_ms, url, status_code, response_body)"
                    " VALUES ($1, 1, now(), $2, $3, $4, $5)",
                    row["id"],
                    int((time.perf_counter() - t) * 1000),
                    rx.url("/d"),
                    r.status_code,
                    r.text,
                )
                await tx.execute(
                    "UPDATE webhook_deliveries SET state = 'succeeded', attempts = 1,"
                    " next_attempt_at = NULL, finished_at = now() WHERE id = $1",
                    row["id"],
                )
        return time.perf_counter() - started


async def _deliveries_for(db: Database, rx: WebhookReceiver, n: int, conc: int | None) -> None:
    await db.execute("TRUNCATE webhook_endpoints, events CASCADE")
    async with db.transaction() as tx:
        await endpoints.create(
            tx, BOX, url=rx.url("/d"), event_types=["sms.sent"], max_concurrency=conc
        )
    async with db.transaction() as tx:
        # The deliveries exist before the dispatcher starts: this measures sending.
        await tx.execute(
            "INSERT INTO events (id, type, data) SELECT 'evt_' || md5(g::text), 'sms.sent',"
            " jsonb_build_object('n', g) FROM generate_series(1, $1) g",
            n,
        )
        await tx.execute(
            "INSERT INTO webhook_deliveries (event_id, endpoint_id)"
            " SELECT e.id, p.id FROM events e, webhook_endpoints p"
        )


async def dispatched(db: Database, rx: WebhookReceiver, n: int, conc: int | None) -> float:
    await _deliveries_for(db, rx, n, conc)
    started = time.perf_counter()
    async with dispatcher(db, LOOPBACK):
        with trio.fail_after(300):
            while (  # noqa: ASYNC110 - polls the database, as an operator would
                await db.fetchval(
                    "SELECT count(*) FROM webhook_deliveries WHERE state = 'succeeded'"
                )
                < n
            ):
                await trio.sleep(0.01)
        took = time.perf_counter() - started
    assert len([r for r in rx.received if r.path == "/d"]) >= n
    return took


async def latencies(
    db: Database, healthy: WebhookReceiver, stuck: WebhookReceiver | None, m: int, gap: float
) -> list[float]:
    await db.execute("TRUNCATE webhook_endpoints, events CASCADE")
    await db.execute(f"SELECT pgmq.purge_queue('{outbox.QUEUE}')")
    healthy.received.clear()
    async with dispatcher(db, LOOPBACK) as d:
        await d.endpoint(healthy.url("/l"), event_types=["payment.succeeded"])
        if stuck is not None:
            await d.endpoint(stuck.url("/stuck"), event_types=["payment.succeeded"])
        sent: dict[int, float] = {}
        for i in range(m):
            sent[i] = trio.current_time()
            await d.emit("payment.succeeded", {"n": i})
            await trio.sleep(gap)
        with trio.fail_after(120):
            await healthy.wait_for(m, "/l")
        out = []
        for r in healthy.received:
            n = json.loads(r.body)["data"]["n"]
            out.append(r.at - sent[n])
        if stuck is not None:
            pending = await deliveries.list_deliveries(db, state="pending", limit=10_000)
            print(
                f"  (stuck endpoint: {len(stuck.received)} exchanges open, "
                f"{len(pending)} deliveries waiting)",
                file=sys.stderr,
            )
        return out


async def bench(args: argparse.Namespace, url: str) -> int:
    async def ok(r: Received) -> Answer:
        return Answer(200, b"ok")

    async def hang(r: Received) -> Answer:
        await trio.sleep_forever()
        raise AssertionError

    healthy, stuck = WebhookReceiver(ok), WebhookReceiver(hang)
    async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
        await nursery.start(healthy.serve)
        await nursery.start(stuck.serve)
        async with Database.open(url, min_size=2, max_size=10) as db:
            print("throughput: naive loop ...", file=sys.stderr)
            naive = await naive_loop(healthy.url("/naive"), _secret(), args.n)
            print("throughput: sequential loop recording each attempt ...", file=sys.stderr)
            recorded = await recorded_loop(db, healthy, args.n)
            print("throughput: dispatcher (concurrency 4) ...", file=sys.stderr)
            d4 = await dispatched(db, healthy, args.n, None)
            print(f"throughput: dispatcher (concurrency {args.conc}) ...", file=sys.stderr)
            dn = await dispatched(db, healthy, args.n, args.conc)
            print("latency: healthy endpoint alone ...", file=sys.stderr)
            alone = await latencies(db, healthy, None, args.m, args.gap_ms / 1000)
            print("latency: beside a hanging endpoint ...", file=sys.stderr)
            beside = await latencies(db, healthy, stuck, args.m, args.gap_ms / 1000)
        nursery.cancel_scope.cancel()

    print()
    print(f"webhook_dispatch: {args.n} signed deliveries to one local receiver")
    rate = [args.n / naive, args.n / d4, args.n / dn, args.n / recorded]
    print(
        _common.table(
            ["sender", "seconds", "deliveries/s", "vs naive", "vs recorded loop"],
            [
                [
                    name,
                    f"{secs:.2f}",
                    f"{r:.0f}",
                    _common.ratio(r, rate[0]),
                    _common.ratio(r, rate[3]),
                ]
                for name, secs, r in (
                    ("naive sequential httpx loop (records nothing)", naive, rate[0]),
                    ("sequential loop, attempt + outcome per delivery", recorded, rate[3]),
                    ("dispatcher, endpoint concurrency 4", d4, rate[1]),
                    (f"dispatcher, endpoint concurrency {args.conc}", dn, rate[2]),
                )
            ],
        )
    )
    print()
    print(
        f"healthy endpoint latency, {args.m} events one every {args.gap_ms:g} ms "
        "(emit transaction -> receiver has it, ms)"
    )

    def row(name: str, lat: list[float]) -> list[object]:
        return [
            name,
            len(lat),
            _common.ms(_common.percentile(lat, 50)),
            _common.ms(_common.percentile(lat, 95)),
            _common.ms(max(lat)),
        ]

    print(
        _common.table(
            ["case", "n", "p50", "p95", "max"],
            [row("alone", alone), row("beside a hanging endpoint", beside)],
        )
    )
    print()
    p50 = _common.ratio(_common.percentile(beside, 50), _common.percentile(alone, 50))
    p95 = _common.ratio(_common.percentile(beside, 95), _common.percentile(alone, 95))
    print(
        f"ratios: dispatcher/naive deliveries/s {_common.ratio(rate[1], rate[0])} (conc 4), "
        f"{_common.ratio(rate[2], rate[0])} (conc {args.conc}); dispatcher/recorded loop "
        f"{_common.ratio(rate[1], rate[3])} (conc 4), {_common.ratio(rate[2], rate[3])} "
        f"(conc {args.conc}); healthy latency "
        f"beside-hanging/alone p50 {p50}, p95 {p95}"
    )
    return 0


def _secret() -> str:
    return endpoints.generate_secret()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="deliveries for the throughput runs")
    parser.add_argument(
        "--conc", type=int, default=16, help="the second run's endpoint concurrency"
    )
    parser.add_argument("--m", type=int, default=100, help="events for the latency runs")
    parser.add_argument("--gap-ms", type=float, default=20.0, help="between two latency events")
    args = parser.parse_args()
    _common.quiet()
    with _common.throwaway_database() as url:
        return trio.run(bench, args, url)


if __name__ == "__main__":
    sys.exit(main())
