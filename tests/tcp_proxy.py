"""A TCP proxy in front of PostgreSQL that a test can break: refuse, freeze, restore.

Real sockets both ways; the database itself is untouched. ``down()`` closes every
proxied connection and refuses new ones (a database that went away); ``freeze()`` keeps
connections open but stops forwarding bytes (a database that hangs: SIGSTOP, a dead
route); ``up()`` restores normal service.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from urllib.parse import urlsplit, urlunsplit

import pytest
import trio


class Proxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._state = "up"
        self._changed = trio.Event()
        self._scopes: set[trio.CancelScope] = set()

    def url(self, database_url: str) -> str:
        """``database_url`` pointed at the proxy."""
        parts = urlsplit(database_url)
        auth = parts.netloc.rpartition("@")[0]
        netloc = f"{auth}@127.0.0.1:{self.port}" if auth else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def _set(self, state: str) -> None:
        self._state = state
        self._changed.set()
        self._changed = trio.Event()

    def down(self) -> None:
        self._set("down")
        for scope in list(self._scopes):
            scope.cancel()

    def freeze(self) -> None:
        self._set("frozen")

    def up(self) -> None:
        self._set("up")

    async def _pipe(self, src: trio.SocketStream, dst: trio.SocketStream) -> None:
        try:
            while True:
                while self._state == "frozen":
                    await self._changed.wait()
                data = await src.receive_some(65536)
                if not data:
                    return
                while self._state == "frozen":
                    await self._changed.wait()
                await dst.send_all(data)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            return  # either side hung up: so does the proxy

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            if self._state == "down":
                return
            with trio.CancelScope() as scope:
                self._scopes.add(scope)
                try:
                    server = await trio.open_tcp_stream(*self.target)
                    async with server, trio.open_nursery() as nursery:
                        nursery.start_soon(self._pipe, client, server)
                        await self._pipe(server, client)
                        nursery.cancel_scope.cancel()
                except OSError:
                    pass  # the server refused: the client sees its connection close
                finally:
                    self._scopes.discard(scope)


@asynccontextmanager
async def proxy_for(database_url: str) -> AsyncIterator[Proxy]:
    parts = urlsplit(database_url)
    if not parts.hostname:
        # The embedded server (no TEST_DATABASE_URL) listens on a unix socket only.
        pytest.skip("needs a PostgreSQL over TCP (TEST_DATABASE_URL) to put a proxy in front")
    proxy = Proxy(parts.hostname, parts.port or 5432)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, proxy._handle, 0, host="127.0.0.1"))
        proxy.port = listeners[0].socket.getsockname()[1]
        yield proxy
        nursery.cancel_scope.cancel()
