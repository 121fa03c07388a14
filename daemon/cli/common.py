"""What every CLI command shares: loading the config, one-shot database access, errors."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import trio
import trio_asyncio

from daemon.platform import config as configmod
from daemon.platform import logs
from daemon.platform.config import Config

T = TypeVar("T")
DEFAULT_CONFIG = "/etc/paymentd/config.toml"


class UserError(Exception):
    """A mistake the user can fix; printed as one line."""


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
    from daemon.platform.db import Database

    async def main() -> T:
        async with (
            trio_asyncio.open_loop(),
            Database.open(cfg.database.url, min_size=1, max_size=2) as db,
        ):
            return await fn(db, *args)

    return trio.run(main)


def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
    sp.add_argument(
        "--config", "-c", help=f"config file (default: $PAYMENTD_CONFIG or {DEFAULT_CONFIG})"
    )
    return sp
