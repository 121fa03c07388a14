"""Prometheus metrics, one registry per daemon instance (tests run several in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.actor_restarts = Counter(
            "paymentd_actor_restarts", "Actor restarts after a crash", ["actor"], registry=r
        )
        self.actor_up = Gauge("paymentd_actor_up", "1 while the actor runs", ["actor"], registry=r)
        self.webhooks = Counter(
            "paymentd_webhooks",
            "Inbound webhooks by source and outcome "
            "(queued, duplicate, test, bad_request, not_found, too_large)",
            ["source", "outcome"],
            registry=r,
        )
        self.webhook_attempts = Counter(
            "paymentd_webhook_attempts",
            "Outbound webhook attempts by outcome (succeeded, retry, failed, refused, lost_lease)",
            ["outcome"],
            registry=r,
        )
        self.webhook_attempt_seconds = Histogram(
            "paymentd_webhook_attempt_seconds",
            "Outbound webhook attempt duration, by result (ok: a 2xx answer; error: any other)",
            ["result"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.queue_depth = Gauge(
            "paymentd_queue_depth", "Messages in a PGMQ queue", ["queue"], registry=r
        )
        self.queue_oldest_age = Gauge(
            "paymentd_queue_oldest_age_seconds", "Age of the oldest message", ["queue"], registry=r
        )
        self.queue_pickup = Histogram(
            "paymentd_queue_pickup_seconds",
            "Enqueue to first read",
            ["queue"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 300),
            registry=r,
        )
        self.jobs = Counter(
            "paymentd_jobs", "Queue messages handled, by outcome", ["queue", "outcome"], registry=r
        )
        self.olt_commands = Histogram(
            "paymentd_olt_command_seconds",
            "OLT operation latency (activate/deactivate incl. confirmation)",
            ["vendor", "outcome"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.olt_batch_size = Histogram(
            "paymentd_olt_batch_size",
            "ONU changes run as one CLI sequence (bursts batched per board; 1 runs alone)",
            buckets=(2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.olt_sessions = Counter(
            "paymentd_olt_sessions_opened", "SSH sessions opened", ["device"], registry=r
        )
        self.olt_breaker_open = Gauge(
            "paymentd_olt_breaker_open",
            "1 while a device's circuit is open",
            ["device"],
            registry=r,
        )
        self.olt_auth_failures = Counter(
            "paymentd_olt_auth_failures",
            "Logins an OLT rejected (wrong username or password)",
            ["device"],
            registry=r,
        )
        self.olt_auth_failed = Gauge(
            "paymentd_olt_auth_failed",
            "1 while a device is refused after a rejected login, until its settings change",
            ["device"],
            registry=r,
        )
        self.olt_host_key_rejected = Gauge(
            "paymentd_olt_host_key_rejected",
            "1 while a device is refused for an SSH host key that is not the pinned one",
            ["device"],
            registry=r,
        )
        self.sms = Counter(
            "paymentd_sms", "SMS by provider and outcome", ["provider", "outcome"], registry=r
        )
        self.listener_reconnects = Counter(
            "paymentd_listener_reconnects", "LISTEN connection re-establishments", registry=r
        )
        self.notifications = Counter(
            "paymentd_notifications", "NOTIFY wake-ups received", ["queue"], registry=r
        )
        self.safety_polls = Counter(
            "paymentd_safety_polls",
            "Safety ticks that found readable work no NOTIFY had announced",
            ["queue"],
            registry=r,
        )
        self.channel_buffer = Gauge(
            "paymentd_channel_buffer_used",
            "Items buffered in a memory channel",
            ["channel"],
            registry=r,
        )

        self.retention_pruned = Counter(
            "paymentd_retention_pruned",
            "Rows deleted by the retention job, by table",
            ["table"],
            registry=r,
        )
        self.job_runs = Counter(
            "paymentd_job_runs", "Scheduled job runs by outcome", ["job", "outcome"], registry=r
        )
        self.dead_letters = Gauge(
            "paymentd_dead_letters",
            "Dead-lettered messages not yet replayed, by queue",
            ["queue"],
            registry=r,
        )
        self.drift = Gauge(
            "paymentd_drift",
            "Drift found by the latest reconciliation run (UISP, task log, OLTs), by kind",
            ["kind"],
            registry=r,
        )
        self.drift_run_seconds = Gauge(
            "paymentd_drift_run_seconds", "Duration of the latest drift run", registry=r
        )

        self.payments_created = Counter(
            "paymentd_payments_created",
            "Payments created through the HTTP or gRPC API (not replays), by provider",
            ["provider"],
            registry=r,
        )
        self.payments_finished = Counter(
            "paymentd_payments_finished",
            "Payments that reached a final state (succeeded, failed, canceled, expired),"
            " by provider",
            ["provider", "status"],
            registry=r,
        )
        self.refunds_finished = Counter(
            "paymentd_refunds_finished",
            "Refunds that reached a final state (succeeded, failed), by provider",
            ["provider", "status"],
            registry=r,
        )
        self.payment_provider_calls = Histogram(
            "paymentd_payment_provider_call_seconds",
            "Payment provider call latency by operation and outcome"
            " (ok, declined, rejected, unavailable, cancelled)",
            ["provider", "operation", "outcome"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 60),
            registry=r,
        )

        # HTTP: route is the URL rule ("/api/v1/tasks/<int:task_id>"), never the raw path, so
        # a scan of random URLs (all "unmatched") or a token in a path adds no series.
        self.http_requests = Counter(
            "paymentd_http_requests",
            "HTTP requests answered, by method, route and status code",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_request_seconds = Histogram(
            "paymentd_http_request_seconds",
            "Request start to response start (time to first byte; SSE streams stay short)",
            ["method", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )

        # Read from the database at scrape time (daemon.platform.db_gauges): the truth
        # across every process sharing it, like the queue gauges.
        self.payments_open = Gauge(
            "paymentd_payments_open",
            "Payments not in a final state, by status",
            ["status"],
            registry=r,
        )
        self.payments_oldest_open = Gauge(
            "paymentd_payments_oldest_open_seconds",
            "Time since the least recently changed payment in a status last changed",
            ["status"],
            registry=r,
        )
        self.webhook_endpoints = Gauge(
            "paymentd_webhook_endpoints",
            "Outbound webhook endpoints by state (healthy, failing, disabled)",
            ["state"],
            registry=r,
        )
        self.job_overdue = Gauge(
            "paymentd_job_overdue_seconds",
            "How long past its due time a scheduled job has not been started (0 when not due)",
            ["job"],
            registry=r,
        )
        self.job_last_failed = Gauge(
            "paymentd_job_last_failed",
            "1 while a scheduled job's latest recorded run ended in an error",
            ["job"],
            registry=r,
        )
        # The jobs this process's scheduler declared (set when it registers them): only
        # those get job gauges, so a row left by a job since switched off never alerts.
        self.declared_jobs: set[str] = set()

    def render(self) -> bytes:
        return generate_latest(self.registry)
