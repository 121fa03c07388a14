"""The console in a real Chromium against the real daemon (fake UISP, OLT simulator).

Scenarios: an operator signs in and the overview shows the actors; a webhook POSTed while
the overview is open appears in its live feed without a reload; a failed task retried
from its page changes state on the page; a form stripped of its CSRF token is refused.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from daemon.console import accounts
from tests.browser import Browser
from tests.console_fixtures import OPERATOR, PASSWORD, browser_sign_in
from tests.flow_harness import World, daemon, world
from tests.http_fixtures import uisp_event


@pytest.fixture
async def w(db_url: str, tmp_path: Path, aio_loop: None) -> AsyncIterator[World]:
    async with world(db_url, tmp_path) as running_world:
        await accounts.add_operator(running_world.db, OPERATOR, PASSWORD)
        yield running_world


async def test_an_operator_signs_in_and_the_overview_shows_the_actors(
    w: World, browser: Browser
) -> None:
    with trio.fail_after(60):
        async with daemon(w) as flow:
            await browser_sign_in(browser, flow.running.base_url)
            assert browser.url.endswith("/console/")
            actors = await browser.text("[data-test-id=actors]")
            for name in ("http_ingress", "olt_pool", "consumer:reconnect", "scheduler"):
                assert name in actors
            assert "running" in actors
            queues = await browser.text("[data-test-id=queues]")
            assert "reconnect" in queues and "uisp_events" in queues
            assert "olt-hw" in await browser.text("[data-test-id=olt-status]")
            assert await browser.console_errors() == []


async def test_the_live_feed_shows_a_webhook_arriving(w: World, browser: Browser) -> None:
    with trio.fail_after(60):
        async with daemon(w) as flow:
            await browser_sign_in(browser, flow.running.base_url)
            await browser.wait_text("[data-test-id=feed-state]", "^Live")
            assert await browser.find_all("[data-test-id=feed] li") == []
            body = uisp_event("service.suspend_cancel", 1)
            r = await flow.post_webhook(body)
            assert r.status_code == 200, r.text
            item = await browser.wait_text("[data-test-id=feed] li", "webhook.received")
            assert body["uuid"] in item
            assert browser.url.endswith("/console/")  # no reload: the same page got it


async def test_a_form_without_its_csrf_token_is_refused(w: World, browser: Browser) -> None:
    with trio.fail_after(60):
        async with daemon(w) as flow:
            await browser_sign_in(browser, flow.running.base_url)
            # Strip the hidden token from the sign-out form, then submit it.
            await browser.script(
                "document.querySelector('.signout input[name=csrf_token]').remove()"
            )
            await browser.click("[data-test-id=sign-out]")
            text = await browser.wait_text("body", "CSRF")
            problem = json.loads(text)
            assert problem["status"] == 403
            # Still signed in: the refused form changed nothing.
            await browser.get(f"{flow.running.base_url}/console/")
            await browser.find("[data-test-id=sign-out]")


async def test_a_failed_task_retried_from_its_page_changes_state_on_the_page(
    w: World, browser: Browser
) -> None:
    hw = w.devices["olt-hw"]
    w.fake.services[1]["attributes"][1]["value"] = "0/1/3:99"  # an ONU the OLT lacks
    with trio.fail_after(60):
        async with daemon(w) as flow:
            await w.fake.record_payment(1, 30.0)
            [task] = await flow.wait_task_state("failed")
            await browser_sign_in(browser, flow.running.base_url)
            # The overview lists it among the last failures; its link opens the task.
            await browser.click(f"[data-test-id=failed-tasks] a[href$='/tasks/{task['id']}']")
            await browser.wait_text("[data-test-id=task-state]", "^failed$")
            # The operator provisions the ONU on the OLT, then retries from the page.
            hw.add_onu(0, 1, 3, 99, active=False)
            await browser.click("[data-test-id=retry]")
            # queued, then (the daemon runs it; the page follows the bus) succeeded.
            await browser.wait_text("[data-test-id=task-state]", "^succeeded$", seconds=30)
            history = await browser.text("[data-test-id=history]")
            assert "retry_requested" in history
            row = await flow.db.fetchrow(
                "SELECT detail FROM task_events WHERE task_id = $1 AND kind = 'retry_requested'",
                task["id"],
            )
            assert "console:alice" in str(row["detail"])
            assert await browser.console_errors() == []


async def test_an_olt_connection_test_from_the_page_opens_a_session(
    w: World, browser: Browser
) -> None:
    with trio.fail_after(60):
        async with daemon(w) as flow:
            await browser_sign_in(browser, flow.running.base_url)
            await browser.get(f"{flow.running.base_url}/console/olts")
            await browser.wait_text("[data-olt=olt-hw]", "idle")
            await browser.click("[data-test-id=test-olt-hw]")
            result = await browser.wait_text("[data-test-id=olt-test-result]", "OK", seconds=30)
            assert "olt-hw" in result
            # The pool kept the session it logged in with; the overview says so.
            await browser.wait_text("[data-olt=olt-hw]", "open")
            await browser.get(f"{flow.running.base_url}/console/")
            await browser.wait_text("[data-test-id=olt-status] [data-olt=olt-hw]", "open")
            assert await browser.console_errors() == []


async def test_the_pages_fit_a_phone_screen(w: World, browser: Browser) -> None:
    w.fake.services[1]["attributes"][1]["value"] = "0/1/3:99"  # a failed task with an error
    with trio.fail_after(60):
        async with daemon(w) as flow:
            await w.fake.record_payment(1, 30.0)
            [task] = await flow.wait_task_state("failed")
            await browser.call(browser.driver.set_window_size, 390, 844)
            await browser_sign_in(browser, flow.running.base_url)
            for path in (
                "/console/",
                "/console/tasks",
                f"/console/tasks/{task['id']}",
                "/console/uisp",
                "/console/olts",
                "/console/overrides",
            ):
                await browser.get(f"{flow.running.base_url}{path}")
                await browser.find("main h1")
                overflow = await browser.script(
                    "return document.documentElement.scrollWidth - window.innerWidth"
                )
                assert overflow <= 0, f"{path} is {overflow} px wider than the screen"
            assert await browser.console_errors() == []
