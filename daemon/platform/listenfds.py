"""Listening sockets passed by systemd socket activation (``paymentd.socket``).

systemd's protocol (``sd_listen_fds(3)``): the service manager binds and listens, starts
the daemon with the sockets as file descriptors 3, 4, … and sets ``LISTEN_FDS`` (how
many) and ``LISTEN_PID`` (the pid they are meant for; a child that inherited the
environment must ignore them). The socket stays with systemd while the daemon restarts,
so the kernel queues connections in its backlog instead of refusing them.

Written here rather than taken from ``systemd-python``: that package needs libsystemd's
headers to build, and the protocol is two environment variables and a range of fds.

The fds are never closed here: each caller gets duplicates (``os.dup``), so the HTTP
ingress can be restarted by its supervisor and serve on the same sockets again, and
closing what it was given leaves the inherited fds (and systemd's copies) listening.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

SD_LISTEN_FDS_START = 3
# What we serve HTTP on: TCP (ListenStream=ADDRESS:PORT) or a unix stream socket (PATH).
_FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)


class InheritedSocketError(OSError):
    """``LISTEN_FDS`` names descriptors that are not listening stream sockets.

    An ``OSError`` so the CLI reports it as a user error (one line, exit 2).
    """


def inherited_fds(env: Mapping[str, str], pid: int | None = None) -> list[int]:
    """The descriptors systemd passed to this process; ``[]`` when it passed none.

    ``LISTEN_PID`` must be this process (``pid``, default ``os.getpid()``): variables
    inherited from a parent that was socket-activated are not ours.
    """
    listen_pid, count = env.get("LISTEN_PID", ""), env.get("LISTEN_FDS", "")
    if not listen_pid or not count:
        return []
    if listen_pid.strip() != str(os.getpid() if pid is None else pid):
        return []
    if not count.strip().isdigit():
        raise InheritedSocketError(f"LISTEN_FDS={count!r} is not a number of descriptors")
    fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)))
    for fd in fds:
        try:
            # Like sd_listen_fds(): no program we might start inherits them.
            os.set_inheritable(fd, False)
        except OSError as exc:
            raise InheritedSocketError(
                f"LISTEN_FDS={count} but descriptor {fd} is not open ({exc.strerror})"
            ) from None
    return fds


def listening_sockets(env: Mapping[str, str], pid: int | None = None) -> list[socket.socket]:
    """A duplicate of every inherited socket, checked to be a listening stream socket.

    The caller owns (and closes) the duplicates; the inherited descriptors stay open.
    """
    sockets: list[socket.socket] = []
    try:
        for fd in inherited_fds(env, pid):
            sockets.append(_checked(fd))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _checked(fd: int) -> socket.socket:
    where = f"descriptor {fd} from systemd (LISTEN_FDS)"
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError as exc:
        raise InheritedSocketError(f"{where} is not a socket ({exc.strerror})") from None
    try:
        kind = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError as exc:
        sock.close()
        raise InheritedSocketError(f"{where}: {exc.strerror}") from None
    if sock.family not in _FAMILIES or kind != socket.SOCK_STREAM or not listening:
        sock.close()
        raise InheritedSocketError(
            f"{where} is not a listening stream socket: paymentd.socket needs "
            "ListenStream= (not ListenDatagram=) and Accept=no"
        )
    if sock.family != socket.AF_UNIX:
        # What hypercorn sets on the sockets it binds itself; accepted sockets inherit it.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
