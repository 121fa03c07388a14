"""``/openapi.json`` is generated from the routes' declared shapes and covers every route."""

from __future__ import annotations

import re
from typing import Any

import trio
from quart_schema.openapi import QUART_SCHEMA_HIDDEN_ATTRIBUTE

from daemon.platform.deps import Deps
from daemon.platform.http import create_app
from tests.http_fixtures import (
    ADMIN,
    WEBHOOK_PATH,
    assert_problem,
    deps_fixture,  # noqa: F401 (the "deps" fixture)
    serving,
)

# Routes left out of the document on purpose: the document itself, and the twin of the
# webhook route that answers every other method like an unknown URL.
HIDDEN = {"openapi", "uisp_webhook.uisp_webhook_other_methods"}


def operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (path, method.upper())
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    }


async def test_every_route_is_in_the_openapi_document(deps: Deps) -> None:
    with trio.fail_after(20):
        async with serving(deps) as client:
            response = await client.get("/openapi.json")
        assert response.status_code == 200
        document = response.json()
        assert document["openapi"].startswith("3.1")

        app = create_app(deps)
        expected = set()
        hidden = set()
        for rule in app.url_map.iter_rules():
            if getattr(app.view_functions[rule.endpoint], QUART_SCHEMA_HIDDEN_ATTRIBUTE, False):
                hidden.add(rule.endpoint)
                continue
            path = re.sub(r"<(?:[^:>]*:)?([^>]+)>", r"{\1}", rule.rule)
            expected |= {(path, m) for m in rule.methods or () if m not in {"HEAD", "OPTIONS"}}
        # The console's HTML pages are hidden by design (tests/test_console_auth.py).
        assert {e for e in hidden if not e.startswith("console.")} == HIDDEN
        assert operations(document) == expected
        # The ones the issue names, so an empty app could not pass the comparison above.
        assert {
            ("/webhooks/uisp/{token}", "POST"),
            ("/api/v1/tasks", "GET"),
            ("/api/v1/tasks/{task_id}", "GET"),
            ("/api/v1/tasks/{task_id}/retry", "POST"),
            ("/api/v1/queues", "GET"),
            ("/api/v1/events", "GET"),
            ("/healthz", "GET"),
            ("/readyz", "GET"),
            ("/metrics", "GET"),
        } <= expected


async def test_the_document_shows_shapes_scopes_and_problem_types(deps: Deps) -> None:
    with trio.fail_after(20):
        async with serving(deps) as client:
            document = (await client.get("/openapi.json")).json()
        tasks = document["paths"]["/api/v1/tasks"]["get"]
        params = {p["name"]: p for p in tasks["parameters"]}
        assert set(params) == {"state", "limit", "before_id"}
        assert params["limit"]["schema"]["maximum"] == 200
        assert tasks["security"] == [{"bearer": ["admin"]}]
        assert "application/problem+json" in tasks["responses"]["400"]["content"]
        assert "application/json" in tasks["responses"]["200"]["content"]

        webhook = document["paths"]["/webhooks/uisp/{token}"]
        assert set(webhook) == {"post"}
        body = webhook["post"]["requestBody"]["content"]["application/json"]["schema"]
        body = document["components"]["schemas"].get(body.get("$ref", "").rsplit("/", 1)[-1], body)
        assert {"uuid", "eventName", "entity", "changeType"} <= set(body["required"])
        assert "415" in webhook["post"]["responses"]
        assert webhook["post"]["requestBody"]["required"] is True
        assert "security" not in webhook["post"]

        events = document["paths"]["/api/v1/events"]["get"]["responses"]["200"]["content"]
        assert set(events) == {"text/event-stream"}
        metrics = document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
        assert [kind.split(";")[0] for kind in metrics] == ["text/plain"]


async def test_no_html_documentation_pages(deps: Deps) -> None:
    with trio.fail_after(20):
        async with serving(deps) as client:
            for path in ("/docs", "/redocs", "/scalar"):
                assert_problem(await client.get(path), 404)
            # quart-schema's own 400 page is HTML; ours is a problem naming the field.
            bad = await client.get("/api/v1/tasks?limit=0", headers=ADMIN)
            assert assert_problem(bad, 400)["field"] == "limit"
            wrong_type = await client.post(WEBHOOK_PATH, content=b"{}")
            assert_problem(wrong_type, 415)


async def test_the_document_is_built_once(deps: Deps) -> None:
    """~30 ms of CPU each time, on an open URL: built on first use, then served as is."""
    app = create_app(deps)
    provider = app.extensions["QUART_SCHEMA"].openapi_provider
    async with app.app_context():
        assert provider.schema() is provider.schema()
