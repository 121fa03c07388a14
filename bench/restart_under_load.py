"""Restart under load: connections refused by ``systemctl restart``, before vs after socket
activation, in the same run.

Both phases start the real daemon (``python -m daemon.cli run``) as a subprocess on a
fresh database and restart it ``--restarts`` times (SIGTERM, wait for the exit, start
again: what ``systemctl restart`` does) while ``--clients`` clients each post a distinct
UISP webhook every ``--interval`` seconds on a fresh connection, never retried (UISP
sends each webhook once):

* **bound** (before): the daemon binds ``http.port`` itself; while it is down, the port
  refuses connections.
* **socket** (after): this script holds the listening socket, as ``paymentd.socket``
  does, and starts each daemon on it (``LISTEN_FDS``/``LISTEN_PID``, descriptor 3).

Printed per phase: webhooks sent, answered 200, lost (refused, reset or closed without
an answer), lost per restart, stored rows (must equal the 200s), and the slowest answer.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common
import trio
import trio_asyncio

from daemon.platform.db import Database
from tests.restart_load import DAEMON, Outcomes, restart_under_load, write_config
from tests.socket_activation import listening_socket, spawn

HEADERS = ["mode", "sent", "200", "lost", "lost/restart", "stored", "slowest s", "wall s", "what"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def stored(url: str) -> int:
    async with trio_asyncio.open_loop(), Database.open(url, min_size=1, max_size=1) as db:
        count: int = await db.fetchval("SELECT count(*) FROM uisp_webhooks")
        return count


async def phase(mode: str, args: argparse.Namespace) -> tuple[Outcomes, int, float]:
    with _common.throwaway_database() as url, tempfile.TemporaryDirectory() as tmp:
        log = (Path(tmp) / "daemon.log").open("ab")
        started = time.monotonic()
        if mode == "bound":
            port = free_port()
            config = write_config(Path(tmp), url, port)

            def start() -> subprocess.Popen[bytes]:
                cmd = [*DAEMON, "--config", str(config)]
                return subprocess.Popen(cmd, cwd=_common.ROOT, stdout=log, stderr=log)

            outcomes, codes = await restart_under_load(
                start, port, restarts=args.restarts, clients=args.clients, interval=args.interval
            )
        else:
            with listening_socket() as sock:
                port = sock.getsockname()[1]
                config = write_config(Path(tmp), url, free_port())

                def start() -> subprocess.Popen[bytes]:
                    cmd = [*DAEMON, "--config", str(config)]
                    return spawn(sock, cmd, stdout=log, stderr=log)

                outcomes, codes = await restart_under_load(
                    start,
                    port,
                    restarts=args.restarts,
                    clients=args.clients,
                    interval=args.interval,
                )
        log.close()
        wall = time.monotonic() - started
        if any(codes):
            print(f"{mode}: a daemon exited with {codes}", file=sys.stderr)
        return outcomes, await stored(url), wall


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--restarts", type=int, default=3)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--interval", type=float, default=0.02, help="seconds between a client's posts")
    args = p.parse_args()
    _common.quiet()
    rows = []
    lost = {}
    ok = True
    for mode in ("bound", "socket"):
        print(f"phase {mode}: {args.restarts} restarts ...", file=sys.stderr)
        outcomes, rows_stored, wall = await phase(mode, args)
        n200 = len(outcomes.ok)
        lost[mode] = outcomes.refused
        ok = ok and rows_stored == n200
        kinds = ", ".join(f"{k}: {v}" for k, v in outcomes.failures.most_common()) or "-"
        rows.append([
            mode, outcomes.sent, n200, outcomes.refused,
            f"{outcomes.refused / args.restarts:.1f}", rows_stored, f"{outcomes.slowest:.2f}",
            f"{wall:.1f}", kinds,
        ])  # fmt: skip
    print(
        f"restart under load: {args.restarts} restarts, {args.clients} clients, one webhook"
        f" per client every {args.interval * 1000:.0f} ms (fresh connection, never retried)"
    )
    print(
        _common.table(
            HEADERS,
            rows,
            left=(0, 8),
        )
    )
    after = lost["socket"]
    print(
        f"lost: before (daemon binds) {lost['bound']}, after (socket activation) {after};"
        f" {'no webhook lost' if after == 0 else 'SOME LOST'} with socket activation"
    )
    print(f"check: stored rows == answered 200 in both phases: {'yes' if ok else 'NO'}")
    return 0 if ok and after == 0 else 1


if __name__ == "__main__":
    sys.exit(trio.run(main))
