"""CSV cells that a spreadsheet opens as text, never as a formula.

Campaign, ad and event names come from ad servers and browsers, so a cell may be
``=HYPERLINK(...)`` or ``-1+cmd|' /C calc'!A0``. OWASP's rule: a cell starting with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return gets a ``'`` in front, which spreadsheets show as text.
A plain number (``-12.5``, ``3e-05``) is left as it is, so negative numbers stay numbers. The
dashboard's "Download CSV" (static/dashboard/app.js, ``csvCell``) applies the same rule.
"""

from __future__ import annotations

import re

from pixel.currencies import money_text

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")
#: Report columns that are amounts in the advertiser's currency: in CSV rounded to its minor unit
#: (9.58, not 9.583333; JSON keeps full precision).
MONEY_COLUMNS = ("spend", "cpc", "cpm", "cpa", "conversion_value")


def safe_cell(value: object) -> object:
    """``value`` as a CSV cell: '' for None, a formula-looking text behind a ``'``, anything else as is."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def report_cell(value: object, column: str, currency: str) -> object:
    """A report's value as a CSV cell: money in the currency's minor unit, the rest as in JSON."""
    if column in MONEY_COLUMNS and value is not None:
        return money_text(value, currency)
    return safe_cell(value)
