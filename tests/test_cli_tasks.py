"""``paymentd tasks list|show|retry|follow`` on a real database, as real subprocesses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio

from daemon.network import tasks
from daemon.platform import queues
from daemon.platform.config import (
    Config,
    DatabaseConfig,
    HttpConfig,
    SecretsConfig,
    to_toml,
)
from daemon.platform.db import Database
from daemon.platform.secrets import keygen
from tests.cli_process import Streaming, paymentd
from tests.http_fixtures import ADMIN_TOKEN, make_deps, serving
from tests.restart_load import closed_port


def config(tmp: Path, db_url: str, *, port: int | None = None, admin_token: str = "") -> str:
    key = tmp / "secret.key"
    if not key.exists():
        keygen(key)
    cfg = Config().replace(
        database=DatabaseConfig(url=db_url, pool_min=1, pool_max=2),
        http=HttpConfig(port=port or closed_port(), admin_token=admin_token),
        secrets=SecretsConfig(key_file=str(key)),
    )
    path = tmp / "config.toml"
    path.write_text(to_toml(cfg))
    return str(path)


async def make_task(db: Database, n: int, *, service: int, olt: str = "olt-a", **kw: Any) -> int:
    async with db.transaction() as tx:
        task_id = await tasks.create(
            tx,
            dedupe_key=f"test:{n}",
            webhook_uuid=None,
            action=kw.pop("action", "activate"),
            service_id=service,
            olt_name=olt,
            onu=f"0/1/0:{n}",
            client_name=f"Client {n}",
            **kw,
        )
    assert task_id is not None
    return task_id


async def fail(db: Database, task_id: int, error: str, output: str) -> None:
    async with db.transaction() as tx:
        await tasks.finish(tx, task_id, "failed", error=error, output=output)
        await tasks.add_event(tx, task_id, "failed", error=error)


async def test_list_filters_show_tells_the_story_and_retry_requeues_a_failed_task(
    db: Database, db_url: str, tmp_path: Path
) -> None:
    cfg = config(tmp_path, db_url)
    one = await make_task(db, 1, service=10)
    two = await make_task(db, 2, service=20, olt="olt-b", action="deactivate")
    await fail(
        db, one, "ONU 0/1/0:1 is not registered", "MA5800# ont activate 0 1\nFailure: no ONU"
    )

    ran = await paymentd("tasks", "list", "--config", cfg)
    assert ran.code == 0, ran.err
    assert [line.split()[0] for line in ran.out.splitlines()] == [str(two), str(one)]
    ran = await paymentd("tasks", "list", "--state", "failed", "--config", cfg)
    assert [line.split()[0] for line in ran.out.splitlines()] == [str(one)]
    assert "ONU 0/1/0:1 is not registered" in ran.out
    for flags, expected in (
        (["--service", "20"], [two]),
        (["--olt", "olt-a"], [one]),
        (["--action", "deactivate"], [two]),
        (["--before", str(two)], [one]),
    ):
        ran = await paymentd("tasks", "list", *flags, "--json", "--config", cfg)
        assert [t["id"] for t in json.loads(ran.out)] == expected, flags
    ran = await paymentd("tasks", "list", "--service", "30", "--config", cfg)
    assert ran.out.strip() == "no tasks"

    shown = await paymentd("tasks", "show", str(one), "--config", cfg)
    assert shown.code == 0, shown.err
    assert "state      failed after 0 attempt(s)" in shown.out
    history = shown.out.split("history:")[1]
    assert history.index("queued") < history.index("failed")
    assert "  | Failure: no ONU" in shown.out  # the OLT's own words

    retried = await paymentd("tasks", "retry", str(one), "--config", cfg)
    assert retried.code == 0, retried.err
    assert retried.out.strip() == f"task {one} queued again (activate olt-a 0/1/0:1)"
    detail = await tasks.get(db, one)
    assert detail is not None and detail.task.state == "queued"
    retry_event = detail.events[-1]
    assert retry_event.kind == "retry_requested" and "@" in _detail(retry_event.detail)["by"]
    # The reconnect queue holds its message again (one from creation, one from the retry).
    messages = await queues.read(db, tasks.QUEUE, vt_seconds=0, qty=10)
    assert [m.message["task_id"] for m in messages].count(one) == 2

    (await paymentd("tasks", "retry", str(two), "--config", cfg)).one_error_line(
        f"task {two} is queued; only failed tasks can be retried"
    )
    (await paymentd("tasks", "show", "999", "--config", cfg)).one_error_line("no task 999")
    (await paymentd("tasks", "retry", "999", "--config", cfg)).one_error_line("no task 999")


def _detail(detail: Any) -> dict[str, Any]:
    return json.loads(detail) if isinstance(detail, str) else dict(detail)


async def test_follow_from_the_database_prints_history_as_it_is_written(
    db: Database, db_url: str, tmp_path: Path
) -> None:
    old = await make_task(db, 1, service=10)  # before the tail: not shown
    follow = await Streaming.start(
        "tasks", "follow", "--source", "db", "--count", "2", "--config", config(tmp_path, db_url)
    )
    try:
        await follow.wait_err("following the task history in the database")
        new = await make_task(db, 2, service=20)
        await fail(db, new, "gave up", "")
        assert await follow.finish() == 0, follow.err
    finally:
        follow.kill()
    lines = follow.out.decode().splitlines()
    assert len(lines) == 2
    assert f"task {new:<6} queued" in lines[0] and f"task {new:<6} failed" in lines[1]
    assert "error=gave up" in lines[1]
    assert f"task {old} " not in follow.out.decode()


async def test_follow_uses_the_running_daemons_event_stream(
    db: Database, db_url: str, tmp_path: Path
) -> None:
    deps = make_deps(db)
    with trio.fail_after(60):
        async with serving(deps) as client:
            port = int(str(client.base_url).rsplit(":", 1)[1].rstrip("/"))
            cfg = config(tmp_path, db_url, port=port, admin_token=ADMIN_TOKEN)
            follow = await Streaming.start("tasks", "follow", "--count", "2", "--config", cfg)
            try:
                await follow.wait_err("following the daemon's event stream")
                deps.events.publish("task.running", task_id=6, olt="olt-a")
                deps.events.publish("olt.command", task_id=7, command="ont activate 0 1")
                assert await follow.finish() == 0, follow.err
            finally:
                follow.kill()
    first, second = follow.out.decode().splitlines()
    assert "task.running" in first and "task_id=6 olt=olt-a" in first
    assert "olt.command" in second and "command=ont activate 0 1" in second


async def test_following_one_task_shows_its_history_and_ends_when_it_is_done(
    db: Database, db_url: str, tmp_path: Path
) -> None:
    cfg = config(tmp_path, db_url, admin_token=ADMIN_TOKEN)
    other = await make_task(db, 1, service=10)
    task_id = await make_task(db, 2, service=20)
    follow = await Streaming.start("tasks", "follow", "--task", str(task_id), "--config", cfg)
    try:
        await follow.wait_out("queued")  # its history so far, from its first step
        await fail(db, other, "not this one", "")
        await fail(db, task_id, "gave up", "")
        assert await follow.finish() == 0, follow.err  # no --count: it ends by itself
    finally:
        follow.kill()
    lines = follow.out.decode().splitlines()
    assert [line.split()[3] for line in lines] == ["queued", "failed"]
    assert all(f"task {task_id} " in line for line in lines)
    missing = await paymentd("tasks", "follow", "--task", "999", "--config", cfg)
    missing.one_error_line("no task 999")


async def test_follow_falls_back_to_the_database_when_the_daemon_is_not_reachable(
    db: Database, db_url: str, tmp_path: Path
) -> None:
    cfg = config(tmp_path, db_url, admin_token=ADMIN_TOKEN)  # nothing listens on its port
    follow = await Streaming.start("tasks", "follow", "--count", "1", "--config", cfg)
    try:
        await follow.wait_err("following the task history in the database")
        assert "cannot reach the daemon" in follow.err.decode()
        task_id = await make_task(db, 1, service=10)
        assert await follow.finish() == 0, follow.err
    finally:
        follow.kill()
    assert f"task {task_id:<6} queued" in follow.out.decode()
    # With --source sse it is an error instead, saying what else to try.
    ran = await paymentd("tasks", "follow", "--source", "sse", "--config", cfg)
    ran.one_error_line("cannot reach the daemon", "try --source db")


async def test_following_a_retried_task_waits_for_the_outcome_of_its_new_run(
    db: Database, db_url: str, tmp_path: Path
) -> None:
    # tasks retry, then tasks follow --task: the old failure in its history is not the end.
    cfg = config(tmp_path, db_url)
    task_id = await make_task(db, 1, service=10)
    await fail(db, task_id, "gave up", "")
    await tasks.retry(db, task_id, by="test")
    follow = await Streaming.start("tasks", "follow", "--task", str(task_id), "--config", cfg)
    try:
        await follow.wait_out("retry_requested")
        await fail(db, task_id, "gave up again", "")
        assert await follow.finish() == 0, follow.err
    finally:
        follow.kill()
    lines = follow.out.decode().splitlines()
    assert [line.split()[3] for line in lines] == ["queued", "failed", "retry_requested", "failed"]
    assert "error=gave up again" in lines[-1]
