"""``paymentd onu activate|deactivate SERVICE_ID`` and ``paymentd uisp test``: an operator
acting on one service through the task machinery, and checking the UISP connection.

They join the ``onu`` and ``uisp`` groups (``cli/olt.py``, ``cli/operations.py``), which
call ``register_onu_actions`` and ``register_uisp_test``.
"""

from __future__ import annotations

import argparse
import getpass
import os
import socket
import sys
from typing import Any

import trio

from daemon.cli.common import UserError, load, with_config, with_db
from daemon.platform.config import Config


def who_asked() -> str:
    """Who asked, for the task's history: the login behind sudo, and the host."""
    user = os.environ.get("SUDO_USER")
    if not user:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no LOGNAME/USER and no passwd entry (a container)
            user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def cmd_onu_action(args: argparse.Namespace) -> int:
    from daemon.network import operator
    from daemon.uisp import client as uisp
    from daemon.uisp.decide import DecisionError

    cfg = load(args)
    action = args.onu_cmd

    async def request(db: Any) -> operator.Requested:
        async with uisp.UispClient.from_config(cfg.uisp) as client:
            try:
                return await operator.request(
                    db, client, cfg.uisp, args.service_id, action, requested_by=who_asked()
                )
            except uisp.UispNotFound:
                raise UserError(f"UISP has no service {args.service_id}; nothing queued") from None
            except uisp.UispAuthError as exc:
                raise UserError(
                    f"UISP refuses uisp.app_key ({exc}); check it with 'paymentd uisp test';"
                    " nothing queued"
                ) from None
            except uisp.UispError as exc:
                # The ONU location and the client's phone come from UISP: without it the
                # task would go to the wrong ONU or send no SMS.
                raise UserError(f"{exc}; nothing queued") from None
            except DecisionError as exc:
                raise UserError(f"{exc}; nothing queued") from None

    done = with_db(cfg, request)
    p = done.planned
    who = p.client_name or (f"client {p.client_id}" if p.client_id else "no client")
    print(
        f"task {done.task_id} queued: {action} service {p.service_id} ({who}) on"
        f" {p.olt_name} {p.onu}; the running daemon executes it"
    )
    if action == "activate":
        print(
            f"SMS: to {p.phone} if this reconnects the service (one per reconnection)"
            if p.phone
            else "SMS: none (no phone in UISP contacts)"
        )
    if done.uisp_suspended != (action == "deactivate"):
        state = "suspended" if done.uisp_suspended else "not suspended"
        print(f"note: UISP says service {p.service_id} is {state}; UISP is not changed by this")
    print(f"follow it: paymentd tasks follow --task {done.task_id}")
    return 0


def register_onu_actions(onu_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for action, text in (
        ("activate", "reconnect a service's ONU now (queued as a task, like a webhook's)"),
        ("deactivate", "disconnect a service's ONU now (queued as a task, like a webhook's)"),
    ):
        sp = with_config(onu_sub.add_parser(action, help=text))
        sp.add_argument("service_id", type=_service_id, metavar="SERVICE_ID")
        sp.set_defaults(fn=cmd_onu_action)


def _service_id(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 2**63 - 1:
        raise argparse.ArgumentTypeError(f"not a UISP service id: {text!r}")
    return int(text)


def cmd_uisp_test(args: argparse.Namespace) -> int:
    from daemon.uisp import check

    cfg = load(args)
    try:
        checks = trio.run(_uisp_checks, cfg)
    except check.UispConfigProblem as exc:
        raise UserError(str(exc)) from None
    except check.UispUnavailable as exc:
        print(f"paymentd: error: {exc}", file=sys.stderr)
        return 1
    for c in checks:
        print(f"{c.name}: {c.result}")
    print(f"UISP: OK (uisp.payment_action = {cfg.uisp.payment_action!r})")
    return 0


async def _uisp_checks(cfg: Config) -> list[Any]:
    from daemon.uisp import check
    from daemon.uisp import client as uisp

    async with uisp.UispClient.from_config(cfg.uisp) as client:
        return await check.run_checks(client, cfg.uisp)


def register_uisp_test(u_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    t = with_config(
        u_sub.add_parser("test", help="check uisp.base_url, the app key and its permissions")
    )
    t.set_defaults(fn=cmd_uisp_test)
