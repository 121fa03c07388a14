"""The metrics the alert rules and the dashboard lean on, read from a real ``/metrics``:
HTTP requests by route and status, and the gauges read from the database at scrape time
(open payments, webhook endpoints, overdue jobs); outbound webhook attempt timings."""

from __future__ import annotations

from functools import partial

import trio
from prometheus_client.parser import text_string_to_metric_families

from daemon.actors import scheduler
from daemon.actors.scheduler import SchedulerDeps
from daemon.fakes.webhook_receiver import Answer, Received, WebhookReceiver
from daemon.platform import db_gauges
from daemon.platform.db import Database
from daemon.platform.deps import Deps
from daemon.platform.events import EventBus
from daemon.platform.metrics import Metrics
from daemon.platform.scheduler import Job
from tests.http_fixtures import (
    ADMIN,
    WEBHOOK_PATH,
    WEBHOOK_TOKEN,
    deps_fixture,  # noqa: F401 (the "deps" fixture)
    serving,
    uisp_event,
)
from tests.webhook_harness import dispatcher, wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_requests_are_counted_by_route_rule_and_status_never_by_raw_path(
    deps: Deps,
) -> None:
    with trio.fail_after(20):
        async with serving(deps) as client:
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/api/v1/tasks/999999", headers=ADMIN)).status_code == 404
            assert (await client.get("/api/v1/tasks")).status_code == 401
            assert (await client.get("/no/such/page")).status_code == 404
            assert (await client.request("PROPFIND", "/healthz")).status_code == 405
            assert (await client.post(WEBHOOK_PATH, json=uisp_event())).status_code == 200
            text = (await client.get("/metrics")).text
    got = samples(text)

    def count(method: str, route: str, status: str) -> float:
        key = (("method", method), ("route", route), ("status", status))
        return got.get(("paymentd_http_requests_total", key), 0.0)

    assert count("GET", "/healthz", "200") == 1
    assert count("GET", "/api/v1/tasks/<int:task_id>", "404") == 1
    assert count("GET", "/api/v1/tasks", "401") == 1
    assert count("GET", "unmatched", "404") == 1
    assert count("OTHER", "unmatched", "405") == 1
    assert count("POST", "/webhooks/uisp/<token>", "200") == 1
    # The secret in the webhook path is nowhere in the exposition, nor the random path.
    assert WEBHOOK_TOKEN not in text
    assert "/no/such/page" not in text
    latency = ("paymentd_http_request_seconds_count", (("method", "GET"), ("route", "/healthz")))
    assert got[latency] == 1


async def test_scrape_reads_open_payments_endpoints_and_overdue_jobs_from_the_database(
    deps: Deps, db: Database
) -> None:
    for n, (status, age) in enumerate([("unknown", 3600), ("unknown", 60), ("succeeded", 7200)]):
        await db.execute(
            "INSERT INTO payments (id, status, amount, currency, method, kind, capture_method,"
            " created_by, provider, expires_at, updated_at) VALUES ($1, $2, 100, 'EUR',"
            " 'intent', 'one_time', 'automatic', 'admin', 'mock', now() + interval '1 day',"
            " now() - make_interval(secs => $3::float8))",
            f"pay_{n:024x}",
            status,
            age,
        )
    for n, (enabled, reason, failing) in enumerate(
        [
            (True, None, False),
            (True, None, True),
            (False, "failing", True),
            (False, "operator", False),
        ]
    ):
        await db.execute(
            "INSERT INTO webhook_endpoints (id, url, enabled, disabled_reason, failing_since)"
            " VALUES ($1, 'https://example.org/hook', $2, $3, CASE WHEN $4 THEN now() END)",
            f"ep_{n:024x}",
            enabled,
            reason,
            failing,
        )
    await db.execute(
        "INSERT INTO scheduled_jobs (name, interval_seconds, next_run_at, last_error) VALUES"
        " ('late', 60, now() - interval '10 minutes', 'RuntimeError: boom'),"
        " ('early', 60, now() + interval '1 minute', NULL),"
        " ('running', 60, now() - interval '10 minutes', NULL),"
        " ('switched_off', 60, now() - interval '30 days', NULL)"
    )
    await db.execute(
        "UPDATE scheduled_jobs SET lease_until = now() + interval '1 minute' WHERE name = 'running'"
    )
    deps.metrics.declared_jobs.update({"late", "early", "running"})
    with trio.fail_after(20):
        async with serving(deps) as client:
            got = samples((await client.get("/metrics")).text)

    assert got[("paymentd_payments_open", (("status", "unknown"),))] == 2
    assert got[("paymentd_payments_open", (("status", "processing"),))] == 0
    assert ("paymentd_payments_open", (("status", "succeeded"),)) not in got
    oldest = got[("paymentd_payments_oldest_open_seconds", (("status", "unknown"),))]
    assert 3600 <= oldest < 3700
    assert got[("paymentd_payments_oldest_open_seconds", (("status", "created"),))] == 0
    for state, n in [("healthy", 1), ("failing", 1), ("disabled", 1), ("operator_disabled", 1)]:
        assert got[("paymentd_webhook_endpoints", (("state", state),))] == n
    late = got[("paymentd_job_overdue_seconds", (("job", "late"),))]
    assert 600 <= late < 700
    assert got[("paymentd_job_overdue_seconds", (("job", "early"),))] == 0
    assert got[("paymentd_job_overdue_seconds", (("job", "running"),))] == 0
    assert ("paymentd_job_overdue_seconds", (("job", "switched_off"),)) not in got
    assert got[("paymentd_job_last_failed", (("job", "late"),))] == 1
    assert got[("paymentd_job_last_failed", (("job", "early"),))] == 0


async def test_outbound_attempts_are_timed_by_result(db: Database) -> None:
    async def answer(r: Received) -> Answer:
        return Answer(200) if r.path == "/ok" else Answer(500, b"down")

    rx = WebhookReceiver(answer)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(rx.serve)
            async with dispatcher(db) as d:
                await d.endpoint(rx.url("/ok"))
                await d.endpoint(rx.url("/down"))
                await d.emit("sms.sent", {"task_id": 1})
                await rx.wait_for(1, "/ok")
                await rx.wait_for(1, "/down")
                await wait_until("both recorded", partial(_attempts_recorded, d.metrics, 2))
                got = samples(d.metrics.render().decode())
            nursery.cancel_scope.cancel()
    assert got[("paymentd_webhook_attempt_seconds_count", (("result", "ok"),))] == 1
    assert got[("paymentd_webhook_attempt_seconds_count", (("result", "error"),))] == 1
    assert got[("paymentd_webhook_attempts_total", (("outcome", "succeeded"),))] == 1
    assert got[("paymentd_webhook_attempts_total", (("outcome", "retry"),))] == 1


async def _attempts_recorded(metrics: Metrics, n: int) -> bool:
    got = samples(metrics.render().decode())
    return sum(v for (name, _), v in got.items() if name == "paymentd_webhook_attempts_total") >= n


async def test_the_scheduler_declares_its_jobs_for_the_gauges_and_alert_rules(db: Database) -> None:
    async def fails() -> str:
        raise RuntimeError("boom")

    metrics = Metrics()
    stop = trio.Event()
    jobs = [Job("later", 3600, fails, first_run_delay_seconds=3600), Job("now", 3600, fails)]
    deps = SchedulerDeps(db, jobs, metrics, EventBus(), stop)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run, deps)
            assert metrics.declared_jobs == {"later", "now"}

            async def ran() -> bool:
                return bool(await db.fetchval("SELECT runs FROM scheduled_jobs WHERE name = 'now'"))

            await wait_until("the due job ran", ran)
            stop.set()
    await db_gauges.refresh(db, metrics)
    got = samples(metrics.render().decode())
    # Exported before any run, so a rule on them sees 0 rather than nothing.
    assert got[("paymentd_job_runs_total", (("job", "later"), ("outcome", "error")))] == 0
    assert got[("paymentd_job_runs_total", (("job", "now"), ("outcome", "error")))] == 1
    assert got[("paymentd_job_last_failed", (("job", "now"),))] == 1
    assert got[("paymentd_job_last_failed", (("job", "later"),))] == 0
    assert got[("paymentd_job_overdue_seconds", (("job", "later"),))] == 0
