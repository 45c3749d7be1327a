"""The retention job: each advertiser's rows older than its ``retention_days`` leave ClickHouse.

It runs once a day inside the attributor (the one writer of credits) and on demand
(``clicktrail retention apply``). ClickHouse 18.16 has no TTL, and a table TTL could not follow a
per-advertiser setting anyway (it would be an ALTER TABLE on every change of any advertiser's
setting), so the same two ways run on every server:

- **partition drops**, nearly free: tables are partitioned by month across advertisers, so a
  month is dropped whole when every advertiser with rows in it has retention and all its rows
  there are older than its cutoff. Only months no input can still reach are dropped (see
  ``settled_ms``): otherwise a row of an advertiser without retention, arriving between the look
  and the drop, would be lost.
- **mutations** otherwise: one ``ALTER TABLE ... DELETE`` per table for every advertiser with
  rows out, matching advertiser and time only (no identifier enters ClickHouse's mutation log).
  A mutation rewrites the table's parts in the background; a table whose earlier mutation is
  still running is left for the next run rather than rewritten twice.

The kept sums (``conversion_stats``, ``touch_stats``) stay: they hold counts per minute and ad,
no identifier (docs/operations.md, "Privacy"), and reports over past periods keep their totals.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

import orjson
import redis
from clickhouse_driver import Client

from clicktrail import keys
from clicktrail.config import Settings
from pixel import registry, retention
from pixel.touchpoints import MAX_TOUCH_AGE_S
from sink import expiry

log = logging.getLogger(__name__)

#: Tables holding rows of one person, and the time a row is old by.
TABLES = {
    "events": "event_time",
    "event_identities": "event_time",
    "touchpoints": "touch_time",
    "touch_identities": "touch_time",
    "attribution_candidates": "conversion_time",
    "credits": "conversion_time",
}
DAY_MS = 86_400_000
#: Click cache keys looked at per round trip.
SCAN_PAGE = 1000


class Retention:
    def __init__(self, settings: Settings, r: redis.Redis, ch: Client, db: str) -> None:
        self.settings = settings
        self.redis = r
        self.ch = ch
        self.db = db

    def due(self, now_s: float | None = None) -> bool:
        """Whether a day has passed since the last run (by any attributor, or the CLI)."""
        last = self.redis.get(keys.RETENTION_LAST_RUN)
        now_ms = int((time.time() if now_s is None else now_s) * 1000)
        return not last or now_ms - int(last) >= DAY_MS

    def apply(self, now_s: float | None = None) -> dict:
        """Remove what is out now, for every advertiser with retention; return what was done."""
        now_s = time.time() if now_s is None else now_s
        cutoffs = self.cutoffs(now_s)
        done: dict = {"advertisers": {adv: _date(cut) for adv, cut in sorted(cutoffs.items())}, "tables": {},
                      "click_cache": 0}
        if cutoffs:
            settled = self.settled_ms(now_s)
            for table, column in TABLES.items():
                done["tables"][table] = self._apply_table(table, column, cutoffs, settled)
            done["click_cache"] = self._expire_clicks(cutoffs)
            retention.record_applied(self.redis, cutoffs)
        done["buffers"] = expiry.expire(self.redis, self.settings.stream.buffer_max_age_days, now_s)
        self.redis.set(keys.RETENTION_LAST_RUN, int(now_s * 1000))
        return done

    def cutoffs(self, now_s: float) -> dict[str, int]:
        """Every advertiser with retention, and the start (ms) of what it keeps."""
        found = {}
        for adv, raw in self.redis.hscan_iter(keys.ADVERTISERS, count=1000):
            days = registry.settings_of(orjson.loads(raw)).get("retention_days")
            if days:
                found[adv.decode()] = retention.cutoff_ms(days, now_s)
        return found

    def settled_ms(self, now_s: float) -> int:
        """Rows older than this can no longer arrive: the oldest any input accepts (touchpoints, 28
        days; events, the configured maximum age), plus the longest an entry may wait in the buffers."""
        intake_s = max(MAX_TOUCH_AGE_S, self.settings.limits.max_event_age_s)
        return int((now_s - intake_s - self.settings.stream.buffer_max_age_days * 86_400) * 1000)

    def pending(self) -> int:
        """Mutations of the retention tables ClickHouse has not finished."""
        return int(self.ch.execute(
            "SELECT count() FROM system.mutations WHERE database = %(db)s AND table IN %(t)s AND is_done = 0",
            {"db": self.db, "t": tuple(TABLES)})[0][0])

    def wait(self, timeout_s: float) -> bool:
        """Wait for the mutations to finish; False if they have not after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self.pending():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)
        return True

    # ---- one table ----------------------------------------------------------------------------

    def _apply_table(self, table: str, column: str, cutoffs: dict[str, int], settled_ms: int) -> dict:
        partitions, dropped_rows = self._drop_partitions(table, column, cutoffs, settled_ms)
        deleted, deferred = self._mutate(table, column, cutoffs)
        if partitions or deleted:
            log.info("retention: %s: dropped partitions %s (%d rows), deleting %d rows by mutation",
                     table, partitions, dropped_rows, deleted)
        return {"dropped_partitions": partitions, "dropped_rows": dropped_rows, "deleted_rows": deleted,
                "deferred": deferred}

    def _drop_partitions(self, table: str, column: str, cutoffs: dict[str, int],
                         settled_ms: int) -> tuple[list[str], int]:
        latest = max(cutoffs.values())
        parts = self.ch.execute(
            "SELECT partition, sum(rows) FROM system.parts WHERE database = %(db)s AND table = %(t)s AND active "
            "GROUP BY partition ORDER BY partition", {"db": self.db, "t": table})
        dropped, rows = [], 0
        for partition, count in parts:
            start_s, end_s = _month_bounds(partition)
            if start_s * 1000 >= latest or end_s * 1000 > settled_ms:
                continue  # rows newer than every cutoff, or a month input may still reach
            holders = self.ch.execute(
                f"SELECT advertiser_id, toUnixTimestamp(max({column})) FROM {self.db}.{table} "
                f"WHERE {column} >= toDateTime(%(s)s) AND {column} < toDateTime(%(e)s) GROUP BY advertiser_id",
                {"s": start_s, "e": end_s})
            if all(adv in cutoffs and newest * 1000 < cutoffs[adv] for adv, newest in holders):
                self.ch.execute(f"ALTER TABLE {self.db}.{table} DROP PARTITION {int(partition)}")
                dropped.append(partition)
                rows += int(count)
        return dropped, rows

    def _mutate(self, table: str, column: str, cutoffs: dict[str, int]) -> tuple[int, bool]:
        """Delete the rows still out (in months not dropped); return how many, and whether deferred."""
        where, params = _out_rows(column, cutoffs)
        counts = self.ch.execute(f"SELECT count() FROM {self.db}.{table} WHERE {where}", params)
        out = int(counts[0][0])
        if not out:
            return 0, False
        running = self.ch.execute(
            "SELECT count() FROM system.mutations WHERE database = %(db)s AND table = %(t)s AND is_done = 0",
            {"db": self.db, "t": table})[0][0]
        if running:
            log.info("retention: %s has an unfinished mutation; its %d rows out wait for the next run", table, out)
            return 0, True
        self.ch.execute(f"ALTER TABLE {self.db}.{table} DELETE WHERE {where}", params)
        return out, False

    # ---- Redis --------------------------------------------------------------------------------

    def _expire_clicks(self, cutoffs: dict[str, int]) -> int:
        """Drop cached clicks (they carry browser ids and hashes) older than their advertiser's cutoff."""
        removed = 0
        for adv, cut in cutoffs.items():
            page: list[bytes] = []
            for key in self.redis.scan_iter(match=f"{keys.CLICK_CACHE_PREFIX}{adv}:*", count=SCAN_PAGE):
                page.append(key)
                if len(page) == SCAN_PAGE:
                    removed += self._drop_old(page, cut)
                    page = []
            removed += self._drop_old(page, cut) if page else 0
        return removed

    def _drop_old(self, page: list[bytes], cut: int) -> int:
        old = [key for key, raw in zip(page, self.redis.mget(page)) if raw and orjson.loads(raw)[0] < cut]
        return self.redis.delete(*old) if old else 0


def _out_rows(column: str, cutoffs: dict[str, int]) -> tuple[str, dict]:
    """The WHERE clause of every advertiser's rows older than its cutoff."""
    terms, params = [], {}
    for i, (adv, cut) in enumerate(sorted(cutoffs.items())):
        terms.append(f"(advertiser_id = %(a{i})s AND {column} < toDateTime(%(c{i})s))")
        params[f"a{i}"], params[f"c{i}"] = adv, cut // 1000
    return " OR ".join(terms), params


def _month_bounds(partition: str) -> tuple[int, int]:
    """A ``YYYYMM`` partition's first second and the first second of the month after (UTC)."""
    year, month = int(partition[:4]), int(partition[4:6])
    start = datetime(year, month, 1, tzinfo=timezone.utc)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=timezone.utc)
    return int(start.timestamp()), int(end.timestamp())


def _date(ms: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ms / 1000))
