"""What every CLI command shares: loading the config, one-shot database access, errors."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, NoReturn, TypeVar

import trio
import trio_asyncio

from daemon.platform import config as configmod
from daemon.platform import logs
from daemon.platform.config import Config

T = TypeVar("T")
DEFAULT_CONFIG = "/etc/paymentd/config.toml"


class UserError(Exception):
    """A mistake the user can fix; printed as one line."""


class NotMigrated(UserError):
    """The database exists but has no schema yet."""


# Options whose values are secrets (the ``-file`` variants hold a path, not a secret).
_SECRET_WORDS = ("password", "token", "secret")


def secret_values(argv: Sequence[str]) -> set[str]:
    """The values given on the command line to secret-looking options, to keep out of errors."""
    found: set[str] = set()
    for i, arg in enumerate(argv):
        if not arg.startswith("--"):
            continue
        name, eq, value = arg.partition("=")
        if name.endswith("-file") or not any(w in name for w in _SECRET_WORDS):
            continue
        if eq:
            found.add(value)
        elif i + 1 < len(argv):
            found.add(argv[i + 1])
    return {v for v in found if v}


class Parser(argparse.ArgumentParser):
    """argparse without prefix matching, and without secrets in its error messages.

    With abbreviations ``olt update NAME --password x`` was read as ``--password-file x``,
    and the error then printed the password. Every parser and sub-parser is of this class
    (``add_subparsers`` uses the parent's class), so ``allow_abbrev`` is off everywhere.
    """

    # Set by the top-level parse from the whole command line; sub-parsers report errors too.
    redact: ClassVar[set[str]] = set()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        argv = list(sys.argv[1:] if args is None else args)
        Parser.redact = secret_values(argv)
        return super().parse_args(argv, namespace)

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments:"):
            # Name the options, never their values: an unknown option's value is
            # often a secret typed against a misspelt flag.
            flags = [a.split("=", 1)[0] for a in message.split(":", 1)[1].split() if a[:1] == "-"]
            message = "unrecognized arguments"
            if flags:
                message += f": {' '.join(flags)} (values not shown)"
        for value in sorted(Parser.redact, key=len, reverse=True):
            # Whole tokens only: a short secret must not mangle the words around it.
            message = re.sub(rf"(?<![\w-]){re.escape(value)}(?![\w-])", "***", message)
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def load(args: argparse.Namespace) -> Config:
    path = args.config or os.environ.get("PAYMENTD_CONFIG")
    if path is None and Path(DEFAULT_CONFIG).exists():
        path = DEFAULT_CONFIG
    cfg = configmod.load(path)
    # Before anything can log: from here on no line shows the config's secrets.
    logs.register_config(cfg)
    return cfg


def setup_logging(level: str) -> None:
    """JSON lines on stderr (readable lines on a terminal), secrets redacted."""
    logs.setup(
        level, stream=sys.stderr, quiet=("asyncssh", "hypercorn.access", "httpx", "httpcore")
    )


def with_db(cfg: Config, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    from daemon.platform.db import Database, DatabaseError

    async def main() -> T:
        async with (
            trio_asyncio.open_loop(),
            Database.open(cfg.database.url.reveal(), min_size=1, max_size=2) as db,
        ):
            return await fn(db, *args)

    # The database layer's "unavailable ... retrying in the background" is the daemon's
    # story; a one-shot command says it once, below, and stops.
    quiet = logging.getLogger("daemon.platform.db")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        return trio.run(main)
    except Exception as exc:
        leaves = _leaves(exc)  # trio wraps what fails inside its nurseries
        if leaves and all(type(e) is DatabaseError for e in leaves):
            raise DatabaseError(
                f"cannot reach the database (database.url = {cfg.database.url}): {leaves[0]};"
                " is PostgreSQL running there?"
            ) from None
        problem = database_problem(exc, cfg)
        if problem is None:
            raise
        raise problem from None
    finally:
        quiet.setLevel(level)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


# PostgreSQL's own words for a fresh host's problems. psycopg reports connection failures
# without a SQLSTATE, so its message text is matched; asyncpg's errors also carry one.
_MISSING_DATABASE = re.compile(r'database "([^"]+)" does not exist')
_MISSING_ROLE = re.compile(r'role "([^"]+)" does not exist')
_BAD_PASSWORD = re.compile(r'password authentication failed for user "([^"]+)"')
_MISSING_TABLE = re.compile(r'relation "([^"]+)" does not exist')
_NO_CREATE = re.compile(r"permission denied for (schema|database) (\S+)")
_NO_EXTENSION = re.compile(r'permission denied to create extension "([^"]+)"')


def database_problem(exc: BaseException, cfg: Config) -> UserError | None:
    """A one-line, what-to-do error for a database that is missing, unreachable for this
    role, or not migrated yet; None for anything else (a real bug keeps its traceback)."""
    config = "" if cfg.source.startswith("<") else f" --config {cfg.source}"
    migrate = f"'paymentd migrate{config}'"
    for leaf in _leaves(exc):
        state = getattr(leaf, "sqlstate", None)
        text = str(leaf)
        if m := _MISSING_DATABASE.search(text):
            return UserError(
                f'database "{m.group(1)}" (database.url) does not exist: create it, as '
                f"postgres: createdb -O <role> {m.group(1)} (systemd/README.md), then run "
                f"{migrate}"
            )
        if m := _MISSING_ROLE.search(text):
            return UserError(
                f'role "{m.group(1)}" (database.url) does not exist: create it, as postgres: '
                f"createuser {m.group(1)} (systemd/README.md)"
            )
        if state == "28P01" or _BAD_PASSWORD.search(text):
            return UserError(
                "password authentication failed for the role in database.url: fix the "
                "password there (or in $PAYMENTD_DATABASE_URL)"
            )
        if m := _NO_EXTENSION.search(text):
            # The server has the pgmq extension, and only a superuser may create it.
            return UserError(
                f'creating the extension "{m.group(1)}" needs a superuser: as postgres, '
                f"psql -d <database> -c 'CREATE EXTENSION {m.group(1)}' (systemd/README.md), "
                f"then run {migrate}"
            )
        if m := _NO_CREATE.search(text):
            # PostgreSQL 15+ lets only the database owner create in schema public; PGMQ
            # from SQL also creates its own schema.
            return UserError(
                f"the role in database.url may not create the schema (permission denied for "
                f"{m.group(1)} {m.group(2)}): make it the database's owner, as postgres: "
                f"ALTER DATABASE <name> OWNER TO <role> (systemd/README.md), then run {migrate}"
            )
        if state == "42P01" or (state is None and _MISSING_TABLE.search(text)):
            return NotMigrated(f"the database (database.url) is not migrated yet: run {migrate}")
    return None


def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
    sp.add_argument(
        "--config", "-c", help=f"config file (default: $PAYMENTD_CONFIG or {DEFAULT_CONFIG})"
    )
    return sp
