"""A real headless Chromium for the browser tests, driven through selenium.

Selenium's calls block, and the daemon under test runs in the test's own trio loop, so
every browser call goes through ``trio.to_thread.run_sync``: the page can then talk to the
daemon while selenium waits for it. Debian's ``chromium`` + ``chromium-driver`` are used
(``.ci/run`` installs them); without them the tests that ask for ``browser`` skip with a
line saying what to install. Playwright is not used: importing trio_asyncio in the same
process breaks its sync API (shared/reference/verified-stack.md).

On a failed test the ``browser`` fixture saves a screenshot and the page's HTML under
``$PAYMENTD_TEST_ARTIFACTS`` (default ``tests/.artifacts``) and prints where.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

T = TypeVar("T")

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("PAYMENTD_TEST_ARTIFACTS", Path(__file__).parent / ".artifacts"))


def available() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install -e '.[test]'"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.exists(path) or shutil.which(os.path.basename(path))):
            return f"{path} is missing: apt-get install chromium chromium-driver"
    return None


def _start_driver(width: int, height: int) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    found = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    options.binary_location = found or ""
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--disable-extensions",
        "--no-first-run",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver_path = CHROMEDRIVER if os.path.exists(CHROMEDRIVER) else shutil.which("chromedriver")
    # An explicit driver path keeps Selenium Manager from trying the network.
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(20)
    driver.set_script_timeout(20)
    return driver


class Browser:
    """An async face over one selenium driver; every call runs in a worker thread."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        # One thread at a time: a webdriver session is not safe to drive concurrently.
        self._limiter = trio.CapacityLimiter(1)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def get(self, url: str) -> None:
        await self.call(self.driver.get, url)

    async def script(self, source: str, *args: Any) -> Any:
        return await self.call(self.driver.execute_script, source, *args)

    @property
    def url(self) -> str:
        return str(self.driver.current_url)

    async def source(self) -> str:
        return await self.call(lambda: str(self.driver.page_source))

    async def find(self, css: str, *, seconds: float = 10) -> Any:
        """The first element matching ``css``, waiting for it to appear (and be displayed)."""
        from selenium.webdriver.common.by import By

        def present() -> Any:
            for element in self.driver.find_elements(By.CSS_SELECTOR, css):
                if element.is_displayed():
                    return element
            return None

        return await self.wait(present, seconds=seconds, what=f"an element {css!r}")

    async def find_all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return await self.call(self.driver.find_elements, By.CSS_SELECTOR, css)

    async def click(self, css: str, *, seconds: float = 10) -> None:
        element = await self.find(css, seconds=seconds)
        await self.call(element.click)

    async def fill(self, css: str, text: str) -> None:
        element = await self.find(css)
        await self.call(element.clear)
        await self.call(element.send_keys, text)

    async def text(self, css: str = "body") -> str:
        element = await self.find(css)
        return await self.call(lambda: str(element.text))

    async def wait_text(self, css: str, pattern: str, *, seconds: float = 10) -> str:
        """Wait until the element's visible text matches the regex ``pattern``; return it."""
        from selenium.webdriver.common.by import By

        regex = re.compile(pattern)

        def matches() -> str | None:
            for element in self.driver.find_elements(By.CSS_SELECTOR, css):
                text = element.text
                if regex.search(text):
                    return str(text)
            return None

        return await self.wait(matches, seconds=seconds, what=f"{css!r} matching {pattern!r}")

    async def wait(
        self, probe: Callable[[], T | None], *, seconds: float = 10, what: str = "a condition"
    ) -> T:
        """Poll ``probe`` in the browser thread until it returns something truthy."""
        from selenium.common.exceptions import StaleElementReferenceException

        last: BaseException | None = None
        with trio.move_on_after(seconds):
            while True:
                try:
                    result = await self.call(probe)
                except StaleElementReferenceException as exc:  # the page re-rendered under us
                    last = exc
                    result = None
                if result:
                    return result
                await trio.sleep(0.05)
        detail = f" ({last!r})" if last else ""
        raise AssertionError(f"timed out after {seconds} s waiting for {what}: {self.url}{detail}")

    async def console_errors(self) -> list[str]:
        """The page's JavaScript console errors so far (SEVERE entries)."""
        logs = await self.call(self.driver.get_log, "browser")
        return [entry["message"] for entry in logs if entry.get("level") == "SEVERE"]

    def save_artifacts(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:120]
        shot = ARTIFACTS / f"{stem}.png"
        self.driver.save_screenshot(str(shot))
        (ARTIFACTS / f"{stem}.html").write_text(self.driver.page_source)
        return shot


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Remember each phase's report on the item, so the fixture knows the test failed."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)


def browser_fixture(width: int = 1280, height: int = 900) -> Any:
    """Make a function-scoped ``browser`` fixture (a fresh Chromium profile per test)."""

    @pytest.fixture(name="browser")
    def browser(request: pytest.FixtureRequest) -> Iterator[Browser]:
        reason = available()
        if reason is not None:
            pytest.skip(reason)
        driver = _start_driver(width, height)
        try:
            yield Browser(driver)
        finally:
            report = getattr(request.node, "rep_call", None)
            if report is not None and report.failed:
                try:
                    shot = Browser(driver).save_artifacts(request.node.nodeid)
                    print(f"browser screenshot: {shot}")
                except Exception as exc:  # a failed screenshot must not hide the failure
                    print(f"browser screenshot failed: {exc!r}")
            driver.quit()

    return browser
