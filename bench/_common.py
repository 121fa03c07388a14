"""Shared helpers for the benchmarks: a throwaway database, percentiles, tables.

Not a benchmark itself. Scripts run as ``python bench/NAME.py`` from the repository root;
that puts ``bench/`` (not the root) on ``sys.path``, so the root is added here to reach
``tests.pg``.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.pg import PgServer  # noqa: E402

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def server_url() -> str:
    return (
        os.environ.get("BENCH_DATABASE_URL")
        or os.environ.get("TEST_DATABASE_URL")
        or DEFAULT_SERVER
    )


@contextmanager
def throwaway_database() -> Iterator[str]:
    """A fresh migrated database (cloned from the tests' template), dropped at the end."""
    with PgServer(server_url()).database() as url:
        yield url


def quiet(level: int = logging.WARNING) -> None:
    """Daemon INFO lines would drown the tables; warnings and errors still show."""
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # trio-asyncio 0.16 on 3.12+ warns about asyncio policy deprecations; not ours.
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f}"


def ratio(a: float, b: float) -> str:
    if math.isnan(a) or math.isnan(b) or b == 0:
        return "n/a"
    return f"{a / b:.2f}x"


def table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], left: Sequence[int] = (0,)
) -> str:
    """Columns right-aligned except those in ``left``."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


async def read_response(stream: trio.SocketStream, buf: bytearray) -> tuple[int, bool]:
    """Read one HTTP/1.1 answer from ``stream`` (``buf`` keeps what follows it): its
    status, and whether the server said it closes the connection."""
    while (end := buf.find(b"\r\n\r\n")) < 0:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    head = bytes(buf[:end]).decode("latin-1").lower().split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    length, close = 0, False
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name == "content-length":
            length = int(value)
        elif name == "connection" and "close" in value:
            close = True
    need = end + 4 + length
    while len(buf) < need:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("server closed the connection mid-body")
        buf += chunk
    del buf[:need]
    return status, close
