"""Request and response shapes, declared once: what quart-schema documents and we enforce.

Consumes request bodies and query strings. Produces validated pydantic models, or a
``Problem(400/415)`` naming the field; never Quart's or quart-schema's default (HTML) body.

Bodies are read by ``json_body`` here rather than by ``quart_schema.validate_request``,
because Quart's JSON parsing accepts what PostgreSQL and the rest of the daemon cannot
handle (defect 18): ``\\u0000`` (jsonb refuses it), lone surrogates (UTF-8 refuses them),
``1e400`` (infinity), integers of thousands of digits (``int()`` raises ``ValueError``
past 4,300) and deep nesting (``RecursionError``). It also parses any Content-Type. The
route still declares its body with ``declare(request=Model)`` so ``/openapi.json`` shows it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from quart import request
from quart_schema.validation import (
    QUART_SCHEMA_REQUEST_ATTRIBUTE,
    QUART_SCHEMA_RESPONSE_ATTRIBUTE,
    DataSource,
    RequestSchemaValidationError,
)

from daemon.platform.http.problem import Problem

M = TypeVar("M", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])

# Deeper than any document we expect (UISP's are 4 levels), far below the recursion limit.
MAX_DEPTH = 32
# Wider than a 128-bit integer; nothing we receive needs more, and int() of a long digit
# string costs quadratic time.
MAX_INTEGER_DIGITS = 40


class BadBody(ValueError):
    """The body is not acceptable JSON; ``field`` names the offending member (or "body")."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail)
        self.field = field

    def problem(self) -> Problem:
        return Problem(400, str(self), field=self.field)


def _reject_constant(name: str) -> Any:
    raise BadBody("body", f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadBody("body", f"the number {text[:40]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise BadBody("body", f"an integer has more than {MAX_INTEGER_DIGITS} digits")
    return int(text)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise BadBody(key, f"duplicate key {key!r}")
        obj[key] = value
    return obj


_DECODER = json.JSONDecoder(
    object_pairs_hook=_no_duplicate_keys,
    parse_constant=_reject_constant,
    parse_float=_finite_float,
    parse_int=_bounded_int,
)


def _bad_text(value: str) -> str | None:
    if "\x00" in value:
        return "contains \\u0000, which cannot be stored"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (not valid Unicode)"
    return None


def _check_tree(document: Any) -> None:
    """Depth and string checks, iteratively (a recursive walk would hit the limit itself)."""
    stack: list[tuple[Any, int, str]] = [(document, 1, "body")]
    while stack:
        value, depth, where = stack.pop()
        if isinstance(value, dict | list) and depth > MAX_DEPTH:
            raise BadBody("body", f"the body is nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, dict):
            for key, item in value.items():
                problem = _bad_text(key)
                if problem is not None:
                    raise BadBody("body", f"a key {problem}")
                # A member of the top-level object is named; deeper ones report the top one.
                stack.append((item, depth + 1, key if depth == 1 else where))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, where) for item in value)
        elif isinstance(value, str):
            problem = _bad_text(value)
            if problem is not None:
                raise BadBody(where, f"{where} {problem}")


def parse_json(raw: bytes) -> Any:
    """Parse a body strictly; raises ``BadBody`` naming the bad field."""
    try:
        text = raw.decode("utf-8")
        if text.startswith("\ufeff"):  # as json.loads does for str
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        document = _DECODER.decode(text)
    except UnicodeDecodeError:
        raise BadBody("body", "the body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise BadBody("body", f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadBody("body", f"the body is nested more than {MAX_DEPTH} levels deep") from None
    # The walk is only needed when the text could hold what it looks for: \u0000 and lone
    # surrogates can only arrive as \u escapes (raw ones are not valid JSON or UTF-8),
    # and a document cannot nest deeper than it has brackets. Most bodies skip it.
    if "\\u" in text or text.count("{") + text.count("[") > MAX_DEPTH:
        _check_tree(document)
    return document


def is_json_type(content_type: str | None) -> bool:
    """``application/json`` (any parameters, e.g. charset) or a ``+json`` suffix type."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    kind, _, subtype = media.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def require_json_type() -> None:
    """``Problem(415)`` unless the request says its body is JSON."""
    if not is_json_type(request.headers.get("Content-Type")):
        raise Problem(
            415,
            "send the body as Content-Type: application/json",
            headers={"Accept-Post": "application/json"},
        )


def validation_problem(error: ValidationError) -> Problem:
    """The first pydantic error as a 400 problem whose ``field`` is the member's path."""
    first = error.errors(include_url=False)[0]
    path = [str(part) for part in first["loc"]]
    field = ".".join(path) if path else "body"
    return Problem(400, f"{field}: {first['msg']}", field=field)


def schema_problem(error: RequestSchemaValidationError) -> Problem:
    """quart-schema's query/body validation error as our 400 problem."""
    inner = error.validation_error
    if isinstance(inner, ValidationError):
        return validation_problem(inner)
    if isinstance(inner, TypeError | ValueError):  # e.g. a query model given a non-dict
        return Problem(400, str(inner), field="query")
    return Problem(400, "the request does not match its schema")


def load(model: type[M], document: Any) -> M:
    """``document`` (already parsed) as ``model``; ``Problem(400)`` naming the field."""
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise validation_problem(exc) from None


def declare(
    *,
    request: type[BaseModel] | None = None,
    responses: dict[int, type[BaseModel]] | None = None,
    media_types: dict[int, str] | None = None,
) -> Callable[[F], F]:
    """Document a route's body and responses in ``/openapi.json`` without a wrapper.

    For what quart-schema's validating decorators cannot do here: a body that must only be
    read after the route has checked its token, and problem responses (quart-schema's
    ``validate_response`` refuses to pass a ``Response`` with a declared status through).
    ``media_types`` names a response's type when it is not JSON (Prometheus text, SSE);
    statuses of 400 and up are documented as ``application/problem+json`` by the app.
    """

    def decorator(func: F) -> F:
        if request is not None:
            setattr(func, QUART_SCHEMA_REQUEST_ATTRIBUTE, (request, DataSource.JSON))
        schemas = dict(getattr(func, QUART_SCHEMA_RESPONSE_ATTRIBUTE, {}))
        for status, model in (responses or {}).items():
            schemas.setdefault(status, (model, None))
        setattr(func, QUART_SCHEMA_RESPONSE_ATTRIBUTE, schemas)
        if media_types:
            setattr(func, MEDIA_TYPES_ATTRIBUTE, {**media_types_of(func), **media_types})
        return func

    return decorator


MEDIA_TYPES_ATTRIBUTE = "_paymentd_media_types"


def media_types_of(func: Any) -> dict[int, str]:
    found: dict[int, str] = getattr(func, MEDIA_TYPES_ATTRIBUTE, {})
    return found


class ProblemDocument(BaseModel):
    """An RFC 9457 problem; ``field`` names the offending input where there is one."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    field: str | None = None
