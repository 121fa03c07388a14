"""The resources every actor may use; built once by the composition root (daemon/app.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from daemon.platform.config import Config
from daemon.platform.db import Database
from daemon.platform.events import EventBus
from daemon.platform.health import Health
from daemon.platform.metrics import Metrics


@dataclass
class Deps:
    config: Config
    db: Database
    metrics: Metrics
    events: EventBus
    health: Health
    # The declared queues (daemon.wiring.QUEUES), for statistics and health.
    queue_names: tuple[str, ...] = field(default_factory=lambda: _declared_queues())


def _declared_queues() -> tuple[str, ...]:
    from daemon.wiring import QUEUE_NAMES  # imports every capability: only when needed

    return QUEUE_NAMES
