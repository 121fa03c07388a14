"""A paymentd with the mock payment provider, in-process, on the test's real database.

The whole daemon (``run_daemon``): HTTP ingress, the ``payments`` queue's consumer (the
processor), the scheduler; the tests talk to it over real HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec
import trio

from daemon.app import Running, run_daemon
from daemon.payments.mock_provider import MockProvider
from daemon.payments.processor import ProcessorDeps
from daemon.platform.config import (
    Config,
    DaemonConfig,
    DatabaseConfig,
    HttpConfig,
    PaymentsConfig,
    SecretsConfig,
    WebhooksConfig,
)
from daemon.platform.db import Database
from daemon.platform.secrets import keygen

ADMIN_TOKEN = "admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
T = TypeVar("T")


def make_config(
    db_url: str,
    tmp: Path,
    port: int = 0,
    *,
    webhooks: WebhooksConfig | None = None,
    **payments: Any,
) -> Config:
    key_file = tmp / "secret.key"
    if not key_file.exists():
        keygen(key_file)
    settings: dict[str, Any] = {"provider": "mock", "provider_timeout_seconds": 5.0}
    settings.update(payments)
    return Config().replace(
        daemon=DaemonConfig(shutdown_grace_seconds=3, restart_backoff_min_seconds=0.1),
        # A short lease: a SIGKILLed daemon's messages run again 2 s later.
        database=DatabaseConfig(url=db_url, pool_min=1, pool_max=8, visibility_timeout_seconds=2),
        http=HttpConfig(port=port, admin_token=ADMIN_TOKEN),
        secrets=SecretsConfig(key_file=str(key_file)),
        payments=PaymentsConfig(**settings),
        webhooks=webhooks or WebhooksConfig(),
    )


@dataclass
class Pay:
    http: httpx.AsyncClient
    db: Database
    cfg: Config
    running: Running

    async def create(
        self, key: str | None = None, headers: dict[str, str] | None = None, **body: Any
    ) -> httpx.Response:
        doc = {"amount": 1000, "currency": "EUR", **body}
        hdrs = {**ADMIN, **(headers or {})}
        if key is not None:
            hdrs["Idempotency-Key"] = key
        return await self.http.post("/api/v1/payments", json=doc, headers=hdrs)

    async def get(self, payment_id: str) -> dict[str, Any]:
        r = await self.http.get(f"/api/v1/payments/{payment_id}", headers=ADMIN)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    async def post(
        self, path: str, body: dict[str, Any] | None = None, key: str | None = None
    ) -> httpx.Response:
        hdrs = dict(ADMIN)
        if key is not None:
            hdrs["Idempotency-Key"] = key
        return await self.http.post(f"/api/v1{path}", json=body or {}, headers=hdrs)

    async def wait_status(self, payment_id: str, *statuses: str, seconds: float = 20) -> Any:
        async def reached() -> dict[str, Any] | None:
            p = await self.get(payment_id)
            return p if p["status"] in statuses else None

        return await wait_for(reached, seconds)

    def processor(self) -> ProcessorDeps:
        """What the daemon's own jobs get, on the test's connections: the daemon's pool
        lives in its own asyncio loop. The mock keeps its state in the database, so a
        second MockProvider is the same provider."""
        r = self.running
        cfg = r.deps.config.payments
        provider = MockProvider(self.db, cfg.public_base_url)
        return ProcessorDeps(self.db, provider, cfg, r.deps.events)


async def wait_for(probe: Callable[[], Awaitable[T | None]], seconds: float = 20) -> T:
    """``probe()`` until it answers something truthy (a condition, not a timing)."""
    with trio.fail_after(seconds):
        while True:
            value = await probe()
            if value:
                return value
            await trio.sleep(0.02)


@asynccontextmanager
async def paymentd(
    db_url: str, tmp: Path, *, webhooks: WebhooksConfig | None = None, **payments: Any
) -> AsyncIterator[Pay]:
    cfg = make_config(db_url, tmp, webhooks=webhooks, **payments)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(30):
            running: Running = await nursery.start(
                partial(run_daemon, cfg, env={}, handle_signals=False)
            )
        base = running.base_url
        cfg = cfg.replace(payments=msgspec.structs.replace(cfg.payments, public_base_url=base))
        async with (
            Database.open(db_url, min_size=1, max_size=4) as db,
            httpx.AsyncClient(base_url=base, timeout=30) as http,
        ):
            yield Pay(http, db, cfg, running)
        running.shutdown.set()
