"""The shape every bulk import shares: ``{"<rows>": [...]}``, checked row by row.

Clicks, impressions, costs and exchange rates are posted as a non-empty list of at most
``MAX_ROWS`` rows; each row is parsed on its own, and a refused row is kept as its
``Rejection`` (index, field, rule) so one answer lists every refusal.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

from clicktrail.errors import BadRequest
from pixel.events import InvalidField, Rejection
from pixel.touchpoints import MAX_ROWS

T = TypeVar("T")


def rows_of(body: object, name: str) -> list:
    """The non-empty list ``body[name]`` of at most ``MAX_ROWS`` rows, or BadRequest naming it."""
    if not isinstance(body, dict) or not isinstance(body.get(name), list) or not body[name]:
        raise BadRequest(f"body must be an object with a non-empty '{name}' list", field=name, code="invalid_field")
    if len(body[name]) > MAX_ROWS:
        raise BadRequest(f"{name} must hold at most {MAX_ROWS} rows per request", field=name, code="too_many_rows")
    return body[name]


def parse_each(rows: list, parse: Callable[[object], T], key: Callable[[T], Hashable],
               duplicate: tuple[str, str]) -> tuple[list[T], list[Rejection]]:
    """Every row through ``parse`` (which raises InvalidField), and the rejections of the refused
    ones; a row with the ``key`` of an earlier accepted row is refused with ``duplicate`` (field, rule)."""
    parsed, rejections, seen = [], [], set()
    for index, row in enumerate(rows):
        try:
            item = parse(row)
        except InvalidField as exc:
            rejections.append(exc.rejection(index))
            continue
        if key(item) in seen:
            rejections.append(Rejection(index, *duplicate))
            continue
        seen.add(key(item))
        parsed.append(item)
    return parsed, rejections
