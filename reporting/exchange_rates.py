"""``POST /v1/exchange-rates`` and ``GET /v1/exchange-rates``: what a conversion's currency is worth.

A rate says 1 ``currency`` = ``rate`` of the advertiser's currency on ``date`` and after, until
the next date posted for that currency. Reports and the optimizer feed convert when they read
(reporting/money.py), so a rate posted later re-values conversions attributed earlier. Re-posting
a (currency, date) replaces its rate. A request is all or nothing, as a costs posting is.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import date

import redis
from flask import Blueprint, g, jsonify, request

from clicktrail import keys
from clicktrail.errors import BadRequest, BufferUnavailable
from pixel import currencies, records
from pixel.events import InvalidField, Rejection
from pixel.registry import advertiser_settings
from reporting.auth import require
from reporting.batches import parse_each, rows_of
from reporting.context import api_services, insert, json_body
from reporting.params import FIRST_DAY, LAST_DAY, date_of

bp = Blueprint("exchange_rates", __name__)

#: A rate far beyond any currency pair (a hyperinflated currency against gold stays below it),
#: so a value times a rate stays a finite double.
MAX_RATE = 1e12
RATE_COLUMNS = ["advertiser_id", "advertiser_currency", "currency", "day", "rate", "version"]
#: Rates one GET lists at most (the oldest first); more are asked for by currency.
MAX_LISTED = 10_000


@dataclass(frozen=True)
class Rate:
    day: date
    currency: str
    rate: float


def parse_rate(row: object, own_currency: str) -> Rate:
    """One rate of a posting, or InvalidField naming the field and the rule."""
    if not isinstance(row, dict):
        raise InvalidField("", "must be an object with date, currency and rate")
    day = date_of(row.get("date"))
    if day is None:
        raise InvalidField("date", f"is required, as a date YYYY-MM-DD from {FIRST_DAY} to {LAST_DAY}")
    currency = row.get("currency")
    if not currencies.is_code(currency):
        raise InvalidField("currency", "is required, an ISO 4217 code of three capital letters, e.g. EUR")
    if currency == own_currency:
        raise InvalidField("currency", f"is the advertiser's own currency ({own_currency}), which needs no rate")
    rate = row.get("rate")
    # bool is an int to Python, and JSON's true is no rate; NaN and infinities fail the range test.
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= MAX_RATE \
            or not math.isfinite(rate):
        raise InvalidField("rate", f"is required, a number above 0 and at most {MAX_RATE:,.0f}: how much of "
                           f"{own_currency} one {currency} is worth on that date")
    return Rate(day, currency, float(rate))


def parse_rates(body: object, own_currency: str) -> tuple[list[Rate], list[Rejection]]:
    """Every rate of a body ``{"rates": [...]}``, or the rejections of the rows that break a rule.

    Raises BadRequest when the body itself is not that shape. Never raises anything else.
    """
    return parse_each(rows_of(body, "rates"), lambda row: parse_rate(row, own_currency),
                      lambda r: (r.day, r.currency),
                      ("date", "appears twice for this currency; post one rate per currency and date"))


@bp.post("/v1/exchange-rates")
@require("adserver")
def post_rates():
    body = json_body()
    svc = api_services()
    advertiser = g.caller.advertiser_id
    own = advertiser_settings(svc.redis, advertiser)["currency"]
    rates, rejections = parse_rates(body, own)
    if rejections:
        return jsonify({"accepted": 0, "rejected": [r.to_dict() for r in rejections]}), 400
    version = time.time_ns() // 1000
    rows = [(advertiser, own, r.currency, r.day, r.rate, version) for r in rates]
    insert("exchange_rates", RATE_COLUMNS, rows, "re-posting rates is harmless")
    try:
        pipe = svc.redis.pipeline(transaction=False)
        # The feed keeps answers by this version; the attributor marks the buckets whose values changed.
        pipe.hset(keys.EXCHANGE_RATES_VERSION, advertiser, version)
        pipe.xadd(records.notice_stream(advertiser, svc.settings.attributor.partitions),
                  records.encode_notice(advertiser, records.NOTICE_RATES, _first_days(rates)),
                  maxlen=1_000_000, approximate=True)
        pipe.execute()
    except redis.RedisError as exc:  # stored, but the optimizer feed would not learn of them
        raise BufferUnavailable("the rates are stored, but the optimizer feed could not be told; post them "
                                "again (re-posting rates is harmless)") from exc
    return jsonify({"accepted": len(rates), "currency": own})


def _first_days(rates: list[Rate]) -> list[tuple[str, str]]:
    """(currency, its earliest date posted): conversions from then on may be worth something else now."""
    first: dict[str, date] = {}
    for r in rates:
        first[r.currency] = min(r.day, first.get(r.currency, r.day))
    return [(currency, day.isoformat()) for currency, day in sorted(first.items())]


@bp.get("/v1/exchange-rates")
@require("adserver")
def list_rates():
    svc = api_services()
    advertiser = g.caller.advertiser_id
    own = advertiser_settings(svc.redis, advertiser)["currency"]
    wanted = request.args.get("currency") or None
    if wanted is not None and not currencies.is_code(wanted):
        raise BadRequest("must be an ISO 4217 code of three capital letters, e.g. EUR", field="currency",
                         code="invalid_field")
    only = "AND currency = %(currency)s" if wanted else ""
    rows = svc.clickhouse.get().execute(
        f"""
        SELECT currency, day, argMax(rate, version) FROM {svc.database}.exchange_rates
        WHERE advertiser_id = %(adv)s AND advertiser_currency = %(own)s {only}
        GROUP BY currency, day ORDER BY currency, day LIMIT {MAX_LISTED + 1}""",
        {"adv": advertiser, "own": own, "currency": wanted or ""},
    )
    listed = [{"date": day.isoformat(), "currency": currency, "rate": rate} for currency, day, rate in rows]
    return jsonify({"currency": own, "rates": listed[:MAX_LISTED], "truncated": len(listed) > MAX_LISTED})
