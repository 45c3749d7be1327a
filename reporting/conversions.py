"""``GET /v1/conversions``: the latest conversions, to pick one and see why it was credited."""

from __future__ import annotations

from flask import Blueprint, g, jsonify, request

from reporting.auth import require
from reporting.params import whole
from reporting.reports import caller_query
from clicktrail.timestamps import utc_iso

bp = Blueprint("conversions", __name__)
MAX_LIMIT = 500


@bp.get("/v1/conversions")
@require("reports")
def latest_conversions():
    svc, settings, query = caller_query()
    limit = whole(request.args, "limit", 50, 1, MAX_LIMIT)
    lo, hi = query.bounds()
    events = query.filters.get("event")
    rows = svc.clickhouse.get().execute(
        f"""
        SELECT pixel_id, event, event_id, max(conversion_ms) AS at_ms, argMax(value, revision), argMax(currency, revision),
               argMax(campaign_id, revision), argMax(adgroup_id, revision), argMax(ad_id, revision),
               argMax(touch_kind, revision), argMax(matched_by, revision)
        FROM {svc.database}.credits
        WHERE advertiser_id = %(adv)s AND sign = 1 AND model = %(model)s
          AND conversion_time >= toDateTime(%(lo)s) AND conversion_time < toDateTime(%(hi)s)
          {"AND event IN %(events)s" if events else ""}
        GROUP BY pixel_id, event, event_id ORDER BY at_ms DESC, event_id LIMIT %(limit)s""",
        {"adv": g.caller.advertiser_id, "model": query.model, "lo": lo, "hi": hi, "limit": limit,
         "events": tuple(events or ())},
    )
    # value in the conversion's own currency, as it was sent (reports convert it: reporting/money.py)
    names = ("pixel_id", "event", "event_id", "conversion_time", "value", "currency", "campaign_id", "adgroup_id",
             "ad_id", "touch_kind", "matched_by")
    out = []
    for row in rows:
        item = dict(zip(names, row))
        item["conversion_time"] = utc_iso(item["conversion_time"])
        out.append(item)
    return jsonify({"rows": out, "model": query.model})
