"""TikTok Events API 1.0 rows (``/pixel/track/``, ``/pixel/batch/``) read as Events API 2.0 rows.

A 1.0 event is mapped onto the 2.0 row shape and then checked by ``pixel.events``'s server parser,
so every rule of the 2.0 endpoint applies unchanged; only the names differ. A refusal names the
field as the 1.0 sender wrote it (``timestamp``, ``context.page.url``...), never the 2.0 name.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

from pixel.events import Context, InvalidField, Rejection, object_field, parse_event, parse_events
from pixel.records import EventRecord

#: ISO 8601 as TikTok documents it ("2024-05-01T10:00:00Z", with or without an offset or
#: fraction); ASCII only, as ``fromisoformat`` alone would take other scripts' digits in some forms.
_ISO = re.compile(r"[0-9T:+\-.Z ]{10,35}", re.ASCII)
#: 2100-01-01, the latest time accepted anywhere (pixel.events.MAX_UNIX_MS), in seconds.
_MAX_SECONDS = 4_102_444_800
_ROW_KEYS = ("event", "event_id", "timestamp", "context", "properties", "limited_data_use", "type")


def _timestamp(value: Any) -> float:
    """Unix seconds from an ISO 8601 string; a time without an offset is UTC, as at TikTok."""
    if value is None:
        raise InvalidField("timestamp", "is required (ISO 8601, e.g. 2024-05-01T10:00:00Z)")
    if not isinstance(value, str) or not _ISO.fullmatch(value.strip()):
        raise InvalidField("timestamp", "must be an ISO 8601 date and time")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidField("timestamp", "must be an ISO 8601 date and time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    seconds = moment.timestamp()
    if not 0 <= seconds < _MAX_SECONDS:
        raise InvalidField("timestamp", "must be between 1970 and 2100")
    return seconds


def to_v2(raw: dict) -> dict:
    """The 2.0 row for one 1.0 event: ``context`` spread over ``page`` and ``user``, the ISO
    ``timestamp`` as ``event_time``, ``context.ad.callback`` (TikTok's click id for server events)
    as ``user.ttclid`` unless the user carries one. Unknown keys, of the row or of ``context``,
    are kept as they are (custom fields), as the 2.0 endpoint keeps them."""
    for key in ("page", "user", "event_time"):  # 2.0 names: refused, not silently overwritten
        if key in raw:
            raise InvalidField(key, "is not an Events API 1.0 field (use context.page, context.user, timestamp)")
    kind = raw.get("type")
    if kind not in (None, "track"):
        raise InvalidField("type", 'must be "track"')
    context = object_field(raw.get("context"), "context")
    user = dict(object_field(context.get("user"), "context.user"))
    callback = object_field(context.get("ad"), "context.ad").get("callback")
    if callback not in (None, "") and not user.get("ttclid"):
        user["ttclid"] = callback
    for key in ("ip", "user_agent"):
        if context.get(key) is not None:
            user[key] = context[key]
    row = {k: v for k, v in raw.items() if k not in _ROW_KEYS}
    rest = {k: v for k, v in context.items() if k not in ("ad", "page", "user", "ip", "user_agent")}
    if rest:
        row["context"] = rest
    row.update(event=raw.get("event"), event_time=_timestamp(raw.get("timestamp")),
               page=context.get("page"), user=user)
    for key in ("event_id", "properties", "limited_data_use"):
        if key in raw:
            row[key] = raw[key]
    return row


def _v1_field(field: str, raw: dict) -> str:
    """The 1.0 name of a field the 2.0 parser refused."""
    if field == "event_time":
        return "timestamp"
    if field.startswith("page"):
        return "context." + field
    context = raw.get("context") or {}
    if field in ("user.ip", "user.user_agent") and context.get(field[5:]) is not None:
        return "context." + field[5:]
    if field == "user.ttclid":
        user = context.get("user")
        return "context.user.ttclid" if isinstance(user, dict) and user.get("ttclid") else "context.ad.callback"
    if field == "user" or field.startswith("user."):
        return "context." + field
    return field


def parse_event_v1(raw: Any, index: int, ctx: Context) -> EventRecord | Rejection:
    """Validate one 1.0 event as the 2.0 endpoint validates its rows (``ctx.source`` is "server")."""
    if not isinstance(raw, dict):
        return Rejection(index, "", "event must be an object")
    try:
        row = to_v2(raw)
    except InvalidField as exc:
        return exc.rejection(index)
    result = parse_event(row, index, ctx)
    if isinstance(result, Rejection):
        return Rejection(index, _v1_field(result.field, raw), result.rule)
    return result


def parse_events_v1(rows: list, ctx: Context) -> tuple[list[EventRecord], list[Rejection]]:
    return parse_events(rows, ctx, parse_event_v1)
