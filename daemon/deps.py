"""The resources every actor may use; built once by the composition root (daemon/app.py)."""

from __future__ import annotations

from dataclasses import dataclass

from daemon.config import Config
from daemon.db import Database
from daemon.events import EventBus
from daemon.health import Health
from daemon.metrics import Metrics


@dataclass
class Deps:
    config: Config
    db: Database
    metrics: Metrics
    events: EventBus
    health: Health
