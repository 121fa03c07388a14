"""Currencies: each ISO 4217 code's exponent is ISO's, and an unknown code is refused."""

from __future__ import annotations

import pytest

from daemon.payments import currency


@pytest.mark.parametrize(
    ("code", "exponent"),
    [
        ("JPY", 0),
        ("KRW", 0),
        ("CLP", 0),
        ("USD", 2),
        ("eur", 2),
        ("HUF", 2),  # CLDR (babel) says 0: it is display precision, not ISO's minor unit
        ("BHD", 3),
        ("KWD", 3),
        ("JOD", 3),
        ("OMR", 3),
        ("TND", 3),
        ("IQD", 3),
    ],
)
def test_exponents_are_iso_4217s(code: str, exponent: int) -> None:
    assert currency.exponent(code) == exponent


@pytest.mark.parametrize("code", ["ZZZ", "XAU", "XXX", "US", "USDX", "", "12A"])
def test_an_unknown_or_unpayable_code_is_refused_not_defaulted(code: str) -> None:
    with pytest.raises(currency.UnknownCurrency):
        currency.exponent(code)


def test_amounts_format_with_their_exponent() -> None:
    assert currency.format_amount(1234, "BHD") == "1.234 BHD"
    assert currency.format_amount(1234, "JPY") == "1234 JPY"
    assert currency.format_amount(1234, "usd") == "12.34 USD"
