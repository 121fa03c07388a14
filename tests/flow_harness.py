"""An ISP in a box for end-to-end tests: the real daemon against a fake UISP, an SMS sink
and the OLT simulator, all over real sockets, on a real PostgreSQL database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import msgspec
import trio

from daemon.app import Running, run_daemon
from daemon.fakes import sms_sink, uisp_server
from daemon.network import devices as olt_store
from daemon.network.olt import simulator
from daemon.platform.config import (
    Config,
    DaemonConfig,
    DatabaseConfig,
    HttpConfig,
    OltConfig,
    SecretsConfig,
    SmsConfig,
    UispConfig,
    WebhooksConfig,
)
from daemon.platform.db import Database
from daemon.platform.secrets import keygen, load_keyring

WEBHOOK_TOKEN = "hook-token"
ADMIN_TOKEN = "admin-token"


def make_world() -> tuple[uisp_server.FakeUisp, list[simulator.SimDevice]]:
    """Ana (client 1) is suspended for an overdue invoice; her ONU is off on olt-hw."""
    fake = uisp_server.FakeUisp(app_key="app-key")
    ana = fake.add_client("Ana", "García", "+34 600 111 222")
    s1 = fake.add_service(ana["id"], "Fibra 300", olt="olt-hw", onu="0/1/3:7")
    fake.suspend_for_invoices(s1["id"], [fake.add_invoice(ana["id"], 30.0, due_in_days=-10)["id"]])
    hw = simulator.SimDevice("olt-hw", "huawei", username="paymentd", password="pw-hw")
    hw.add_onu(0, 1, 3, 7, active=False)
    zte = simulator.SimDevice(
        "olt-zte", "zte", username="paymentd", password="pw-zte", cli_login=True
    )
    zte.add_onu(1, 2, 1, 5, active=True)
    return fake, [hw, zte]


def make_config(
    db_url: str, tmp: Path, fake_url: str, sink_url: str, port: int = 0, **uisp: Any
) -> Config:
    key_file = tmp / "secret.key"
    if not key_file.exists():
        keygen(key_file)
    return Config().replace(
        daemon=DaemonConfig(shutdown_grace_seconds=3, restart_backoff_min_seconds=0.1),
        # The default notify throttle: the consumers' re-read after it is exercised too.
        # A short lease: a SIGKILLed daemon's messages run again 3 s later.
        database=DatabaseConfig(url=db_url, pool_min=1, pool_max=6, visibility_timeout_seconds=3),
        http=HttpConfig(port=port, admin_token=ADMIN_TOKEN),
        uisp=UispConfig(base_url=fake_url, app_key="app-key", webhook_token=WEBHOOK_TOKEN, **uisp),
        secrets=SecretsConfig(key_file=str(key_file)),
        olt=OltConfig(
            connect_timeout_seconds=5,
            command_timeout_seconds=5,
            retry_backoff_seconds=0.5,
            idle_close_seconds=30,
            breaker_reset_seconds=1,
        ),
        sms=SmsConfig(
            base_url=sink_url,
            username="sms-user",
            token="sms-token",
            sender="ISP",
            timeout_seconds=5,
            retry_backoff_seconds=0.5,
        ),
    )


async def register(db_url: str, cfg: Config, devices: list[simulator.SimDevice]) -> None:
    box = load_keyring(cfg.secrets)
    async with Database.open(db_url, min_size=1, max_size=1) as db:
        for d in devices:
            await olt_store.add_device(
                db,
                box,
                name=d.name,
                vendor=d.vendor,
                host="127.0.0.1",
                port=d.port,
                username=d.username,
                password=d.password,
                enable_password=d.enable_password,
                host_key=d.public_host_key(),
            )


@dataclass
class World:
    """The fakes, running; shared by the in-process and the subprocess daemons."""

    fake: uisp_server.FakeUisp
    sink: sms_sink.SmsSink
    devices: dict[str, simulator.SimDevice]
    fake_url: str
    sink_url: str
    db_url: str
    tmp: Path
    db: Database

    def delivered(self, event_name: str) -> dict[str, Any]:
        """The body of the first webhook of that event the fake UISP delivered."""
        body: dict[str, Any] = next(
            d["body"] for d in self.fake.deliveries if d["body"]["eventName"] == event_name
        )
        return body


@dataclass
class Flow:
    world: World
    running: Running
    http: httpx.AsyncClient
    cfg: Config
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def db(self) -> Database:
        return self.world.db

    async def post_webhook(self, body: dict[str, Any]) -> httpx.Response:
        return await self.http.post(f"/webhooks/uisp/{WEBHOOK_TOKEN}", json=body)

    async def wait_for(self, predicate: Callable[[], Any], what: str, seconds: float = 30) -> Any:
        with trio.fail_after(seconds):
            while True:
                value = await predicate()
                if value:
                    return value
                await trio.sleep(0.02)

    async def task_rows(self) -> list[dict[str, Any]]:
        return [dict(r) for r in await self.db.fetch("SELECT * FROM reconnect_tasks ORDER BY id")]

    async def wait_task_state(self, state: str, count: int = 1) -> list[dict[str, Any]]:
        async def done() -> list[dict[str, Any]] | None:
            rows = await self.task_rows()
            return rows if len([r for r in rows if r["state"] == state]) >= count else None

        rows: list[dict[str, Any]] = await self.wait_for(done, f"{count} task(s) {state}")
        return rows

    async def settle(self, seconds: float = 0.5) -> None:
        """Give the daemon time to do anything extra it (wrongly) might do."""
        await trio.sleep(seconds)


@asynccontextmanager
async def world(db_url: str, tmp: Path) -> AsyncIterator[World]:
    fake, devices = make_world()
    sink = sms_sink.SmsSink(username="sms-user", token="sms-token")
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(simulator.serve, devices))
        fake_url = await nursery.start(uisp_server.serve, fake)
        sink_url = await nursery.start(sms_sink.serve, sink)
        async with Database.open(db_url, min_size=1, max_size=3) as db:
            yield World(
                fake, sink, {d.name: d for d in devices}, fake_url, sink_url, db_url, tmp, db
            )
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def daemon(
    w: World,
    *,
    olt: dict[str, Any] | None = None,
    webhooks: WebhooksConfig | None = None,
    **uisp: Any,
) -> AsyncIterator[Flow]:
    cfg = make_config(w.db_url, w.tmp, w.fake_url, w.sink_url, **uisp)
    if olt:
        cfg = cfg.replace(olt=msgspec.structs.replace(cfg.olt, **olt))
    if webhooks is not None:
        cfg = cfg.replace(webhooks=webhooks)
    if not await w.db.fetchval("SELECT count(*) FROM olt_devices"):
        await register(w.db_url, cfg, list(w.devices.values()))
    async with trio.open_nursery() as nursery:
        with trio.fail_after(20):
            running: Running = await nursery.start(
                partial(run_daemon, cfg, env={}, handle_signals=False)
            )
        w.fake.webhook_url = f"{running.base_url}/webhooks/uisp/{WEBHOOK_TOKEN}"
        async with httpx.AsyncClient(base_url=running.base_url, timeout=10) as http:
            yield Flow(w, running, http, cfg)
        running.shutdown.set()
