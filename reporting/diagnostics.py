"""Read-only views for an advertiser checking its set-up (scope ``reports``).

``GET /v1/advertiser``: its attribution settings, pixels and other event sources.
``GET /v1/pixels/<pixel_id>/diagnostics``: what one pixel (or app or event set) received lately,
what the collector refused, how much of it carries click ids and was attributed, how many clicks
and conversions were bots' (left out of every count), and the snippet to paste (pixels only).
Every count comes from set-based queries (four to ClickHouse and a few Redis reads per request,
whatever the traffic), and a token only ever sees its own advertiser's pixels: another tenant's
pixel answers exactly as a missing one does.
"""

from __future__ import annotations

import time

import redis
from flask import Blueprint, g, jsonify

from clicktrail import keys
from clicktrail.clickhouse import NETWORK_ERRORS
from clicktrail.errors import BufferUnavailable, NotFound, StorageError
from clicktrail.timestamps import utc_iso
from pixel import registry, retention, sources
from pixel.snippet import build_snippet
from reporting import money
from reporting.auth import require
from reporting.context import api_services

bp = Blueprint("diagnostics", __name__)

DAY_S = 86_400

#: Where attributed conversions are read: (table, condition its rows must meet). In ``credits`` a
#: restatement writes cancel copies (sign -1) of the previous revision beside the new rows; only
#: the new revision's own rows say what the conversion is credited to now.
MATCHES_FROM = ("credits", "sign = 1")


def _redis_read(call, *args):
    # Same answer as the token check in reporting.auth: Redis trouble is a 503 to retry.
    try:
        return call(*args)
    except redis.RedisError as exc:
        raise BufferUnavailable("the registry is unavailable; retry later") from exc


def _query(sql: str, params: dict) -> list[tuple]:
    svc = api_services()
    try:
        return svc.clickhouse.get().execute(sql, params)
    except NETWORK_ERRORS as exc:
        raise StorageError("storage is unavailable; retry later") from exc


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


@bp.get("/v1/advertiser")
@require("reports")
def advertiser():
    r = api_services().redis
    adv = g.caller.advertiser_id
    settings = _redis_read(registry.advertiser_settings, r, adv)
    pixels = _redis_read(registry.list_pixels, r, adv)
    others = _redis_read(sources.list_sources, r, adv)
    complete_from = _redis_read(retention.complete_from, r, adv, settings, settings["timezone"])
    expired = _redis_read(r.hmget, keys.EXPIRED_COUNTS, [f"{adv}:events", f"{adv}:dead"])
    return jsonify(
        advertiser_id=adv,
        settings=settings,
        data_complete_from=complete_from,
        # Accepted events dropped unstored for outliving CLICKTRAIL_BUFFER_MAX_AGE_DAYS (sink/expiry.py).
        expired_events={"stream": int(expired[0] or 0), "dead_letters": int(expired[1] or 0)},
        pixels=[{"pixel_id": pid, "domains": pixels[pid]["domains"]} for pid in sorted(pixels)],
        event_sources=[{"event_source_id": sid, "event_source": rec["kind"], "name": rec["name"]}
                       for sid, rec in others.items()],
    )


def _owned_pixel(pixel_id: str, advertiser_id: str) -> dict:
    """The pixel, or the app or event set (pixel/sources.py), with its ``event_source``."""
    record = _redis_read(sources.event_source, api_services().redis, pixel_id)
    # One answer for "no such pixel" and "someone else's pixel", so ids of other tenants cannot be probed.
    if record is None or record["advertiser_id"] != advertiser_id:
        raise NotFound(f"pixel {pixel_id!r} is not a pixel or event source of this advertiser", field="pixel_id",
                       code="unknown_pixel")
    return record


def _event_groups(db: str, adv: str, pixel_id: str, now_s: int) -> list[dict]:
    """Unique events of the last 7 days per (event, source), with the facts the totals need.

    Copies are folded here, never trusted to merges: one unique event per (event, event_id), its
    source, time, test code and click id taken from the first copy received (as events_unique
    does), so a pixel copy and a server copy of one event count once, under the pixel's source.
    """
    rows = _query(
        f"""
        SELECT event, src, countIf(t >= toDateTime(%(since_24h)s)), count(), sum(copies), countIf(tec != ''),
               countIf(clicked), countIf(bot AND tec = '')
        FROM (
            SELECT event, argMax(source, dedup_version) AS src, argMax(event_time, dedup_version) AS t,
                   argMax(test_event_code, dedup_version) AS tec, argMax(is_bot, dedup_version) AS bot,
                   argMax(click_id, dedup_version) != '' AS clicked,
                   count() AS copies
            FROM {db}.events
            WHERE advertiser_id = %(adv)s AND pixel_id = %(pixel)s AND event_time >= toDateTime(%(since_7d)s)
            GROUP BY event, event_id)
        GROUP BY event, src
        ORDER BY event, src""",
        {"adv": adv, "pixel": pixel_id, "since_24h": now_s - DAY_S, "since_7d": now_s - 7 * DAY_S},
    )
    names = ("event", "source", "last_24h", "last_7d", "received", "test", "with_click_id", "bots_7d")
    return [dict(zip(names, row)) for row in rows]


def _last_event_ms(db: str, adv: str, pixel_id: str) -> int | None:
    # All time, not 7 days: a pixel that went quiet a month ago should say when.
    ((count, last_ms),) = _query(
        f"SELECT count(), max(event_ms) FROM {db}.events "
        "WHERE advertiser_id = %(adv)s AND pixel_id = %(pixel)s",
        {"adv": adv, "pixel": pixel_id},
    )
    return last_ms if count else None  # max() of no rows is 0, not NULL, on 18.16


def _matched_7d(db: str, adv: str, pixel_id: str, now_s: int) -> int:
    """Conversions of the last 7 days whose latest revision credits a touchpoint.

    Only the highest revision counts: a restated conversion keeps its older rows until merges,
    and one that lost its touchpoint must not count as matched. Organic and duplicate conversions
    have an empty touch_kind; test events are never attributed.
    """
    table, row_filter = MATCHES_FROM
    window = ("advertiser_id = %(adv)s AND pixel_id = %(pixel)s "
              "AND conversion_time >= toDateTime(%(since_7d)s)")
    ((matched,),) = _query(
        f"""
        SELECT uniqExact(pixel_id, event, event_id) FROM {db}.{table}
        WHERE {window} AND touch_kind != '' AND {row_filter}
          AND (pixel_id, event, event_id, revision) IN (
            SELECT pixel_id, event, event_id, max(revision) FROM {db}.{table}
            WHERE {window} GROUP BY pixel_id, event, event_id)""",
        {"adv": adv, "pixel": pixel_id, "since_7d": now_s - 7 * DAY_S},
    )
    return matched


def _bot_clicks_7d(db: str, adv: str, now_s: int) -> int:
    """The advertiser's clicks of the last 7 days that were bots' (clicks belong to no pixel)."""
    ((clicks,),) = _query(
        f"SELECT sum(touches) FROM {db}.bot_touch_stats WHERE advertiser_id = %(adv)s AND kind = 'click' "
        "AND touch_minute >= toDateTime(%(since_7d)s)",
        {"adv": adv, "since_7d": now_s - 7 * DAY_S},
    )
    return int(clicks or 0)


def _unconverted_7d(db: str, adv: str, pixel_id: str, now_s: int, settings: dict) -> dict[str, int]:
    """Attributed conversions of the last 7 days whose currency has no exchange rate by their day,
    per currency: their value is left out of conversion_value and ROAS (see reporting/money.py)."""
    table, row_filter = MATCHES_FROM
    window = ("advertiser_id = %(adv)s AND pixel_id = %(pixel)s "
              "AND conversion_time >= toDateTime(%(since_7d)s)")
    inner = f"""
        SELECT currency, {money.day_sql("conversion_time")} AS day, toFloat64(uniqExact(pixel_id, event, event_id)) AS cs,
               toFloat64(0) AS vs
        FROM {db}.{table}
        WHERE {window} AND touch_kind != '' AND {row_filter} AND value != 0
          AND (pixel_id, event, event_id, revision) IN (
            SELECT pixel_id, event, event_id, max(revision) FROM {db}.{table}
            WHERE {window} GROUP BY pixel_id, event, event_id)
        GROUP BY currency, day"""
    rows = _query(money.valued_sql(inner, ["currency"], db) + " ORDER BY currency",
                  {"adv": adv, "pixel": pixel_id, "since_7d": now_s - 7 * DAY_S, **money.params(adv, settings)})
    return {currency: int(u) for currency, _, _, u in rows if u}


def _warnings(unconverted: dict[str, int]) -> list[dict]:
    if not unconverted:
        return []
    count = sum(unconverted.values())
    return [{"code": "unconverted_currency", "count": count,
             "message": f"{count} attributed conversion(s) of the last 7 days are in {', '.join(unconverted)}, with "
                        "no exchange rate on or before their day: they count as conversions, but their value is "
                        "left out of conversion_value and ROAS. Post the rates to POST /v1/exchange-rates."}]


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def _rejected(pixel_id: str) -> dict[str, int]:
    """Events the collector refused for this pixel, by reason, since counting began (never reset).

    Fields are ``<pixel_id>:<reason>``; pixel ids hold no ':', so the first one splits them.
    """
    r = api_services().redis
    prefix = pixel_id + ":"
    pairs = _redis_read(lambda: list(r.hscan_iter(keys.REJECTED_COUNTS, match=_glob_escape(prefix) + "*",
                                                   count=1000)))
    counts = {field.decode()[len(prefix):]: int(value) for field, value in pairs}
    return dict(sorted(counts.items()))


@bp.get("/v1/pixels/<pixel_id>/diagnostics")
@require("reports")
def pixel_diagnostics(pixel_id: str):
    svc = api_services()
    adv = g.caller.advertiser_id
    kind = _owned_pixel(pixel_id, adv)["event_source"]
    now_ms = time.time_ns() // 1_000_000
    now_s = now_ms // 1000  # one cut-off for every query, so the numbers agree with each other
    groups = _event_groups(svc.database, adv, pixel_id, now_s)
    unique = sum(gr["last_7d"] for gr in groups)
    received = sum(gr["received"] for gr in groups)
    tests = sum(gr["test"] for gr in groups)
    bots = sum(gr["bots_7d"] for gr in groups)
    last_ms = _last_event_ms(svc.database, adv, pixel_id)
    settings = _redis_read(registry.advertiser_settings, svc.redis, adv)
    unconverted = _unconverted_7d(svc.database, adv, pixel_id, now_s, settings)
    return jsonify(
        pixel_id=pixel_id,
        event_source=kind,
        advertiser_id=adv,
        generated_at=utc_iso(now_ms),
        events=[{k: gr[k] for k in ("event", "source", "last_24h", "last_7d", "bots_7d")} for gr in groups],
        test_events_7d=tests,
        last_event_at=utc_iso(last_ms) if last_ms is not None else None,
        received_7d=received,
        duplicates_merged_7d=received - unique,
        rejected=_rejected(pixel_id),
        click_id_share_7d=_share(sum(gr["with_click_id"] for gr in groups), unique),
        # Bots' events are never attributed (docs/attribution.md, "Bots"): they are not in the share.
        matched_share_7d=_share(_matched_7d(svc.database, adv, pixel_id, now_s), unique - tests - bots),
        bots_excluded_7d={"clicks": _bot_clicks_7d(svc.database, adv, now_s), "conversions": bots},
        unconverted_conversions_7d=sum(unconverted.values()),
        warnings=_warnings(unconverted),
        # Only a pixel goes on a site; an app or event set is fed by its server.
        snippet=build_snippet(pixel_id, svc.settings.site.public_url.rstrip("/")) if kind == "web" else None,
    )
