"""``paymentd run | migrate | check-config | keygen``: running and preparing the daemon."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import trio

from daemon import __version__
from daemon.cli.common import (
    NotMigrated,
    database_problem,
    load,
    setup_logging,
    with_config,
    with_db,
)


def cmd_run(args: argparse.Namespace) -> int:
    from daemon.app import run_daemon
    from daemon.platform.instrument import SlowStepLogger

    cfg = load(args)
    setup_logging(cfg.daemon.log_level)
    logging.getLogger("paymentd").info("paymentd %s starting (config %s)", __version__, cfg.source)
    for notice in cfg.notices:
        logging.getLogger("paymentd").warning("config: %s", notice)
    try:
        trio.run(run_daemon, cfg, instruments=[SlowStepLogger()])
    except Exception as exc:
        # At start-up only (the daemon rides out database trouble once running): a
        # missing database or role, or no schema with migrate_on_start = false.
        problem = database_problem(exc, cfg)
        if problem is None:
            raise
        raise problem from None
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from daemon.platform.migrate import MigrationError, migrate

    cfg = load(args)
    try:
        report = migrate(
            cfg.database.url.reveal(), notify_throttle_ms=cfg.database.notify_throttle_ms
        )
    except MigrationError as exc:
        raise (database_problem(exc, cfg) or exc) from None
    print(f"migrations applied: {', '.join(report.applied) or 'none (up to date)'}")
    print(f"pgmq: {report.pgmq}; queues: {', '.join(report.queues)}")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from daemon.platform.db import DatabaseError
    from daemon.platform.secrets import load_keyring, verify_key

    cfg = load(args)
    for notice in cfg.notices:  # first: they concern the config, whatever fails next
        print(f"warning: {notice}", flush=True)
    box = load_keyring(cfg.secrets)
    warnings = []
    try:
        # The key must open the secrets already stored (a wrong key is caught here, not
        # at the first reconnection).
        with_db(cfg, verify_key, box)
    except DatabaseError as exc:
        warnings.append(
            f"database.url: cannot connect ({exc}); key not checked against stored secrets"
        )
    except NotMigrated as exc:
        # A fresh database is fine when the daemon migrates it at start (the unit's
        # ExecStartPre runs this before the first start); otherwise it is the mistake.
        if not cfg.daemon.migrate_on_start:
            raise
        warnings.append(f"{exc} (or let the daemon do it at start: daemon.migrate_on_start)")
    if not cfg.uisp.webhook_token:
        warnings.append("uisp.webhook_token is empty: the UISP webhook endpoint is disabled")
    if not cfg.http.admin_token:
        warnings.append("http.admin_token is empty: the admin API is disabled")
    from daemon.notifications import providers

    # As the fallback too: each SMS the primary could not send would then fail for good.
    if "labsmobile" in providers.names(cfg) and not (cfg.sms.username and cfg.sms.token):
        warnings.append("sms.username / sms.token are empty: LabsMobile will refuse every SMS")

    providers.check(cfg)  # a [twilio] section that lacks what Twilio needs: one line, exit 2
    for w in warnings:
        print(f"warning: {w}")
    print(f"{cfg.source}: OK")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from daemon.platform.secrets import keygen

    path = Path(args.out)
    keygen(path, force=args.force)
    print(f'wrote a new 256-bit key to {path} (mode 0600); set secrets.key_file = "{path}"')
    print("keep a copy somewhere safe: without it the stored OLT passwords cannot be read")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    with_config(sub.add_parser("run", help="run the daemon")).set_defaults(fn=cmd_run)
    with_config(
        sub.add_parser("migrate", help="create/upgrade the schema, PGMQ and queues")
    ).set_defaults(fn=cmd_migrate)
    with_config(
        sub.add_parser("check-config", help="validate the config and key, then exit")
    ).set_defaults(fn=cmd_check_config)

    kg = sub.add_parser("keygen", help="create the key that encrypts OLT passwords (mode 0600)")
    kg.add_argument(
        "--out", required=True, help="where to write the key, e.g. /etc/paymentd/secret.key"
    )
    kg.add_argument(
        "--force",
        action="store_true",
        help="overwrite an existing key (stored secrets become unreadable)",
    )
    kg.set_defaults(fn=cmd_keygen)
