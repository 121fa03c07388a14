"""``paymentd olt …`` and ``paymentd onu …``: the OLT devices and the ONU override table."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

import trio

from daemon.cli import operator
from daemon.cli.common import UserError, load, with_config, with_db
from daemon.platform.config import Config


def _read_secret(value: str | None, file: str | None, env: str, prompt: str) -> str | None:
    if file:
        try:
            return Path(file).read_text().strip()
        except OSError as exc:
            # Not the path itself: a password typed in its place must not be echoed back.
            raise UserError(f"--password-file: cannot read that file ({exc.strerror})") from None
    if value is not None:
        return value
    if os.environ.get(env):
        return os.environ[env]
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    return None


def cmd_olt(args: argparse.Namespace) -> int:
    from daemon.network import devices as olt_store
    from daemon.platform.secrets import load_keyring

    cfg = load(args)
    if args.olt_cmd == "list":
        rows = with_db(cfg, olt_store.list_devices)
        if args.json:
            print(json.dumps([dataclasses.asdict(r) for r in rows], default=str, indent=2))
        elif not rows:
            print(
                "no OLTs configured; add one with 'paymentd olt add NAME --vendor ... --host ...'"
            )
        else:
            for r in rows:
                print(
                    f"{r.name:<20} {r.vendor:<7} {r.username}@{r.host}:{r.port}"
                    f"  {_host_key_text(r.host_key, r.host_key_check)}"
                )
        return 0
    if args.olt_cmd == "remove":
        if not with_db(cfg, lambda db: olt_store.remove_device(db, args.name, force=args.force)):
            raise UserError(f"no OLT named {args.name!r} (see 'paymentd olt list')")
        print(f"removed {args.name}")
        return 0
    box = load_keyring(cfg.secrets)
    if args.olt_cmd == "add":
        password = _read_secret(
            args.password, args.password_file, "PAYMENTD_OLT_PASSWORD", "OLT password: "
        )
        if not password:
            raise UserError("no password: use --password-file, PAYMENTD_OLT_PASSWORD or a terminal")
        new_password: str = password
        add_options = {"zte_style": args.zte_style} if args.zte_style else {}

        async def add(db: Any) -> str | None:
            # The key is fetched before anything is written: a device we cannot reach is
            # not added half-way (or use --no-host-key-check, explicitly).
            key = None
            if not args.no_host_key_check:
                key = await _fetch_key(cfg, args.name, args.host, args.port, "add")
            await olt_store.add_device(
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
                host_key=key,
                host_key_check=not args.no_host_key_check,
            )
            return key

        key = with_db(cfg, add)
        print(f"added {args.name} ({args.vendor} {args.host}:{args.port})")
        print(_host_key_report(key))
        print(f"check it with: paymentd olt test {args.name}")
        return 0
    if args.olt_cmd == "update":
        password = None
        if args.password is not None or args.password_file or args.new_password:
            password = _read_secret(
                args.password, args.password_file, "PAYMENTD_OLT_PASSWORD", "new OLT password: "
            )
            if not password:
                raise UserError(
                    "no new password given: use --password-file FILE, --new-password with "
                    "$PAYMENTD_OLT_PASSWORD or a terminal, or --password"
                )
        options = {"zte_style": args.zte_style} if args.zte_style else None
        if args.refresh_host_key and args.no_host_key_check:
            raise UserError("--refresh-host-key and --no-host-key-check: choose one")

        async def update(db: Any) -> str | None:
            extra: dict[str, Any] = {}
            if args.enable_password is not None:
                extra["enable_password"] = args.enable_password
            key = None
            if args.refresh_host_key:
                current = {r.name: r for r in await olt_store.list_devices(db)}.get(args.name)
                if current is None:
                    raise UserError(f"no OLT named {args.name!r} (see 'paymentd olt list')")
                host, port = args.host or current.host, args.port or current.port
                key = await _fetch_key(cfg, args.name, host, port, "update")
                extra.update(host_key=key, host_key_check=True)
            elif args.no_host_key_check:
                extra["host_key_check"] = False
            await olt_store.update_device(
                db,
                box,
                args.name,
                host=args.host,
                port=args.port,
                username=args.username,
                password=password,
                options=options,
                **extra,
            )
            return key

        key = with_db(cfg, update)
        print(f"updated {args.name}; a running daemon uses the new settings from its next attempt")
        if args.refresh_host_key or args.no_host_key_check:
            print(_host_key_report(key))
        return 0
    if args.olt_cmd == "test":
        print(with_db(cfg, _test_olt, cfg, box, args.name))
        return 0
    raise AssertionError(args.olt_cmd)


def _host_key_text(key: str | None, check: bool) -> str:
    from daemon.network.olt.ssh import host_key_fingerprint

    if not check:
        return "host key NOT checked"
    return "host key not pinned" if key is None else host_key_fingerprint(key)


def _host_key_report(key: str | None) -> str:
    from daemon.network.olt.ssh import host_key_fingerprint

    if key is None:
        return (
            "WARNING: the SSH host key will NOT be checked (--no-host-key-check): anyone on "
            "the path can read the OLT password; the daemon logs this on every connect"
        )
    return (
        f"host key pinned: {host_key_fingerprint(key)}\n"
        "compare it with the device's own (e.g. 'display ssh server-key' / "
        "'show ssh'); a different key later is refused"
    )


async def _fetch_key(cfg: Config, name: str, host: str, port: int, verb: str) -> str:
    from daemon.network.olt.ssh import fetch_host_key
    from daemon.network.olt.types import OltTransientError

    try:
        return await fetch_host_key(host, port, timeout=cfg.olt.connect_timeout_seconds)
    except OltTransientError as exc:
        raise UserError(
            f"cannot read the SSH host key of {host}:{port}: {exc}; check --host and --port "
            f"(nothing was changed), or pass --no-host-key-check to 'olt {verb} {name}' "
            "to skip the check (not recommended)"
        ) from None


async def _test_olt(db: Any, cfg: Config, box: Any, name: str) -> str:
    from daemon import wiring
    from daemon.platform.deps import Deps
    from daemon.platform.events import EventBus
    from daemon.platform.health import Health
    from daemon.platform.metrics import Metrics

    pool = wiring.make_pool(Deps(cfg, db, Metrics(), EventBus(), Health()), box)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        try:
            result = await pool.test_device(name)
        finally:
            nursery.cancel_scope.cancel()
    return f"{name}: OK\n{result}"


def cmd_onu(args: argparse.Namespace) -> int:
    from daemon.network import devices as olt_store

    cfg = load(args)
    if args.onu_cmd == "set":
        with_db(cfg, olt_store.set_override, args.service_id, args.olt, args.onu)
        print(f"service {args.service_id} -> {args.olt} {args.onu}")
    elif args.onu_cmd == "remove":
        if not with_db(cfg, olt_store.remove_override, args.service_id):
            raise UserError(f"no override for service {args.service_id}")
        print(f"removed override for service {args.service_id}")
    else:
        for r in with_db(cfg, olt_store.list_overrides):
            print(f"{r.service_id:<10} {r.olt_name:<20} {r.onu}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    olt = sub.add_parser("olt", help="manage OLT devices")
    olt_sub = olt.add_subparsers(dest="olt_cmd", required=True, metavar="ACTION")
    add = with_config(olt_sub.add_parser("add", help="add an OLT"))
    add.add_argument("name")
    add.add_argument("--vendor", required=True, choices=["huawei", "zte"])
    add.add_argument("--host", required=True)
    add.add_argument("--port", type=int, default=22)
    add.add_argument("--username", required=True)
    add_pw = add.add_mutually_exclusive_group()
    add_pw.add_argument(
        "--password", help="prefer --password-file or $PAYMENTD_OLT_PASSWORD (not in shell history)"
    )
    add_pw.add_argument("--password-file", help="read the password from this file")
    add.add_argument("--enable-password", help="ZTE enable password, if the device asks for one")
    add.add_argument(
        "--zte-style",
        choices=["onu_state", "admin"],
        help="ZTE command style (C300/C320: onu_state; C600: admin)",
    )
    add.add_argument(
        "--no-host-key-check",
        action="store_true",
        help="do not record or check the device's SSH host key (not recommended; logged)",
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
    # The same three ways to give a password as `add` has (one at a time), so that the
    # flag an operator knows from `add` and from the wrong-key error is real here too.
    new_pw = upd.add_mutually_exclusive_group()
    new_pw.add_argument(
        "--password",
        help="the new password (prefer --password-file or --new-password: not in shell history)",
    )
    new_pw.add_argument("--password-file", help="read the new password from this file")
    new_pw.add_argument(
        "--new-password",
        action="store_true",
        help="ask for a new password (or take $PAYMENTD_OLT_PASSWORD)",
    )
    upd.add_argument("--enable-password")
    upd.add_argument("--zte-style", choices=["onu_state", "admin"])
    upd.add_argument(
        "--refresh-host-key",
        action="store_true",
        help="record the key the device presents now (after a legitimate key change)",
    )
    upd.add_argument(
        "--no-host-key-check",
        action="store_true",
        help="stop checking the device's SSH host key (not recommended; logged)",
    )
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

    onu = sub.add_parser("onu", help="a service's ONU: local overrides, activate/deactivate it now")
    onu_sub = onu.add_subparsers(dest="onu_cmd", required=True, metavar="ACTION")
    s = with_config(onu_sub.add_parser("set", help="set the ONU of a service"))
    s.add_argument("service_id", type=int)
    s.add_argument("olt", help="OLT name")
    s.add_argument("onu", help="frame/slot/port:onu, e.g. 0/1/3:12")
    r = with_config(onu_sub.add_parser("remove", help="remove a service's override"))
    r.add_argument("service_id", type=int)
    with_config(onu_sub.add_parser("list", help="list overrides"))
    onu.set_defaults(fn=cmd_onu)
    operator.register_onu_actions(onu_sub)
