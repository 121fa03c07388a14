"""Start a process the way systemd's socket activation does, with a socket we hold.

``spawn(sock, argv)`` runs ``python -m tests.socket_activation FD ARGV…``: that tiny
wrapper moves the inherited socket to descriptor 3 (``SD_LISTEN_FDS_START``), sets
``LISTEN_FDS=1`` and ``LISTEN_PID`` to its own pid, and execs ``ARGV`` (same pid), exactly
what systemd does between fork and exec. The caller keeps its own copy of the listening
socket, as systemd does, so the daemon can be stopped and started again on it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def spawn(sock: socket.socket, argv: list[str], **popen: Any) -> subprocess.Popen[bytes]:
    fd = sock.fileno()
    return subprocess.Popen(
        [sys.executable, "-m", "tests.socket_activation", str(fd), *argv],
        pass_fds=(fd,),
        cwd=popen.pop("cwd", ROOT),
        **popen,
    )


def listening_socket(backlog: int = 4096) -> socket.socket:
    """What ``ListenStream=127.0.0.1:0`` + ``Backlog=`` would give: bound and listening."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    return sock


def _exec(fd: int, argv: list[str]) -> None:
    if fd != 3:
        os.dup2(fd, 3)  # the copy is inheritable: it survives exec
        os.close(fd)
    else:
        os.set_inheritable(3, True)
    os.environ["LISTEN_FDS"] = "1"
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.execv(argv[0], argv)


if __name__ == "__main__":
    _exec(int(sys.argv[1]), sys.argv[2:])
