"""``/console/apikeys``: API keys for the HTTP APIs — list, create (the key shown once), revoke.

The same calls as ``paymentd apikey …`` (``daemon.platform.auth``): only the key's hash
is stored, so the page answering the create POST is the only place the key ever appears
(rendered there, never redirected to, never in a URL or a log line). The list shows ids,
names, scopes, dates and when each was last used (to the minute the API records it).
"""

from __future__ import annotations

import logging

from quart import Blueprint, Response, render_template, request

from daemon.console import guard, views
from daemon.console.context import Console
from daemon.platform import auth
from daemon.platform.http.problem import Problem

log = logging.getLogger(__name__)

NAV = (("console.apikeys_list", "API keys"),)
NOTICES: views.Notices = {"revoked": ("API key revoked: it is refused from now on.", False)}
SCOPE_HELP = {
    auth.ADMIN: "the admin API (tasks, operations): everything",
    auth.PAYMENTS_READ: "read payments and refunds",
    auth.PAYMENTS_WRITE: "create, capture, cancel and refund payments",
    auth.WEBHOOKS_MANAGE: "manage webhook endpoints and deliveries",
}


def register(bp: Blueprint, console: Console) -> None:
    deps = console.deps

    async def list_page(
        *,
        error: str | None = None,
        form: dict[str, str] | None = None,
        scopes: list[str] | None = None,
    ) -> str:
        page_notices = {"notice": error, "notice_error": True} if error else views.notices(NOTICES)
        return await render_template(
            "console/apikeys.html",
            keys=await auth.list_keys(deps.db),
            scopes=auth.SCOPES,
            scope_help=SCOPE_HELP,
            chosen=scopes or [],
            form=form or {},
            **page_notices,
        )

    @bp.get("/apikeys")
    async def apikeys_list() -> str:
        return await list_page()

    @bp.post("/apikeys")
    async def apikey_create() -> str | tuple[str, int]:
        form = views.form()
        # A multi-valued field: the guard's form dict keeps only the first value.
        scopes = (await request.form).getlist("scope")
        name = form.get("name", "").strip()
        try:
            created = await auth.create_key(deps.db, name, scopes)
        except auth.ApiKeyError as exc:
            detail = str(exc).replace("--name", "name").replace("--scope", "scope")
            return await list_page(error=detail, form=form, scopes=scopes), 400
        log.info("API key %s created from the console by %s", created.id, guard.current().who)
        return await render_template("console/apikey_created.html", created=created)

    @bp.post("/apikeys/<key_id>/revoke")
    async def apikey_revoke(key_id: str) -> Response | tuple[str, int]:
        try:
            await auth.revoke_key(deps.db, key_id)
        except auth.ApiKeyError as exc:
            # One error class for both refusals; its text tells them apart.
            if "already revoked" in str(exc):
                return await list_page(error=str(exc)), 409
            raise Problem(404, f"no API key {key_id[:40]!r}") from None
        log.info("API key %s revoked from the console by %s", key_id, guard.current().who)
        return guard.redirect_to("console.apikeys_list", notice="revoked")
