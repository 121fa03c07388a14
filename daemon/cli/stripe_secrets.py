"""``paymentd payments stripe-secret add | list | retire``: Stripe's webhook signing secrets.

Rotating Stripe's signing secret (Dashboard → Webhooks → endpoint → "Roll secret", with
the old secret kept valid for a while):

1. ``paymentd payments stripe-secret add --file NEW`` (``-`` reads stdin): now both the
   old and the new secret verify (the daemon picks it up at the first event it signs);
2. once Stripe signs with the new one only: ``paymentd payments stripe-secret retire
   OLD_ID`` (``list`` shows the ids): it stops verifying within
   ``payments.stripe_webhook_secrets_refresh_seconds``.

At most two are active. Secrets are read only from a file or stdin (never an argument,
which ``ps`` shows) and never printed: ``list`` shows ids, notes and times.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from daemon.cli.common import UserError, load, with_config, with_db


def _read(path: str) -> str:
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise UserError(f"--file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"--file {path}: not text (expected one whsec_… line)") from None


def _when(value: Any) -> str:
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"


def cmd(args: argparse.Namespace) -> int:
    from daemon.payments import stripe_secrets as ss
    from daemon.platform.secrets import SecretKeyError, load_keyring

    cfg = load(args)
    action = args.secret_cmd

    async def told(fn: Any, *fn_args: Any) -> Any:
        try:
            return await fn(*fn_args)
        except (ss.SigningSecretError, SecretKeyError) as exc:  # inside trio's nurseries
            raise UserError(str(exc)) from None

    try:
        if action == "add":
            text = _read(args.file)
            ss.check(text)  # before the keyring or the database: say what is wrong first
            box = load_keyring(cfg.secrets)
            added = with_db(cfg, lambda db: told(ss.add, db, box, text, args.note))
            print(f"added {added.id}: it verifies Stripe's events from now on")
            return 0
        if action == "retire":
            done = with_db(cfg, lambda db: told(ss.retire, db, args.id))
            print(f"retired {done.id} at {_when(done.retired_at)}: it no longer verifies")
            return 0
        found = with_db(cfg, ss.listing)
        if not found:
            print("no stored signing secrets")
        for s in found:
            state = "active " if s.active else f"retired {_when(s.retired_at)}"
            print(f"{s.id}  {state:<27} created {_when(s.created_at)}  {s.note or ''}".rstrip())
        config_count = sum(1 for s in cfg.payments.stripe_webhook_secrets if s)
        if config_count:
            print(f"payments.stripe_webhook_secrets: {config_count} more in the config (accepted"
                  " too; move them here with 'add', then remove them from the config)")  # fmt: skip
        return 0
    except ss.SigningSecretError as exc:
        raise UserError(str(exc)) from None
    except SecretKeyError as exc:
        raise UserError(str(exc)) from None


def register(p_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sp = p_sub.add_parser(
        "stripe-secret", help="Stripe's webhook signing secrets in the keyring (two at most)"
    )
    ss = sp.add_subparsers(dest="secret_cmd", required=True, metavar="SUBCOMMAND")
    add = with_config(ss.add_parser("add", help="store a whsec_… secret (read from --file)"))
    add.add_argument("--file", required=True, help="a file holding the secret, or - for stdin")
    add.add_argument("--note", help="what it is (e.g. the endpoint), shown by list")
    with_config(ss.add_parser("list", help="the stored secrets: ids and times, never the secret"))
    retire = with_config(ss.add_parser("retire", help="stop verifying with one (by id)"))
    retire.add_argument("id")
