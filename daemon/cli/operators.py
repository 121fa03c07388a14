"""``paymentd operators add|list|disable|enable|passwd``: console operator accounts.

The password comes from ``--password-file`` (first line), ``$PAYMENTD_OPERATOR_PASSWORD``
or a prompt (asked twice), never from the command line, where ``ps`` and the shell's
history would keep it. Disabling (or a new password) ends the operator's sessions.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path

from daemon.cli.common import UserError, load, with_config, with_db

PASSWORD_ENV = "PAYMENTD_OPERATOR_PASSWORD"


def _password(file: str | None) -> str:
    if file:
        try:
            lines = Path(file).read_text().splitlines()
        except OSError as exc:
            raise UserError(f"--password-file: cannot read that file ({exc.strerror})") from None
        if not lines or not lines[0]:
            raise UserError("--password-file: the first line (the password) is empty")
        return lines[0]
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    if not sys.stdin.isatty():
        raise UserError(
            f"no password: give --password-file FILE or set {PASSWORD_ENV}"
            " (or run in a terminal to be asked)"
        )
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise UserError("the two passwords differ; nothing was changed")
    return first


def cmd_operators(args: argparse.Namespace) -> int:
    from daemon.console import accounts

    cfg = load(args)
    # AccountError (a taken name, a short password) is a user error: cli/__init__ prints it.
    if args.operators_cmd == "list":
        rows = with_db(cfg, accounts.list_operators)
        if args.json:
            print(json.dumps([r.__dict__ for r in rows], default=str, indent=2))
        elif not rows:
            print("no operators; add one with 'paymentd operators add NAME'")
        for r in [] if args.json else rows:
            state = f"disabled {r.disabled_at:%Y-%m-%d}" if r.disabled_at else "active"
            last = r.last_login_at or "never"
            print(f"{r.name:<24} {state:<20} last sign-in {last}")
        return 0
    name = accounts.check_name(args.name)
    if args.operators_cmd in ("add", "passwd"):
        password = accounts.check_password(_password(args.password_file))
        if args.operators_cmd == "add":
            with_db(cfg, lambda db: accounts.add_operator(db, name, password))
            print(f"operator {name} added; they can sign in at /console")
        else:
            with_db(cfg, lambda db: accounts.set_password(db, name, password))
            print(f"operator {name}: password changed; their sessions ended")
    elif args.operators_cmd == "disable":
        with_db(cfg, lambda db: accounts.disable_operator(db, name))
        print(f"operator {name} disabled; their sessions ended")
    else:
        with_db(cfg, lambda db: accounts.enable_operator(db, name))
        print(f"operator {name} enabled")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("operators", help="console operator accounts")
    actions = p.add_subparsers(dest="operators_cmd", required=True, metavar="ACTION")
    for action, text in (
        ("add", "add an operator (password from --password-file, $%s or a prompt)"),
        ("passwd", "set an operator's password (ends their sessions)"),
    ):
        a = with_config(actions.add_parser(action, help=text.replace("%s", PASSWORD_ENV)))
        a.add_argument("name")
        a.add_argument("--password-file", help="read the password from this file's first line")
    lst = with_config(actions.add_parser("list", help="list operators (never a password)"))
    lst.add_argument("--json", action="store_true")
    for action, text in (
        ("disable", "disable an operator and end their sessions"),
        ("enable", "enable a disabled operator"),
    ):
        with_config(actions.add_parser(action, help=text)).add_argument("name")
    p.set_defaults(fn=cmd_operators)
