"""The request and answer shapes of ``/api/v1/webhooks`` (``daemon.webhooks.api``).

The request schemas say exactly what is accepted, so ``/openapi.json`` is a contract a
client (and schemathesis) can generate valid requests from: the URL's form as a pattern,
event-type filters as the list of what is declared, secrets as ``whsec_`` + padded
base64 of at least 24 bytes, integers that are integers (``3.0`` is, ``"3"`` and
``true`` are not), times in RFC 3339 with an offset. The store checks the same things
again (``endpoints.check_url`` …); these make the answer a 400 naming the member before
anything is touched.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool
from pydantic.json_schema import SkipJsonSchema

from daemon.platform import outbox
from daemon.platform.db import BIGINT_MAX
from daemon.platform.http.admin import DEFAULT_LIMIT, MAX_LIMIT, Shape
from daemon.webhooks import deliveries, endpoints
from daemon.webhooks.deliveries import Attempt, Delivery
from daemon.webhooks.endpoints import Endpoint, SigningSecret

_PORT = r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
# http(s)://host[:port][/path][?query]: no credentials (no '@' before the path), no
# whitespace or control characters, no fragment (it is never sent). The host is a name,
# an IPv4 address or a bracketed IPv6 one.
_H = "[0-9A-Fa-f]{1,4}"
_IPV6 = "|".join(
    (
        f"(?:{_H}:){{7}}{_H}",
        f"(?:{_H}:){{1,7}}:",
        *(f"(?:{_H}:){{1,{7 - n}}}(?::{_H}){{1,{n}}}" for n in range(1, 7)),
        f":(?:(?::{_H}){{1,7}}|:)",
    )
)
_HOST = rf"(?:[^\x00-\x20\x7f/?#@:\[\]\\]+|\[(?:{_IPV6})\])"
URL_PATTERN = rf"^https?://{_HOST}(?::{_PORT})?(?:[/?][^\x00-\x20\x7f#]*)?$"
# whsec_ + canonical base64 of at least 24 bytes (32 characters), padding included.
SECRET_PATTERN = r"^whsec_(?:[A-Za-z0-9+/]{4}){8,}(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def filters() -> tuple[str, ...]:
    """What an endpoint may subscribe to: ``*``, each ``prefix.*``, each declared type
    (the directed ones, the test ping, excepted: they are only sent where asked)."""
    types = [t for t in outbox.EVENT_TYPES if t not in deliveries.DIRECTED_TYPES]
    prefixes = sorted({t.split(".", 1)[0] for t in types})
    return ("*", *(f"{p}.*" for p in prefixes), *types)


def _integer(value: Any) -> Any:
    # JSON's 3.0 is the integer 3 (as JSON Schema says); a string or a boolean is not.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be an integer")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value  # 2.5 goes on to the strict int check, which refuses it


def _number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    return value


def _rfc3339(value: Any) -> dt.datetime:
    """An RFC 3339 string with an offset as an aware datetime (a number is not a time)."""
    m = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise ValueError("must be an RFC 3339 time with an offset, e.g. 2026-01-31T12:00:00Z")
    # fromisoformat wants at most 6 fractional digits; RFC 3339 allows any number.
    fraction = (m.group(1) or "")[:7]
    return dt.datetime.fromisoformat(f"{m.group(0)[:19]}{fraction}{m.group(2)}".upper())


# Constraints before the validator, so the document shows them as minimum/maximum.
Integer = Annotated[int, Field(ge=1, le=1_000_000), BeforeValidator(_integer)]
Url = Annotated[str, Field(max_length=2048, pattern=URL_PATTERN)]
Description = Annotated[str, Field(max_length=1000)]
Filter: Any = Literal[filters()]
EventTypes = Annotated[list[Filter], Field(min_length=1, max_length=64)]
Secret = Annotated[str, Field(max_length=200, pattern=SECRET_PATTERN)]
Overlap = Annotated[float, Field(ge=0, le=endpoints.MAX_OVERLAP_SECONDS), BeforeValidator(_number)]
Time = Annotated[dt.datetime, BeforeValidator(_rfc3339)]


class _Body(BaseModel):
    # Strict strings everywhere (no number coerced to text); integers as above.
    model_config = ConfigDict(extra="forbid", strict=True)


class EndpointCreate(_Body):
    url: Url = Field(description="http(s), no credentials in it")
    description: Description = ""
    event_types: EventTypes = Field(
        ["*"],
        description="exact types, 'prefix.*' wildcards or '*' (see the webhooks section);"
        " '*' is every partner event: endpoint.disabled only comes to filters naming it",
    )
    enabled: StrictBool = True
    rate_limit_per_second: Integer | None = Field(None, description="requests per second")
    max_concurrency: Integer | None = Field(None, description="requests in flight")
    legacy_signature: StrictBool = Field(
        False, description="also send X-Webhook-Signature: hex HMAC-SHA256 of the body"
    )
    secret: Secret | None = Field(None, description="generated when not given")


class EndpointUpdate(_Body):
    """Only the members given change; null clears a limit (and only a limit)."""

    url: Url | SkipJsonSchema[None] = None
    description: Description | SkipJsonSchema[None] = None
    event_types: EventTypes | SkipJsonSchema[None] = None
    enabled: StrictBool | SkipJsonSchema[None] = None
    rate_limit_per_second: Integer | None = None
    max_concurrency: Integer | None = None
    legacy_signature: StrictBool | SkipJsonSchema[None] = None


class RotateSecret(_Body):
    overlap_seconds: Overlap | None = Field(
        None,
        description="how long the old secrets keep signing"
        " (null: webhooks.secret_overlap_seconds, 24 h)",
    )
    secret: Secret | None = Field(None, description="generated when not given (or null)")


class Recover(_Body):
    since: Time = Field(description="re-send the failed deliveries created since then")


# An id or type to filter on: what ours look like (no NUL or control characters, which
# PostgreSQL text cannot hold: passed through, they failed the query with a 500).
_KEY = r"^[A-Za-z0-9_.*-]*$"


class EndpointQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = None
    after: str | None = Field(
        None, max_length=40, pattern=_KEY, description="next_after of the previous page"
    )
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)


class DeliveryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint_id: str | None = Field(None, max_length=40, pattern=_KEY)
    state: deliveries.State | None = None
    event_type: str | None = Field(None, max_length=100, pattern=_KEY)
    event_id: str | None = Field(None, max_length=40, pattern=_KEY)
    since: Time | None = Field(None, description="created at or after")
    until: Time | None = Field(None, description="created before")
    before_id: int | None = Field(
        None, ge=1, le=BIGINT_MAX, description="next_before_id of the previous page"
    )
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)


class EndpointOne(Shape):
    endpoint: Endpoint


class EndpointCreated(Shape):
    endpoint: Endpoint
    secret: str = Field(description="shown this once: store it to verify our signatures")


class EndpointDetail(Shape):
    endpoint: Endpoint
    secrets: list[SigningSecret] = Field(description="ids and expiry; never the values")


class EndpointPage(Shape):
    endpoints: list[Endpoint]
    next_after: str | None = Field(description="pass as after for the next page")


class Deleted(Shape):
    deleted: str = Field(description="the id of the endpoint that is gone")


class SecretRotated(Shape):
    secret: str = Field(description="the new secret, shown this once")
    secrets: list[SigningSecret]


class CallbackSecrets(Shape):
    secrets: list[SigningSecret] = Field(
        description="the secrets signing status_callback_url callbacks, newest first"
    )


class TestQueued(Shape):
    event_id: str
    delivery: Delivery


class Recovered(Shape):
    recovered: int = Field(description="how many failed deliveries were put back")


class DeliveryPage(Shape):
    deliveries: list[Delivery]
    next_before_id: int | None = Field(description="pass as before_id for the next page")


class DeliveryWithAttempts(Shape):
    delivery: Delivery
    attempts: list[Attempt]


class DeliveryOne(Shape):
    delivery: Delivery
