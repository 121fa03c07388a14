"""The ``paymentd`` command line.

User mistakes (bad config, missing key, unreachable database, unknown OLT) print one line
that says what to fix and exit non-zero, without a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import trio
import trio_asyncio

from daemon import __version__
from daemon import config as configmod
from daemon.config import Config, ConfigError

T = TypeVar("T")
DEFAULT_CONFIG = "/etc/paymentd/config.toml"


class UserError(Exception):
    """A mistake the user can fix; printed as one line."""


def _load(args: argparse.Namespace) -> Config:
    path = args.config or os.environ.get("PAYMENTD_CONFIG")
    if path is None and Path(DEFAULT_CONFIG).exists():
        path = DEFAULT_CONFIG
    return configmod.load(path)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("asyncssh", "hypercorn.access", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def _with_db(cfg: Config, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    from daemon.db import Database

    async def main() -> T:
        async with (
            trio_asyncio.open_loop(),
            Database.open(cfg.database.url, min_size=1, max_size=2) as db,
        ):
            return await fn(db, *args)

    return trio.run(main)


# ---------------------------------------------------------------- commands


def cmd_run(args: argparse.Namespace) -> int:
    from daemon.app import run_daemon
    from daemon.instrument import SlowStepLogger

    cfg = _load(args)
    _setup_logging(cfg.daemon.log_level)
    logging.getLogger("paymentd").info("paymentd %s starting (config %s)", __version__, cfg.source)
    trio.run(run_daemon, cfg, instruments=[SlowStepLogger()])
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from daemon.migrate import migrate

    cfg = _load(args)
    report = migrate(cfg.database.url, notify_throttle_ms=cfg.database.notify_throttle_ms)
    print(f"migrations applied: {', '.join(report.applied) or 'none (up to date)'}")
    print(f"pgmq: {report.pgmq}; queues: {', '.join(report.queues)}")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from daemon.db import DatabaseError
    from daemon.secrets import SecretBox, load_key, verify_key

    cfg = _load(args)
    box = SecretBox(load_key(cfg.olt))
    warnings = []
    try:
        # The key must open the secrets already stored (a wrong key is caught here, not
        # at the first reconnection).
        _with_db(cfg, verify_key, box)
    except DatabaseError as exc:
        warnings.append(
            f"database.url: cannot connect ({exc}); key not checked against stored secrets"
        )
    if not cfg.uisp.webhook_token:
        warnings.append("uisp.webhook_token is empty: the UISP webhook endpoint is disabled")
    if not cfg.http.admin_token:
        warnings.append("http.admin_token is empty: the admin API is disabled")
    if cfg.sms.provider == "labsmobile" and not (cfg.sms.username and cfg.sms.token):
        warnings.append("sms.username / sms.token are empty: LabsMobile will refuse every SMS")
    for w in warnings:
        print(f"warning: {w}")
    print(f"{cfg.source}: OK")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from daemon.secrets import keygen

    path = Path(args.out)
    keygen(path, force=args.force)
    print(f'wrote a new 256-bit key to {path} (mode 0600); set olt.key_file = "{path}"')
    print("keep a copy somewhere safe: without it the stored OLT passwords cannot be read")
    return 0


def _read_secret(value: str | None, file: str | None, env: str, prompt: str) -> str | None:
    if file:
        return Path(file).read_text().strip()
    if value is not None:
        return value
    if os.environ.get(env):
        return os.environ[env]
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    return None


def cmd_olt(args: argparse.Namespace) -> int:
    from daemon import olt_store
    from daemon.secrets import SecretBox, load_key

    cfg = _load(args)
    if args.olt_cmd == "list":
        rows = _with_db(cfg, olt_store.list_devices)
        if args.json:
            print(json.dumps(rows, default=str, indent=2))
        elif not rows:
            print(
                "no OLTs configured; add one with 'paymentd olt add NAME --vendor ... --host ...'"
            )
        else:
            for r in rows:
                print(f"{r['name']:<20} {r['vendor']:<7} {r['username']}@{r['host']}:{r['port']}")
        return 0
    if args.olt_cmd == "remove":
        if not _with_db(cfg, lambda db: olt_store.remove_device(db, args.name, force=args.force)):
            raise UserError(f"no OLT named {args.name!r} (see 'paymentd olt list')")
        print(f"removed {args.name}")
        return 0
    box = SecretBox(load_key(cfg.olt))
    if args.olt_cmd == "add":
        password = _read_secret(
            args.password, args.password_file, "PAYMENTD_OLT_PASSWORD", "OLT password: "
        )
        if not password:
            raise UserError("no password: use --password-file, PAYMENTD_OLT_PASSWORD or a terminal")
        new_password: str = password
        add_options = {"zte_style": args.zte_style} if args.zte_style else {}
        _with_db(
            cfg,
            lambda db: olt_store.add_device(
                db,
                box,
                name=args.name,
                vendor=args.vendor,
                host=args.host,
                port=args.port,
                username=args.username,
                password=new_password,
                enable_password=args.enable_password,
                options=add_options,
            ),
        )
        print(f"added {args.name} ({args.vendor} {args.host}:{args.port})")
        print(f"check it with: paymentd olt test {args.name}")
        return 0
    if args.olt_cmd == "update":
        password = None
        if args.password_file or args.new_password:
            password = _read_secret(
                None, args.password_file, "PAYMENTD_OLT_PASSWORD", "new OLT password: "
            )
            if not password:
                raise UserError(
                    "--new-password: no password given (use --password-file, "
                    "PAYMENTD_OLT_PASSWORD or a terminal)"
                )
        options = {"zte_style": args.zte_style} if args.zte_style else None
        _with_db(
            cfg,
            lambda db: olt_store.update_device(
                db,
                box,
                args.name,
                host=args.host,
                port=args.port,
                username=args.username,
                password=password,
                options=options,
                **(
                    {"enable_password": args.enable_password}
                    if args.enable_password is not None
                    else {}
                ),
            ),
        )
        print(f"updated {args.name}; the daemon picks it up when the device's session next opens")
        return 0
    if args.olt_cmd == "test":
        print(_with_db(cfg, _test_olt, cfg, box, args.name))
        return 0
    raise AssertionError(args.olt_cmd)


async def _test_olt(db: Any, cfg: Config, box: Any, name: str) -> str:
    from daemon.actors.olt_pool import OltPool, OltPoolSettings
    from daemon.events import EventBus
    from daemon.metrics import Metrics
    from daemon.olt_store import load_spec

    pool = OltPool(
        OltPoolSettings.from_config(cfg.olt),
        lambda n: load_spec(db, box, n),
        Metrics(),
        EventBus(),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        try:
            result = await pool.test_device(name)
        finally:
            nursery.cancel_scope.cancel()
    return f"{name}: OK\n{result}"


def cmd_onu(args: argparse.Namespace) -> int:
    from daemon import olt_store

    cfg = _load(args)
    if args.onu_cmd == "set":
        _with_db(cfg, olt_store.set_override, args.service_id, args.olt, args.onu)
        print(f"service {args.service_id} -> {args.olt} {args.onu}")
    elif args.onu_cmd == "remove":
        if not _with_db(cfg, olt_store.remove_override, args.service_id):
            raise UserError(f"no override for service {args.service_id}")
        print(f"removed override for service {args.service_id}")
    else:
        for r in _with_db(cfg, olt_store.list_overrides):
            print(f"{r['service_id']:<10} {r['olt_name']:<20} {r['onu']}")
    return 0


def cmd_sim(args: argparse.Namespace) -> int:
    from daemon.olt.cli import run_simulator_forever

    _setup_logging("info")

    async def main() -> None:
        async with trio_asyncio.open_loop():
            await run_simulator_forever(args.host, args.port)

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(main)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from daemon.demo import run_demo

    _setup_logging("warning" if not args.verbose else "info")
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(run_demo, Path(args.dir), args.port)
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="paymentd", description="Payment webhook & worker daemon")
    p.add_argument("--version", action="version", version=f"paymentd {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument(
            "--config", "-c", help=f"config file (default: $PAYMENTD_CONFIG or {DEFAULT_CONFIG})"
        )
        return sp

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

    olt = sub.add_parser("olt", help="manage OLT devices")
    olt_sub = olt.add_subparsers(dest="olt_cmd", required=True, metavar="ACTION")
    add = with_config(olt_sub.add_parser("add", help="add an OLT"))
    add.add_argument("name")
    add.add_argument("--vendor", required=True, choices=["huawei", "zte"])
    add.add_argument("--host", required=True)
    add.add_argument("--port", type=int, default=22)
    add.add_argument("--username", required=True)
    add.add_argument(
        "--password", help="prefer --password-file or $PAYMENTD_OLT_PASSWORD (not in shell history)"
    )
    add.add_argument("--password-file")
    add.add_argument("--enable-password", help="ZTE enable password, if the device asks for one")
    add.add_argument(
        "--zte-style",
        choices=["onu_state", "admin"],
        help="ZTE command style (C300/C320: onu_state; C600: admin)",
    )
    lst = with_config(olt_sub.add_parser("list", help="list OLTs (never shows passwords)"))
    lst.add_argument("--json", action="store_true")
    upd = with_config(
        olt_sub.add_parser("update", help="change an OLT's address, user or password")
    )
    upd.add_argument("name")
    upd.add_argument("--host")
    upd.add_argument("--port", type=int)
    upd.add_argument("--username")
    upd.add_argument(
        "--new-password",
        action="store_true",
        help="ask for a new password (or $PAYMENTD_OLT_PASSWORD)",
    )
    upd.add_argument("--password-file", help="read the new password from this file")
    upd.add_argument("--enable-password")
    upd.add_argument("--zte-style", choices=["onu_state", "admin"])
    rm = with_config(olt_sub.add_parser("remove", help="remove an OLT"))
    rm.add_argument("name")
    rm.add_argument(
        "--force", action="store_true", help="also remove ONU overrides that point at it"
    )
    tst = with_config(
        olt_sub.add_parser("test", help="log in to an OLT and run a harmless command")
    )
    tst.add_argument("name")
    olt.set_defaults(fn=cmd_olt)

    onu = sub.add_parser("onu", help="local overrides: which ONU serves a UISP service")
    onu_sub = onu.add_subparsers(dest="onu_cmd", required=True, metavar="ACTION")
    s = with_config(onu_sub.add_parser("set", help="set the ONU of a service"))
    s.add_argument("service_id", type=int)
    s.add_argument("olt", help="OLT name")
    s.add_argument("onu", help="frame/slot/port:onu, e.g. 0/1/3:12")
    r = with_config(onu_sub.add_parser("remove", help="remove a service's override"))
    r.add_argument("service_id", type=int)
    with_config(onu_sub.add_parser("list", help="list overrides"))
    onu.set_defaults(fn=cmd_onu)

    sim = sub.add_parser("sim", help="simulators")
    sim_sub = sim.add_subparsers(dest="sim_cmd", required=True, metavar="WHAT")
    so = sim_sub.add_parser("olt", help="run the OLT simulator (Huawei and ZTE CLIs over SSH)")
    so.add_argument("--host", default="127.0.0.1")
    so.add_argument("--port", type=int, default=2222, help="first port; one port per device")
    sim.set_defaults(fn=cmd_sim)

    demo = sub.add_parser(
        "demo",
        help="everything on one machine: embedded PostgreSQL, simulated OLTs, fake UISP and SMS",
    )
    demo.add_argument("--dir", default=".demo", help="where the demo keeps its database and config")
    demo.add_argument("--port", type=int, default=8080, help="HTTP port of the daemon")
    demo.add_argument("--verbose", "-v", action="store_true")
    demo.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    from daemon.db import DatabaseError
    from daemon.migrate import MigrationError

    user_errors: tuple[type[Exception], ...] = (
        ConfigError,
        UserError,
        MigrationError,
        DatabaseError,
        OSError,
    )
    try:
        from daemon.actors.listener import InstanceLockError
        from daemon.olt.types import OltError
        from daemon.olt_store import StoreError
        from daemon.secrets import SecretKeyError

        user_errors += (SecretKeyError, InstanceLockError, StoreError, OltError)
    except ImportError:  # pragma: no cover - partial installs
        pass
    args = build_parser().parse_args(argv)
    try:
        code: int = args.fn(args)
        return code
    except KeyboardInterrupt:
        return 130
    except user_errors as exc:
        print(f"paymentd: error: {exc}", file=sys.stderr)
        return 2
    except BaseExceptionGroup as group:
        # trio wraps errors from inside nurseries; unwrap a single user error.
        leaves = _leaves(group)
        if leaves and all(isinstance(e, user_errors) for e in leaves):
            for e in leaves:
                print(f"paymentd: error: {e}", file=sys.stderr)
            return 2
        raise


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


if __name__ == "__main__":
    sys.exit(main())
