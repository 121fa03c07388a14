"""What each announced event looks like: the OpenAPI 3.1 ``webhooks`` section.

Every type in ``outbox.EVENT_TYPES`` has a ``data`` model here; ``envelope(type)`` is the
whole body partners receive (``{"id", "type", "timestamp", "data"}``, as
``outbox.Event.payload`` builds it) and ``openapi(...)`` documents each one as a webhook
operation with the Standard Webhooks headers. The capabilities that emit an event own
its data model (``network.announce.TaskOutcome``, ``notifications.announce.SmsOutcome``)
and build the data through it, so what is sent is what is documented. A type without a
model here fails at import time (and a test), never silently undocumented.

Payment and refund events carry the payment or refund resource exactly as the payments
API returns it; that API is documented with its own routes, so here it is a generic
object with the members every consumer relies on (``id``, ``status``, ``amount``,
``currency``) and any others allowed.
"""

from __future__ import annotations

import datetime as dt
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from daemon.network.announce import TaskOutcome
from daemon.notifications.announce import SmsOutcome
from daemon.platform import outbox
from daemon.webhooks.deliveries import DIRECTED_TYPES
from daemon.webhooks.endpoints import OPERATOR_TYPES

REF_TEMPLATE = "#/components/schemas/{model}"


class PaymentResource(BaseModel):
    """The payment as ``GET /api/v1/payments/{id}`` returns it (other members allowed)."""

    model_config = ConfigDict(extra="allow")

    id: str
    status: str
    amount: int = Field(description="integer minor units (cents)")
    currency: str = Field(description="ISO 4217, e.g. EUR")
    customer: Any = None
    metadata: dict[str, Any] | None = None


class RefundResource(BaseModel):
    """The refund as the payments API returns it (other members allowed)."""

    model_config = ConfigDict(extra="allow")

    id: str
    status: str
    amount: int = Field(description="integer minor units (cents)")
    currency: str = Field(description="ISO 4217, e.g. EUR")


class EndpointDisabled(BaseModel):
    """An endpoint stopped receiving events until it is enabled again. Sent only to
    endpoints that subscribe to ``endpoint.disabled`` (or ``endpoint.*``) by name, not
    through ``*``; it names the endpoint by id only (never its URL)."""

    model_config = ConfigDict(extra="allow")

    endpoint_id: str
    reason: Literal["gone", "failing"] = Field(
        description="gone: it answered 410; failing: it only failed for too long"
    )
    disabled_at: dt.datetime = Field(description="when it was disabled (UTC)")
    failing_since: dt.datetime | None = Field(
        description="start of its run of failed attempts, if one was running"
    )


class WebhookTest(BaseModel):
    """A ping sent on request (``POST /api/v1/webhooks/endpoints/{id}/test``)."""

    model_config = ConfigDict(extra="allow")

    endpoint_id: str


_PREFIX_MODELS: dict[str, type[BaseModel]] = {
    "payment": PaymentResource,
    "refund": RefundResource,
    "reconnection": TaskOutcome,
    "disconnection": TaskOutcome,
    "sms": SmsOutcome,
}
_TYPE_MODELS: dict[str, type[BaseModel]] = {
    "endpoint.disabled": EndpointDisabled,
    "webhook.test": WebhookTest,
}


def data_model(event_type: str) -> type[BaseModel]:
    """The model of ``data`` for a declared event type."""
    if event_type not in outbox.EVENT_TYPES:
        raise KeyError(event_type)
    found = _TYPE_MODELS.get(event_type) or _PREFIX_MODELS.get(event_type.split(".", 1)[0])
    if found is None:
        raise KeyError(f"event type {event_type!r} has no data model in webhooks.catalog")
    return found


def _model_name(event_type: str) -> str:
    words = event_type.replace("_", ".").split(".")
    return "".join(word.capitalize() for word in words) + "Event"


@cache
def envelope(event_type: str) -> type[BaseModel]:
    """The body of a ``event_type`` delivery, as a model (validates ``Event.payload()``)."""
    # One literal per type, so the schema says which type this body carries.
    literal: Any = Literal[event_type]
    model: type[BaseModel] = create_model(
        _model_name(event_type),
        __doc__=outbox.EVENT_TYPES[event_type],
        __config__=ConfigDict(extra="forbid"),
        id=(str, Field(pattern=r"^evt_[0-9a-f]{32}$", description="same on every retry")),
        type=(literal, ...),
        timestamp=(dt.datetime, Field(description="when the change happened (UTC)")),
        data=(data_model(event_type), ...),
    )
    return model


# Every type must have a model: a new one in EVENT_TYPES without one stops the import.
for _type in outbox.EVENT_TYPES:
    data_model(_type)

SIGNATURE_HEADERS: list[dict[str, Any]] = [
    {
        "name": "webhook-id",
        "in": "header",
        "required": True,
        "description": "the event id; the same on every retry (deduplicate on it)",
        "schema": {"type": "string"},
    },
    {
        "name": "webhook-timestamp",
        "in": "header",
        "required": True,
        "description": "unix seconds of this attempt; refuse more than 5 minutes off",
        "schema": {"type": "integer"},
    },
    {
        "name": "webhook-signature",
        "in": "header",
        "required": True,
        "description": "space-separated v1,<base64 HMAC-SHA256 of '{id}.{timestamp}.{body}'>"
        " with each active secret of the endpoint (Standard Webhooks 1.0)",
        "schema": {"type": "string"},
    },
    {
        "name": "X-Webhook-Signature",
        "in": "header",
        "required": False,
        "description": "legacy mode only: hex HMAC-SHA256 of the body, keyed with the newest"
        " secret as given (the whole whsec_ text)",
        "schema": {"type": "string"},
    },
]


def _audience(event_type: str) -> str:
    if event_type in OPERATOR_TYPES:
        return (
            f"Sent only to enabled endpoints that name {event_type!r} (or its 'prefix.*')"
            " in their filter; '*' does not cover it."
        )
    if event_type in DIRECTED_TYPES:
        return "Sent only to the endpoint it was requested for."
    return f"Sent to every enabled endpoint whose filter matches {event_type!r}."


def openapi() -> tuple[dict[str, Any], dict[str, Any]]:
    """(the ``webhooks`` object, component schemas it refers to), one entry per type."""
    webhooks: dict[str, Any] = {}
    components: dict[str, Any] = {}
    for event_type, summary in outbox.EVENT_TYPES.items():
        schema = envelope(event_type).model_json_schema(
            ref_template=REF_TEMPLATE, mode="serialization"
        )
        components.update(schema.pop("$defs", {}))
        name = schema["title"]
        components[name] = schema
        webhooks[event_type] = {
            "post": {
                "operationId": f"webhook_{event_type.replace('.', '_')}",
                "summary": summary,
                "description": _audience(event_type)
                + " Answer 2xx within 15 s; anything else is retried.",
                "tags": ["webhooks"],
                "parameters": SIGNATURE_HEADERS,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": REF_TEMPLATE.format(model=name)}}
                    },
                },
                "responses": {
                    "2XX": {"description": "received; the delivery is done"},
                    "410": {"description": "gone: the endpoint is disabled"},
                    "default": {"description": "not received; retried on the schedule"},
                },
            }
        }
    return webhooks, components
