"""``/api/v1/webhooks/*``: webhook endpoints and deliveries, behind ``webhooks:manage``.

Endpoints: ``POST/GET /endpoints``, ``GET/PATCH/DELETE /endpoints/{id}``,
``POST /endpoints/{id}/rotate-secret``, ``/test``, ``/recover``. The daemon-wide secret
that signs payments' ``status_callback_url`` callbacks: ``GET /callback-secret`` (ids and
expiry), ``POST /callback-secret/rotate`` (the new secret, shown once). Deliveries:
``GET /deliveries`` (filters, newest first, keyset pages on ``before_id``),
``GET /deliveries/{id}`` (with its attempts), ``POST /deliveries/{id}/retry``.

Bodies go through the strict JSON parser (``platform/http/schema.py``) after the scope
check, into ``extra="forbid"`` models with strict scalars (``"true"`` is not a boolean).
The signing secret is in the answer of a create and of a rotate, and nowhere else: lists
and gets show the secrets' ids and expiry only, and no log line carries one. The actions
are ``daemon.webhooks.manage``, which the CLI shares.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import BaseModel, ValidationError
from quart import Blueprint, request
from quart_schema import validate_querystring, validate_response

from daemon.platform import auth
from daemon.platform.db import BIGINT_MAX
from daemon.platform.deps import Deps
from daemon.platform.http import schema
from daemon.platform.http.admin import AUTH_PROBLEMS
from daemon.platform.http.problem import Problem
from daemon.platform.secrets import Keyring, SecretKeyError, load_keyring
from daemon.webhooks import deliveries, endpoints, manage
from daemon.webhooks.shapes import (
    CallbackSecrets,
    Deleted,
    DeliveryOne,
    DeliveryPage,
    DeliveryQuery,
    DeliveryWithAttempts,
    EndpointCreate,
    EndpointCreated,
    EndpointDetail,
    EndpointOne,
    EndpointPage,
    EndpointQuery,
    EndpointUpdate,
    Recover,
    Recovered,
    RotateSecret,
    SecretRotated,
    TestQueued,
)


async def _body(model: type[schema.M]) -> schema.M:
    """The request body, strictly parsed, as ``model`` (400/415 problems otherwise)."""
    schema.require_json_type()
    raw = await request.get_data(cache=False, as_text=False)
    try:
        document = schema.parse_json(raw if isinstance(raw, bytes) else raw.encode())
    except schema.BadBody as exc:
        raise exc.problem() from None
    if not isinstance(document, dict):
        raise Problem(400, "the body must be a JSON object", field="body")
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise _validation_problem(exc) from None


def _validation_problem(error: ValidationError) -> Problem:
    """As ``schema.validation_problem``, without pydantic's union tags in the path
    (``url.constrained-str`` is the member ``url``)."""
    first = error.errors(include_url=False)[0]
    path = [str(p) for p in first["loc"] if isinstance(p, int) or str(p).isidentifier()]
    field = ".".join(path) if path else "body"
    return Problem(400, f"{field}: {first['msg']}", field=field)


def _invalid(exc: endpoints.EndpointError) -> Problem:
    # The store's messages start with the member they are about ("url: …").
    field = str(exc).split(":", 1)[0]
    return Problem(400, str(exc), field=field if field.isidentifier() else "body")


def _problem(exc: manage.ManageError) -> Problem:
    if exc.field is None:
        return Problem(exc.status, str(exc))
    return Problem(exc.status, str(exc), field=exc.field)


def _by() -> str:
    return str(auth.current_principal())


def blueprint(deps: Deps) -> Blueprint:
    bp = Blueprint("webhooks", __name__, url_prefix="/api/v1/webhooks")
    auth.Guard(deps).protect(bp, auth.WEBHOOKS_MANAGE)
    keyring: list[Keyring] = []

    def box() -> Keyring:
        # Loaded on first use: reading the key must not be needed to serve anything else.
        if not keyring:
            try:
                keyring.append(load_keyring(deps.config.secrets))
            except SecretKeyError:
                raise Problem(
                    503, "the secrets keyring cannot be loaded: see secrets.key_file"
                ) from None
        return keyring[0]

    def overlap(given: float | None) -> float:
        return deps.config.webhooks.secret_overlap_seconds if given is None else given

    bad: dict[int, type[BaseModel]] = {400: schema.ProblemDocument, **AUTH_PROBLEMS}
    missing: dict[int, type[BaseModel]] = {404: schema.ProblemDocument, **AUTH_PROBLEMS}
    body_problems: dict[int, type[BaseModel]] = {
        400: schema.ProblemDocument,
        404: schema.ProblemDocument,
        409: schema.ProblemDocument,
        415: schema.ProblemDocument,
        **AUTH_PROBLEMS,
    }

    @bp.post("/endpoints")
    @schema.declare(request=EndpointCreate, responses={415: schema.ProblemDocument, **bad})
    @validate_response(EndpointCreated, 201)
    async def create_endpoint() -> tuple[dict[str, Any], int]:
        """Register an endpoint; the answer holds its signing secret, shown this once."""
        body = await _body(EndpointCreate)
        try:
            endpoint, secret = await manage.create(
                deps.db, box(), by=_by(), **body.model_dump(exclude_unset=True)
            )
        except endpoints.EndpointError as exc:
            raise _invalid(exc) from None
        return {"endpoint": dataclasses.asdict(endpoint), "secret": secret}, 201

    @bp.get("/endpoints")
    @schema.declare(responses=bad)
    @validate_querystring(EndpointQuery)
    @validate_response(EndpointPage)
    async def list_endpoints(query_args: EndpointQuery) -> dict[str, Any]:
        """The endpoints, by id, a page at a time (keyset on ``after``)."""
        limit = query_args.limit
        rows = await endpoints.list_endpoints(
            deps.db, enabled=query_args.enabled, after=query_args.after, limit=limit
        )
        return {"endpoints": rows, "next_after": rows[-1].id if len(rows) == limit else None}

    @bp.get("/endpoints/<endpoint_id>")
    @schema.declare(responses=missing)
    @validate_response(EndpointDetail)
    async def get_endpoint(endpoint_id: str) -> dict[str, Any]:
        """One endpoint, with its secrets' ids and expiry (never their values)."""
        try:
            detail = await manage.describe(deps.db, endpoint_id)
        except manage.ManageError as exc:
            raise _problem(exc) from None
        return dataclasses.asdict(detail)

    @bp.patch("/endpoints/<endpoint_id>")
    @schema.declare(request=EndpointUpdate, responses=body_problems)
    @validate_response(EndpointOne)
    async def update_endpoint(endpoint_id: str) -> dict[str, Any]:
        """Change the members given; enabling clears a disabled reason and failure run."""
        body = await _body(EndpointUpdate)
        changes = body.model_dump(exclude_unset=True)
        for name in ("url", "description", "event_types", "enabled", "legacy_signature"):
            if name in changes and changes[name] is None:
                raise Problem(400, f"{name}: cannot be null", field=name)
        try:
            endpoint = await manage.update(deps.db, endpoint_id, by=_by(), **changes)
        except endpoints.EndpointError as exc:
            raise _invalid(exc) from None
        except manage.ManageError as exc:
            raise _problem(exc) from None
        return {"endpoint": dataclasses.asdict(endpoint)}

    @bp.delete("/endpoints/<endpoint_id>")
    @schema.declare(responses=missing)
    @validate_response(Deleted)
    async def delete_endpoint(endpoint_id: str) -> dict[str, Any]:
        """Delete an endpoint with its secrets, deliveries and their attempts."""
        try:
            await manage.remove(deps.db, endpoint_id, by=_by())
        except manage.ManageError as exc:
            raise _problem(exc) from None
        return {"deleted": endpoint_id}

    @bp.post("/endpoints/<endpoint_id>/rotate-secret")
    @schema.declare(request=RotateSecret, responses=body_problems)
    @validate_response(SecretRotated)
    async def rotate_secret(endpoint_id: str) -> dict[str, Any]:
        """A new signing secret (shown this once); the old ones sign beside it a while."""
        body = await _body(RotateSecret)
        try:
            secret, detail = await manage.rotate_secret(
                deps.db,
                box(),
                endpoint_id,
                overlap_seconds=overlap(body.overlap_seconds),
                secret=body.secret,
                by=_by(),
            )
        except endpoints.EndpointError as exc:
            raise _invalid(exc) from None
        except manage.ManageError as exc:
            raise _problem(exc) from None
        return {"secret": secret, "secrets": detail.secrets}

    @bp.get("/callback-secret")
    @schema.declare(responses=dict(AUTH_PROBLEMS))
    @validate_response(CallbackSecrets)
    async def callback_secrets() -> dict[str, Any]:
        """The callback secrets' ids and expiry (never the secrets)."""
        return {"secrets": await endpoints.secrets_of(deps.db, None)}

    @bp.post("/callback-secret/rotate")
    @schema.declare(request=RotateSecret, responses=body_problems)
    @validate_response(SecretRotated)
    async def rotate_callback_secret() -> dict[str, Any]:
        """A new secret for payments' ``status_callback_url`` callbacks (shown this once);
        the old ones sign beside it a while. Give it to the callers that verify them."""
        body = await _body(RotateSecret)
        try:
            secret, secrets = await manage.rotate_callback_secret(
                deps.db,
                box(),
                overlap_seconds=overlap(body.overlap_seconds),
                secret=body.secret,
                by=_by(),
            )
        except endpoints.EndpointError as exc:
            raise _invalid(exc) from None
        return {"secret": secret, "secrets": secrets}

    @bp.post("/endpoints/<endpoint_id>/test")
    @schema.declare(responses={409: schema.ProblemDocument, **missing})
    @validate_response(TestQueued, 202)
    async def test_endpoint(endpoint_id: str) -> tuple[dict[str, Any], int]:
        """Send a ``webhook.test`` event to this endpoint only."""
        try:
            sent = await manage.send_test(deps.db, endpoint_id, by=_by())
        except manage.ManageError as exc:
            raise _problem(exc) from None
        return dataclasses.asdict(sent), 202

    @bp.post("/endpoints/<endpoint_id>/recover")
    @schema.declare(request=Recover, responses=body_problems)
    @validate_response(Recovered, 202)
    async def recover(endpoint_id: str) -> tuple[dict[str, Any], int]:
        """Re-send every failed delivery of this endpoint created since a time."""
        body = await _body(Recover)
        try:
            count = await manage.recover(deps.db, endpoint_id, body.since, by=_by())
        except manage.ManageError as exc:
            raise _problem(exc) from None
        return {"recovered": count}, 202

    @bp.get("/deliveries")
    @schema.declare(responses=bad)
    @validate_querystring(DeliveryQuery)
    @validate_response(DeliveryPage)
    async def list_deliveries(query_args: DeliveryQuery) -> dict[str, Any]:
        """Deliveries, newest first, filtered (keyset pages on ``before_id``)."""
        q = query_args
        rows = await deliveries.list_deliveries(
            deps.db,
            endpoint_id=q.endpoint_id,
            state=q.state,
            event_type=q.event_type,
            event_id=q.event_id,
            since=q.since,
            until=q.until,
            before_id=q.before_id,
            limit=q.limit,
        )
        next_before_id = rows[-1].id if len(rows) == q.limit else None
        return {"deliveries": rows, "next_before_id": next_before_id}

    @bp.get("/deliveries/<int:delivery_id>")
    @schema.declare(responses=missing)
    @validate_response(DeliveryWithAttempts)
    async def get_delivery(delivery_id: int) -> dict[str, Any]:
        """One delivery with every attempt (status, duration, error, response excerpt)."""
        try:
            detail = await manage.delivery(deps.db, _delivery_id(delivery_id))
        except manage.ManageError as exc:
            raise _problem(exc) from None
        return dataclasses.asdict(detail)

    @bp.post("/deliveries/<int:delivery_id>/retry")
    @schema.declare(responses={409: schema.ProblemDocument, **missing})
    @validate_response(DeliveryOne, 202)
    async def retry_delivery(delivery_id: int) -> tuple[dict[str, Any], int]:
        """Send a delivery again now, whatever its state."""
        try:
            retried = await manage.retry(deps.db, _delivery_id(delivery_id), by=_by())
        except manage.ManageError as exc:
            raise _problem(exc) from None
        return {"delivery": dataclasses.asdict(retried)}, 202

    return bp


def _delivery_id(delivery_id: int) -> int:
    if delivery_id > BIGINT_MAX:
        raise Problem(404, f"no webhook delivery {delivery_id}")
    return delivery_id
