"""``GET /v1/conversions/<event_id>/attribution``: which touchpoints were considered, and why."""

from __future__ import annotations

from flask import Blueprint, g, jsonify

from attribution import models
from clicktrail.errors import NotFound
from clicktrail.schema import ATTRIBUTION_COLUMN_NAMES, CANDIDATE_COLUMN_NAMES
from reporting import unattributed
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
          AND (pixel_id, event, revision, content_hash) IN (
            SELECT pixel_id, event, max(revision), argMax(content_hash, revision) FROM {db}.credits
            WHERE advertiser_id = %(adv)s AND event_id = %(eid)s AND sign = 1 GROUP BY pixel_id, event)""",
        {"adv": advertiser_id, "eid": event_id},
    )
    # An attributor that died between its two inserts left candidates of a revision it never
    # credited, and the re-run wrote that revision again. Rows are taken by the content hash of the
    # current credits, so a re-run whose result differed (a touchpoint arrived or changed, the
    # windows changed) shows nothing of the orphan; one that computed the same result wrote the
    # same rows, differing only in when they were written (attributed_ms, not shown): one is kept.
    written = columns.index("attributed_ms")
    unique = {row[:written] + row[written + 1:]: dict(zip(columns, row)) for row in rows}
    return list(unique.values())


def _why_not(touch: models.Candidate, conv_ms: int, windows: models.Windows, chosen: list[models.Candidate]) -> str:
    age_days = (conv_ms - touch.touch_ms) / models.DAY_MS
    if touch.touch_ms > conv_ms:
        return "after the conversion"
    if not windows.contains(touch, conv_ms):
        if touch.kind != "click" and not windows.view_days:
            return f"{age_days:.2f} days before the conversion; view-through is off (view window 0)"
        limit = windows.click_days if touch.kind == "click" else windows.view_days
        what = "click" if touch.kind == "click" else "view"
        return f"{age_days:.2f} days before the conversion, outside the {limit}-day {what} window"
    best = chosen[0] if chosen else None
    if best and touch.level > best.level:
        return f"matched by {touch.matched_by}; a stronger match ({best.matched_by}) exists"
    if best and touch.kind != "click" and best.kind == "click":
        return "a click inside the click window beats impressions"
    return ""


class _Conversion:
    """One conversion's stored attribution (latest revision) and the converting event's own facts."""

    def __init__(self, advertiser_id: str, conversion: list[dict], credited: list[dict],
                 event: unattributed.Event | None) -> None:
        self.head = conversion[0]
        self.key = (advertiser_id, self.head["pixel_id"], self.head["event"], self.head["event_id"])
        self.conv_ms = self.head["conversion_ms"]
        self.windows = models.Windows(credited[0]["click_window_days"], credited[0]["view_window_days"])
        self.candidates = sorted(
            (models.Candidate(c["touch_kind"], c["touch_id"], c["touch_ms"], c["campaign_id"], c["adgroup_id"],
                              c["ad_id"], c["matched_by"]) for c in conversion if c["touch_kind"]),
            key=lambda t: (t.order_key, t.level))
        self.chosen = models.eligible(self.candidates, self.conv_ms, self.windows)
        # Why the attributor counted it for nothing, as written on its credit row (empty if it did not).
        self.suppressed = next((r["matched_by"] for r in credited if not r["touch_kind"] and r["matched_by"]), "")
        self.credit = {(r["model"], r["touch_id"]): r["credit"] for r in credited if r["touch_kind"]}
        self.event = event

    def reasons(self, ch, db: str) -> list[dict]:
        """Why the conversion got no credit, strongest reason first; empty when it got some."""
        if self.chosen and not self.suppressed:
            return []
        found = [unattributed.bot()] if self.event and self.event.is_bot else []
        if self.suppressed == "bot" and self.chosen:
            # Its touchpoints would have earned it: being a bot's (credited to nothing) is the one reason.
            return found or [unattributed.bot()]
        if self.suppressed == "duplicate_order":
            return found + [unattributed.duplicate_order(ch, db, self.key, self.event.order_id if self.event else "")]
        if self.suppressed == "repeat_click":
            last = self.chosen[-1] if self.chosen and self.chosen[-1].kind == "click" else None
            return found + [unattributed.repeat_click(ch, db, self.key, last)]
        click_id = self.event.click_id if self.event else ""
        if click_id and not any(t.matched_by == "click_id" for t in self.candidates):
            found.append(unattributed.click_id_not_found(ch, db, self.key[0], click_id, self.conv_ms))
        if self.candidates:
            found.append(unattributed.outside_windows(self.candidates, self.conv_ms, self.windows))
        elif not click_id:
            found.append(unattributed.no_touchpoint())
        return found

    def explain(self, ch, db: str) -> dict:
        reasons = self.reasons(ch, db)
        credited_ids = set() if self.suppressed else {t.touch_id for t in self.chosen}
        # A counted-for-nothing conversion's touchpoints say why, as the conversion does.
        held_back = reasons[-1]["message"] if self.suppressed else ""
        touchpoints = []
        for t in self.candidates:
            if t.touch_id in credited_ids:
                reason = ""
            elif held_back and t in self.chosen:
                reason = held_back
            else:
                reason = _why_not(t, self.conv_ms, self.windows, self.chosen)
            touchpoints.append({
                "kind": t.kind, "touch_id": t.touch_id, "touch_time": utc_iso(t.touch_ms),
                "campaign_id": t.campaign_id, "adgroup_id": t.adgroup_id, "ad_id": t.ad_id,
                "matched_by": t.matched_by, "days_before_conversion": round((self.conv_ms - t.touch_ms) / models.DAY_MS, 4),
                "eligible": t.touch_id in credited_ids,
                "credit": {m: self.credit.get((m, t.touch_id), 0.0) for m in models.MODELS},
                "not_credited_because": reason or None,
            })
        head = self.head
        return {
            "pixel_id": head["pixel_id"], "event": head["event"], "event_id": head["event_id"],
            "conversion_time": utc_iso(self.conv_ms), "value": head["value"], "currency": head["currency"],
            "revision": head["revision"],
            "windows": {"click_days": self.windows.click_days, "view_days": self.windows.view_days},
            "attributed": not reasons,
            "not_attributed_because": reasons,
            "rules": RULES,
            "touchpoints": touchpoints,
        }


RULES = ("touchpoints after the conversion or outside the windows never count (a view window of 0: no "
         "impression); among the touchpoints inside the windows the strongest identity match takes part (click "
         "id, then browser id, then hashed external id, email or phone); within it a click beats impressions; "
         "ties in time go to the touch id that sorts last for last_click; a repeated order id counts once (the "
         "earliest event time keeps the credit)")


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
    svc = api_services()
    ch = svc.clickhouse.get()
    events = unattributed.events(ch, svc.database, advertiser, event_id)
    conversions = [_Conversion(advertiser, cands, creds, events.get(key)).explain(ch, svc.database)
                   for key, (cands, creds) in by_conversion.items() if cands and creds]
    return jsonify(conversions=conversions)
