"""What the supervisor knows about its actors, for /healthz, /readyz and systemd STATUS=."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ActorState:
    name: str
    state: str = "starting"  # starting | running | restarting | stopped
    restarts: int = 0
    recent_restarts: list[float] = field(default_factory=list)
    last_error: str | None = None
    since: float = field(default_factory=time.monotonic)


class Health:
    def __init__(self, unhealthy_restarts: int = 5, window_seconds: float = 60.0) -> None:
        self.actors: dict[str, ActorState] = {}
        self.unhealthy_restarts = unhealthy_restarts
        self.window_seconds = window_seconds
        self.started_at = time.time()
        self.stopping = False

    def actor(self, name: str) -> ActorState:
        return self.actors.setdefault(name, ActorState(name))

    def set_state(self, name: str, state: str) -> None:
        a = self.actor(name)
        a.state = state
        a.since = time.monotonic()

    def record_crash(self, name: str, error: str) -> None:
        a = self.actor(name)
        now = time.monotonic()
        a.restarts += 1
        a.last_error = error
        a.recent_restarts = [t for t in a.recent_restarts if now - t < self.window_seconds] + [now]

    def flapping(self) -> list[str]:
        now = time.monotonic()
        return [
            a.name
            for a in self.actors.values()
            if len([t for t in a.recent_restarts if now - t < self.window_seconds])
            > self.unhealthy_restarts
        ]

    @property
    def ready(self) -> bool:
        if self.stopping or not self.actors:
            return False
        return all(a.state == "running" for a in self.actors.values()) and not self.flapping()

    def status_line(self) -> str:
        running = sum(a.state == "running" for a in self.actors.values())
        line = f"{running}/{len(self.actors)} actors running"
        flapping = self.flapping()
        if flapping:
            line += f"; restarting repeatedly: {', '.join(flapping)}"
        return line

    def snapshot(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "status": self.status_line(),
            "actors": {
                a.name: {"state": a.state, "restarts": a.restarts, "last_error": a.last_error}
                for a in self.actors.values()
            },
        }
