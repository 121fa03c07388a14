"""``POST /webhooks/uisp/<token>``: UISP CRM events in.

Consumes UISP webhook bodies (see shared/reference/uisp.md): a JSON object with ``uuid``,
``eventName``, ``entity``, ``changeType``, ``entityId`` and optional ``extraData``.
Produces, in one transaction, a ``uisp_webhooks`` row (or one more ``deliveries`` on a
row with the same uuid) and, for a first delivery only, a ``{"uuid": ...}`` message on the
``uisp_events`` queue. It also counts ``paymentd_webhooks{source="uisp"}`` and publishes a
``webhook.received`` event. It does no other work: UISP waits at most 10 s and (as far as
we know) never retries, so the answer must be fast and only say "stored" once it is.

UISP signs nothing; the secret path token is the only authentication. A wrong token (or a
disabled endpoint) answers exactly like an unknown URL, whatever the method.
"""

from __future__ import annotations

import hmac
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import trio
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from quart import Blueprint, Response, request
from quart_schema import hide
from werkzeug.exceptions import RequestEntityTooLarge

from daemon.platform import logcontext
from daemon.platform.db import BIGINT_MAX, DatabaseError
from daemon.platform.deps import Deps
from daemon.platform.http import schema
from daemon.platform.http.problem import (
    JSON_TYPE,
    Problem,
    database_unavailable,
    dumps,
    json_response,
    not_found,
    problem,
)
from daemon.uisp import webhooks

log = logging.getLogger(__name__)

SOURCE = "uisp"
_DIGITS = re.compile(r"[0-9]{1,18}")
# Every other method is routed to a hidden twin of the route, so that a wrong token gives
# 404 rather than a 405 that would confirm the path exists.
_OTHER_METHODS = ["GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"]
Text = Annotated[str, StringConstraints(strict=True, min_length=1)]
# What entityId accepts, for the document (the validator below says the same in code):
# UISP sends an integer; some emulators a string of digits (at most 18, so that any such
# string fits a bigint); only the test event may leave it out or send null.
_ENTITY_ID_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "integer", "minimum": 0, "maximum": BIGINT_MAX},
        {"type": "string", "pattern": f"^{_DIGITS.pattern}$"},
        {"type": "null"},
    ]
}
_NOT_TEST = {"not": {"const": "test"}}
_ENTITY_ID_UNLESS_TEST: dict[str, Any] = {
    "if": {
        "properties": {"eventName": _NOT_TEST, "changeType": _NOT_TEST},
        "required": ["eventName", "changeType"],
    },
    "then": {
        "required": ["entityId"],
        "properties": {"entityId": {"anyOf": _ENTITY_ID_SCHEMA["anyOf"][:2]}},
    },
}


class UispWebhookBody(BaseModel):
    """A UISP CRM webhook (shared/reference/uisp.md); other members are kept as sent."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_ENTITY_ID_UNLESS_TEST)

    uuid: uuid.UUID
    eventName: Text
    entity: Text
    changeType: Text
    # Declared after eventName and changeType: its validator reads them (test events).
    entityId: Annotated[
        int | None,
        Field(strict=True, ge=0, le=BIGINT_MAX),
        WithJsonSchema(_ENTITY_ID_SCHEMA),
    ] = None
    extraData: dict[str, Any] | None = None

    @field_validator("entityId", mode="before")
    @classmethod
    def _entity_id(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str) and _DIGITS.fullmatch(value):
            return int(value)
        if value is None and not _is_test(info.data.get("eventName"), info.data.get("changeType")):
            raise ValueError("entityId must be an integer or a string of digits")
        return value


class WebhookAnswer(BaseModel):
    """What the endpoint did: queued (new), requeued (it had failed), duplicate or test."""

    status: Literal["queued", "requeued", "duplicate", "test"]


def _is_test(event_name: Any, change_type: Any) -> bool:
    return bool(event_name == "test" or change_type == "test")


@dataclass(frozen=True)
class UispWebhook:
    uuid: uuid.UUID
    event_name: str
    entity: str
    change_type: str
    entity_id: int | None
    body: dict[str, Any]

    @property
    def is_test(self) -> bool:
        """UISP's "Test Endpoint" button: answer 200 and do nothing else."""
        return _is_test(self.event_name, self.change_type)


def parse(raw: bytes) -> UispWebhook:
    """Validate a webhook body strictly; raises ``Problem(400)`` naming the bad field."""
    try:
        document = schema.parse_json(raw)
    except schema.BadBody as exc:
        raise exc.problem() from None
    if not isinstance(document, dict):
        raise Problem(400, "the body must be a JSON object", field="body")
    body = schema.load(UispWebhookBody, document)
    return UispWebhook(
        body.uuid, body.eventName, body.entity, body.changeType, body.entityId, document
    )


async def store(deps: Deps, hook: UispWebhook) -> str:
    """Record the webhook: ``queued`` (new), ``requeued`` (it had failed) or ``duplicate``.

    The row and the queue message commit together (one statement, ``webhooks.STORE_SQL``):
    a crash in between loses neither or both, and a redelivery of a webhook that did not
    fail only bumps ``deliveries``.
    """
    # Answer 503 well before UISP's 10 s timeout, whatever the database does (the bridge
    # passes this deadline to asyncpg, which gives up just before it).
    with trio.move_on_after(STORE_DEADLINE_SECONDS):
        return await webhooks.store(
            deps.db, hook.uuid, hook.event_name, hook.entity, hook.entity_id, hook.change_type,
            hook.body,
        )  # fmt: skip
    raise DatabaseError(f"no answer from the database within {STORE_DEADLINE_SECONDS:g} s")


STORE_DEADLINE_SECONDS = 7.0


def blueprint(deps: Deps) -> Blueprint:
    """The webhook route, bound to this daemon's ``deps``."""
    bp = Blueprint("uisp_webhook", __name__)
    counter = deps.metrics.webhooks
    # The labelled children, looked up once each (labels() takes a lock and builds a key).
    children: dict[str, Any] = {}

    def count(outcome: str) -> None:
        child = children.get(outcome)
        if child is None:
            child = children[outcome] = counter.labels(SOURCE, outcome)
        child.inc()

    def announce(hook: UispWebhook, outcome: str) -> None:
        deps.events.publish(
            "webhook.received",
            source=SOURCE,
            uuid=str(hook.uuid),
            event=hook.event_name,
            entity_id=hook.entity_id,
            outcome=outcome,
        )

    def token_ok(token: str) -> bool:
        expected = deps.config.uisp.webhook_token.reveal()
        # Compare bytes: compare_digest refuses non-ASCII str, and the path is user input.
        if expected and hmac.compare_digest(token.encode(), expected.encode()):
            return True
        count("not_found")
        return False

    @bp.route(
        "/webhooks/uisp/<token>",
        methods=_OTHER_METHODS,
        provide_automatic_options=False,
        endpoint="uisp_webhook_other_methods",
    )
    @hide  # not an operation: only there to answer like an unknown URL
    async def other_methods(token: str) -> Response:
        if not token_ok(token):
            return not_found()
        return problem(405, f"{request.method} is not allowed here", headers={"Allow": "POST"})

    @bp.post("/webhooks/uisp/<token>", provide_automatic_options=False)
    @schema.declare(
        request=UispWebhookBody,
        responses={
            200: WebhookAnswer,
            400: schema.ProblemDocument,
            404: schema.ProblemDocument,
            413: schema.ProblemDocument,
            415: schema.ProblemDocument,
            503: schema.ProblemDocument,
        },
    )
    async def uisp_webhook(token: str) -> Response:
        """Receive one UISP CRM event; the path token is the only authentication."""
        if not token_ok(token):
            return not_found()
        try:
            schema.require_json_type()
        except Problem:
            count("unsupported_media_type")
            log.warning(
                "UISP webhook refused: Content-Type %r", request.headers.get("Content-Type")
            )
            raise
        try:
            data = await request.get_data(cache=False, as_text=False)
        except RequestEntityTooLarge:
            count("too_large")
            log.warning("UISP webhook refused: body over %d bytes", deps.config.http.max_body_bytes)
            raise  # the app's handler renders the 413 problem
        try:
            hook = parse(data if isinstance(data, bytes) else data.encode())
        except Problem as exc:
            count("bad_request")
            log.warning("UISP webhook refused: %s", exc)
            raise

        # Every line logged about this event from here on names it.
        with logcontext.bind(webhook_uuid=str(hook.uuid)):
            return await accept(hook)

    async def accept(hook: UispWebhook) -> Response:
        if hook.is_test:
            count("test")
            announce(hook, "test")
            log.info("UISP test webhook %s received", hook.uuid)
            return json_response({"status": "test"})

        try:
            outcome = await store(deps, hook)
        except (DatabaseError, TimeoutError) as exc:
            # Say it loudly: UISP may never send this event again.
            log.error(
                "UISP webhook %s (%s, entity %s) NOT stored, database unavailable: %s;"
                " UISP may not retry, replay it from UISP's webhook log",
                hook.uuid,
                hook.event_name,
                hook.entity_id,
                exc,
            )
            count("unavailable")
            announce(hook, "unavailable")
            return database_unavailable()

        count(outcome)
        announce(hook, outcome)
        log.info(
            "UISP webhook %s %s (entity %s): %s",
            hook.uuid,
            hook.event_name,
            hook.entity_id,
            outcome,
        )
        return Response(_STATUS_BODIES[outcome], status=200, mimetype=JSON_TYPE)

    return bp


# The success answers, serialised once: json_response({"status": outcome}) byte for byte.
_STATUS_BODIES = {
    outcome: dumps({"status": outcome}) for outcome in ("queued", "requeued", "duplicate")
}
