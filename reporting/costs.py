"""``POST /v1/costs``: daily spend (and optionally impressions) per ad, from the ad server.

A day is replaced as a whole: every posting of a day gets a new version, and reports read only
the latest version of each day, so an ad missing from a re-posted day no longer has spend on it.
A request is all or nothing: with any row refused nothing is stored, so a day is never replaced
by part of what was meant.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from flask import Blueprint, g, jsonify

from pixel.events import MAX_MONEY, InvalidField, Rejection
from pixel.registry import advertiser_settings
from pixel.touchpoints import MAX_ID
from reporting.auth import require
from reporting.batches import parse_each, rows_of
from reporting.context import api_services, insert, json_body

bp = Blueprint("costs", __name__)

#: Spend may be posted for days this far back (a year of history), and never for future days.
MAX_COST_AGE_DAYS = 400
#: Spend of one ad on one day, in the advertiser's currency: the bound event values have too. Far
#: beyond any real budget, and sums of a year of such rows stay exact to the cent in a double.
MAX_SPEND = MAX_MONEY
#: Impressions of one ad on one day: sums of many such rows stay far inside ClickHouse's UInt64.
MAX_IMPRESSIONS = 10**12
COST_COLUMNS = ["advertiser_id", "day", "version", "campaign_id", "adgroup_id", "ad_id", "spend", "impressions",
                "has_impressions", "currency"]


@dataclass(frozen=True)
class Cost:
    day: date
    campaign_id: str
    adgroup_id: str
    ad_id: str
    spend: float
    impressions: int | None


def _text(row: dict, field: str) -> str:
    value = row.get(field)
    if not isinstance(value, str) or not value:
        raise InvalidField(field, "is required and must be a string")
    if len(value) > MAX_ID or any(ord(c) < 32 for c in value):
        raise InvalidField(field, f"must be at most {MAX_ID} printable characters")
    return value


def _day(row: dict, today: date) -> date:
    value = row.get("date")
    try:
        day = date.fromisoformat(value) if isinstance(value, str) and len(value) == 10 else None
    except ValueError:
        day = None
    if day is None:
        raise InvalidField("date", "must be a date as YYYY-MM-DD")
    if day > today:
        raise InvalidField("date", "must not be in the future (in the advertiser's time zone)")
    if day < today - timedelta(days=MAX_COST_AGE_DAYS):
        raise InvalidField("date", f"must be at most {MAX_COST_AGE_DAYS} days ago")
    return day


def _number(row: dict, field: str, most: float) -> float | None:
    """A finite number from 0 to ``most``, or None when the field is absent."""
    value = row.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value <= most):
        # NaN fails the range test too, as does a number past 2^64 or 1e308.
        raise InvalidField(field, f"must be a number from 0 to {most:,.0f}")
    return value


def parse_cost(row: object, today: date) -> Cost:
    if not isinstance(row, dict):
        raise InvalidField("", "must be an object")
    spend = _number(row, "spend", MAX_SPEND)
    if spend is None:
        raise InvalidField("spend", f"is required, a number from 0 to {MAX_SPEND:,.0f}")
    impressions = _number(row, "impressions", MAX_IMPRESSIONS)
    if impressions is not None and impressions != int(impressions):
        raise InvalidField("impressions", "must be a whole number")
    return Cost(_day(row, today), _text(row, "campaign_id"), _text(row, "adgroup_id"), _text(row, "ad_id"),
                float(spend), None if impressions is None else int(impressions))


def parse_costs(rows: list, today: date) -> tuple[list[Cost], list[Rejection]]:
    return parse_each(rows, lambda row: parse_cost(row, today), lambda c: (c.day, c.ad_id),
                      ("ad_id", "appears twice for this date; post one row per ad and day"))


def _today(tz_name: str) -> date:
    from zoneinfo import ZoneInfo

    return datetime.now(timezone.utc).astimezone(ZoneInfo(tz_name)).date()


@bp.post("/v1/costs")
@require("adserver")
def import_costs():
    rows = rows_of(json_body(), "costs")
    svc = api_services()
    settings = advertiser_settings(svc.redis, g.caller.advertiser_id)
    costs, rejections = parse_costs(rows, _today(settings["timezone"]))
    if rejections:
        return jsonify({"accepted": 0, "rejected": [r.to_dict() for r in rejections]}), 400
    version = time.time_ns() // 1000  # one version for every day of this posting
    rows = [(g.caller.advertiser_id, c.day, version, c.campaign_id, c.adgroup_id, c.ad_id, c.spend,
             c.impressions or 0, int(c.impressions is not None), settings["currency"]) for c in costs]
    insert("costs", COST_COLUMNS, rows, "re-posting a day is harmless")
    days = sorted({c.day.isoformat() for c in costs})
    return jsonify({"accepted": len(costs), "days_replaced": days, "currency": settings["currency"]})
