"""The eraser: removes one person's data of one advertiser, in steps that survive a crash.

It runs inside the attributor (between ticks, while it holds the lease of the advertiser's
partition), because it restates credits, of which the attributor must stay the one writer. Each request goes through:

1. ``buffers``: events of the person still queued in Redis (the event stream, the dead letters)
   are taken out; an entry that also holds other people's events is put back without them.
2. ``collect``: the person's events (by every identifier named, then by the browser ids those
   events carry), their click ids, their touchpoints; kept in the request's work record. The
   buffers are scanned again for the browser and click ids found.
3. ``restate``: the person's conversions are cancelled through ``credit_input`` (sign -1 copies of
   the current revision, so ``conversion_stats`` and the feed drop them at once), and their
   clicks and impressions are subtracted from ``touch_stats``. Both steps check what is stored
   first, so a resumed erasure never subtracts twice.
4. ``delete``: one ``ALTER TABLE ... DELETE`` per table for every request at this step (mutations
   are heavy: batched), matching keys (event and touch ids), never the identifiers themselves,
   which would otherwise stay in ClickHouse's log of mutations.
5. ``wait``: done when ClickHouse has finished every mutation of those tables; then the audit
   record gets its counts and the identifiers are forgotten.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import orjson
import redis
from clickhouse_driver import Client

from attribution import store
from clicktrail import cluster, keys
from clicktrail.inserts import columns
from clicktrail.schema import CREDIT_INPUT_COLUMN_NAMES
from pixel import click_cache, erasure, records

log = logging.getLogger(__name__)

#: Requests taken per step; their deletions share one mutation per table.
BATCH = 50
#: Stream entries read at a time while scanning the buffers.
SCAN_PAGE = 2000
#: Tables rows are deleted from, and how a row is told to be the person's.
EVENT_TABLES = ("events", "event_identities", "credits", "attribution_candidates")
TOUCH_TABLES = ("touchpoints", "touch_identities")
_IDENTITY_KINDS = {"email": "email", "phone": "phone", "external_id": "external_id", "ttp": "browser"}


class Eraser:
    def __init__(self, r: redis.Redis, ch: Client, db: str, stamp: Callable[[str], int],
                 publish: Callable[[str, int], None], shards: int = 1) -> None:
        self.redis = r
        # Every stream a person's queued events may wait in: each shard's, and the dead letters.
        self.queues = (*keys.event_streams(shards), keys.DEAD_LETTER_STREAM)
        self.ch = ch
        self.db = db
        # The attributor's, by advertiser: write times the feed's cursors can order, in the
        # sequence of the advertiser's partition.
        self._stamp = stamp
        self._publish = publish
        self._credits_sql = (f"INSERT INTO {db}.credit_input ({', '.join(CREDIT_INPUT_COLUMN_NAMES)}) VALUES")
        self._stored_in: list[tuple[Client, str]] | None = None

    def _storage(self) -> list[tuple[Client, str]]:
        """Where mutations run: the database itself, or each node's local tables on a cluster
        (a Distributed table takes no mutation)."""
        if self._stored_in is None:
            self._stored_in = cluster.local_clients(self.ch, self.db)
        return self._stored_in

    def step(self, owns: Callable[[str], bool] | None = None) -> int:
        """Move every queued request (of the advertisers ``owns`` says yes to) one step on; return
        how many were queued."""
        ids = erasure.queued(self.redis, BATCH)
        loaded = {rid: erasure.load_work(self.redis, rid) for rid in ids}
        for rid, work in loaded.items():
            if work is None:  # its work is gone: finished by an earlier holder that died at the end
                self.redis.zrem(keys.ERASURE_QUEUE, rid)
        works = {rid: work for rid, work in loaded.items()
                 if work is not None and (owns is None or owns(work["advertiser_id"]))}
        for phase, advance in (("new", self._buffers), ("buffered", self._collect), ("collected", self._restate)):
            for rid, work in works.items():
                if work["phase"] == phase:
                    advance(rid, work)
                    erasure.save_work(self.redis, rid, work)
        deleting = {rid: w for rid, w in works.items() if w["phase"] == "restated"}
        if deleting:
            self._delete(deleting)
            for rid, work in deleting.items():
                work["phase"] = "deleting"
                erasure.save_work(self.redis, rid, work)
        waiting = [rid for rid, w in works.items() if w["phase"] == "deleting"]
        if waiting and self._mutations_done():
            for rid in waiting:
                erasure.finish(self.redis, rid, works[rid]["rows"])
                log.info("erasure %s done: %s", rid, works[rid]["rows"])
        return len(ids)

    # ---- 1. Redis buffers -------------------------------------------------------------------

    def _buffers(self, rid: str, work: dict) -> None:
        person = _Person(work)
        removed = sum(self._scrub_stream(name, person) for name in self.queues)
        pipe = self.redis.pipeline(transaction=False)
        for click_id in person.click_ids:
            pipe.delete(click_cache.key(person.advertiser_id, click_id))
        pipe.execute()
        work["rows"] = {"queued_events": removed}
        work["phase"] = "buffered"

    def _scrub_stream(self, stream: str, person: _Person) -> int:
        removed, start = 0, "-"
        while True:
            page = self.redis.xrange(stream, min=start, count=SCAN_PAGE)
            for entry_id, fields in page:
                removed += self._scrub_entry(stream, entry_id, fields, person)
            if len(page) < SCAN_PAGE:
                return removed
            start = "(" + page[-1][0].decode()

    def _scrub_entry(self, stream: str, entry_id: bytes, fields: dict, person: _Person) -> int:
        if fields.get(records.ADVERTISER, b"").decode(errors="replace") != person.advertiser_id:
            return 0
        try:
            batch = orjson.loads(fields[records.DATA])
        except (KeyError, orjson.JSONDecodeError):
            return 0
        if not isinstance(batch, list):
            return 0
        kept = [rec for rec in batch if not (isinstance(rec, dict) and person.owns_record(rec))]
        if len(kept) == len(batch):
            return 0
        pipe = self.redis.pipeline(transaction=True)
        if kept:  # the others' events go back on the stream (a new entry: entries are immutable)
            pipe.xadd(stream, {**fields, records.COUNT: str(len(kept)).encode(), records.DATA: orjson.dumps(kept)})
        pipe.xdel(stream, entry_id)
        pipe.execute()
        return len(batch) - len(kept)

    # ---- 2. what is stored ------------------------------------------------------------------

    def _collect(self, rid: str, work: dict) -> None:
        person = _Person(work)
        adv = person.advertiser_id
        found = self.ch.execute(
            f"SELECT DISTINCT pixel_id, event, event_id, browser_id, click_id FROM {self.db}.event_identities "
            f"WHERE advertiser_id = %(adv)s AND (identity_kind, identity) IN ({_tuples(person.pairs())})",
            {"adv": adv})
        browsers = set(person.browser_ids) | {row[3] for row in found if row[3]}
        if browsers:  # one hop: the events of the browsers the person's events carry
            found += self.ch.execute(
                f"SELECT DISTINCT pixel_id, event, event_id, browser_id, click_id FROM {self.db}.event_identities "
                f"WHERE advertiser_id = %(adv)s AND identity_kind = 'browser' AND identity IN ({_values(browsers)})",
                {"adv": adv})
        events = sorted({(row[0], row[1], row[2]) for row in found})
        clicks = sorted({row[4] for row in found if row[4]} | set(person.click_ids))
        pairs = person.pairs(browsers=browsers)
        touches = {tuple(row) for row in self.ch.execute(
            f"SELECT DISTINCT kind, touch_id FROM {self.db}.touch_identities "
            f"WHERE advertiser_id = %(adv)s AND (identity_kind, identity) IN ({_tuples(pairs)})", {"adv": adv})}
        if clicks:
            touches |= {tuple(row) for row in self.ch.execute(
                f"SELECT DISTINCT kind, touch_id FROM {self.db}.touchpoints "
                f"WHERE advertiser_id = %(adv)s AND kind = 'click' AND touch_id IN ({_values(clicks)})", {"adv": adv})}
        work.update(events=events, touches=sorted(touches), click_ids=clicks, browser_ids=sorted(browsers),
                    phase="collected")
        work["rows"].update(self._counts(adv, events, sorted(touches)))
        # Again, now knowing the browsers and clicks the person's stored events link.
        linked = _Person(work)
        self._forget_clicks(adv, set(clicks) | {touch_id for kind, touch_id in touches if kind == "click"})
        work["rows"]["queued_events"] += sum(self._scrub_stream(name, linked) for name in self.queues)

    def _forget_clicks(self, adv: str, click_ids: set[str]) -> None:
        """The person's clicks leave the click cache (it holds their browser id and hashes)."""
        if click_ids:
            self.redis.delete(*(click_cache.key(adv, click_id) for click_id in sorted(click_ids)))

    def _counts(self, adv: str, events: list, touches: list) -> dict[str, int]:
        counts = {}
        for table in EVENT_TABLES:
            counts[table] = self._count(table, _event_match(table, adv, events)) if events else 0
        for table in TOUCH_TABLES:
            counts[table] = self._count(table, _touch_match(adv, touches)) if touches else 0
        return counts

    def _count(self, table: str, where: str) -> int:
        return int(self.ch.execute(f"SELECT count() FROM {self.db}.{table} WHERE {where}")[0][0])

    # ---- 3. kept sums -----------------------------------------------------------------------

    def _restate(self, rid: str, work: dict) -> None:
        adv = work["advertiser_id"]
        events = [tuple(e) for e in work["events"]]
        if events:
            self._cancel_conversions(adv, events)
        touches = [tuple(t) for t in work["touches"]]
        # People's clicks are counted in touch_stats, bots' in bot_touch_stats (pixel/bots.py): each
        # is taken out of its own, as its own step.
        for step, adjustments, is_bot in (("touch_stats", "touch_adjustments", 0),
                                          ("bot_touch_stats", "bot_touch_adjustments", 1)):
            if touches and not self._step_done(rid, step):
                self._subtract_touches(rid, adv, touches, adjustments, is_bot)
        work["phase"] = "restated"

    def _cancel_conversions(self, adv: str, events: list[tuple]) -> None:
        # Only revisions still counted (net sign > 0): a resumed erasure finds its own cancels.
        live = self.ch.execute(
            f"SELECT advertiser_id, pixel_id, event, event_id, revision FROM {self.db}.credits "
            f"WHERE {_event_match('credits', adv, events)} "
            "GROUP BY advertiser_id, pixel_id, event, event_id, revision, model HAVING sum(sign) > 0")
        revisions = {tuple(row[:4]): row[4] for row in live}
        if not revisions:
            return
        now_ms = self._stamp(adv)
        rows = store.cancel_rows(self.ch, self.db, revisions, now_ms)
        if rows:
            self.ch.execute(self._credits_sql, columns(rows), columnar=True)
        self._publish(adv, now_ms)

    def _step_done(self, rid: str, step: str) -> bool:
        return bool(self.ch.execute(f"SELECT count() FROM {self.db}.erasure_steps WHERE request_id = %(r)s "
                                    "AND step = %(s)s", {"r": rid, "s": step})[0][0])

    def _subtract_touches(self, rid: str, adv: str, touches: list[tuple], adjustments: str, is_bot: int) -> None:
        # The same grouping as touch_stats_mv (or bot_touch_stats_mv), negated; inserted in one
        # block with its log row.
        self.ch.execute(
            f"INSERT INTO {self.db}.{adjustments} SELECT %(rid)s, advertiser_id, kind, "
            "toStartOfMinute(touch_time) AS touch_minute, campaign_id, adgroup_id, ad_id, -toInt64(sum(counted)) "
            f"FROM {self.db}.touchpoints WHERE ({_touch_match(adv, touches)}) AND is_bot = %(bot)s "
            "GROUP BY advertiser_id, kind, touch_minute, campaign_id, adgroup_id, ad_id", {"rid": rid, "bot": is_bot})

    # ---- 4. and 5. deletion -----------------------------------------------------------------

    def _delete(self, works: dict[str, dict]) -> None:
        for table in EVENT_TABLES:
            where = " OR ".join(_event_match(table, w["advertiser_id"], [tuple(e) for e in w["events"]])
                                for w in works.values() if w["events"])
            if where:
                self._mutate(table, where)
        for table in TOUCH_TABLES:
            where = " OR ".join(_touch_match(w["advertiser_id"], [tuple(t) for t in w["touches"]])
                                for w in works.values() if w["touches"])
            if where:
                self._mutate(table, where)

    def _mutate(self, table: str, where: str) -> None:
        for client, db in self._storage():
            client.execute(f"ALTER TABLE {db}.{table} DELETE WHERE {where}")

    def _mutations_done(self) -> bool:
        tables = EVENT_TABLES + TOUCH_TABLES
        return not any(client.execute("SELECT count() FROM system.mutations WHERE database = %(db)s "
                                      "AND table IN %(t)s AND is_done = 0", {"db": db, "t": tables})[0][0]
                       for client, db in self._storage())


class _Person:
    """The identifiers of one request's person, and what they match."""

    def __init__(self, work: dict) -> None:
        self.advertiser_id: str = work["advertiser_id"]
        ids = work["identifiers"]
        self.hashed = {kind: set(ids.get(kind, ())) for kind in erasure.HASHED}
        self.browser_ids = set(ids.get(erasure.BROWSER, ())) | set(work.get("browser_ids", ()))
        self.click_ids: list[str] = work.get("click_ids", [])
        self._clicks = set(self.click_ids)

    def pairs(self, browsers: set[str] | None = None) -> list[tuple[str, str]]:
        out = [(_IDENTITY_KINDS[kind], value) for kind, values in self.hashed.items() for value in values]
        out += [("browser", value) for value in (self.browser_ids if browsers is None else browsers)]
        return sorted(out) or [("", "")]  # IN () is a syntax error; this pair matches nothing

    def owns_record(self, rec: dict) -> bool:
        """A queued event or touchpoint record names one of the person's identifiers."""
        if any(rec.get(kind) in values for kind, values in self.hashed.items()):
            return True
        # Further values of a multi-valued identifier (emails...: pixel/records.py), when sent.
        for kind, name in records.IDENTIFIER_LISTS.items():
            listed = rec.get(name)
            if listed.__class__ is list and not self.hashed[kind].isdisjoint(v for v in listed if v.__class__ is str):
                return True
        if (rec.get("ttp") or rec.get("browser_id")) in self.browser_ids:
            return True
        return (rec.get("ttclid") or rec.get("touch_id")) in self._clicks


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _values(values) -> str:
    return ", ".join(_quote(str(v)) for v in sorted(values))


def _tuples(rows: list[tuple]) -> str:
    return ", ".join("(" + ", ".join(_quote(str(v)) for v in row) + ")" for row in rows)


def _event_match(table: str, adv: str, events: list[tuple]) -> str:
    return f"(advertiser_id = {_quote(adv)} AND (pixel_id, event, event_id) IN ({_tuples(events)}))"


def _touch_match(adv: str, touches: list[tuple]) -> str:
    return f"(advertiser_id = {_quote(adv)} AND (kind, touch_id) IN ({_tuples(touches)}))"


def due_every(seconds: float) -> Callable[[], bool]:
    """A clock that says yes at most once per ``seconds`` (the queue is checked, not hammered)."""
    next_at = [0.0]

    def due() -> bool:
        now = time.monotonic()
        if now < next_at[0]:
            return False
        next_at[0] = now + seconds
        return True

    return due
