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
import json
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any

import trio
from quart import Blueprint, Response, request
from werkzeug.exceptions import RequestEntityTooLarge

from daemon.platform import queues
from daemon.platform.db import BIGINT_MAX, DatabaseError
from daemon.platform.deps import Deps
from daemon.platform.http.problem import (
    JSON_TYPE,
    database_unavailable,
    dumps,
    json_response,
    not_found,
    problem,
)

log = logging.getLogger(__name__)

SOURCE = "uisp"
_DIGITS = re.compile(r"[0-9]{1,19}")
# Every method is routed here so that a wrong token gives 404 rather than a 405 that
# would confirm the path exists.
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class BadWebhook(ValueError):
    """The body is not a UISP webhook; ``field`` names the offending member (or "body")."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail)
        self.field = field


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
        return self.event_name == "test" or self.change_type == "test"


def _reject_constant(name: str) -> Any:
    raise BadWebhook("body", f"{name} is not valid JSON")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise BadWebhook(key, f"duplicate key {key!r}")
        obj[key] = value
    return obj


# What ``json.loads(text, object_pairs_hook=..., parse_constant=...)`` builds on every call,
# built once.
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant)


def parse(raw: bytes) -> UispWebhook:
    """Validate a webhook body strictly; raises ``BadWebhook`` naming the bad field."""
    try:
        text = raw.decode("utf-8")
        if text.startswith("\ufeff"):  # as json.loads does for str
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        body = _DECODER.decode(text)
    except UnicodeDecodeError:
        raise BadWebhook("body", "the body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise BadWebhook("body", f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadWebhook("body", "the body must be a JSON object")

    def text_field(name: str) -> str:
        value = body.get(name)
        if not isinstance(value, str) or not value:
            raise BadWebhook(name, f"{name} must be a non-empty string")
        return value

    raw_uuid = text_field("uuid")
    try:
        event_uuid = uuid.UUID(raw_uuid)
    except ValueError:
        raise BadWebhook("uuid", "uuid must be a UUID") from None
    event_name = text_field("eventName")
    entity = text_field("entity")
    change_type = text_field("changeType")

    is_test = event_name == "test" or change_type == "test"
    entity_id = body.get("entityId")
    if entity_id is None and is_test:
        pass  # the test event names no entity (or the endpoint's id)
    elif isinstance(entity_id, int) and not isinstance(entity_id, bool):
        if not 0 <= entity_id <= BIGINT_MAX:
            raise BadWebhook("entityId", "entityId is out of range")
    elif isinstance(entity_id, str) and _DIGITS.fullmatch(entity_id):
        # Some UISP emulators send the id as a string; UISP itself sends an integer.
        entity_id = int(entity_id)
        if entity_id > BIGINT_MAX:
            raise BadWebhook("entityId", "entityId is out of range")
    else:
        raise BadWebhook("entityId", "entityId must be an integer or a string of digits")

    extra = body.get("extraData")
    if extra is not None and not isinstance(extra, dict):
        raise BadWebhook("extraData", "extraData must be an object")
    return UispWebhook(event_uuid, event_name, entity, change_type, entity_id, body)


async def store(deps: Deps, hook: UispWebhook) -> bool:
    """Record the webhook and queue it on first delivery; True when it was new.

    The row and the queue message commit together: a crash in between loses neither or
    both, and a redelivery (same uuid) only bumps ``deliveries``. One statement (its own
    transaction) instead of BEGIN / INSERT / send / COMMIT: one round trip on the hot path
    instead of four.
    """
    args = (hook.uuid, hook.event_name, hook.entity, hook.entity_id, hook.change_type, hook.body)
    # Answer 503 well before UISP's 10 s timeout, whatever the database does (the bridge
    # passes this deadline to asyncpg, which gives up just before it).
    with trio.move_on_after(STORE_DEADLINE_SECONDS):
        inserted: bool = await deps.db.fetchval(_STORE_SQL, *args)
        return inserted
    raise DatabaseError(f"no answer from the database within {STORE_DEADLINE_SECONDS:g} s")


STORE_DEADLINE_SECONDS = 7.0


_STORE_SQL = f"""
WITH stored AS (
    INSERT INTO uisp_webhooks (uuid, event_name, entity, entity_id, change_type, body)
    VALUES ($1, $2, $3, $4, $5, $6::jsonb)
    ON CONFLICT (uuid) DO UPDATE SET deliveries = uisp_webhooks.deliveries + 1
    RETURNING (xmax = 0) AS inserted
)
SELECT inserted,
       CASE WHEN inserted
            THEN (SELECT pgmq.send('{queues.UISP_EVENTS}', jsonb_build_object('uuid', $1::text)))
       END
FROM stored
"""


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

    @bp.route("/webhooks/uisp/<token>", methods=_METHODS, provide_automatic_options=False)
    async def uisp_webhook(token: str) -> Response:
        expected = deps.config.uisp.webhook_token
        # Compare bytes: compare_digest refuses non-ASCII str, and the path is user input.
        if not expected or not hmac.compare_digest(token.encode(), expected.encode()):
            count("not_found")
            return not_found()
        if request.method != "POST":
            return problem(405, f"{request.method} is not allowed here", headers={"Allow": "POST"})

        try:
            data = await request.get_data(cache=False, as_text=False)
        except RequestEntityTooLarge:
            count("too_large")
            log.warning("UISP webhook refused: body over %d bytes", deps.config.http.max_body_bytes)
            raise  # the app's handler renders the 413 problem
        try:
            hook = parse(data if isinstance(data, bytes) else data.encode())
        except BadWebhook as exc:
            count("bad_request")
            log.warning("UISP webhook refused: %s", exc)
            return problem(400, str(exc), field=exc.field)

        if hook.is_test:
            count("test")
            announce(hook, "test")
            log.info("UISP test webhook %s received", hook.uuid)
            return json_response({"status": "test"})

        try:
            inserted = await store(deps, hook)
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

        outcome = "queued" if inserted else "duplicate"
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
_STATUS_BODIES = {outcome: dumps({"status": outcome}) for outcome in ("queued", "duplicate")}
