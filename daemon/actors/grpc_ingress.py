"""The gRPC ingress actor: serves ``paymentd.payments.v1.Payments`` with grpcio's
``grpc.aio`` server on the trio-asyncio loop, on its own port (``[grpc]``).

Consumes: gRPC calls on ``grpc.host:grpc.port`` and the daemon's ``shutdown`` event.
Produces: whatever the payments service produces (``daemon.payments_grpc.servicer``);
reports the bound address (``host:port``, the real port when ``grpc.port`` is 0) through
``task_status.started()`` once the server accepts calls.
Owns: the grpc.aio server, its listening socket and its in-flight calls.

grpcio sets ``SO_REUSEPORT`` by default, so a second daemon would silently share the
port (verified-stack.md); ``grpc.so_reuseport = 0`` makes a taken port an error. The
server is created and started from asyncio context (``aio_as_trio``), as grpc.aio binds
to the running asyncio loop. Shutdown: when ``shutdown`` is set, ``server.stop(grace)``
refuses new calls and lets in-flight ones finish for ``daemon.shutdown_grace_seconds``,
then cancels them; a cancellation of this actor (the supervisor, a test) stops it the
same way, shielded and bounded.
"""

from __future__ import annotations

import logging

import grpc
import trio
import trio_asyncio

from daemon.actors.http_ingress import bind_address
from daemon.payments_grpc.gen import payments_pb2_grpc as pb_grpc
from daemon.payments_grpc.servicer import PaymentsServicer
from daemon.platform.deps import Deps

log = logging.getLogger(__name__)

OPTIONS = [
    ("grpc.so_reuseport", 0),
    # Unary payment calls are small; this bounds what one message can make us buffer.
    ("grpc.max_receive_message_length", 1024 * 1024),
]


class GrpcListenError(OSError):
    """The configured gRPC address cannot be listened on; the message names the setting."""


async def _start(deps: Deps) -> tuple[grpc.aio.Server, int]:
    """(asyncio) A started server with the payments service, and its port."""
    cfg = deps.config.grpc
    server = grpc.aio.server(options=OPTIONS)
    pb_grpc.add_PaymentsServicer_to_server(PaymentsServicer(deps), server)  # type: ignore[no-untyped-call]
    where = bind_address(cfg.host, cfg.port)
    try:
        port = server.add_insecure_port(where)
    except RuntimeError:  # grpcio raises a bare RuntimeError("Failed to bind …")
        port = 0
    if port == 0:
        await server.stop(None)
        raise GrpcListenError(
            f"cannot listen on {where} (grpc.host:grpc.port): the port is in use or the"
            " address is not this machine's; set grpc.port to a free port"
        )
    await server.start()
    return server, port


async def run(
    deps: Deps,
    *,
    shutdown: trio.Event,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown`` is set (or cancelled); stops gracefully either way."""
    grace = deps.config.daemon.shutdown_grace_seconds
    server, port = await trio_asyncio.aio_as_trio(_start)(deps)
    address = bind_address(deps.config.grpc.host, port)
    try:
        log.info("gRPC ingress listening on %s", address)
        task_status.started(address)
        await shutdown.wait()
    finally:
        with trio.move_on_after(grace + 5, shield=True):
            await trio_asyncio.aio_as_trio(server.stop)(grace)
        log.info("gRPC ingress stopped")
