"""Currency codes and how many decimals an amount of each is shown with.

Codes are ISO 4217's: three capital letters. Only the shape is checked, never a list: a code
newer than this file must still be accepted, and a typo shows up as a currency with no rate.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Context, Decimal

CODE = re.compile(r"[A-Z]{3}")

#: Minor units (decimals) where they are not 2, from ISO 4217's List One ("Current currency &
#: funds code list", column "Minor unit"), as published by SIX Group, the maintenance agency:
#: https://www.six-group.com/en/products-services/financial-information/data-standards.html
MINOR_UNITS = {
    **dict.fromkeys(("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND",
                     "VUV", "XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    **dict.fromkeys(("CLF", "UYW"), 4),
}
DEFAULT_MINOR_UNIT = 2
#: Digits enough for any double written out in full (the largest has 309), so rounding is exact.
_EXACT = Context(prec=400, rounding=ROUND_HALF_UP)


def is_code(text: object) -> bool:
    return isinstance(text, str) and CODE.fullmatch(text) is not None


def minor_unit(currency: str) -> int:
    """Decimals of an amount in ``currency`` (2 for any code not listed as different)."""
    return MINOR_UNITS.get(currency, DEFAULT_MINOR_UNIT)


def money_text(amount: float, currency: str) -> str:
    """``amount`` rounded half up to the currency's minor unit, with exactly that many decimals:
    9.58, 1235, 1.250.

    Rounded from the shortest decimal that reads back as the double (``repr``), so 0.125 gives
    0.13 as written, where the double's binary value (0.1249999...) would give 0.12.
    """
    exponent = Decimal(1).scaleb(-minor_unit(currency))
    rounded = Decimal(repr(float(amount))).quantize(exponent, context=_EXACT)
    return f"{rounded.copy_abs() if rounded.is_zero() else rounded:f}"  # never -0.00
