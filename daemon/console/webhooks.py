"""``/console/webhooks``: outbound webhook endpoints and their deliveries.

List and create endpoints; edit, disable and enable one; rotate its signing secret; send
it a test event; re-send its failed deliveries since a time ("recover"); its deliveries,
each with every attempt (status, duration, response excerpt), and retry one. Every action
is ``daemon.webhooks.manage``, which ``/api/v1/webhooks`` and ``paymentd webhooks`` share,
so the log line and the rules are the same whoever acts.

A signing secret is shown once: in the page that answers the create or the rotate POST
(rendered there, ``Cache-Control: no-store`` like every console page), never in a URL,
a later page or a log line. Later pages show the secrets' ids and expiry only.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from quart import Blueprint, Response, render_template, request

from daemon.console import guard, views
from daemon.console.context import Console
from daemon.platform.db import BIGINT_MAX
from daemon.platform.http.problem import Problem
from daemon.platform.secrets import Keyring, SecretKeyError, load_keyring
from daemon.webhooks import deliveries, endpoints, manage

log = logging.getLogger(__name__)

NAV = (("console.webhooks_list", "Webhooks"),)
NOTICES: views.Notices = {
    "saved": ("Endpoint saved.", False),
    "disabled": ("Endpoint disabled: it is sent nothing until it is enabled.", False),
    "enabled": ("Endpoint enabled.", False),
    "tested": ("A webhook.test event is queued for this endpoint.", False),
    "recovered": ("{count} failed deliveries are queued again.", False),
    "retried": ("Delivery queued again.", False),
}


def _event_types(text: str) -> list[str]:
    return [t for t in text.replace(",", " ").split() if t] or ["*"]


def _limit(form: dict[str, str], name: str) -> int | None:
    """An optional positive whole number (empty: no limit); the store checks the range."""
    raw = form.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or len(raw) > 9:
        raise endpoints.EndpointError(f"{name}: a positive whole number, or empty for none")
    return int(raw)


def _settings(form: dict[str, str]) -> dict[str, Any]:
    """The endpoint form's fields, as ``manage.create`` / ``manage.update`` take them."""
    return {
        "url": form.get("url", "").strip(),
        "description": form.get("description", "").strip(),
        "event_types": _event_types(form.get("event_types", "")),
        "legacy_signature": form.get("legacy_signature") == "yes",
        "rate_limit_per_second": _limit(form, "rate_limit_per_second"),
        "max_concurrency": _limit(form, "max_concurrency"),
    }


def _count_arg() -> int:
    raw = request.args.get("count", "")
    return int(raw) if raw.isdigit() and len(raw) < 10 else 0


def _since(form: dict[str, str]) -> dt.datetime:
    """The recover form's time (a ``datetime-local`` input, read as UTC)."""
    raw = form.get("since", "").strip()
    try:
        when = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise manage.ManageError(
            400, "since: give a date and time, e.g. 2026-12-01T00:00"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _delivery_id(delivery_id: int) -> int:
    if delivery_id > BIGINT_MAX:
        raise Problem(404, f"no webhook delivery {delivery_id}")
    return delivery_id


def _missing(exc: manage.ManageError) -> Problem:
    return Problem(exc.status, str(exc))


def register(bp: Blueprint, console: Console) -> None:
    deps = console.deps
    keyring: list[Keyring] = []

    def box() -> Keyring:
        # Loaded on first use, as the API does: only creating and rotating need it.
        if not keyring:
            try:
                keyring.append(load_keyring(deps.config.secrets))
            except SecretKeyError:
                raise Problem(
                    503, "the secrets keyring cannot be loaded: see secrets.key_file"
                ) from None
        return keyring[0]

    async def list_page(*, error: str | None = None, form: dict[str, str] | None = None) -> str:
        enabled_arg = views.text_arg("enabled", ("yes", "no"))
        after = views.text_arg("after")
        rows = await endpoints.list_endpoints(
            deps.db,
            enabled=None if enabled_arg is None else enabled_arg == "yes",
            after=after,
            limit=views.PAGE_SIZE,
        )
        page_notices = {"notice": error, "notice_error": True} if error else views.notices({})
        return await render_template(
            "console/webhooks.html",
            endpoints=rows,
            filters={"enabled": enabled_arg} if enabled_arg else {},
            paged=after is not None,
            next_after=rows[-1].id if len(rows) == views.PAGE_SIZE else None,
            form=form or {},
            **page_notices,
        )

    @bp.get("/webhooks")
    async def webhooks_list() -> str:
        return await list_page()

    @bp.post("/webhooks")
    async def webhook_create() -> str | tuple[str, int]:
        form = views.form()
        try:
            endpoint, secret = await manage.create(
                deps.db, box(), by=guard.current().who, **_settings(form)
            )
        except endpoints.EndpointError as exc:
            return await list_page(error=str(exc), form=form), 400
        return await render_template(
            "console/webhook_secret.html", endpoint=endpoint, secret=secret, created=True
        )

    async def detail_page(
        endpoint_id: str, *, error: str | None = None, form: dict[str, str] | None = None
    ) -> str:
        try:
            detail = await manage.describe(deps.db, endpoint_id)
        except manage.ManageError as exc:
            raise _missing(exc) from None
        state = views.text_arg("state", deliveries.STATES)
        before_id = views.int_arg("before_id")
        rows = await deliveries.list_deliveries(
            deps.db,
            endpoint_id=endpoint_id,
            state=state,
            before_id=before_id,
            limit=views.PAGE_SIZE,
        )
        page_notices = (
            {"notice": error, "notice_error": True}
            if error
            else views.notices(NOTICES, count=_count_arg())
        )
        endpoint = detail.endpoint
        since = endpoint.failing_since or dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
        return await render_template(
            "console/webhook.html",
            endpoint=endpoint,
            secrets=detail.secrets,
            deliveries=rows,
            states=deliveries.STATES,
            filters={"state": state} if state else {},
            paged=before_id is not None,
            next_before=rows[-1].id if len(rows) == views.PAGE_SIZE else None,
            recover_since=since.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M"),
            overlap_hours=deps.config.webhooks.secret_overlap_seconds / 3600,
            form=form or {},
            **page_notices,
        )

    @bp.get("/webhooks/<endpoint_id>")
    async def webhook_detail(endpoint_id: str) -> str:
        return await detail_page(endpoint_id)

    @bp.post("/webhooks/<endpoint_id>")
    async def webhook_edit(endpoint_id: str) -> Response | tuple[str, int]:
        form = views.form()
        try:
            await manage.update(deps.db, endpoint_id, by=guard.current().who, **_settings(form))
        except endpoints.EndpointError as exc:
            return await detail_page(endpoint_id, error=str(exc), form=form), 400
        except manage.ManageError as exc:
            raise _missing(exc) from None
        return guard.redirect_to("console.webhook_detail", endpoint_id=endpoint_id, notice="saved")

    async def set_enabled(endpoint_id: str, enabled: bool) -> Response:
        try:
            await manage.update(deps.db, endpoint_id, by=guard.current().who, enabled=enabled)
        except manage.ManageError as exc:
            raise _missing(exc) from None
        notice = "enabled" if enabled else "disabled"
        return guard.redirect_to("console.webhook_detail", endpoint_id=endpoint_id, notice=notice)

    @bp.post("/webhooks/<endpoint_id>/disable")
    async def webhook_disable(endpoint_id: str) -> Response:
        return await set_enabled(endpoint_id, False)

    @bp.post("/webhooks/<endpoint_id>/enable")
    async def webhook_enable(endpoint_id: str) -> Response:
        return await set_enabled(endpoint_id, True)

    @bp.post("/webhooks/<endpoint_id>/rotate")
    async def webhook_rotate(endpoint_id: str) -> str:
        try:
            secret, detail = await manage.rotate_secret(
                deps.db,
                box(),
                endpoint_id,
                overlap_seconds=deps.config.webhooks.secret_overlap_seconds,
                by=guard.current().who,
            )
        except manage.ManageError as exc:
            raise _missing(exc) from None
        return await render_template(
            "console/webhook_secret.html",
            endpoint=detail.endpoint,
            secret=secret,
            secrets=detail.secrets,
            created=False,
        )

    async def refused(endpoint_id: str, exc: manage.ManageError) -> tuple[str, int]:
        if exc.status == 404:
            raise _missing(exc)
        return await detail_page(endpoint_id, error=str(exc)), exc.status

    @bp.post("/webhooks/<endpoint_id>/test")
    async def webhook_test(endpoint_id: str) -> Response | tuple[str, int]:
        try:
            await manage.send_test(deps.db, endpoint_id, by=guard.current().who)
        except manage.ManageError as exc:
            return await refused(endpoint_id, exc)
        return guard.redirect_to("console.webhook_detail", endpoint_id=endpoint_id, notice="tested")

    @bp.post("/webhooks/<endpoint_id>/recover")
    async def webhook_recover(endpoint_id: str) -> Response | tuple[str, int]:
        form = views.form()
        try:
            count = await manage.recover(deps.db, endpoint_id, _since(form), by=guard.current().who)
        except manage.ManageError as exc:
            return await refused(endpoint_id, exc)
        return guard.redirect_to(
            "console.webhook_detail", endpoint_id=endpoint_id, notice="recovered", count=count
        )

    @bp.get("/webhook-deliveries/<int:delivery_id>")
    async def delivery_detail(delivery_id: int) -> tuple[str, int]:
        return await delivery_page(delivery_id)

    async def delivery_page(
        delivery_id: int, *, error: str | None = None, status: int = 200
    ) -> tuple[str, int]:
        try:
            found = await manage.delivery(deps.db, _delivery_id(delivery_id))
        except manage.ManageError as exc:
            raise _missing(exc) from None
        page_notices: dict[str, Any] = (
            {"notice": error, "notice_error": True} if error else views.notices(NOTICES)
        )
        html = await render_template(
            "console/delivery.html",
            delivery=found.delivery,
            attempts=found.attempts,
            **page_notices,
        )
        return html, status

    @bp.post("/webhook-deliveries/<int:delivery_id>/retry")
    async def delivery_retry(delivery_id: int) -> Response | tuple[str, int]:
        try:
            await manage.retry(deps.db, _delivery_id(delivery_id), by=guard.current().who)
        except manage.ManageError as exc:
            if exc.status == 404:
                raise _missing(exc) from None
            return await delivery_page(delivery_id, error=str(exc), status=exc.status)
        return guard.redirect_to(
            "console.delivery_detail", delivery_id=delivery_id, notice="retried"
        )
