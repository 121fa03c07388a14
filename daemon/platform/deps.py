"""The resources every actor may use; built once by the composition root (daemon/app.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from daemon.platform.config import Config
from daemon.platform.db import Database
from daemon.platform.events import EventBus
from daemon.platform.health import Health
from daemon.platform.metrics import Metrics

if TYPE_CHECKING:
    from daemon.actors.olt_pool import OltPool


@dataclass
class Deps:
    config: Config
    db: Database
    metrics: Metrics
    events: EventBus
    health: Health
    # The declared queues (daemon.wiring.QUEUES), for statistics and health.
    queue_names: tuple[str, ...] = field(default_factory=lambda: _declared_queues())
    # The daemon's OLT pool, set by wiring.open_resources: the console shows its sessions
    # and breakers and tests connections through it. None where no pool runs.
    olt_pool: OltPool | None = None


def _declared_queues() -> tuple[str, ...]:
    from daemon.wiring import QUEUE_NAMES  # imports every capability: only when needed

    return QUEUE_NAMES
