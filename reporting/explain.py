"""``GET /v1/conversions/<event_id>/attribution``: which touchpoints were considered, and why."""

from __future__ import annotations

from flask import Blueprint, g, jsonify

from attribution import models
from clicktrail.errors import NotFound
from clicktrail.schema import ATTRIBUTION_COLUMN_NAMES, CANDIDATE_COLUMN_NAMES
from reporting.auth import require
from reporting.context import api_services
from clicktrail.timestamps import utc_iso

bp = Blueprint("explain", __name__)


def _latest(table: str, columns: list[str], advertiser_id: str, event_id: str) -> list[dict]:
    svc = api_services()
    db = svc.database
    rows = svc.clickhouse.get().execute(
        f"""
        SELECT {', '.join(columns)} FROM {db}.{table}
        WHERE advertiser_id = %(adv)s AND event_id = %(eid)s
          AND (pixel_id, event, revision) IN (
            SELECT pixel_id, event, max(revision) FROM {db}.credits
            WHERE advertiser_id = %(adv)s AND event_id = %(eid)s GROUP BY pixel_id, event)""",
        {"adv": advertiser_id, "eid": event_id},
    )
    unique = {tuple(row): dict(zip(columns, row)) for row in rows}  # a revision written twice is one
    return list(unique.values())


def _why_not(touch: models.Candidate, conv_ms: int, windows: models.Windows, chosen: list[models.Candidate]) -> str:
    age_days = (conv_ms - touch.touch_ms) / models.DAY_MS
    if touch.touch_ms > conv_ms:
        return "after the conversion"
    if not windows.contains(touch, conv_ms):
        limit = windows.click_days if touch.kind == "click" else windows.view_days
        what = "click" if touch.kind == "click" else "view"
        return f"{age_days:.2f} days before the conversion, outside the {limit}-day {what} window"
    best = chosen[0] if chosen else None
    if best and touch.level > best.level:
        return f"matched by {touch.matched_by}; a stronger match ({best.matched_by}) exists"
    if best and touch.kind != "click" and best.kind == "click":
        return "a click inside the click window beats impressions"
    return ""


def _explain(conversion: list[dict], credited: list[dict]) -> dict:
    head = conversion[0]
    windows = models.Windows(credited[0]["click_window_days"], credited[0]["view_window_days"])
    conv_ms = head["conversion_ms"]
    candidates = [models.Candidate(c["touch_kind"], c["touch_id"], c["touch_ms"], c["campaign_id"], c["adgroup_id"],
                               c["ad_id"], c["matched_by"]) for c in conversion if c["touch_kind"]]
    candidates.sort(key=lambda t: (t.order_key, t.level))
    chosen = models.eligible(candidates, conv_ms, windows)
    chosen_ids = {t.touch_id for t in chosen}
    credit = {(r["model"], r["touch_id"]): r["credit"] for r in credited if r["touch_kind"]}
    touchpoints = []
    for t in candidates:
        reason = "" if t.touch_id in chosen_ids else _why_not(t, conv_ms, windows, chosen)
        touchpoints.append({
            "kind": t.kind, "touch_id": t.touch_id, "touch_time": utc_iso(t.touch_ms), "campaign_id": t.campaign_id,
            "adgroup_id": t.adgroup_id, "ad_id": t.ad_id, "matched_by": t.matched_by,
            "days_before_conversion": round((conv_ms - t.touch_ms) / models.DAY_MS, 4),
            "eligible": t.touch_id in chosen_ids,
            "credit": {m: credit.get((m, t.touch_id), 0.0) for m in models.MODELS},
            "not_credited_because": reason or None,
        })
    return {
        "pixel_id": head["pixel_id"], "event": head["event"], "event_id": head["event_id"],
        "conversion_time": utc_iso(conv_ms), "value": head["value"], "currency": head["currency"],
        "revision": head["revision"],
        "windows": {"click_days": windows.click_days, "view_days": windows.view_days},
        "attributed": bool(chosen),
        "rules": ("touchpoints after the conversion or outside the windows never count; the strongest identity "
                  "match wins (click id, then browser id, then hashed external id, email or phone); a click in "
                  "its window beats impressions; ties in time go to the touch id that sorts last for last_click"),
        "touchpoints": touchpoints,
    }


@bp.get("/v1/conversions/<event_id>/attribution")
@require("reports")
def explain(event_id: str):
    advertiser = g.caller.advertiser_id
    candidates = _latest("attribution_candidates", CANDIDATE_COLUMN_NAMES, advertiser, event_id)
    credited = _latest("credits", ATTRIBUTION_COLUMN_NAMES, advertiser, event_id)
    if not candidates or not credited:
        raise NotFound(f"no attributed conversion with event_id {event_id!r} for this advertiser "
                       "(it may not be attributed yet)", field="event_id", code="unknown_conversion")
    by_conversion: dict[tuple, tuple[list, list]] = {}
    for row in candidates:
        by_conversion.setdefault((row["pixel_id"], row["event"]), ([], []))[0].append(row)
    for row in credited:
        by_conversion.setdefault((row["pixel_id"], row["event"]), ([], []))[1].append(row)
    conversions = [_explain(cands, creds) for cands, creds in by_conversion.values() if cands and creds]
    return jsonify(conversions=conversions)
