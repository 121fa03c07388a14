"""Fixtures for the HTTP tests: a ``Deps`` on the test's real database, and a helper
that runs the real ``http_ingress`` actor on an ephemeral port for the duration of a test.

Import ``deps_fixture`` into a test module to get the ``deps`` fixture.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import pytest
import trio

from daemon.actors import http_ingress
from daemon.platform.config import Config, HttpConfig, UispConfig
from daemon.platform.db import Database
from daemon.platform.deps import Deps
from daemon.platform.events import EventBus
from daemon.platform.health import Health
from daemon.platform.metrics import Metrics

ADMIN_TOKEN = "t"
WEBHOOK_TOKEN = "s3cret"
WEBHOOK_PATH = f"/webhooks/uisp/{WEBHOOK_TOKEN}"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def make_deps(db: Database, **sections: Any) -> Deps:
    config = Config().replace(
        http=HttpConfig(port=0, admin_token=ADMIN_TOKEN),
        uisp=UispConfig(webhook_token=WEBHOOK_TOKEN),
    )
    if sections:
        config = config.replace(**sections)
    return Deps(config=config, db=db, metrics=Metrics(), events=EventBus(), health=Health())


@pytest.fixture(name="deps")
def deps_fixture(db: Database) -> Deps:
    return make_deps(db)


@asynccontextmanager
async def serving(deps: Deps) -> AsyncIterator[httpx.AsyncClient]:
    """Run the ingress actor on port 0; yield a client for it; shut it down gracefully.

    The shutdown is the daemon's own (set the event, hypercorn drains and ``run``
    returns), so a test that leaves something hanging fails its ``fail_after`` guard.
    """
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        base_url = await nursery.start(partial(http_ingress.run, deps, shutdown=shutdown))
        assert base_url.startswith("http://127.0.0.1:")
        try:
            async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
                yield client
        finally:
            shutdown.set()


def uisp_event(
    event_name: str = "service.suspend_cancel",
    entity_id: Any = 1234,
    *,
    event_uuid: str | None = None,
    change_type: str = "unsuspend",
    entity: str = "service",
) -> dict[str, Any]:
    """A UISP webhook body as UISP sends it (shared/reference/uisp.md)."""
    return {
        "uuid": event_uuid or str(uuid.uuid4()),
        "changeType": change_type,
        "entity": entity,
        "entityId": entity_id,
        "eventName": event_name,
        "extraData": {"entity": {"id": entity_id, "status": 1}, "entityBeforeEdit": None},
    }


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The response is an RFC 9457 problem with that status; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"] == "about:blank"
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    return body
