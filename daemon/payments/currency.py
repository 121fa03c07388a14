"""ISO 4217 currencies and their exponents (digits after the decimal point).

An amount is an integer count of the currency's minor unit: 1000 JPY is ¥1000 (exponent
0), 1000 USD is $10.00 (2), 1000 BHD is 1.000 BD (3). Getting an exponent wrong charges
100 or 1000 times too much, so a code we do not know is refused, never defaulted.

The table is ISO's own: the ``iso4217`` package ships the ISO 4217 maintenance agency's
XML list (public domain, a release per amendment, typed) with each code's minor units.
Not ``babel``: its ``get_currency_precision`` is CLDR's *display* precision (IQD 0, HUF 0,
COP 0, IDR 0 where ISO says 3, 2, 2, 2) and answers 2 for a code it does not know. Not
``pycountry``: it carries no minor units. Codes without minor units in ISO's list
(precious metals XAU…, testing XTS, "no currency" XXX, SDR) cannot be charged and are
refused too.
"""

from __future__ import annotations

import re

import iso4217

from daemon.platform.money import format_minor

_CODE = re.compile(r"^[A-Za-z]{3}$")


class UnknownCurrency(ValueError):
    """Not an ISO 4217 code we can take payments in."""


def _table() -> dict[str, int]:
    out: dict[str, int] = {}
    for cur in iso4217.Currency:
        if cur.exponent is not None:
            out[cur.code] = int(cur.exponent)
    return out


EXPONENTS: dict[str, int] = _table()


def normalize(code: str) -> str:
    """``"usd"`` → ``"USD"``; ``UnknownCurrency`` for anything that is not a payable code."""
    if not isinstance(code, str) or not _CODE.match(code):
        raise UnknownCurrency(f"currency must be a three-letter ISO 4217 code, got {code!r}")
    upper = code.upper()
    if upper not in EXPONENTS:
        raise UnknownCurrency(f"unknown or non-payable ISO 4217 currency {upper!r}")
    return upper


def exponent(code: str) -> int:
    """Digits after the decimal point: JPY 0, USD 2, BHD 3 (``UnknownCurrency`` if unknown)."""
    return EXPONENTS[normalize(code)]


def format_amount(amount: int, code: str) -> str:
    """``(1234, "BHD")`` → ``"1.234 BHD"``; for humans (CLI, demo), never parsed back."""
    cur = normalize(code)
    return f"{format_minor(amount, EXPONENTS[cur])} {cur}"


__all__ = ["EXPONENTS", "UnknownCurrency", "exponent", "format_amount", "normalize"]
