"""The attributor: ties stored conversions to the touchpoints that earned them, in short ticks.

Each tick reads what the sink and imports reported (new conversions, new touchpoints), gathers
the affected conversions and their candidate touchpoints with a handful of set-based queries,
applies the rules of ``attribution.models`` in memory, and writes a new revision for every
conversion whose result changed, then acknowledges the notices. Re-running a tick (after a
crash at any point) recomputes the same results: unchanged ones are not written again, and a
revision written twice is the same rows, folded by the table engine.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time

import orjson
import redis
from clickhouse_driver import Client

from attribution import models, store
from clicktrail import keys
from clicktrail.backoff import Backoff
from clicktrail.clickhouse import NETWORK_ERRORS
from clicktrail.lifecycle import StopFlag
from clicktrail.schema import ATTRIBUTION_COLUMN_NAMES, CANDIDATE_COLUMN_NAMES
from pixel.registry import DEFAULT_SETTINGS, get_advertiser
from sink.rows import columns

log = logging.getLogger("clicktrail.attributor")


def _candidates(conv: store.Conversion, touches_by_adv: dict, browser_clicks: dict) -> list[models.Touch]:
    """Every touchpoint tied to the conversion within the longest windows, with how it was tied."""
    seen_clicks = {click for click, first_ms in browser_clicks.get((conv.advertiser_id, conv.browser_id), [])
                   if first_ms <= conv.conversion_ms}
    found: list[models.Touch] = []
    for t in touches_by_adv.get(conv.advertiser_id, ()):
        if t.kind == "click" and conv.click_id and t.touch_id == conv.click_id:
            matched = "click_id"
        elif (t.kind == "click" and t.touch_id in seen_clicks) or (conv.browser_id and t.browser_id == conv.browser_id):
            matched = "browser_id"
        elif conv.external_id and t.external_id == conv.external_id:
            matched = "external_id"
        elif conv.email and t.email == conv.email:
            matched = "email"
        elif conv.phone and t.phone == conv.phone:
            matched = "phone"
        else:
            continue
        candidate = t.as_candidate(matched)
        if models.in_longest_windows(candidate, conv.conversion_ms):
            found.append(candidate)
    return sorted(found, key=lambda c: (c.order_key, c.level))


def _settings_of(r: redis.Redis, advertiser_id: str, cache: dict) -> models.Windows:
    if advertiser_id not in cache:
        record = get_advertiser(r, advertiser_id)
        settings = {**DEFAULT_SETTINGS, **(record or {}).get("settings", {})}
        cache[advertiser_id] = models.Windows(settings["click_window_days"], settings["view_window_days"])
    return cache[advertiser_id]


class Result:
    """One conversion's attribution: its candidates and, per model, the credited touchpoints."""

    def __init__(self, conv: store.Conversion, candidates: list[models.Touch], windows: models.Windows) -> None:
        self.conv = conv
        self.candidates = candidates
        self.windows = windows
        chosen = models.eligible(candidates, conv.conversion_ms, windows)
        self.credited = {m: list(zip(chosen, models.credits(m, chosen, conv.conversion_ms))) for m in models.MODELS}

    def content_hash(self) -> int:
        basis = orjson.dumps([
            [(c.kind, c.touch_id, c.touch_ms, c.campaign_id, c.adgroup_id, c.ad_id, c.matched_by)
             for c in self.candidates],
            {m: [(t.touch_id, round(credit, 12)) for t, credit in rows] for m, rows in self.credited.items()},
            [self.windows.click_days, self.windows.view_days, self.conv.value, self.conv.currency],
        ])
        return int.from_bytes(hashlib.blake2b(basis, digest_size=8).digest(), "big")

    def _conversion_part(self, revision: int, content_hash: int, now_ms: int) -> tuple:
        c = self.conv
        return (c.advertiser_id, c.pixel_id, c.event, c.event_id, c.conversion_ms // 1000, c.conversion_ms,
                c.value, c.currency, c.device_type, c.os, c.browser, c.utm_source, c.utm_campaign,
                revision, content_hash, now_ms)

    def candidate_rows(self, revision: int, content_hash: int, now_ms: int) -> list[tuple]:
        head = self._conversion_part(revision, content_hash, now_ms)
        if not self.candidates:
            return [head + _NO_TOUCH]
        return [head + _touch_part(t) for t in self.candidates]

    def attribution_rows(self, revision: int, content_hash: int, now_ms: int) -> list[tuple]:
        head = self._conversion_part(revision, content_hash, now_ms)
        tail = (self.windows.click_days, self.windows.view_days)
        rows = []
        for model, credited in self.credited.items():
            if not credited:  # organic: no touchpoint earned it
                rows.append(head + _NO_TOUCH + (model, *tail, 1.0))
            for touch, credit in credited:
                rows.append(head + _touch_part(touch) + (model, *tail, credit))
        return rows


_NO_TOUCH = ("", "", 0, 0, "", "", "", "")


def _touch_part(t: models.Touch) -> tuple:
    return (t.kind, t.touch_id, t.touch_ms // 1000, t.touch_ms, t.campaign_id, t.adgroup_id, t.ad_id, t.matched_by)


class Attributor:
    def __init__(self, settings: dict, r: redis.Redis, ch: Client, database: str, stop: StopFlag,
                 name: str | None = None) -> None:
        self.settings = settings
        self.redis = r
        self.ch = ch
        self.db = database
        self.stop = stop
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.revisions_written = 0
        self._candidates_sql = (f"INSERT INTO {database}.attribution_candidates "
                                f"({', '.join(CANDIDATE_COLUMN_NAMES)}) VALUES")
        self._attributions_sql = f"INSERT INTO {database}.attributions ({', '.join(ATTRIBUTION_COLUMN_NAMES)}) VALUES"

    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(keys.ATTRIBUTION_STREAM, keys.ATTRIBUTOR_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def run(self) -> None:
        self.ensure_group()
        log.info("attributor %s reading %s", self.name, keys.ATTRIBUTION_STREAM)
        while not self.stop.is_set:
            self.tick()
        log.info("attributor %s stopped: %d revisions written", self.name, self.revisions_written)

    def tick(self, block_ms: int = 500) -> int:
        """Process one batch of notices (its own and any a dead attributor left); return how many."""
        notices = self._pending_of_others() or self._read(block_ms)
        if not notices:
            return 0
        backoff = Backoff(cap=self.settings["SINK_BACKOFF_CAP_S"])
        while True:
            try:
                self.attribute(notices)
                break
            except NETWORK_ERRORS as exc:
                delay = backoff.next_delay()
                log.warning("ClickHouse unavailable (%s); retrying the tick in %.1fs", exc, delay)
                time.sleep(delay)
                self.ch.disconnect()
        ids = [entry_id for entry_id, _ in notices]
        pipe = self.redis.pipeline(transaction=True)
        pipe.xack(keys.ATTRIBUTION_STREAM, keys.ATTRIBUTOR_GROUP, *ids)
        pipe.xdel(keys.ATTRIBUTION_STREAM, *ids)
        pipe.execute()
        return len(notices)

    def _read(self, block_ms: int) -> list:
        try:
            reply = self.redis.xreadgroup(keys.ATTRIBUTOR_GROUP, self.name, {keys.ATTRIBUTION_STREAM: ">"},
                                          count=self.settings["ATTRIBUTOR_BATCH"], block=block_ms)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.ensure_group()
            return []
        return reply[0][1] if reply else []

    def _pending_of_others(self) -> list:
        """Notices a dead attributor read but never acknowledged."""
        claimed = self.redis.xautoclaim(keys.ATTRIBUTION_STREAM, keys.ATTRIBUTOR_GROUP, self.name,
                                        min_idle_time=self.settings["SINK_CLAIM_IDLE_MS"], start_id="0-0",
                                        count=self.settings["ATTRIBUTOR_BATCH"])
        return [(entry_id, fields) for entry_id, fields in claimed[1] if fields]

    def attribute(self, notices: list) -> int:
        """Recompute every conversion the notices point at; write those whose result changed."""
        conv_keys: set[tuple] = set()
        touch_keys: set[tuple] = set()
        for _, fields in notices:
            advertiser = fields[b"a"].decode()
            for key in orjson.loads(fields[b"d"]):
                (conv_keys if fields[b"k"] == b"c" else touch_keys).add((advertiser, *key))
        conv_keys |= store.conversions_touched_by(self.ch, self.db, touch_keys)
        return self.write(self.compute(conv_keys))

    def compute(self, conv_keys: set[tuple]) -> list[Result]:
        conversions = store.load_conversions(self.ch, self.db, conv_keys)
        browser_clicks = store.browser_click_ids(self.ch, self.db, conversions)
        touches_by_adv: dict[str, list[store.StoredTouch]] = {}
        for t in store.load_touches(self.ch, self.db, conversions, browser_clicks):
            touches_by_adv.setdefault(t.advertiser_id, []).append(t)
        windows_cache: dict = {}
        return [Result(c, _candidates(c, touches_by_adv, browser_clicks),
                       _settings_of(self.redis, c.advertiser_id, windows_cache)) for c in conversions]

    def write(self, results: list[Result]) -> int:
        state = store.current_state(self.ch, self.db, {res.conv.key for res in results})
        now_ms = time.time_ns() // 1_000_000
        candidate_rows, attribution_rows = [], []
        for res in results:
            content_hash = res.content_hash()
            revision, stored_hash = state.get(res.conv.key, (0, None))
            if stored_hash == content_hash:
                continue  # unchanged: nothing to restate
            candidate_rows += res.candidate_rows(revision + 1, content_hash, now_ms)
            attribution_rows += res.attribution_rows(revision + 1, content_hash, now_ms)
        if not attribution_rows:
            return 0
        # Candidates first, credited rows last: the current revision is read from attributions, so
        # a crash between the two inserts leaves the revision unwritten, and the re-run writes it.
        self.ch.execute(self._candidates_sql, columns(candidate_rows), columnar=True)
        if self.settings["SINK_FAILPOINT"] == "between_attribution_inserts":
            os.kill(os.getpid(), 9)
        self.ch.execute(self._attributions_sql, columns(attribution_rows), columnar=True)
        written = len({row[:4] for row in attribution_rows})
        self.revisions_written += written
        return written
