"""The resources every actor may use; built once by the composition root (daemon/app.py)."""

from __future__ import annotations

from dataclasses import dataclass

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
