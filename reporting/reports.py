"""``GET /v1/reports``: spend, clicks, impressions and attributed conversions by any breakdown.

Three kept sources are summed, never raw events:
- conversions from ``conversion_stats`` (credits summed by materialized view), under the
  advertiser's windows as each conversion was attributed (a window change applies forward, as on
  the ad platforms); asking for other windows recomputes the credits from the stored candidate
  touchpoints of each conversion with the attributor's rules as array functions (exact, slower);
- clicks and impressions from ``touch_stats`` (first copies of each id, per ad and minute);
- spend from ``costs`` (the latest posting of each day), a day's spend spread evenly over its
  hours when the report is by hour or in another time zone than the advertiser's.
Everything time-based is stored by the minute in UTC, so days and hours of any time zone
(half-hour offsets and daylight-saving days included) are exact.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import date, datetime, timedelta

import redis
from flask import Blueprint, Response, g, jsonify, request

from attribution import models
from clicktrail.errors import BufferUnavailable
from pixel import retention
from pixel.registry import advertiser_settings
from reporting import money
from reporting import report_query as rq
from reporting.auth import require
from reporting.context import api_services
from reporting.finite_json import finite_or_none
from reporting.params import FIRST_DAY
from reporting.spreadsheet import report_cell

bp = Blueprint("reports", __name__)

#: Why a conversion counts for nothing (credits.matched_by): a bot's (counted with include_bots=true),
#: a repeated order, a repeat conversion of one click.
_BOT = "bot"
_SUPPRESSED = (_BOT, "duplicate_order", "repeat_click")
_RATIOS = ("ctr", "cpc", "cpm", "cvr", "cpa", "roas")
#: Additive metrics as sums of the ClickHouse path's columns (impressions: counted plus posted).
_SUM_OF = {"conversions": "c", "conversion_value": "v", "unconverted_conversions": "u", "clicks": "k",
           "impressions": "(i + ci)", "spend": "s"}


def caller_query() -> tuple:
    """The API's services, the calling advertiser's settings and the report parameters of this request."""
    svc = api_services()
    settings = advertiser_settings(svc.redis, g.caller.advertiser_id)
    return svc, settings, rq.parse(request.args, settings)


@bp.get("/v1/reports")
@require("reports")
def report():
    svc, settings, query = caller_query()
    built = Report(svc.clickhouse.get(), svc.database, g.caller.advertiser_id, settings, query).build()
    if query.format == "csv":
        return _csv(query, built["rows"], settings["currency"])
    # Retention removed older rows: the sums stay, what is recomputed from rows (other windows) does not.
    try:
        built["data_complete_from"] = retention.complete_from(svc.redis, g.caller.advertiser_id, settings,
                                                              query.timezone)
    except redis.RedisError as exc:
        raise BufferUnavailable("the registry is unavailable; retry later") from exc
    return jsonify(built)


class Report:
    def __init__(self, ch, db: str, advertiser_id: str, settings: dict, query: rq.ReportQuery) -> None:
        self.ch = ch
        self.db = db
        self.adv = advertiser_id
        self.settings = settings
        self.q = query
        self.lo, self.hi = query.bounds()
        self.time_dim = next((d for d in query.dimensions if d in rq.TIME_DIMENSIONS), None)
        #: Dimensions clicks, impressions and spend have (all but event and conversion ones).
        self.touch_dims = tuple(d for d in query.dimensions if d in rq.TIME_DIMENSIONS + rq.AD_DIMENSIONS)

    # ---- assembling ---------------------------------------------------------------------------

    def build(self) -> dict:
        # By ad group or ad, a report may have 100,000s of keys: ClickHouse joins, orders and pages
        # them (two queries). Fewer keys are cheaper joined here (three small queries, no paging).
        many_keys = any(d in ("adgroup_id", "ad_id") for d in self.q.dimensions)
        if many_keys and self._summable_in_clickhouse():
            return self._build_in_clickhouse()
        return self._build_in_python()

    def _summable_in_clickhouse(self) -> bool:
        """Whether one ClickHouse query can join, order and page the report.

        Not when credits are recomputed (other windows, or bots included), when clicks and spend repeat per event,
        when spend must be split into hours (by hour, or days of another time zone), or when the
        order is a ratio (ratios are computed here, after summing).
        """
        ordered = self.q.order_by[0] if self.q.order_by else None
        return (not self.q.custom_windows and not self.q.include_bots and "event" not in self.q.dimensions
                and (not self.q.needs_touches or (self.time_dim != "stat_time_hour"
                                                  and self.q.timezone == self.settings["timezone"]))
                and ordered not in _RATIOS)

    def _build_in_python(self) -> dict:
        conversions = self._conversions()
        touches = self._touches() if self.q.needs_touches else {}
        spend = self._spend() if self.q.needs_touches else {}
        raw = self._join(conversions, touches, spend)
        totals = self._metrics(_sum_values(conversions.values(), 3), _sum_touches(touches.values()),
                               _sum_values(spend.values(), 2))
        keys = self._order(raw)
        first = (self.q.page - 1) * self.q.page_size
        # Metrics are computed for the page only: an ad x day report may have 100,000s of keys.
        rows = [{**dict(zip(self.q.dimensions, key)), **self._metrics(*raw[key])}
                for key in keys[first:first + self.q.page_size]]
        return {"rows": rows, "totals": totals,
                "page": {"page": self.q.page, "page_size": self.q.page_size, "total_rows": len(keys)},
                "query": self.q.echo(self.settings["currency"])}

    def _join(self, conversions: dict, touches: dict, spend: dict) -> dict[tuple, tuple]:
        """Every row key with its (conversions, touches, spend) sums."""
        dims = self.q.dimensions
        by_event = "event" in dims
        events = (self.q.filters.get("event") or sorted({k[dims.index("event")] for k in conversions})) if by_event \
            else ()
        touch_index = [dims.index(d) for d in self.touch_dims]
        keys = set(conversions)
        if self.touch_dims == dims:  # the common case: keys are the same on both sides
            keys |= touches.keys() | spend.keys()
        else:
            for touch_key in touches.keys() | spend.keys():
                if by_event:
                    keys |= {self._full_key(touch_key, event) for event in events}
                else:
                    keys.add(self._full_key(touch_key, None))
        no_conv, no_touch, no_cost = (0.0, 0.0, 0.0), (0, 0), (0.0, 0.0)
        out = {}
        for key in keys:
            touch_key = tuple(key[i] for i in touch_index)
            out[key] = (conversions.get(key, no_conv), touches.get(touch_key, no_touch), spend.get(touch_key, no_cost))
        return out

    def _full_key(self, touch_key: tuple, event: str | None) -> tuple:
        values = dict(zip(self.touch_dims, touch_key))
        if event is not None:
            values["event"] = event
        return tuple(values[d] for d in self.q.dimensions)

    def _metrics(self, conv: tuple, touch: tuple, cost: tuple, only: tuple[str, ...] | None = None) -> dict:
        # A sum beyond the largest double (only rows stored before the input bounds can add up
        # to one) is null, and so is every ratio of it: never Infinity or NaN.
        conversions, value, unconverted = map(finite_or_none, conv)
        clicks, impressions = touch
        spend, cost_impressions = map(finite_or_none, cost)
        impressions = None if cost_impressions is None else impressions + int(round(cost_impressions))
        known = {
            "spend": lambda: _rounded(spend), "impressions": lambda: impressions, "clicks": lambda: clicks,
            "ctr": lambda: _ratio(clicks, impressions), "cpc": lambda: _ratio(spend, clicks),
            "cpm": lambda: _ratio(spend, impressions, 1000), "conversions": lambda: _rounded(conversions),
            "conversion_value": lambda: _rounded(value), "unconverted_conversions": lambda: _rounded(unconverted),
            "cvr": lambda: _ratio(conversions, clicks),
            "cpa": lambda: _ratio(spend, conversions), "roas": lambda: _ratio(value, spend),
        }
        return {m: known[m]() for m in (only or self.q.metrics)}

    def _order(self, raw: dict[tuple, tuple]) -> list[tuple]:
        keys = sorted(raw)  # dimensions ascending
        if self.q.order_by:
            name, descending = self.q.order_by
            if name in self.q.dimensions:
                i = self.q.dimensions.index(name)
                keys.sort(key=lambda k: k[i], reverse=descending)
            else:
                value = {k: self._metrics(*raw[k], only=(name,))[name] for k in keys}
                present = [k for k in keys if value[k] is not None]
                present.sort(key=value.__getitem__, reverse=descending)
                keys = present + [k for k in keys if value[k] is None]  # rows without a value go last
        return keys

    def _build_in_clickhouse(self) -> dict:
        union, params = self._union_sql()
        dims = [f"d{i}" for i in range(len(self.q.dimensions))]
        group = f"GROUP BY {', '.join(dims)}" if dims else ""
        sums = "sum(c) AS c, sum(v) AS v, sum(u) AS u, sum(k) AS k, sum(i) AS i, sum(s) AS s, sum(ci) AS ci"
        grouped = f"SELECT {''.join(d + ', ' for d in dims)}{sums} FROM ({union}) {group}"
        order = [f"{d} ASC" for d in dims]
        if self.q.order_by:
            name, descending = self.q.order_by
            column = dims[self.q.dimensions.index(name)] if name in self.q.dimensions else _SUM_OF[name]
            order.insert(0, f"{column} {'DESC' if descending else 'ASC'}")
        first = (self.q.page - 1) * self.q.page_size
        order_sql = f"ORDER BY {', '.join(order)}" if order else ""
        page = self.ch.execute(f"{grouped} {order_sql} LIMIT {first}, {self.q.page_size}", params)
        count, c, v, u, k, i, s, ci = self.ch.execute(
            f"SELECT count(), sum(c), sum(v), sum(u), sum(k), sum(i), sum(s), sum(ci) FROM ({grouped})", params)[0]
        width = len(dims)
        rows = [{**dict(zip(self.q.dimensions, r[:width])),
                 **self._metrics(r[width:width + 3], r[width + 3:width + 5], r[width + 5:width + 7])}
                for r in page]
        totals = self._metrics((c or 0.0, v or 0.0, u or 0.0), (k or 0, i or 0), (s or 0.0, ci or 0.0))
        return {"rows": rows, "totals": totals,
                "page": {"page": self.q.page, "page_size": self.q.page_size, "total_rows": count},
                "query": self.q.echo(self.settings["currency"])}

    def _union_sql(self) -> tuple[str, dict]:
        """Conversions, touches and spend as rows of (d0.., c, v, u, k, i, s, ci), one SELECT each."""
        dims = self.q.dimensions
        zero_f, zero_u = "toFloat64(0)", "toUInt64(0)"
        # Each source is summed by the report's keys first: the union then joins few rows.
        conversions, params = self._valued_sql()
        aliases = [f"d{i}" for i in range(len(dims))]
        group = f"GROUP BY {', '.join(aliases)}" if aliases else ""
        parts = [f"""SELECT {''.join(a + ', ' for a in aliases)}c, v, u, {zero_u} AS k, {zero_u} AS i, {zero_f} AS s,
              {zero_f} AS ci FROM ({conversions})"""]
        if self.q.needs_touches:
            ad_filters, _ = self._filter_sql(rq.AD_DIMENSIONS)
            parts.append(f"""SELECT {self._select("touch_minute", dims)[0]}{zero_f}, {zero_f}, {zero_f},
                  sumIf(touches, kind = 'click'), sumIf(touches, kind = 'impression'), {zero_f}, {zero_f}
                FROM {self.db}.touch_stats WHERE advertiser_id = %(adv)s AND touch_minute >= toDateTime(%(lo)s)
                  AND touch_minute < toDateTime(%(hi)s) {ad_filters} {group}""")
            day_dims = "".join(f"{'toString(day)' if d == 'stat_time_day' else d} AS d{n}, "
                               for n, d in enumerate(dims))
            params.update(first=self.q.start, last=self.q.end)
            parts.append(f"""SELECT {day_dims}{zero_f}, {zero_f}, {zero_f}, {zero_u}, {zero_u}, sum(spend),
                  toFloat64(sum(impressions))
                FROM {self.db}.costs WHERE advertiser_id = %(adv)s AND day >= %(first)s AND day <= %(last)s {ad_filters}
                  AND (day, version) IN (SELECT day, max(version) FROM {self.db}.costs
                                         WHERE advertiser_id = %(adv)s AND day >= %(first)s AND day <= %(last)s
                                         GROUP BY day) {group}""")
        return " UNION ALL ".join(parts), params

    # ---- conversions --------------------------------------------------------------------------

    def _time_sql(self, column: str) -> str:
        # %% because the driver substitutes parameters with Python's % operator.
        fmt = "%%Y-%%m-%%d" if self.time_dim == "stat_time_day" else "%%Y-%%m-%%d %%H:00"
        return f"formatDateTime({column}, '{fmt}', '{self.q.timezone}')"  # the zone is a checked IANA name

    def _filter_sql(self, available: tuple[str, ...]) -> tuple[str, dict]:
        sql, params = "", {}
        for dim, values in self.q.filters.items():
            if dim in available:
                sql += f" AND {dim} IN %(f_{dim})s"
                params[f"f_{dim}"] = tuple(values)
        return sql, params

    def _select(self, time_column: str, dims: tuple[str, ...]) -> tuple[str, list[str]]:
        """SELECT expressions for the dimensions (aliased d0, d1, ...) and the aliases to group by."""
        aliases = [f"d{i}" for i in range(len(dims))]
        parts = [f"{self._time_sql(time_column) if d in rq.TIME_DIMENSIONS else d} AS {a}"
                 for d, a in zip(dims, aliases)]
        return "".join(p + ", " for p in parts), aliases

    def _conversions(self) -> dict[tuple, tuple[float, float, float]]:
        """(conversions, value in the advertiser's currency, conversions without a rate) per key."""
        if self.q.custom_windows:
            return self._recomputed_in_clickhouse()
        kept = self._kept_conversions()
        if not self.q.include_bots:
            return kept
        # Bots' conversions are credited to nothing in the kept sums; their credits are computed
        # here from their stored candidates, with the advertiser's windows and the report's model.
        for key, (count, value, unconverted) in self._recomputed_in_clickhouse(bots_only=True).items():
            was = kept.get(key, (0.0, 0.0, 0.0))
            kept[key] = (was[0] + count, was[1] + value, was[2] + unconverted)
        return kept

    def _kept_conversions(self) -> dict[tuple, tuple[float, float, float]]:
        sql, params = self._valued_sql()
        rows = self.ch.execute(sql, params)
        dims = self.q.dimensions
        return {tuple(r[:-3]) if dims else (): tuple(r[-3:]) for r in rows if dims or any(r[-3:])}

    def _valued_sql(self) -> tuple[str, dict]:
        """The kept conversion sums by the report's keys (d0..) as (c, v, u): see reporting/money.py."""
        column = "touch_minute" if self.q.date_basis == "touch" else "conversion_minute"
        filters, params = self._filter_sql(rq.AD_DIMENSIONS + ("event",))
        params.update(adv=self.adv, model=self.q.model, lo=self.lo, hi=self.hi, **money.params(self.adv, self.settings))
        select, aliases = self._select(column, self.q.dimensions)
        inner = f"""
            SELECT {select}currency, {money.day_sql("conversion_minute")} AS day, sum(conversions) AS cs,
                   sum(conversion_value) AS vs
            FROM {self.db}.conversion_stats
            WHERE advertiser_id = %(adv)s AND model = %(model)s
              AND {column} >= toDateTime(%(lo)s) AND {column} < toDateTime(%(hi)s) {filters}
            GROUP BY {''.join(a + ', ' for a in aliases)}currency, day"""
        return money.valued_sql(inner, aliases, self.db), params

    def _candidates_sql(self) -> tuple[str, dict]:
        """Each conversion's latest revision: its fields, suppression reason and candidate touches.

        Candidates are joined to the current credits row by (revision, content hash), never by
        revision alone: an attributor that died between its two inserts left candidates of a
        revision it never credited, and when the re-run's result differs (a touchpoint arrived or
        changed, the windows changed) the same revision number holds two sets of candidates.
        Only the set with the hash the credits carry is the result; the orphan is ignored by
        construction, at no cost to the attributor (see ``attribution.engine.Attributor._insert``).
        """
        # A conversion credited to a touch inside the report may come up to the longest window later.
        later = models.MAX_CLICK_WINDOW_MS // 1000 if self.q.date_basis == "touch" else 0
        sql = f"""
            SELECT c.conversion_ms AS conversion_ms, c.value AS value, c.currency AS currency, c.event AS event,
                   c.device_type AS device_type, c.os AS os, c.browser AS browser, c.utm_source AS utm_source,
                   c.utm_campaign AS utm_campaign, c.country AS country, c.region AS region, s.reason AS reason,
                   c.touches AS touches
            FROM (
              SELECT pixel_id, event, event_id, revision, content_hash, any(conversion_ms) AS conversion_ms,
                     any(value) AS value, any(currency) AS currency, any(device_type) AS device_type, any(os) AS os,
                     any(browser) AS browser, any(utm_source) AS utm_source, any(utm_campaign) AS utm_campaign,
                     any(country) AS country, any(region) AS region,
                     groupArray((touch_kind, touch_id, touch_ms, campaign_id, adgroup_id, ad_id, matched_by)) AS touches
              FROM (SELECT DISTINCT pixel_id, event, event_id, revision, content_hash, conversion_ms, value, currency,
                                    device_type, os, browser, utm_source, utm_campaign, country, region, touch_kind,
                                    touch_id, touch_ms, campaign_id, adgroup_id, ad_id, matched_by
                    FROM {self.db}.attribution_candidates
                    WHERE advertiser_id = %(adv)s AND conversion_time >= toDateTime(%(lo)s)
                      AND conversion_time < toDateTime(%(hi)s))
              GROUP BY pixel_id, event, event_id, revision, content_hash
            ) AS c
            ANY INNER JOIN (
              SELECT pixel_id, event, event_id, max(r) AS revision, argMax(h, r) AS content_hash,
                     argMax(matched_by, r) AS reason
              FROM (SELECT pixel_id, event, event_id, revision AS r, content_hash AS h, matched_by
                    FROM {self.db}.credits
                    WHERE advertiser_id = %(adv)s AND sign = 1 AND conversion_time >= toDateTime(%(lo)s)
                      AND conversion_time < toDateTime(%(hi)s))
              GROUP BY pixel_id, event, event_id
            ) AS s USING (pixel_id, event, event_id, revision, content_hash)"""
        return sql, {"adv": self.adv, "lo": self.lo, "hi": self.hi + later}

    def _recomputed_in_clickhouse(self, bots_only: bool = False) -> dict[tuple, tuple[float, float, float]]:
        """The rules of attribution.models in array functions, over every conversion's candidates.

        Tested equal to attribution.models run on the same candidates, without moving every
        conversion into Python: windows, strongest identity level, click beats view, order by
        (time, touch id), then the model's credits. Bots' conversions take part with
        include_bots=true (``bots_only``: theirs alone).
        """
        inner, params = self._candidates_sql()
        click_ms, view_ms = self.q.click_window * models.DAY_MS, self.q.view_window * models.DAY_MS
        at = "tupleElement(touch, 3)" if self.q.date_basis == "touch" else "conversion_ms"
        bucket = self._time_sql(f"toDateTime(intDiv({at}, 1000))")
        by_dim = {"stat_time_day": bucket, "stat_time_hour": bucket, "campaign_id": "tupleElement(touch, 4)",
                  "adgroup_id": "tupleElement(touch, 5)", "ad_id": "tupleElement(touch, 6)"}
        dims = [f"{by_dim.get(d, d)} AS d{i}" for i, d in enumerate(self.q.dimensions)]
        filters = "".join(f" AND {by_dim.get(d, d)} IN %(f_{d})s" for d in self.q.filters)
        params.update({f"f_{d}": tuple(v) for d, v in self.q.filters.items()}, lo_ms=self.lo * 1000,
                      hi_ms=self.hi * 1000, suppressed=tuple(r for r in _SUPPRESSED
                                                             if not (self.q.include_bots and r == _BOT)),
                      bot=_BOT, **money.params(self.adv, self.settings))
        counted = "reason = %(bot)s" if bots_only else "reason NOT IN %(suppressed)s"
        keys = [f"d{i}" for i in range(len(dims))]
        day = money.day_sql("toDateTime(intDiv(conversion_ms, 1000))")
        credited = f"""
            SELECT {''.join(d + ', ' for d in dims)}{money.currency_sql("value", "currency")} AS currency,
                   {day} AS day, sum(credit) AS cs, sum(credit * value) AS vs,
                   -- 18.16 prunes a column only lambdas use from subqueries: name it out here
                   max(conversion_ms) FROM (
              SELECT *, {_credits_sql(self.q.model)} AS credits FROM (
                SELECT *, arraySort(t -> (tupleElement(t, 3), tupleElement(t, 2)),
                                    if(notEmpty(clicks), clicks, arrayFilter(t -> tupleElement(t, 1) != 'click', level)))
                            AS chosen
                FROM (
                  SELECT *, arrayFilter(t -> tupleElement(t, 1) = 'click', level) AS clicks FROM (
                    -- The inner lambda needs its own name: 18.16 binds a nested lambda's parameter of
                    -- the same name to the outer element, which pooled every level together.
                    SELECT *, arrayFilter(t -> tupleElement(t, 8) = arrayReduce('min', arrayMap(u -> tupleElement(u, 8),
                                          inside)), inside) AS level
                    FROM (
                      SELECT conversion_ms, value, currency, event, device_type, os, browser, utm_source,
                             utm_campaign, country, region, arrayFilter(t -> tupleElement(t, 1) != ''
                                              AND {_age('t')} >= 0
                                              AND {_window_sql(click_ms, view_ms)},
                                         arrayMap(t -> (tupleElement(t, 1), tupleElement(t, 2), tupleElement(t, 3),
                                                        tupleElement(t, 4), tupleElement(t, 5), tupleElement(t, 6),
                                                        tupleElement(t, 7),
                                                        multiIf(tupleElement(t, 7) = 'click_id', 0,
                                                                tupleElement(t, 7) = 'browser_id', 1, 2)),
                                                  touches)) AS inside
                      FROM ({inner}) WHERE {counted}))))
            ) ARRAY JOIN chosen AS touch, credits AS credit
            WHERE {at} >= %(lo_ms)s AND {at} < %(hi_ms)s AND credit != 0 {filters}
            GROUP BY {''.join(k + ', ' for k in keys)}currency, day"""
        rows = self.ch.execute(money.valued_sql(credited, keys, self.db), params)
        return {tuple(r[:-3]): tuple(r[-3:]) for r in rows}

    def _bucket(self, ms: int) -> str:
        local = datetime.fromtimestamp(ms / 1000, self.q.zone)
        return local.strftime("%Y-%m-%d" if self.time_dim == "stat_time_day" else "%Y-%m-%d %H:00")

    # ---- clicks, impressions, spend ---------------------------------------------------------

    def _touches(self) -> dict[tuple, tuple[int, int]]:
        dims = self.touch_dims
        filters, params = self._filter_sql(rq.AD_DIMENSIONS)
        select, aliases = self._select("touch_minute", dims)
        # Bots' clicks are kept apart, in bot_touch_stats (same columns).
        table = (f"(SELECT * FROM {self.db}.touch_stats UNION ALL SELECT * FROM {self.db}.bot_touch_stats)"
                 if self.q.include_bots else f"{self.db}.touch_stats")
        rows = self.ch.execute(
            f"""
            SELECT {select}kind, sum(touches) FROM {table}
            WHERE advertiser_id = %(adv)s AND touch_minute >= toDateTime(%(lo)s)
              AND touch_minute < toDateTime(%(hi)s) {filters}
            GROUP BY {''.join(a + ', ' for a in aliases)}kind""",
            {"adv": self.adv, "lo": self.lo, "hi": self.hi, **params},
        )
        out: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
        for *key, kind, count in rows:
            out[tuple(key) if dims else ()][0 if kind == "click" else 1] += count
        return {k: (v[0], v[1]) for k, v in out.items()}

    def _spend(self) -> dict[tuple, tuple[float, float]]:
        """Spend and reported impressions per touch-dimension key, from the latest posting of each day."""
        from zoneinfo import ZoneInfo

        cost_zone = ZoneInfo(self.settings["timezone"])
        # Days before 1970 (1970-01-01 west of UTC) are outside ClickHouse's Date, and hold nothing.
        first = max(datetime.fromtimestamp(self.lo, cost_zone).date(), FIRST_DAY)
        last = max(datetime.fromtimestamp(max(self.hi - 1, 0), cost_zone).date(), FIRST_DAY)
        filters, params = self._filter_sql(rq.AD_DIMENSIONS)
        # Summed per day and the ad dimensions asked for in ClickHouse: Python then only splits days.
        # A posting holds one row per ad and day (checked on import), so the latest version of a
        # day sums without duplicates.
        ids = [d for d in self.touch_dims if d in rq.AD_DIMENSIONS]
        rows = self.ch.execute(
            f"""
            SELECT day, {''.join(i + ', ' for i in ids)}sum(spend), sum(impressions) FROM {self.db}.costs
            WHERE advertiser_id = %(adv)s AND day >= %(first)s AND day <= %(last)s {filters}
              AND (day, version) IN (SELECT day, max(version) FROM {self.db}.costs
                                     WHERE advertiser_id = %(adv)s AND day >= %(first)s AND day <= %(last)s
                                     GROUP BY day)
            GROUP BY day{''.join(', ' + i for i in ids)}""",
            {"adv": self.adv, "first": first, "last": last, **params},
        )
        out: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0.0])
        parts: dict[date, list[tuple[str, float]]] = {}
        for day, *id_values, spend, impressions in rows:
            if day not in parts:
                parts[day] = [(self._bucket(at_s * 1000) if self.time_dim else "", share)
                              for at_s, share in self._day_parts(day, cost_zone) if self.lo <= at_s < self.hi]
            values = dict(zip(ids, id_values))
            for bucket, share in parts[day]:
                key = tuple(bucket if d in rq.TIME_DIMENSIONS else values[d] for d in self.touch_dims)
                cell = out[key]
                cell[0] += spend * share
                cell[1] += impressions * share
        return {k: (v[0], v[1]) for k, v in out.items()}

    def _day_parts(self, day: date, zone) -> list[tuple[int, float]]:
        """The day as (start of each hour in unix seconds, share of the day), or whole when that is exact."""
        start = int(datetime(day.year, day.month, day.day, tzinfo=zone).timestamp())
        end = int(datetime.combine(day + timedelta(days=1), datetime.min.time(), zone).timestamp())
        if self.time_dim != "stat_time_hour" and zone.key == self.q.timezone:
            return [(start, 1.0)]
        hours = list(range(start, end, 3600))
        return [(h, 1.0 / len(hours)) for h in hours]


def _age(t: str) -> str:
    return f"(toInt64(conversion_ms) - toInt64(tupleElement({t}, 3)))"


def _window_sql(click_ms: int, view_ms: int) -> str:
    """models.Windows.contains for the touch ``t`` of an age already known not to be negative.

    A view window of 0 is off: no impression, not even one at the conversion's own millisecond.
    """
    if not view_ms:
        return f"tupleElement(t, 1) = 'click' AND {_age('t')} <= {click_ms}"
    return f"{_age('t')} <= if(tupleElement(t, 1) = 'click', {click_ms}, {view_ms})"


def _credits_sql(model: str) -> str:
    """attribution.models.credits as an array expression over ``chosen`` (time-ordered)."""
    n = "length(chosen)"
    each = "arrayEnumerate(chosen)"
    if model == "last_click":
        return f"arrayMap(i -> if(i = {n}, 1., 0.), {each})"
    if model == "first_click":
        return f"arrayMap(i -> if(i = 1, 1., 0.), {each})"
    if model == "linear":
        return f"arrayMap(i -> 1. / {n}, {each})"
    if model == "time_decay":
        weights = f"arrayMap(t -> pow(2., -{_age('t')} / {models.TIME_DECAY_HALF_LIFE_MS}), chosen)"
        return f"arrayMap(w -> w / arraySum({weights}), {weights})"
    if model == "position_based":
        return (f"arrayMap(i -> multiIf({n} = 1, 1., {n} = 2, 0.5, i = 1 OR i = {n}, 0.4, 0.2 / ({n} - 2)), "
                f"{each})")
    raise ValueError(f"unknown model {model!r}")


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6) + 0.0  # + 0.0: never -0.0


def _ratio(numerator: float | None, denominator: float | None, scale: int = 1) -> float | None:
    """numerator / denominator * scale; null when either is unknown, the denominator is 0 or
    the quotient overflows."""
    if numerator is None or not denominator:
        return None
    return finite_or_none(round(numerator / denominator * scale, 6))


def _sum_values(values, width: int) -> tuple:
    sums = [0.0] * width
    for v in values:
        for i in range(width):
            sums[i] += v[i]
    return tuple(sums)


def _sum_touches(values) -> tuple[int, int]:
    clicks = impressions = 0
    for c, i in values:
        clicks += c
        impressions += i
    return clicks, impressions


def csv_text(query: rq.ReportQuery, rows: list[dict], currency: str) -> str:
    """A report's rows as CSV (money to the currency's minor unit), as the API and scheduled reports send it."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    columns = list(query.dimensions) + list(query.metrics)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([report_cell(row[c], c, currency) for c in columns])
    return out.getvalue()


def _csv(query: rq.ReportQuery, rows: list[dict], currency: str) -> Response:
    name = f"clicktrail-report-{query.start.isoformat()}-{query.end.isoformat()}.csv"
    return Response(csv_text(query, rows, currency), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
