"""The database goes away or hangs, behind a real TCP proxy: what the daemon says and does."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import pytest
import trio

from daemon.platform.db import Database, DatabaseError, availability
from daemon.platform.deps import Deps
from tests.http_fixtures import WEBHOOK_PATH, assert_problem, make_deps, serving, uisp_event
from tests.tcp_proxy import Proxy, proxy_for


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self, prefix: str) -> list[str]:
        return [r.getMessage() for r in self.records if r.name.startswith(prefix)]


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    # On the loggers themselves: what any handler of the daemon's would be offered.
    loggers = [logging.getLogger(n) for n in ("asyncpg", "daemon.platform.db")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)


@pytest.fixture
async def proxy(db_url: str, aio_loop: None) -> AsyncIterator[Proxy]:
    async with proxy_for(db_url) as running:
        yield running


@pytest.fixture
async def proxied_db(db_url: str, proxy: Proxy) -> AsyncIterator[Database]:
    availability.succeeded()  # no outage carried over from another test
    async with Database.open(proxy.url(db_url), min_size=2, max_size=4) as database:
        yield database


async def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(
    proxied_db: Database, proxy: Proxy, records: Records
) -> None:
    with trio.fail_after(30):
        assert await proxied_db.fetchval("SELECT 1") == 1
        proxy.down()  # every connection dropped, new ones refused
        failures = 0
        # Six seconds of outage: asyncpg retries the pool floor at 1, 2, 4 s (each a
        # WARNING with a traceback before), and the daemon keeps trying too.
        end = trio.current_time() + 6
        while trio.current_time() < end:
            with pytest.raises(DatabaseError):
                await proxied_db.fetchval("SELECT 1")
            failures += 1
            await trio.sleep(0.25)
        proxy.up()
        assert await proxied_db.fetchval("SELECT 1") == 1
    assert failures > 10
    assert records.lines("asyncpg") == []
    lines = records.lines("daemon.platform.db")
    assert len(lines) == 2, lines
    assert lines[0].startswith("database unavailable: ")
    assert lines[1].startswith("database available again after ")


async def test_a_frozen_database_cannot_hold_a_call_past_its_deadline(
    proxied_db: Database, proxy: Proxy
) -> None:
    assert await proxied_db.fetchval("SELECT 1") == 1
    proxy.freeze()  # connections stay open, no byte goes through
    # The caller's deadline fires as written (before: after 30 s, command_timeout).
    with trio.fail_after(10):
        with pytest.raises(trio.TooSlowError), trio.fail_after(2):
            await proxied_db.fetchval("SELECT 1")
        with pytest.raises(trio.TooSlowError), trio.fail_after(2):
            async with proxied_db.transaction() as conn:
                await conn.fetchval("SELECT 1")
    proxy.up()
    with trio.fail_after(10):
        # The connections that were cut short were replaced, not handed back stuck.
        assert [await proxied_db.fetchval("SELECT $1::int", n) for n in range(6)] == list(range(6))


async def test_probes_and_webhooks_answer_in_time_while_the_database_hangs(
    proxied_db: Database, proxy: Proxy
) -> None:
    deps: Deps = make_deps(proxied_db)
    deps.health.set_state("http_ingress", "running")
    async with serving(deps) as client:
        with trio.fail_after(10):
            assert (await client.get("/readyz")).status_code == 200
        proxy.freeze()
        with trio.fail_after(2 + 2):  # /readyz gives the database 2 s
            ready = await client.get("/readyz")
        assert_problem(ready, 503)
        with trio.fail_after(8):  # UISP gives up at 10 s
            hook = await client.post(WEBHOOK_PATH, json=uisp_event())
        assert_problem(hook, 503)
        proxy.up()
        with trio.fail_after(10):
            assert (await client.post(WEBHOOK_PATH, json=uisp_event())).status_code == 200
