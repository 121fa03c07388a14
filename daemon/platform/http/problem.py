"""Response helpers: RFC 9457 problem details and JSON that knows our types.

Consumes plain Python values (dicts of rows from asyncpg: datetimes, UUIDs, Decimals).
Produces Quart responses: ``problem()`` answers ``application/problem+json`` with ``type``,
``title``, ``status`` and ``detail`` (plus optional extension members), ``json_response()``
answers ``application/json``. Every error the HTTP ingress returns goes through
``problem()`` so clients (and UISP's webhook log) never see HTML.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
import uuid
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from flask.json.provider import DefaultJSONProvider
from quart import Response

PROBLEM_TYPE = "application/problem+json"
JSON_TYPE = "application/json"

# The detail every 404 carries, whether the route is unknown or a webhook token is wrong:
# one body for both, so a wrong token cannot be told apart from a missing endpoint.
NOT_FOUND_DETAIL = "The requested URL was not found on this server."
# How long a client should wait before trying again when the database is unreachable.
RETRY_AFTER_SECONDS = 5


class Problem(Exception):
    """Raise from a view to answer with a problem document (rendered by the app's handler)."""

    def __init__(
        self,
        status: int,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail or HTTPStatus(status).phrase)
        self.status = status
        self.detail = detail
        self.headers = dict(headers or {})
        self.extensions = extensions

    def response(self) -> Response:
        return problem(self.status, self.detail, headers=self.headers, **self.extensions)


def json_default(value: Any) -> Any:
    """``json.dumps`` fallback: ISO 8601 datetimes, UUID strings, exact decimals as strings."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        # A string keeps every digit; money is integer minor units anyway.
        return str(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(value: Any) -> str:
    """Compact JSON with ``json_default``; NaN/Infinity are refused (they are not JSON)."""
    return json.dumps(value, default=json_default, allow_nan=False, separators=(",", ":"))


class JSONProvider(DefaultJSONProvider):
    """Quart's ``jsonify`` and dict return values, with ``json_default`` instead of Flask's
    HTTP-date datetimes."""

    default = staticmethod(json_default)
    sort_keys = False
    ensure_ascii = False


def json_response(
    body: Any, status: int = 200, *, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(dumps(body), status=status, headers=dict(headers or {}), mimetype=JSON_TYPE)


def problem(
    status: int,
    detail: str | None = None,
    *,
    title: str | None = None,
    type_: str = "about:blank",
    headers: Mapping[str, str] | None = None,
    **extensions: Any,
) -> Response:
    """An RFC 9457 problem response.

    ``type`` stays ``about:blank`` (the status code says it all), so ``title`` is the HTTP
    reason phrase as the RFC asks; ``detail`` is the human explanation for this occurrence.
    """
    phrase = HTTPStatus(status).phrase
    body: dict[str, Any] = {
        "type": type_,
        "title": title or phrase,
        "status": status,
        "detail": detail if detail is not None else phrase,
    }
    for key, value in extensions.items():
        if key not in body:
            body[key] = value
    response = Response(dumps(body), status=status, headers=dict(headers or {}))
    # Set after construction: Quart would append "; charset=utf-8" to a text mimetype only.
    response.headers["Content-Type"] = PROBLEM_TYPE
    return response


def not_found() -> Response:
    return problem(404, NOT_FOUND_DETAIL)


def database_unavailable() -> Response:
    """503 with ``Retry-After``: the request was fine, PostgreSQL was not."""
    return problem(
        503,
        "the database is unavailable; try again later",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )
