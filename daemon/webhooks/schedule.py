"""When to try a failed delivery again (``webhooks.retry_schedule_seconds`` and friends).

Pure: the dispatcher gives it the attempt's outcome and a random number, it answers with
a delay or None (give up). Jitter spreads retries of many deliveries that failed together
(an endpoint's outage) so they do not return as one burst.
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from daemon.platform.config import WebhooksConfig


@dataclass(frozen=True)
class RetryPolicy:
    schedule: tuple[float, ...]  # delay before attempt n+1 is schedule[n]; [0] the first
    jitter: float = 0.2
    slow_down: float = 60.0
    retry_after_max: float = 6 * 3600.0

    @classmethod
    def from_config(cls, cfg: WebhooksConfig) -> RetryPolicy:
        return cls(
            tuple(float(x) for x in cfg.retry_schedule_seconds),
            cfg.jitter,
            cfg.slow_down_seconds,
            cfg.retry_after_max_seconds,
        )

    @property
    def max_attempts(self) -> int:
        return len(self.schedule)

    def delay_after(
        self,
        attempt: int,
        *,
        status_code: int | None,
        timed_out: bool,
        retry_after: float | None,
        rand: Callable[[], float],
    ) -> float | None:
        """Seconds until the attempt after failed attempt ``attempt`` (1-based); None when
        that was the last one."""
        if attempt >= len(self.schedule):
            return None
        delay = self.schedule[attempt] * (1 + self.jitter * (2 * rand() - 1))
        if status_code == 429 or timed_out:
            delay = max(delay, self.slow_down)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_after_max))
        return delay


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None
