"""The ``paymentd`` command line: one module per command group, assembled here.

User mistakes (bad config, missing key, unreachable database, unknown OLT) print one line
that says what to fix and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys

from daemon import __version__
from daemon.cli import (
    apikeys,
    network,
    olt,
    operations,
    operators,
    payments,
    secrets,
    service,
    sim,
    sms,
    tasks,
    webhooks,
)
from daemon.cli.common import Parser, UserError
from daemon.platform.config import ConfigError

GROUPS = (
    service,
    olt,
    secrets,
    operations,
    tasks,
    sim,
    apikeys,
    network,
    sms,
    webhooks,
    payments,
    operators,
)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="paymentd", description="Payment webhook & worker daemon")
    p.add_argument("--version", action="version", version=f"paymentd {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from daemon.platform.db import DatabaseError
    from daemon.platform.migrate import MigrationError

    user_errors: tuple[type[Exception], ...] = (
        ConfigError,
        UserError,
        MigrationError,
        DatabaseError,
        OSError,
    )
    try:
        from daemon.actors.instance_lock import InstanceLockError
        from daemon.console.accounts import AccountError
        from daemon.demo import DemoError
        from daemon.network.devices import StoreError
        from daemon.network.olt.types import OltError
        from daemon.platform.auth import ApiKeyError
        from daemon.platform.secrets import SecretKeyError
        from daemon.webhooks.endpoints import EndpointError
        from daemon.webhooks.manage import ManageError

        user_errors += (
            SecretKeyError,
            InstanceLockError,
            StoreError,
            OltError,
            DemoError,
            ApiKeyError,
            EndpointError,
            ManageError,
            AccountError,
        )
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
