"""Serving a fake's Quart app with hypercorn on trio, the same way for every fake."""

from __future__ import annotations

import logging

import hypercorn
import hypercorn.trio
import trio
from quart_trio import QuartTrio


async def serve_app(
    app: QuartTrio,
    host: str,
    port: int,
    log: logging.Logger,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until cancelled; report its base URL (``http://host:port``)."""
    config = hypercorn.Config()
    config.bind = [f"{host}:{port}"]
    config.errorlog = log
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(hypercorn.trio.serve, app, config)
        task_status.started(binds[0])
