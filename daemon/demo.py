"""``paymentd demo``: the whole flow on one machine with one command.

Embedded PostgreSQL (pgserver), the OLT simulator (two Huawei, one ZTE), a fake UISP CRM
that behaves like UISP on a payment, and a LabsMobile-compatible SMS sink, all on
127.0.0.1 — then the real daemon against them, printing a ready-to-paste curl and the live
event stream.
"""

from __future__ import annotations

import json
import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

import trio
import trio_asyncio

from daemon.app import Running, run_daemon
from daemon.fakes import sms_sink, uisp_server
from daemon.network import devices as olt_store
from daemon.network.olt import simulator
from daemon.network.olt.types import OnuRef
from daemon.platform.config import (
    Config,
    DatabaseConfig,
    HttpConfig,
    OltConfig,
    Secret,
    SecretsConfig,
    SecretUrl,
    SmsConfig,
    UispConfig,
    to_toml,
)
from daemon.platform.db import Database
from daemon.platform.migrate import migrate
from daemon.platform.secrets import SecretBox, keygen, load_keyring
from daemon.uisp import client as uisp

log = logging.getLogger(__name__)

WEBHOOK_TOKEN = "demo-webhook-token"
ADMIN_TOKEN = "demo-admin-token"


def start_embedded_postgres(datadir: Path) -> Any:
    import warnings

    # platformdirs warns that XDG_RUNTIME_DIR is unset (root, no login session): harmless.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
    import pgserver

    datadir.mkdir(parents=True, exist_ok=True)
    return pgserver.get_server(datadir, cleanup_mode="stop")  # type: ignore[attr-defined]


def align_simulator(fake: uisp_server.FakeUisp, devices: list[simulator.SimDevice]) -> None:
    """Give every UISP service's ONU a twin on the simulator, active unless suspended."""
    by_name = {d.name: d for d in devices}
    for service in fake.services.values():
        location = uisp.service_onu(service, fake.olt_attribute, fake.onu_attribute)
        if location is None or location[0] not in by_name:
            continue
        onu = OnuRef.parse(location[1])
        by_name[location[0]].add_onu(
            onu.frame,
            onu.slot,
            onu.port,
            onu.onu_id,
            active=service["status"] != uisp.SERVICE_SUSPENDED,
        )


async def register_devices(
    db: Database, box: SecretBox, devices: list[simulator.SimDevice]
) -> None:
    known = {d["name"] for d in await olt_store.list_devices(db)}
    for d in devices:
        fields: dict[str, Any] = dict(
            vendor=d.vendor,
            host="127.0.0.1",
            port=d.port,
            username=d.username,
            password=d.password,
            enable_password=d.enable_password,
            host_key=d.public_host_key(),  # stable per simulated device
        )
        if d.name in known:
            await olt_store.update_device(db, box, d.name, **fields)
        else:
            await olt_store.add_device(db, box, name=d.name, **fields)


def _print_intro(
    running: Running, fake_url: str, sink_url: str, lost_webhook: dict[str, Any], cfg_path: Path
) -> None:
    base = running.base_url
    # UISP sends the entity along; paymentd reads it back from the API anyway.
    short = {**lost_webhook, "extraData": {"entity": None, "entityBeforeEdit": None}}
    body = json.dumps(short)
    fake_root = fake_url.rsplit("/crm/", 1)[0]
    print(
        f"""
paymentd demo is running — daemon {base}, config {cfg_path}

The fake UISP took Carla's payment, lifted her suspension and sent its webhooks... which
never arrived (UISP does not retry). Her ONU on olt-zte-1 is still off. Deliver it:

curl -sS -X POST {base}/webhooks/uisp/{WEBHOOK_TOKEN} -H 'Content-Type: application/json' \\
  -d '{body}'

Or let the fake UISP take Ana's overdue 30 EUR now (it posts payment.add, service.edit
and service.suspend_cancel to the daemon itself, like UISP):

curl -sS -X POST {fake_root}/_fake/clients/1/payments \\
  -H 'Content-Type: application/json' -d '{{"amount": 30}}'

Look around:
  curl -sS -H 'Authorization: Bearer {ADMIN_TOKEN}' {base}/api/v1/tasks
  curl -sS -N -H 'Authorization: Bearer {ADMIN_TOKEN}' {base}/api/v1/events
  curl -sS {sink_url}/_sink/messages        # the SMS that were "sent"
  curl -sS {base}/metrics

Live events follow (Ctrl-C to stop):
""",
        flush=True,
    )


async def _print_events(running: Running) -> None:
    with running.deps.events.subscribe() as events:
        async for event in events:
            detail = " ".join(f"{k}={v}" for k, v in event.data.items())
            print(f"{time.strftime('%H:%M:%S')}  {event.kind:<18} {detail}", flush=True)


async def run_demo(directory: Path, port: int) -> None:
    # Set-up before any task runs: blocking file operations cannot stall anything yet.
    directory = directory.resolve()  # noqa: ASYNC240
    directory.mkdir(parents=True, exist_ok=True)
    key_file = directory / "secret.key"
    if not key_file.exists():
        # The demo makes its own key, visibly; `paymentd run` never does.
        keygen(key_file)
        print(f"demo: created a demo key at {key_file}")
    print("demo: starting embedded PostgreSQL ...", flush=True)
    pg = start_embedded_postgres(directory / "pg")
    db_url = pg.get_uri()
    try:
        await _run(directory, port, db_url, key_file)
    finally:
        pg.cleanup()


async def _run(directory: Path, port: int, db_url: str, key_file: Path) -> None:
    cfg = Config().replace(
        database=DatabaseConfig(url=SecretUrl(db_url), safety_poll_seconds=60),
        http=HttpConfig(port=port, admin_token=Secret(ADMIN_TOKEN)),
        uisp=UispConfig(app_key=Secret("demo-app-key"), webhook_token=Secret(WEBHOOK_TOKEN)),
        secrets=SecretsConfig(key_file=str(key_file)),
        olt=OltConfig(
            connect_timeout_seconds=5,
            command_timeout_seconds=10,
            retry_backoff_seconds=2,
        ),
        sms=SmsConfig(
            username="demo@example.com",
            token=Secret("demo-sms-token"),
            sender="DemoISP",
            default_country_code="34",
        ),
    )
    await trio.to_thread.run_sync(partial(migrate, db_url))
    fake = uisp_server.FakeUisp(app_key=cfg.uisp.app_key.reveal())
    uisp_server.demo_state(fake)
    devices = simulator.demo_devices()
    align_simulator(fake, devices)
    sink = sms_sink.SmsSink(username=cfg.sms.username, token=cfg.sms.token.reveal())
    box = load_keyring(cfg.secrets)
    async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
        await nursery.start(partial(simulator.serve, devices))
        fake_url = await nursery.start(uisp_server.serve, fake)
        sink_url = await nursery.start(sms_sink.serve, sink)
        async with Database.open(db_url, min_size=1, max_size=2) as db:
            await register_devices(db, box, devices)
        # Carla pays while the daemon is not listening: her webhooks are "lost".
        await fake.record_payment(3, 25.0)
        lost = next(
            b
            for b in fake.webhook_events.values()
            if b["eventName"] == "service.suspend_cancel" and b["entityId"] == 3
        )
        cfg = cfg.replace(
            uisp=UispConfig(
                base_url=fake_url, app_key=cfg.uisp.app_key, webhook_token=Secret(WEBHOOK_TOKEN)
            ),
            sms=SmsConfig(
                base_url=sink_url,
                username=cfg.sms.username,
                token=cfg.sms.token,
                sender="DemoISP",
                default_country_code="34",
            ),
        )
        cfg_path = directory / "config.toml"
        await trio.Path(cfg_path).write_text(to_toml(cfg))

        async with trio.open_nursery() as daemon:
            running: Running = await daemon.start(partial(run_daemon, cfg))
            fake.webhook_url = f"{running.base_url}/webhooks/uisp/{WEBHOOK_TOKEN}"
            _print_intro(running, fake_url, sink_url, lost, cfg_path)
            nursery.start_soon(_print_events, running)
        # The daemon stopped (Ctrl-C): stop the simulators and the event printer too.
        nursery.cancel_scope.cancel()
