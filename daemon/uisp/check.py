"""``paymentd uisp test``: is ``uisp.base_url`` the CRM API, is ``uisp.app_key`` accepted,
and may it do what this configuration needs? Real requests, none of which changes
anything in UISP:

1. ``GET /clients/services?limit=1``: the URL answers with the API's JSON and the key
   is valid (401 otherwise); a wrong base URL answers 404 or the web UI's HTML.
2. ``GET /webhook-events/<a random uuid>``: the key may read webhook events (how every
   webhook is confirmed, ``uisp.verify_webhook_events``); the expected answer is 404.
3. ``PATCH /clients/services/0/cancel-suspend``: the key may write (``uisp.payment_action
   = "cancel_suspend"`` lifts suspensions). Service 0 never exists (UISP's ids start at
   1), so a write key gets 404 and a read-only key 403.

Each check is a ``Check`` line; a problem the operator must fix in the config raises
``UispConfigProblem`` (one line, naming the setting), one that may pass by itself
(UISP overloaded, 5xx) raises ``UispUnavailable``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from daemon.platform.config import UispConfig
from daemon.uisp import client as uisp

# An id no UISP service has: the write probe changes nothing.
NO_SUCH_SERVICE = 0


class UispConfigProblem(Exception):
    """The URL, the key or its permissions are wrong for this configuration."""


class UispUnavailable(Exception):
    """UISP answered, but not usefully right now (429, 5xx): try again later."""


@dataclass(frozen=True)
class Check:
    name: str
    result: str


def _problem(exc: uisp.UispError, cfg: UispConfig, what: str) -> Exception:
    if isinstance(exc, uisp.UispTransientError) and exc.status is not None:
        return UispUnavailable(f"{what}: {exc}; try again later")
    if isinstance(exc, uisp.UispTransientError):
        return UispConfigProblem(
            f"cannot reach UISP at uisp.base_url = {cfg.base_url}: {exc}; check the URL and"
            " that this host can reach it"
        )
    if exc.status == 401:
        return UispConfigProblem(
            f"{what}: UISP refuses the key (HTTP 401): set uisp.app_key to an app key from"
            " UISP (System > Security > App keys)"
        )
    if exc.status == 404 or exc.status is None or exc.status == 200:
        return UispConfigProblem(
            f"{what}: uisp.base_url = {cfg.base_url} does not look like the UISP CRM API"
            f" ({exc}); it ends in /crm/api/v1.0"
        )
    return UispConfigProblem(f"{what}: {exc}")


async def run_checks(client: uisp.UispClient, cfg: UispConfig) -> list[Check]:
    """The checks above, in order; raises at the first that fails."""
    if not cfg.app_key:
        raise UispConfigProblem("uisp.app_key is empty: set it to an app key from UISP")
    done: list[Check] = []
    what = "read services (GET /clients/services)"
    try:
        services = await client.list_services(limit=1)
    except uisp.UispError as exc:
        raise _problem(exc, cfg, what) from None
    if not isinstance(services, list):
        raise UispConfigProblem(
            f"{what}: uisp.base_url = {cfg.base_url} answered {type(services).__name__}, not"
            " a list of services; it ends in /crm/api/v1.0"
        )
    done.append(Check(what, f"ok ({cfg.base_url}, key accepted)"))

    what = "read webhook events (GET /webhook-events/{uuid})"
    try:
        await client.get_webhook_event(str(uuid.uuid4()))
    except uisp.UispError as exc:
        if exc.status == 403:
            raise UispConfigProblem(
                f"{what}: the key may not read webhook events (HTTP 403), which"
                " uisp.verify_webhook_events needs: give the app key read access"
            ) from None
        raise _problem(exc, cfg, what) from None
    done.append(Check(what, "ok"))

    what = "write (PATCH /clients/services/{id}/cancel-suspend)"
    needed = cfg.payment_action == "cancel_suspend"
    try:
        await client.cancel_suspend(NO_SUCH_SERVICE)
    except uisp.UispAuthError as exc:
        if exc.status != 403:
            raise _problem(exc, cfg, what) from None
        if needed:
            raise UispConfigProblem(
                f"{what}: the key is read-only (HTTP 403), and uisp.payment_action ="
                ' "cancel_suspend" lifts suspensions in UISP: use a write app key, or set'
                ' uisp.payment_action = "reactivate_onu"'
            ) from None
        done.append(
            Check(what, 'read-only key; not needed (uisp.payment_action = "reactivate_onu")')
        )
    except uisp.UispError as exc:
        raise _problem(exc, cfg, what) from None
    else:
        done.append(Check(what, "ok" if needed else "ok (not needed by uisp.payment_action)"))
    return done
