"""Money as integer minor units (cents), never float.

External APIs (UISP) send amounts as JSON numbers; they are converted here through
``Decimal(str(x))`` so 0.1 + 0.2 style binary artefacts never reach a comparison.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation


def minor_units(amount: object, exponent: int = 2) -> int:
    """``12.3`` → ``1230`` (for a 2-decimal currency); raises ``ValueError`` if not a number."""
    if isinstance(amount, bool):
        raise ValueError(f"not an amount: {amount!r}")
    try:
        value = Decimal(str(amount))
    except InvalidOperation:
        raise ValueError(f"not an amount: {amount!r}") from None
    if not value.is_finite():
        raise ValueError(f"not an amount: {amount!r}")
    scaled = (value * (Decimal(10) ** exponent)).quantize(Decimal(1), rounding=ROUND_HALF_EVEN)
    return int(scaled)


def format_minor(units: int, exponent: int = 2) -> str:
    """``1230`` → ``"12.30"``."""
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), 10**exponent)
    return f"{sign}{whole}.{frac:0{exponent}d}" if exponent else f"{sign}{whole}"
