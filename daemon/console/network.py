"""``/console/olts`` and ``/console/overrides``: OLT devices and ONU overrides.

OLTs: ``network.devices.list_devices`` (never a password) with what the daemon's OLT
pool knows of each (``OltPool.status``: session, queue, breaker); "test connection" runs
``OltPool.test_device`` (logs in, or reuses the session, and runs a harmless show
command), as ``paymentd olt test`` does, and shows its output or error.

Overrides: ``devices.list_overrides`` / ``set_override`` / ``remove_override``, the calls
behind ``paymentd onu override``.
"""

from __future__ import annotations

import logging

import trio
from quart import Blueprint, Response, render_template

from daemon.console import guard, views
from daemon.console.context import Console
from daemon.network import devices
from daemon.network.olt.types import OltError
from daemon.platform.db import BIGINT_MAX
from daemon.platform.http.problem import Problem

log = logging.getLogger(__name__)

NAV = (("console.olts", "OLTs"), ("console.overrides", "ONU overrides"))
OVERRIDE_NOTICES: views.Notices = {
    "set": ("Override saved.", False),
    "removed": ("Override removed.", False),
    "absent": ("That service had no override.", True),
}


def register(bp: Blueprint, console: Console) -> None:
    deps = console.deps

    async def olt_page(test: dict[str, str] | None = None) -> str:
        pool = console.pool
        return await render_template(
            "console/olts.html",
            devices=await devices.list_devices(deps.db),
            status=None if pool is None else pool.status(),
            test=test,
        )

    @bp.get("/olts")
    async def olts() -> str:
        return await olt_page()

    @bp.post("/olts/<name>/test")
    async def olt_test(name: str) -> str:
        pool = console.pool
        if pool is None:
            raise Problem(503, "no OLT pool runs in this process; use 'paymentd olt test'")
        if name not in {d.name for d in await devices.list_devices(deps.db)}:
            raise Problem(404, f"no OLT named {name!r}")
        log.info("OLT %s: connection test asked by %s", name, guard.current().who)
        # Bounded like one request of the pool's own, so a dead device cannot hang the page.
        with trio.move_on_after(pool.settings.operation_deadline) as scope:
            try:
                output = await pool.test_device(name)
                result = {"name": name, "ok": "yes", "output": output}
            except OltError as exc:
                result = {"name": name, "ok": "", "output": str(exc)}
        if scope.cancelled_caught:
            result = {"name": name, "ok": "", "output": "no answer in time"}
        return await olt_page(result)

    @bp.get("/overrides")
    async def overrides() -> str:
        return await render_template(
            "console/overrides.html",
            overrides=await devices.list_overrides(deps.db),
            devices=await devices.list_devices(deps.db),
            error=None,
            **views.notices(OVERRIDE_NOTICES),
        )

    @bp.post("/overrides")
    async def override_set() -> Response | tuple[str, int]:
        form = views.form()
        try:
            service_id = views.form_int("service_id")
            await devices.set_override(
                deps.db,
                service_id,
                form.get("olt_name", ""),
                form.get("onu", ""),
                note=form.get("note", "").strip() or None,
            )
        except (devices.StoreError, Problem) as exc:
            # The form again, with what to fix; nothing was stored.
            detail = exc.detail if isinstance(exc, Problem) else str(exc)
            page = await render_template(
                "console/overrides.html",
                overrides=await devices.list_overrides(deps.db),
                devices=await devices.list_devices(deps.db),
                error=detail,
                notice=None,
                form=form,
            )
            return page, 400
        log.info("ONU override for service %d set by %s", service_id, guard.current().who)
        return guard.redirect_to("console.overrides", notice="set")

    @bp.post("/overrides/<int:service_id>/remove")
    async def override_remove(service_id: int) -> Response:
        # Past bigint no service can have one (and PostgreSQL would refuse the parameter).
        removed = service_id <= BIGINT_MAX and await devices.remove_override(deps.db, service_id)
        if removed:
            log.info("ONU override of service %d removed by %s", service_id, guard.current().who)
        return guard.redirect_to("console.overrides", notice="removed" if removed else "absent")
