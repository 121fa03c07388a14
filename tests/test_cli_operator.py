"""The operator's commands against a running daemon, a fake UISP and the OLT simulator:
``paymentd onu activate|deactivate`` and ``paymentd uisp test``, as real subprocesses."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from daemon.fakes import uisp_server
from daemon.network.olt.types import OnuRef
from daemon.platform.config import Config, HttpConfig, UispConfig, to_toml
from tests.cli_process import paymentd
from tests.flow_harness import Flow, World, daemon, world
from tests.restart_load import closed_port

ANA_SERVICE = 1
ANA_ONU = OnuRef(0, 1, 3, 7)


@pytest.fixture
async def w(db_url: str, tmp_path: Path, aio_loop: None) -> AsyncIterator[World]:
    async with world(db_url, tmp_path) as running_world:
        yield running_world


def cli_config(flow: Flow, tmp: Path) -> str:
    """The daemon's own config, as the operator's shell would use it."""
    port = int(flow.running.base_url.rsplit(":", 1)[1])
    cfg = flow.cfg.replace(http=msgspec.structs.replace(flow.cfg.http, port=port))
    path = tmp / "cli.toml"
    path.write_text(to_toml(cfg))
    return str(path)


async def events_of(flow: Flow, task_id: int) -> list[dict[str, Any]]:
    rows = await flow.db.fetch(
        "SELECT kind, detail FROM task_events WHERE task_id = $1 ORDER BY id", task_id
    )
    return [
        {
            "kind": r["kind"],
            **(json.loads(r["detail"]) if isinstance(r["detail"], str) else r["detail"]),
        }
        for r in rows
    ]


async def test_an_operator_activation_is_a_task_the_daemon_runs_with_one_sms(
    w: World, tmp_path: Path
) -> None:
    async with daemon(w) as flow:
        config = cli_config(flow, tmp_path)
        done = await paymentd("onu", "activate", str(ANA_SERVICE), "--config", config)
        assert done.code == 0, done.err
        first = done.out.splitlines()[0]
        assert (
            first.startswith("task ")
            and "activate service 1 (Ana García) on olt-hw 0/1/3:7" in first
        )
        assert "SMS: to +34 600 111 222 if this reconnects the service" in done.out
        # Ana is suspended in UISP; the command says so and leaves UISP alone.
        assert "UISP says service 1 is suspended" in done.out
        [task] = await flow.wait_task_state("succeeded")
        assert task["webhook_uuid"] is None and ":operator:" in task["dedupe_key"]
        assert w.devices["olt-hw"].is_active(ANA_ONU)
        await w.sink.wait_messages(1)
        kinds = [e["kind"] for e in await events_of(flow, task["id"])]
        assert kinds[:2] == ["queued", "requested"] and "sms_queued" in kinds
        [requested] = [e for e in await events_of(flow, task["id"]) if e["kind"] == "requested"]
        assert requested["source"] == "operator" and "@" in requested["by"]

        # Asked again: a second task, run too, but no second SMS (one per reconnection).
        again = await paymentd("onu", "activate", str(ANA_SERVICE), "--config", config)
        assert again.code == 0, again.err
        rows = await flow.wait_task_state("succeeded", count=2)
        kinds = [e["kind"] for e in await events_of(flow, rows[-1]["id"])]
        assert "sms_skipped" in kinds and "sms_queued" not in kinds

        off = await paymentd("onu", "deactivate", str(ANA_SERVICE), "--config", config)
        assert off.code == 0, off.err
        assert "SMS" not in off.out
        await flow.wait_task_state("succeeded", count=3)
        assert not w.devices["olt-hw"].is_active(ANA_ONU)
        await flow.settle()
        assert len(w.sink.messages) == 1


async def test_a_service_uisp_does_not_know_or_without_an_onu_queues_nothing(
    w: World, tmp_path: Path
) -> None:
    bare = w.fake.add_service(1, "No ONU attributes")
    async with daemon(w) as flow:
        config = cli_config(flow, tmp_path)
        unknown = await paymentd("onu", "activate", "999", "--config", config)
        unknown.one_error_line("UISP has no service 999; nothing queued")
        no_onu = await paymentd("onu", "deactivate", str(bare["id"]), "--config", config)
        no_onu.one_error_line(f"service {bare['id']} has no ONU location", "nothing queued")
        # Mapped in UISP to an OLT paymentd has no device for: the task could only fail.
        elsewhere = w.fake.add_service(1, "Other OLT", olt="olt-nowhere", onu="0/1/1:1")
        no_olt = await paymentd("onu", "activate", str(elsewhere["id"]), "--config", config)
        no_olt.one_error_line("OLT 'olt-nowhere'", "paymentd olt add", "nothing queued")
        bad = await paymentd("onu", "activate", "abc", "--config", config)
        assert bad.code == 2 and "not a UISP service id" in bad.err
        assert await flow.db.fetchval("SELECT count(*) FROM reconnect_tasks") == 0


# --- paymentd uisp test -------------------------------------------------------------------


@pytest.fixture
async def fake_uisp() -> AsyncIterator[tuple[uisp_server.FakeUisp, str]]:
    fake = uisp_server.FakeUisp(app_key="write-key")
    fake.read_only_keys.add("read-key")
    async with trio.open_nursery() as nursery:
        url = await nursery.start(uisp_server.serve, fake)
        yield fake, url
        nursery.cancel_scope.cancel()


def uisp_config(tmp: Path, **uisp: Any) -> str:
    cfg = Config().replace(http=HttpConfig(), uisp=UispConfig(timeout_seconds=5, **uisp))
    path = tmp / "uisp.toml"
    path.write_text(to_toml(cfg))
    return str(path)


async def test_uisp_test_with_a_write_key_passes_every_check(
    fake_uisp: tuple[uisp_server.FakeUisp, str], tmp_path: Path
) -> None:
    fake, url = fake_uisp
    ran = await paymentd(
        "uisp", "test", "--config", uisp_config(tmp_path, base_url=url, app_key="write-key")
    )
    assert ran.code == 0, ran.err
    assert ran.out.splitlines()[-1] == "UISP: OK (uisp.payment_action = 'cancel_suspend')"
    assert ("PATCH", "/clients/services/0/cancel-suspend") in fake.requests
    assert all(method == "GET" or "/0/" in path for method, path in fake.requests)


async def test_uisp_test_names_what_to_fix(
    fake_uisp: tuple[uisp_server.FakeUisp, str], tmp_path: Path
) -> None:
    fake, url = fake_uisp
    cases: list[tuple[dict[str, Any], tuple[str, ...]]] = [
        ({"base_url": url, "app_key": "wrong"}, ("HTTP 401", "set uisp.app_key")),
        ({"base_url": url, "app_key": ""}, ("uisp.app_key is empty",)),
        (
            {"base_url": url, "app_key": "read-key"},
            ("the key is read-only (HTTP 403)", 'uisp.payment_action = "reactivate_onu"'),
        ),
        (
            {"base_url": url.removesuffix("/crm/api/v1.0"), "app_key": "write-key"},
            ("does not look like the UISP CRM API", "/crm/api/v1.0"),
        ),
        (
            {"base_url": f"http://127.0.0.1:{closed_port()}/crm/api/v1.0", "app_key": "k"},
            ("cannot reach UISP at uisp.base_url",),
        ),
    ]
    for settings, expected in cases:
        ran = await paymentd("uisp", "test", "--config", uisp_config(tmp_path, **settings))
        err = ran.one_error_line(*expected)
        assert "write-key" not in err and "read-key" not in err

    # A read-only key is enough when paymentd never writes to UISP.
    config = uisp_config(
        tmp_path, base_url=url, app_key="read-key", payment_action="reactivate_onu"
    )
    ran = await paymentd("uisp", "test", "--config", config)
    assert ran.code == 0, ran.err
    assert "read-only key; not needed" in ran.out

    # UISP overloaded: not a config problem, exit 1.
    fake.fail_next(1, status=503)
    ran = await paymentd(
        "uisp", "test", "--config", uisp_config(tmp_path, base_url=url, app_key="write-key")
    )
    assert ran.code == 1 and "try again later" in ran.err and "Traceback" not in ran.err


def test_who_asked_without_a_user_name_is_the_uid(monkeypatch: pytest.MonkeyPatch) -> None:
    # A container user with no passwd entry and no LOGNAME/USER: getpass.getuser() raises
    # (KeyError before Python 3.13, OSError since), which would be a traceback in
    # 'onu activate' and 'tasks retry'.
    import pwd

    from daemon.cli.operator import who_asked

    for name in ("SUDO_USER", "LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)

    def no_entry(uid: int) -> Any:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    assert who_asked().startswith(f"uid {os.getuid()}@")
