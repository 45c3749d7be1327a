"""Validation of imported touchpoints (ad server clicks and impressions).

Identifiers are taken as events take them (``pixel.events.identifier_values``): one value or a
list, hashed by the same rules, so a click and a conversion naming one person hash alike.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from pixel.events import InvalidField, Rejection, identifier_values
from pixel.records import TouchRow

#: Touchpoints as old as the longest click window are accepted.
MAX_TOUCH_AGE_S = 28 * 86400
MAX_FUTURE_S = 86400
MAX_ROWS = 10_000
MAX_ID = 128
KINDS = {"clicks": ("click", "click_id", "click_time"), "impressions": ("impression", "impression_id",
                                                                        "impression_time")}


def _id(row: dict, field: str) -> str:
    value = row.get(field)
    if value is None or value == "":
        raise InvalidField(field, "is required")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidField(field, "must be a string")
    text = str(value)
    if len(text) > MAX_ID or any(ord(c) < 32 for c in text):
        raise InvalidField(field, f"must be at most {MAX_ID} printable characters")
    return text


def _time(row: dict, field: str, now_s: float) -> int:
    value = row.get(field)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidField(field, "must be unix time in seconds")
    if value > 10**11:
        raise InvalidField(field, "must be unix time in seconds (this looks like milliseconds)")
    if value < now_s - MAX_TOUCH_AGE_S:
        raise InvalidField(field, "must be at most 28 days old")
    if value > now_s + MAX_FUTURE_S:
        raise InvalidField(field, "must be at most 24 hours in the future")
    return int(value * 1000)


#: The identifiers a touchpoint may carry several values of: as events take them (a string or a
#: list of at most ``MAX_IDENTIFIER_VALUES``), so a person's several addresses tie alike either way.
IDENTIFIER_KINDS = ("email", "phone", "external_id")


def _user(row: dict) -> dict:
    user = row.get("user") or {}
    if not isinstance(user, dict):
        raise InvalidField("user", "must be an object")
    out: dict = {"more": []}
    for kind in IDENTIFIER_KINDS:
        # Hashed by the events' own rules (raw values here, never stored), repeats dropped.
        values = identifier_values(user.get(kind), f"user.{kind}", kind)
        out[kind] = values[0] if values else ""
        # The first value fills the column (as for events); every value goes to the list column.
        out["more"] += [(kind, value) for value in values[1:]]
    ttp = user.get("ttp")
    if ttp is not None and (not isinstance(ttp, str) or len(ttp) > 256):
        raise InvalidField("user.ttp", "must be a string of at most 256 characters")
    out["browser_id"] = ttp or ""
    return out


class Touch(NamedTuple):
    advertiser_id: str
    kind: str
    touch_id: str
    touch_ms: int
    campaign_id: str
    adgroup_id: str
    ad_id: str
    browser_id: str
    email: str
    phone: str
    external_id: str
    is_bot: int = 0  # a bot's click (pixel.bots): a touchpoint only for a bot's own conversions
    #: Identities beyond the single columns, as (kind, SHA-256 hex) with kind email, phone or
    #: external_id: an imported touchpoint's further values, stored in the list columns
    #: (emails_sha256..., migration 14) after the first, and read back from the latest copy's.
    more: tuple = ()

    def values(self, kind: str) -> list[str]:
        """Every value of an identifier kind (email, phone, external_id), the column's first."""
        first = getattr(self, kind)
        return ([first] if first else []) + [value for k, value in self.more if k == kind]

    def row(self, received_ms: int, counted: bool = True) -> TouchRow:
        """The touchpoints table's row of an imported touchpoint; ``counted`` is false for a copy of a stored id."""
        return TouchRow(
            advertiser_id=self.advertiser_id, kind=self.kind, touch_id=self.touch_id,
            touch_time=self.touch_ms // 1000, touch_ms=self.touch_ms, campaign_id=self.campaign_id,
            adgroup_id=self.adgroup_id, ad_id=self.ad_id, browser_id=self.browser_id, email_sha256=self.email,
            phone_sha256=self.phone, external_id_sha256=self.external_id, emails_sha256=self.values("email"),
            phones_sha256=self.values("phone"), external_ids_sha256=self.values("external_id"), ip="", country="", region="", user_agent="",
            source="import", received_ms=received_ms, counted=int(counted), is_bot=self.is_bot,
        )


def parse_rows(collection: str, rows: list, advertiser_id: str, now_s: float) -> tuple[list[Touch], list[Rejection]]:
    kind, id_field, time_field = KINDS[collection]
    touches, rejections = [], []
    for index, row in enumerate(rows):
        try:
            if not isinstance(row, dict):
                raise InvalidField("", "row must be an object")
            user = _user(row)
            touches.append(Touch(
                advertiser_id, kind, _id(row, id_field), _time(row, time_field, now_s),
                _id(row, "campaign_id"), _id(row, "adgroup_id"), _id(row, "ad_id"), user["browser_id"],
                user["email"], user["phone"], user["external_id"], more=tuple(user["more"]),
            ))
        except InvalidField as exc:
            rejections.append(exc.rejection(index))
    return touches, rejections
