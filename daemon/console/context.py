"""What every console page module gets: the daemon's ``Deps`` and the console's own state."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from daemon.actors.olt_pool import OltPool
from daemon.console.guard import LoginThrottle
from daemon.platform.deps import Deps


@dataclass
class Console:
    deps: Deps
    # The daemon's stop event: ends the live feed's streams on shutdown.
    shutdown: trio.Event
    # Failed sign-ins: per address and account (a guesser), and per address alone, looser
    # (a sprayer; behind a proxy every client shares the proxy's address).
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    throttle_address: LoginThrottle = field(default_factory=lambda: LoginThrottle(limit=50))

    @property
    def pool(self) -> OltPool | None:
        return self.deps.olt_pool

    @property
    def lifetime_seconds(self) -> float:
        return self.deps.config.console.session_lifetime_seconds

    @property
    def secure_cookies(self) -> bool:
        from daemon.console.guard import secure_cookies

        return secure_cookies(self.deps.config.console.behind_tls)
