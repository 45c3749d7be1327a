"""Currency codes and how many decimals an amount of each is shown with.

Codes are ISO 4217's: three capital letters. Only the shape is checked, never a list: a code
newer than this file must still be accepted, and a typo shows up as a currency with no rate.
"""

from __future__ import annotations

import re

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


def is_code(text: object) -> bool:
    return isinstance(text, str) and CODE.fullmatch(text) is not None


def minor_unit(currency: str) -> int:
    """Decimals of an amount in ``currency`` (2 for any code not listed as different)."""
    return MINOR_UNITS.get(currency, DEFAULT_MINOR_UNIT)


def money_text(amount: float, currency: str) -> str:
    """``amount`` rounded to the currency's minor unit, with exactly that many decimals: 9.58, 1200, 1.250."""
    text = f"{amount:.{minor_unit(currency)}f}"
    # "-0.00" is a sum that rounded to nothing, not a loss.
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text
