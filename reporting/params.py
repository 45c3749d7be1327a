"""Query parameters of the API's read endpoints, checked in one place.

Every parser here either returns a value or raises ``BadRequest`` naming the parameter and the
rule; none lets an exception of its own through, whatever the text (tested with hypothesis).
Numbers are ASCII digits only: ``str.isdigit()`` also accepts digits such as ``²`` that
``int()`` refuses. Dates lie in 1970-01-01..2100-12-31, the days ClickHouse's ``Date`` and
``DateTime`` hold (and far beyond any report anyone means).
"""

from __future__ import annotations

import re
from datetime import date

from clicktrail.errors import BadRequest

FIRST_DAY = date(1970, 1, 1)
LAST_DAY = date(2100, 12, 31)
#: 19 digits stay below 2^63: enough for any count or millisecond stamp, and int() of a
#: 100,000-digit string is never attempted.
MAX_DIGITS = 19

_DIGITS = re.compile(r"[0-9]{1,%d}" % MAX_DIGITS)
_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")


def digits(text: str) -> int | None:
    """The number written in ASCII digits (at most ``MAX_DIGITS``), or None for anything else."""
    return int(text) if _DIGITS.fullmatch(text) else None


def whole(args, name: str, default: int, lo: int, hi: int) -> int:
    """A whole number from ``lo`` to ``hi``; ``default`` when absent or empty."""
    text = args.get(name)
    if text in (None, ""):
        return default
    value = digits(text)
    if value is None or not lo <= value <= hi:
        raise BadRequest(f"must be a whole number from {lo} to {hi}, in ASCII digits", field=name,
                         code="invalid_field")
    return value


def date_of(text: object) -> date | None:
    """The date written as YYYY-MM-DD from ``FIRST_DAY`` to ``LAST_DAY``, or None for anything else."""
    match = _DATE.fullmatch(text) if isinstance(text, str) else None
    try:
        value = date(*map(int, match.groups())) if match else None
    except ValueError:  # month 13, February 30th
        return None
    return value if value is not None and FIRST_DAY <= value <= LAST_DAY else None


def day(args, name: str) -> date:
    """A required date as YYYY-MM-DD from ``FIRST_DAY`` to ``LAST_DAY``."""
    value = date_of(args.get(name) or "")
    if value is None:
        raise BadRequest(f"is required, as a date YYYY-MM-DD from {FIRST_DAY} to {LAST_DAY}", field=name,
                         code="invalid_field")
    return value


def choice(args, name: str, allowed: tuple, default):
    """One of ``allowed`` (strings, or whole numbers written in ASCII digits); ``default`` when absent."""
    text = args.get(name)
    if text in (None, ""):
        return default
    for value in allowed:
        if text == str(value):
            return value
    raise BadRequest(f"must be one of {', '.join(map(str, allowed))}", field=name, code="invalid_field")


def listed(args, name: str) -> list[str]:
    """The values of a repeatable, comma-separated parameter, trimmed, empty ones left out."""
    return [v.strip() for raw in args.getlist(name) for v in raw.split(",") if v.strip()]
