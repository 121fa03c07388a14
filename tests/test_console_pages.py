"""The console's operations pages over plain HTTP: lists render without JavaScript,
filters and pages, and every action goes through the same store call the CLI uses."""

from __future__ import annotations

import uuid

import httpx
import pytest
import trio

from daemon.network import devices, tasks
from daemon.platform.deps import Deps
from daemon.platform.secrets import SecretBox
from daemon.uisp import webhooks
from tests.console_fixtures import add_operator, csrf_token, page_csrf, sign_in
from tests.http_fixtures import assert_problem, deps_fixture, serving

__all__ = ["deps_fixture"]

pytestmark = pytest.mark.usefixtures("aio_loop")


async def _task(deps: Deps, n: int, *, olt: str = "olt-a", state: str = "queued") -> int:
    async with deps.db.transaction() as tx:
        task_id = await tasks.create(
            tx,
            dedupe_key=f"activate:service:{n}:test:{uuid.uuid4()}",
            webhook_uuid=None,
            action="activate",
            service_id=n,
            olt_name=olt,
            onu="0/1/3:7",
        )
    assert task_id is not None
    if state != "queued":
        await deps.db.execute(
            "UPDATE reconnect_tasks SET state = $2, last_error = 'no such ONU' WHERE id = $1",
            task_id,
            state,
        )
    return task_id


async def _signed_in(deps: Deps, client: httpx.AsyncClient) -> None:
    await add_operator(deps.db)
    await sign_in(client)


async def test_the_task_list_filters_and_pages_without_javascript(deps: Deps) -> None:
    ids = [await _task(deps, 100 + n % 3, olt="olt-a" if n % 2 else "olt-b") for n in range(60)]
    failed = await _task(deps, 555, state="failed")
    with trio.fail_after(20):
        async with serving(deps) as client:
            await _signed_in(deps, client)
            first = await client.get("/console/tasks")
            assert first.status_code == 200
            shown = [i for i in [*ids, failed] if f'data-task="{i}"' in first.text]
            assert len(shown) == 50 and failed in shown  # newest first, one page
            assert 'data-test-id="older"' in first.text
            older = await client.get("/console/tasks", params={"before_id": min(shown)})
            rest = [i for i in ids if f'data-task="{i}"' in older.text]
            assert sorted(rest + shown) == sorted([*ids, failed])
            only = await client.get("/console/tasks", params={"state": "failed"})
            assert f'data-task="{failed}"' in only.text and only.text.count("data-task=") == 1
            by_olt = await client.get("/console/tasks", params={"olt": "olt-b", "service_id": 101})
            expected = {i for n, i in enumerate(ids) if n % 2 == 0 and 100 + n % 3 == 101}
            assert {i for i in ids if f'data-task="{i}"' in by_olt.text} == expected
            assert_problem(await client.get("/console/tasks", params={"state": "lost"}), 400)
            assert_problem(await client.get("/console/tasks", params={"service_id": "x"}), 400)


async def test_a_failed_task_is_retried_and_a_queued_one_is_not(deps: Deps) -> None:
    failed = await _task(deps, 7, state="failed")
    queued = await _task(deps, 8)
    with trio.fail_after(20):
        async with serving(deps) as client:
            await _signed_in(deps, client)
            page = await client.get(f"/console/tasks/{failed}")
            assert "no such ONU" in page.text and 'data-test-id="retry"' in page.text
            r = await client.post(
                f"/console/tasks/{failed}/retry", data={"csrf_token": csrf_token(page.text)}
            )
            assert r.status_code == 303
            after = await client.get(r.headers["location"])
            assert "is queued again" in after.text
            detail = await tasks.get(deps.db, failed)
            assert detail is not None and detail.task.state == "queued"
            assert detail.events[-1].kind == "retry_requested"
            assert "console:alice" in str(detail.events[-1].detail)
            # The reconnect queue got it (what the worker reads).
            depth = await deps.db.fetchval("SELECT queue_length FROM pgmq.metrics('reconnect')")
            assert depth == 3  # the two created, and the retry's message
            token = await page_csrf(client, f"/console/tasks/{queued}")
            r = await client.post(f"/console/tasks/{queued}/retry", data={"csrf_token": token})
            refused = await client.get(r.headers["location"])
            assert "only a failed task can be retried" in refused.text
            assert_problem(await client.get("/console/tasks/99999"), 404)
            assert_problem(
                await client.post("/console/tasks/99999/retry", data={"csrf_token": token}), 404
            )


async def test_uisp_webhooks_list_their_outcome_and_replay(deps: Deps) -> None:
    hook = uuid.uuid4()
    await webhooks.store(deps.db, hook, "service.suspend_cancel", "service", 12, "unsuspend", {})
    await deps.db.execute(
        "UPDATE uisp_webhooks SET state = 'failed', last_error = 'UISP said 401' WHERE uuid = $1",
        hook,
    )
    with trio.fail_after(20):
        async with serving(deps) as client:
            await _signed_in(deps, client)
            page = await client.get("/console/uisp", params={"state": "failed"})
            assert f'data-webhook="{hook}"' in page.text and "UISP said 401" in page.text
            r = await client.post(
                f"/console/uisp/{hook}/replay", data={"csrf_token": csrf_token(page.text)}
            )
            assert r.status_code == 303
            assert "queued again" in (await client.get(r.headers["location"])).text
            row = await webhooks.get(deps.db, hook)
            assert row is not None and row.state == "queued" and row.replays == 1
            token = csrf_token(page.text)
            missing = await client.post(
                f"/console/uisp/{uuid.uuid4()}/replay", data={"csrf_token": token}
            )
            assert_problem(missing, 404)


async def test_onu_overrides_are_set_and_removed(deps: Deps) -> None:
    box = SecretBox(bytes(range(32)))
    await devices.add_device(
        deps.db,
        box,
        name="olt-a",
        vendor="huawei",
        host="127.0.0.1",
        port=22,
        username="u",
        password="p",
        host_key_check=False,
    )
    with trio.fail_after(20):
        async with serving(deps) as client:
            await _signed_in(deps, client)
            token = await page_csrf(client, "/console/overrides")
            form = {"csrf_token": token, "service_id": "42", "olt_name": "olt-a", "onu": "0/1/3:12"}
            r = await client.post("/console/overrides", data=form)
            assert r.status_code == 303
            assert await devices.get_override(deps.db, 42) == ("olt-a", "0/1/3:12")
            page = await client.get(r.headers["location"])
            assert 'data-service="42"' in page.text and "Override saved" in page.text
            # A bad ONU says what to fix and stores nothing.
            bad = await client.post(
                "/console/overrides", data={**form, "service_id": "43", "onu": "x"}
            )
            assert bad.status_code == 400 and 'data-test-id="override-error"' in bad.text
            assert await devices.get_override(deps.db, 43) is None
            r = await client.post("/console/overrides/42/remove", data={"csrf_token": token})
            assert "Override removed" in (await client.get(r.headers["location"])).text
            assert await devices.get_override(deps.db, 42) is None
            # The OLT page lists the device; without a pool in this process it says so.
            olts = await client.get("/console/olts")
            assert 'data-olt="olt-a"' in olts.text and "No OLT pool runs" in olts.text
