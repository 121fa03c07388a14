"""``/console/docs``: how a merchant's developer integrates with this daemon.

API keys and scopes, ``Idempotency-Key``, creating a payment, ``Prefer: wait``, the hosted
checkout and ``paymentd.js``, and verifying our webhook signatures (Python with the
``standardwebhooks`` package and with plain ``hmac``, Node with ``crypto``). The code
samples are files in ``samples/`` rendered as they are, and a test runs the Python ones
(taken from the rendered page) against a delivery the dispatcher really signed, so the
page cannot show code that does not verify. The route list is read from the live
OpenAPI document (``/openapi.json``), so it cannot drift from the API either.

Behind the console's sign-in like every page: the operator hands a key and this page to
the integrator (the page holds nothing secret; ``/openapi.json`` is public already).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from quart import Blueprint, current_app, render_template, request

from daemon.console.context import Console
from daemon.platform import auth

NAV = (("console.docs", "Docs"),)
SAMPLES = Path(__file__).parent / "samples"
SAMPLE_FILES = {
    "python-standardwebhooks": "verify_standardwebhooks.py.sample",
    "python-hmac": "verify_hmac.py.sample",
    "node": "verify.js.sample",
}
_METHODS = ("get", "post", "put", "patch", "delete")


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    summary: str


@cache
def sample(name: str) -> str:
    return (SAMPLES / SAMPLE_FILES[name]).read_text(encoding="utf-8")


def routes(document: dict[str, Any]) -> list[Route]:
    """The documented operations, by path (the console's own pages are not an API)."""
    out: list[Route] = []
    for path, item in sorted(document.get("paths", {}).items()):
        if path.startswith("/console"):
            continue
        for method in _METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            summary = operation.get("summary") or operation.get("description") or ""
            out.append(Route(method.upper(), path, summary.strip().split("\n")[0]))
    return out


def register(bp: Blueprint, console: Console) -> None:
    del console

    @bp.get("/docs")
    async def docs() -> str:
        document = current_app.extensions["QUART_SCHEMA"].openapi_provider.schema()
        base = request.host_url.rstrip("/")
        return await render_template(
            "console/docs.html",
            base=base,
            routes=routes(document),
            api_version=document.get("info", {}).get("version", ""),
            scopes=auth.SCOPES,
            samples={name: sample(name) for name in SAMPLE_FILES},
            # The hosted checkout and its SDK, where this daemon serves them.
            sdk=any(rule.rule == "/paymentd.js" for rule in current_app.url_map.iter_rules()),
        )
