"""Exponential backoff, one formula for every retry in the daemon."""

from __future__ import annotations


def backoff(base: float, attempt: int, *, cap: float) -> float:
    """Delay after failed attempt number ``attempt`` (1-based): base, 2·base, 4·base … cap."""
    return float(min(base * 2.0 ** max(0, attempt - 1), cap))
