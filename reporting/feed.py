"""``GET /v1/optimizer/conversions``: conversion counts per ad and time bucket, for oCPC optimizers.

Served from kept state, never from raw events: conversion sums (``conversion_stats``), distinct
clicks and impressions (``touch_stats``), and a log of what changed when (``feed_changes``),
all filled by materialized views as the attributor and the imports write.

Cursors are write stamps of the attributor. It publishes a watermark (``keys.FEED_WATERMARK``)
only after everything stamped up to it is stored, so a poll that reads the changes stamped in
(cursor, watermark] never misses one and never needs a safety lag. A poll with the cursor at
the watermark costs one Redis read.

With several partitions of advertisers (``CLICKTRAIL_ATTRIBUTION_PARTITIONS``), each partition
has one writer at a time, its own sequence of stamps and its own watermark
(``keys.feed_watermark(n)``); an advertiser's changes are all stamped in its partition's
sequence, so its polls read its partition's watermark. A partition that is idle never holds
back another's (which a minimum over all watermarks would).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import orjson
import redis
from flask import Blueprint, g, jsonify, request

from attribution.engine import FEED_RETENTION_DAYS
from clicktrail import keys
from clicktrail.errors import BadRequest, BufferUnavailable
from clicktrail.timestamps import utc_iso
from pixel import records
from pixel.registry import settings_of
from reporting.auth import require
from reporting.context import api_services
from reporting import money
from reporting.delay_estimates import Estimator
from reporting.finite_json import finite_or_none
from reporting.params import choice, digits, listed, whole

bp = Blueprint("feed", __name__)

LEVELS = {"campaign": ("campaign_id",), "adgroup": ("campaign_id", "adgroup_id"),
          "ad": ("campaign_id", "adgroup_id", "ad_id")}
BUCKETS = {"minute": 60, "hour": 3600}
#: Without a cursor the feed starts this far back.
FEED_DAYS = 7
DEFAULT_LIMIT = 10_000
MAX_LIMIT = 50_000
MAX_EVENTS = 20
#: Answers up to this many rows are kept for other pollers at the same cursor and watermark.
CACHED_ROWS = 2_000


@dataclass(frozen=True)
class FeedQuery:
    events: tuple[str, ...]
    level: str
    bucket: str
    cursor: int | None
    limit: int
    estimate: bool = False

    @classmethod
    def from_args(cls, args) -> FeedQuery:
        events = tuple(dict.fromkeys(listed(args, "event")))
        if not events:
            raise BadRequest("name at least one event, e.g. event=CompletePayment (repeat or comma-separate "
                             "for several)", field="event", code="missing_field")
        if len(events) > MAX_EVENTS:
            raise BadRequest(f"at most {MAX_EVENTS} events per request", field="event", code="invalid_field")
        level = choice(args, "level", tuple(LEVELS), "ad")
        bucket = choice(args, "bucket", tuple(BUCKETS), "hour")
        return cls(events, level, bucket, _cursor(args.get("cursor")),
                   whole(args, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
                   choice(args, "estimate", ("true", "false"), "false") == "true")


def _cursor(text: str | None) -> int | None:
    if text in (None, ""):
        return None
    value = digits(text)
    if value is None:
        raise BadRequest("must be a next_cursor this feed returned (ASCII digits)", field="cursor",
                         code="invalid_field")
    return value


class _Flight(threading.Event):
    """One answer being built; threads asking for the same one wait for it instead of querying."""

    body: dict | None = None


class _Responses:
    """Answers already built, by everything that decides them (the watermark included, so an
    answer never goes stale): many pollers at the same cursor cost one set of queries, also when
    they all ask at once right after the watermark moved."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self.items: OrderedDict = OrderedDict()
        self.flights: dict = {}
        self.lock = threading.Lock()

    def get(self, key, build) -> dict:
        with self.lock:
            found = self.items.get(key)
            if found is not None:
                self.items.move_to_end(key)
                return found
            flight = self.flights.get(key)
            leader = flight is None
            if leader:
                flight = self.flights[key] = _Flight()
        if not leader:
            flight.wait(60)
            return flight.body if flight.body is not None else build()
        try:
            flight.body = build()
            if len(flight.body["rows"]) <= CACHED_ROWS:  # steady polls are small; a first poll's week is not kept
                with self.lock:
                    self.items[key] = flight.body
                    if len(self.items) > self.size:
                        self.items.popitem(last=False)
            return flight.body
        finally:
            with self.lock:
                self.flights.pop(key, None)
            flight.set()


_answers = _Responses()


@bp.get("/v1/optimizer/conversions")
@require("optimizer")
def optimizer_conversions():
    query = FeedQuery.from_args(request.args)
    svc = api_services()
    advertiser = g.caller.advertiser_id
    # One round trip: the watermark, the advertiser's settings and its latest exchange-rate posting
    # (an up-to-date poll needs no more).
    pipe = svc.redis.pipeline(transaction=False)
    pipe.get(keys.feed_watermark(records.notice_partition(advertiser, svc.settings.attributor.partitions)))
    pipe.hget(keys.ADVERTISERS, advertiser)
    pipe.hget(keys.EXCHANGE_RATES_VERSION, advertiser)
    if query.estimate:
        pipe.hmget(keys.delay_curves(advertiser), list(query.events))
    try:
        raw_watermark, raw_advertiser, rates_version, *raw_curves = pipe.execute()
    except redis.RedisError as exc:
        raise BufferUnavailable("the feed's state is unavailable; retry later") from exc
    watermark = int(raw_watermark or 0)
    settings = settings_of(orjson.loads(raw_advertiser) if raw_advertiser else None)
    # Values are converted when read, so an answer kept from before a rate posting is stale.
    key = (advertiser, query, watermark, orjson.dumps(settings, option=orjson.OPT_SORT_KEYS), rates_version)
    estimator = None
    if query.estimate:
        estimator = Estimator.from_raw(query.events, raw_curves[0], settings, time.time())
        key += estimator.cache_key()  # ages move with the clock: the answer is kept a minute at most
    ch = svc.clickhouse.get()
    body = _answers.get(key, lambda: Feed(ch, svc.database, advertiser, settings, query,
                                          svc.settings.limits.max_event_age_s, estimator).read(watermark))
    return jsonify(body)


class Feed:
    def __init__(self, ch, db: str, advertiser_id: str, settings: dict, query: FeedQuery,
                 late_s: int = 7 * 86_400, estimator: Estimator | None = None) -> None:
        self.ch = ch
        self.db = db
        self.advertiser = advertiser_id
        self.settings = settings
        self.q = query
        self.levels = LEVELS[query.level]
        self.size = BUCKETS[query.bucket]
        self.late_s = late_s  # how old an event may arrive (MAX_EVENT_AGE_S)
        self.estimator = estimator

    def read(self, watermark: int) -> dict:
        since_s = None
        cursor = self.q.cursor
        if cursor is None:
            # A first poll: every bucket of the last FEED_DAYS days (their changes are all later).
            since_s = (int(time.time()) - FEED_DAYS * 86_400) // self.size * self.size
            cursor = since_s * 1000
        elif cursor < (time.time() - FEED_RETENTION_DAYS * 86_400) * 1000:
            raise BadRequest(f"is older than {FEED_RETENTION_DAYS} days, whose changes are no longer kept; poll "
                             "without a cursor to start again", field="cursor", code="cursor_expired")
        rows, upto, more = [], max(cursor, watermark), False
        if cursor < watermark:
            changed = self._changes(cursor, watermark, since_s)
            changed, upto, more = self._page(changed, watermark)
            rows = self._rows(changed)
        body = {"rows": rows, "currency": self.settings["currency"], "next_cursor": str(upto), "has_more": more,
                "complete_through": self._complete_through(upto),
                "attribution": {"model": self.settings["model"],
                                "click_window_days": self.settings["click_window_days"],
                                "view_window_days": self.settings["view_window_days"],
                                "counting": self.settings["counting"]}}
        if self.estimator is not None:
            body["estimates"] = self.estimator.describe(self.q.events)
        return body

    def _bucket_sql(self) -> str:
        return "toUInt32(touch_minute)" if self.q.bucket == "minute" else "toUInt32(toStartOfHour(touch_minute))"

    def _changes(self, cursor: int, watermark: int, since_s: int | None) -> dict[tuple, int]:
        """(bucket, level ids..., event) -> stamp of its latest change; event '' = clicks or views."""
        lv = ", ".join(self.levels)
        since = "AND touch_minute >= toDateTime(%(since)s)" if since_s is not None else ""
        rows = self.ch.execute(
            f"""
            SELECT {self._bucket_sql()} AS b, {lv}, event, max(written_ms) FROM {self.db}.feed_changes
            WHERE advertiser_id = %(adv)s AND written_ms > %(cursor)s AND written_ms <= %(watermark)s
              AND ((model = %(model)s AND event IN %(events)s) OR model = '') {since}
            GROUP BY b, {lv}, event""",
            {"adv": self.advertiser, "cursor": cursor, "watermark": watermark, "model": self.settings["model"],
             "events": tuple(self.q.events), "since": since_s or 0},
        )
        touched: dict[tuple, int] = {}
        by_event: dict[tuple, int] = {}
        for *head, event, stamp in rows:
            if event == "":
                touched[tuple(head)] = stamp
            else:
                by_event[(*head, event)] = stamp
        # New clicks or views change that bucket's row of every event asked for.
        for head, stamp in touched.items():
            for event in self.q.events:
                by_event[(*head, event)] = max(stamp, by_event.get((*head, event), 0))
        return by_event

    def _page(self, changed: dict[tuple, int], watermark: int) -> tuple[dict[tuple, int], int, bool]:
        """At most about ``limit`` rows: the oldest changes first; the rest in the next poll."""
        if len(changed) <= self.q.limit:
            return changed, watermark, False
        stamps = sorted(changed.values())
        cut = stamps[self.q.limit - 1]
        if cut == stamps[-1]:  # one tick's changes share a stamp: they are never split
            return changed, watermark, False
        return {k: s for k, s in changed.items() if s <= cut}, cut, True

    def _rows(self, changed: dict[tuple, int]) -> list[dict]:
        if not changed:
            return []
        heads = {k[:-1] for k in changed}
        conversions = self._conversion_sums(heads)
        touches = self._touch_counts(heads)
        rows = []
        for key in sorted(changed):
            head, event = key[:-1], key[-1]
            count, value, unconverted = conversions.get(key, (0.0, 0.0, 0.0))
            row = {"bucket_start": utc_iso(head[0] * 1000, "seconds")}
            row.update(zip(self.levels, head[1:]))
            row.update(event=event, clicks=touches.get((*head, "click"), 0),
                       impressions=touches.get((*head, "impression"), 0),
                       conversions=round(count, 6) + 0.0,
                       # null for a sum beyond the largest double, never Infinity (docs/attribution.md)
                       conversion_value=finite_or_none(round(value, 6) + 0.0),
                       unconverted_conversions=round(unconverted, 6) + 0.0,
                       revision=changed[key])
            if self.estimator is not None:
                row.update(self.estimator.fields(event, head[0], self.size, row["conversions"]))
            rows.append(row)
        return rows

    def _filter_sql(self, heads: set[tuple]) -> tuple[str, dict]:
        # Flat IN per column narrows the scan (18.16 evaluates tuple IN slowly); exact tuples are
        # then picked in Python.
        buckets = sorted({h[0] for h in heads})
        params = {"adv": self.advertiser, "lo": buckets[0], "hi": buckets[-1] + self.size, "buckets": tuple(buckets)}
        sql = (f"advertiser_id = %(adv)s AND touch_minute >= toDateTime(%(lo)s) AND touch_minute < toDateTime(%(hi)s)"
               f" AND {self._bucket_sql()} IN %(buckets)s")
        for i, name in enumerate(self.levels, start=1):
            params[name] = tuple(sorted({h[i] for h in heads}))
            sql += f" AND {name} IN %({name})s"
        return sql, params

    def _conversion_sums(self, heads: set[tuple]) -> dict[tuple, tuple[float, float, float]]:
        """(conversions, value in the advertiser's currency, conversions without a rate) per row key."""
        where, params = self._filter_sql(heads)
        lv = ", ".join(self.levels)
        inner = f"""
            SELECT {self._bucket_sql()} AS b, {lv}, event, currency, {money.day_sql("conversion_minute")} AS day,
                   sum(conversions) AS cs, sum(conversion_value) AS vs
            FROM {self.db}.conversion_stats
            WHERE {where} AND model = %(model)s AND event IN %(events)s
            GROUP BY b, {lv}, event, currency, day"""
        rows = self.ch.execute(
            money.valued_sql(inner, ["b", *self.levels, "event"], self.db),
            {**params, **money.params(self.advertiser, self.settings), "model": self.settings["model"],
             "events": tuple(self.q.events)},
        )
        return {tuple(r[:-3]): tuple(r[-3:]) for r in rows if tuple(r[:-4]) in heads}

    def _touch_counts(self, heads: set[tuple]) -> dict[tuple, int]:
        where, params = self._filter_sql(heads)
        lv = ", ".join(self.levels)
        rows = self.ch.execute(
            f"""
            SELECT {self._bucket_sql()} AS b, {lv}, kind, sum(touches) FROM {self.db}.touch_stats
            WHERE {where} GROUP BY b, {lv}, kind""",
            params,
        )
        return {tuple(r[:-1]): r[-1] for r in rows if tuple(r[:-2]) in heads}

    def _complete_through(self, upto_ms: int) -> str:
        """Buckets starting before this are final: no click window or late event can reach them.

        A conversion may be credited to a click up to the click window before it, and events are
        accepted up to MAX_EVENT_AGE after they happened, so a bucket can change until both have passed.
        """
        late_s = self.late_s
        window_s = max(self.settings["click_window_days"], self.settings["view_window_days"]) * 86_400
        final = (upto_ms // 1000 if upto_ms else int(time.time())) - window_s - late_s
        return utc_iso(final // self.size * self.size * 1000, "seconds")
