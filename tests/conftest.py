"""Shared fixtures. Real PostgreSQL: TEST_DATABASE_URL, else an embedded one (tests/pg.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import trio_asyncio

from daemon.platform.db import Database
from tests import localstripe as localstripe_server
from tests.browser import browser_fixture
from tests.browser import pytest_runtest_makereport as pytest_runtest_makereport
from tests.pg import PgServer, pg_server


@pytest.fixture
async def aio_loop() -> AsyncIterator[None]:
    """A trio-asyncio loop around the test, for asyncpg / asyncssh through the bridge."""
    async with trio_asyncio.open_loop():
        yield


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    with pg_server() as server:
        yield server


@pytest.fixture
def db_url(pg: PgServer) -> Iterator[str]:
    """A fresh, migrated database (PGMQ installed, queues created) for this test."""
    with pg.database() as url:
        yield url


@pytest.fixture
async def db(db_url: str, aio_loop: None) -> AsyncIterator[Database]:
    async with Database.open(db_url, min_size=1, max_size=4) as database:
        yield database


@pytest.fixture(scope="session")
def localstripe() -> Iterator[localstripe_server.LocalStripe]:
    """One localstripe server (a fake Stripe API) for the whole session; skips without it."""
    reason = localstripe_server.available()
    if reason is not None:
        pytest.skip(reason)
    with localstripe_server.running_localstripe() as server:
        yield server


# A headless Chromium per test (tests/browser.py); skips with what to install when absent.
browser = browser_fixture()
