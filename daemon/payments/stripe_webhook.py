"""``POST /webhooks/stripe``: Stripe events in, verified, stored once, queued.

Consumes Stripe's signed event deliveries: a JSON event body and a ``Stripe-Signature``
header (``t=<unix>,v1=<hex HMAC-SHA256 of "t.body">``, several ``v1`` possible). The
signature is checked on the raw body with stripe-python's own ``WebhookSignature``
(a constant-time comparison) against every candidate signing secret — the keyring's
active ones (``daemon.payments.stripe_secrets``: two during a rotation, any one
verifies; cached in memory), then the config's ``payments.stripe_webhook_secrets`` —
within ``payments.stripe_webhook_tolerance_seconds``.

Produces, for a verified event, in one statement: a ``stripe_events`` row (one per event
id: a redelivery only counts) and a ``{"event_id"}`` message on the ``stripe_events``
queue (``daemon.payments.stripe_process`` re-fetches the object and applies it). A bad,
missing or stale signature answers 400 and stores nothing; so does a body that is not a
Stripe event. A database outage answers 503: Stripe retries for three days.

No secrets anywhere: the route answers 404 like an unknown URL. Stored secrets that
cannot be read (the keyring's key missing, the database down before the first read):
503, so Stripe retries.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import stripe
import trio
from pydantic import BaseModel, ConfigDict
from quart import Blueprint, Response, request
from werkzeug.exceptions import RequestEntityTooLarge

from daemon.payments import stripe_events
from daemon.payments.stripe_secrets import SigningSecretsUnavailable, VerifyingSecrets
from daemon.platform import logcontext
from daemon.platform.config import Secret
from daemon.platform.db import DatabaseError
from daemon.platform.deps import Deps
from daemon.platform.http import schema
from daemon.platform.http.problem import (
    Problem,
    database_unavailable,
    json_response,
    not_found,
)

log = logging.getLogger(__name__)

SOURCE = "stripe"
PATH = "/webhooks/stripe"
STORE_DEADLINE_SECONDS = 7.0


class BadEvent(Exception):
    """Not a verified Stripe event; the message says why (never a secret)."""


@dataclass(frozen=True)
class VerifiedEvent:
    id: str
    type: str
    body: dict[str, Any]


def verify(
    raw: bytes, header: str | None, secrets: Sequence[Secret], *, tolerance_seconds: float
) -> VerifiedEvent:
    """The event in ``raw`` if ``header`` signs it with one of ``secrets``, recently.

    stripe-python checks the signature before the timestamp, so "outside the tolerance"
    means a genuine but old (replayed) delivery.
    """
    if not header:
        raise BadEvent("missing Stripe-Signature header")
    try:
        payload = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadEvent("the body is not UTF-8") from None
    stale = False
    # stripe-python takes whole seconds and treats 0 as "no age check": a sub-second
    # tolerance rounds up, never down to 0 (which would accept any replayed delivery).
    tolerance = max(1, math.ceil(tolerance_seconds))
    verified = False
    # Every candidate is tried, even after one verified: the time taken does not say
    # which secret signed (each comparison is constant-time in stripe-python).
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret.reveal(), tolerance)
            verified = True
        except stripe.SignatureVerificationError as exc:
            stale = stale or str(exc).startswith("Timestamp outside the tolerance zone")
    if not verified:
        if stale:
            raise BadEvent(f"Stripe-Signature is older than {tolerance_seconds:g} s")
        raise BadEvent("Stripe-Signature does not match the body")
    try:
        body = json.loads(payload)
    except ValueError:
        raise BadEvent("the body is not JSON") from None
    if not (
        isinstance(body, dict)
        and body.get("object") == "event"
        and isinstance(body.get("id"), str)
        and body["id"]
        and isinstance(body.get("type"), str)
        and isinstance(body.get("created"), int)
        and isinstance(body.get("data"), dict)
    ):
        raise BadEvent("the body is not a Stripe event (object, id, type, created, data)")
    return VerifiedEvent(body["id"], body["type"], body)


class StripeEventBody(BaseModel):
    """A Stripe event (https://docs.stripe.com/api/events/object); read as signed, raw."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["event"]
    type: str
    created: int
    data: dict[str, Any]


class StripeWebhookAnswer(BaseModel):
    """queued (new), requeued (it had failed), duplicate (already stored)."""

    status: Literal["queued", "requeued", "duplicate"]


def blueprint(deps: Deps) -> Blueprint:
    bp = Blueprint("stripe_webhook", __name__)
    counter = deps.metrics.webhooks
    signing = VerifyingSecrets(deps.config.payments, deps.config.secrets)

    def count(outcome: str) -> None:
        counter.labels(SOURCE, outcome).inc()

    @bp.post(PATH, provide_automatic_options=False)
    @schema.declare(
        request=StripeEventBody,
        responses={
            200: StripeWebhookAnswer,
            400: schema.ProblemDocument,
            404: schema.ProblemDocument,
            413: schema.ProblemDocument,
            503: schema.ProblemDocument,
        },
    )
    async def stripe_webhook() -> Response:
        """Receive one Stripe event; ``Stripe-Signature`` is the authentication."""
        cfg = deps.config.payments
        try:
            secrets = await signing.candidates(deps.db)
        except SigningSecretsUnavailable as exc:
            count("unavailable")
            log.error("Stripe webhook: the signing secrets cannot be read: %s", exc)
            raise Problem(
                503,
                "the Stripe signing secrets cannot be read now (see secrets.key_file)",
                headers={"Retry-After": "60"},
            ) from None
        if not secrets:
            return not_found()
        try:
            data = await request.get_data(cache=False, as_text=False)
        except RequestEntityTooLarge:
            count("too_large")
            raise
        raw = data if isinstance(data, bytes) else data.encode()
        header = request.headers.get("Stripe-Signature")
        tolerance = cfg.stripe_webhook_tolerance_seconds
        try:
            try:
                event = verify(raw, header, secrets, tolerance_seconds=tolerance)
            except BadEvent:
                # Perhaps signed with a secret added since our copy: read them again once.
                if not header or not await signing.refresh_after_miss(deps.db):
                    raise
                secrets = await signing.candidates(deps.db)
                event = verify(raw, header, secrets, tolerance_seconds=tolerance)
        except BadEvent as exc:
            count("bad_signature")
            log.warning("Stripe webhook refused: %s", exc)
            raise Problem(400, str(exc)) from None
        with logcontext.bind(stripe_event=event.id):
            return await accept(event)

    async def accept(event: VerifiedEvent) -> Response:
        try:
            with trio.move_on_after(STORE_DEADLINE_SECONDS) as scope:
                outcome = await stripe_events.store(deps.db, event.body)
            if scope.cancelled_caught:
                raise DatabaseError("no answer from the database in time")
        except (DatabaseError, TimeoutError) as exc:
            # Stripe retries a failed delivery for three days: nothing is lost.
            log.warning("Stripe event %s not stored (Stripe will retry): %s", event.id, exc)
            count("unavailable")
            return database_unavailable()
        count(outcome)
        deps.events.publish(
            "webhook.received", source=SOURCE, id=event.id, event=event.type, outcome=outcome
        )
        log.info("Stripe event %s %s: %s", event.id, event.type, outcome)
        return json_response({"status": outcome})

    return bp


__all__ = ["PATH", "BadEvent", "VerifiedEvent", "blueprint", "verify"]
