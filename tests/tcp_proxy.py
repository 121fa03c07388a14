"""A TCP proxy the tests can cut: a database outage without stopping the shared server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from functools import partial

import trio


class Proxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._up = True
        self._conns: set[trio.CancelScope] = set()

    def cut(self) -> None:
        """Drop every connection and refuse new ones (they are closed at once)."""
        self._up = False
        for scope in list(self._conns):
            scope.cancel()

    def restore(self) -> None:
        self._up = True

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            if not self._up:
                return
            with trio.CancelScope() as scope:
                self._conns.add(scope)
                try:
                    server = await trio.open_tcp_stream(*self.upstream)
                    async with server, trio.open_nursery() as nursery:
                        nursery.start_soon(_pump, client, server, nursery.cancel_scope)
                        nursery.start_soon(_pump, server, client, nursery.cancel_scope)
                finally:
                    self._conns.discard(scope)


async def _pump(src: trio.SocketStream, dst: trio.SocketStream, scope: trio.CancelScope) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        async for data in src:
            await dst.send_all(data)
    scope.cancel()


@contextlib.asynccontextmanager
async def running_proxy(host: str, port: int) -> AsyncIterator[Proxy]:
    proxy = Proxy(host, port)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, proxy._handle, 0, host="127.0.0.1"))
        proxy.port = listeners[0].socket.getsockname()[1]
        yield proxy
        nursery.cancel_scope.cancel()
