"""The attributor: ties stored conversions to the touchpoints that earned them, in short ticks.

Each tick reads what the sink and imports reported (new conversions, new touchpoints), gathers
the affected conversions and their candidate touchpoints with a handful of set-based queries,
applies the rules of ``attribution.models`` in memory, and writes a new revision for every
conversion whose result changed, then acknowledges the notices. Re-running a tick (after a
crash at any point) recomputes the same results: unchanged ones are not written again, and a
revision written twice is the same rows, folded by the table engine.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import socket
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone

import orjson
import redis
from clickhouse_driver import Client

from attribution.delays import REFRESH_S, DelayCurves
from attribution.erasure import Eraser, due_every
from attribution.retention import Retention
from attribution import models, store
from attribution.partitions import Membership, Partition
from pixel.touchpoints import Touch
from clicktrail import clickhouse, cluster, keys, redis_client
from clicktrail.backoff import Backoff, retry
from clicktrail.config import Settings
from clicktrail.clickhouse import NETWORK_ERRORS
from clicktrail.errors import LeaseLost
from clicktrail.inserts import columns
from clicktrail.lifecycle import Heartbeat, StopFlag, retry_until_stopped
from clicktrail.schema import CANDIDATE_COLUMN_NAMES, CREDIT_INPUT_COLUMN_NAMES
from pixel import records
from pixel.registry import advertiser_settings

log = logging.getLogger("clicktrail.attributor")

#: Days of the optimizer feed's change log kept: the longest window (28 days) plus the 7 days an
#: event may arrive late. A cursor older than this is refused (poll again without one).
FEED_RETENTION_DAYS = 35


#: Identities a conversion may share with touchpoints (same field names on both), in the order ties are considered.
_IDENTITY_KINDS = ("browser_id", "external_id", "email", "phone")


class TouchIndex:
    """Touchpoints of a batch, indexed by every identity a conversion may share with them."""

    def __init__(self, touches: list[Touch]) -> None:
        self.by_click: dict[tuple, Touch] = {}
        # Per identity kind, (advertiser, value) -> touchpoints; kinds no touchpoint carries are
        # left out, so conversions skip their lookups.
        self.by_identity: dict[str, dict[tuple, list[Touch]]] = {}
        for t in touches:
            if t.kind == "click":
                self.by_click[(t.advertiser_id, t.touch_id)] = t
            for kind in _IDENTITY_KINDS:
                value = getattr(t, kind)
                if value:
                    self.by_identity.setdefault(kind, {}).setdefault((t.advertiser_id, value), []).append(t)
            for kind, value in t.more:  # an imported touchpoint's further values: each ties alike
                self.by_identity.setdefault(kind, {}).setdefault((t.advertiser_id, value), []).append(t)
        self._identity_indexes = [(k, self.by_identity[k]) for k in _IDENTITY_KINDS if k in self.by_identity]

    def candidates(self, conv: store.Conversion, browser_clicks: dict) -> list[models.Candidate]:
        """Every touchpoint tied to the conversion within the longest windows, with how it was tied.

        A touchpoint tied several ways keeps the strongest.
        """
        adv, at = conv.advertiser_id, conv.conversion_ms
        tied: list[tuple[Touch, str]] = []  # strongest ties first
        if conv.click_id:
            t = self.by_click.get((adv, conv.click_id))
            if t is not None:
                tied.append((t, "click_id"))
        for click, first_ms in browser_clicks.get((adv, conv.browser_id), ()):
            t = self.by_click.get((adv, click)) if first_ms <= at else None
            if t is not None:
                tied.append((t, "browser_id"))
        for kind, index in self._identity_indexes:
            for value in conv.identities(kind):  # any one of the conversion's values ties
                tied += [(t, kind) for t in index.get((adv, value), ())]
        found: dict[tuple, models.Candidate] = {}
        for t, matched in tied:
            if t.is_bot and not conv.is_bot:
                continue  # a bot's click is no touchpoint of a person's conversion
            if (t.kind, t.touch_id) not in found:
                candidate = models.candidate(t, matched)
                if models.in_longest_windows(candidate, at):
                    found[(t.kind, t.touch_id)] = candidate
        if len(found) <= 1:
            return list(found.values())
        return sorted(found.values(), key=lambda c: (c.order_key, c.level))


#: ``matched_by`` of a bot's conversion (pixel.bots), credited to nothing under every model.
BOT = "bot"


class Result:
    """One conversion's attribution: its candidates and, per model, the credited touchpoints."""

    def __init__(self, conv: store.Conversion, candidates: list[models.Candidate], windows: models.Windows) -> None:
        self.conv = conv
        self.key = conv[:4]  # (advertiser, pixel, event, event_id)
        self.candidates = candidates
        self.windows = windows
        self.not_counted = ""  # why the conversion counts for nothing: bot, duplicate_order or repeat_click
        if conv.is_bot:  # a bot's conversion is credited to nothing; its candidates stay for include_bots
            self.not_counted = BOT
            self.credited = {m: [] for m in models.MODELS}
            return
        chosen = models.eligible(candidates, conv.conversion_ms, windows)
        if len(chosen) <= 1:  # most conversions: every model gives the one touchpoint (or none) everything
            self.credited = dict.fromkeys(models.MODELS, [(chosen[0], 1.0)] if chosen else [])
        else:
            self.credited = {m: list(zip(chosen, models.credits(m, chosen, conv.conversion_ms)))
                             for m in models.MODELS}

    @property
    def last_click(self) -> models.Candidate | None:
        credited = self.credited[models.DEFAULT_MODEL]
        return credited[-1][0] if credited and credited[-1][0].kind == "click" else None

    def suppress(self, reason: str) -> None:
        """Count this conversion for nothing (a repeated order, or a repeat conversion of one click)."""
        self.not_counted = reason
        self.credited = {m: [] for m in models.MODELS}

    def content_hash(self) -> int:
        # Models sharing one list of credits (most conversions: one touchpoint) encode it once.
        encoded: dict[int, list] = {}
        for rows in self.credited.values():
            if id(rows) not in encoded:
                encoded[id(rows)] = [(t.touch_id, round(credit, 12)) for t, credit in rows]
        basis = orjson.dumps([
            [tuple(c) for c in self.candidates],  # kind, touch_id, touch_ms, campaign, ad group, ad, matched_by
            {m: encoded[id(rows)] for m, rows in self.credited.items()},
            [self.windows.click_days, self.windows.view_days, self.conv.value, self.conv.currency, self.not_counted],
        ])
        return int.from_bytes(hashlib.blake2b(basis, digest_size=8).digest(), "big")

    def _conversion_part(self, revision: int, content_hash: int, now_ms: int) -> tuple:
        c = self.conv
        return (c.advertiser_id, c.pixel_id, c.event, c.event_id, c.conversion_ms // 1000, c.conversion_ms,
                c.value, c.currency, c.device_type, c.os, c.browser, c.utm_source, c.utm_campaign, c.country,
                c.region, revision, content_hash, now_ms)

    def candidate_rows(self, revision: int, content_hash: int, now_ms: int) -> list[tuple]:
        head = self._conversion_part(revision, content_hash, now_ms)
        if not self.candidates:
            return [head + _NO_TOUCH]
        return [head + _touch_part(t) for t in self.candidates]

    def credit_rows(self, revision: int, content_hash: int, now_ms: int) -> list[tuple]:
        """Rows of ``credit_input``: one per credited touchpoint (or none), with its models and credits."""
        head = self._conversion_part(revision, content_hash, now_ms)
        tail = (self.windows.click_days, self.windows.view_days, 1)
        if self.not_counted:  # a duplicate: worth nothing under every model, saying why
            return [head + _NO_TOUCH[:-1] + (self.not_counted, *tail, models.MODELS, _ZEROS)]
        by_touch: dict[models.Candidate, tuple[list, list]] = {}
        for model, credited in self.credited.items():
            for touch, credit in credited:
                names, shares = by_touch.setdefault(touch, ([], []))
                names.append(model)
                shares.append(credit)
        if not by_touch:  # organic: no touchpoint earned it
            return [head + _NO_TOUCH + (*tail, models.MODELS, _ONES)]
        return [head + _touch_part(t) + (*tail, names, shares) for t, (names, shares) in by_touch.items()]


_NO_TOUCH = ("", "", 0, 0, "", "", "", "")
_ZEROS = [0.0] * len(models.MODELS)
_ONES = [1.0] * len(models.MODELS)


def _dedup_orders(results: list[Result], orders: dict[tuple, list[tuple[int, int, str]]]) -> None:
    """A repeated order id (same pixel and event) counts once: the earliest by event time keeps its credit."""
    for res in results:
        c = res.conv
        seen = orders.get((c.advertiser_id, c.pixel_id, c.event, c.order_id)) if c.order_id else None
        if seen and models.order_keeper(seen) != c.event_id:
            res.suppress("duplicate_order")


def _without_bots(orders: dict[tuple, list[tuple]], bot_keys: set[tuple]) -> dict[tuple, list[tuple]]:
    """The conversions of each order (advertiser, pixel, event, order id), bots' left out.

    Each conversion of an order is a tuple whose last item is its event id.
    """
    if not bot_keys:
        return orders
    return {order: [seen for seen in conversions if (*order[:3], seen[-1]) not in bot_keys]
            for order, conversions in orders.items()}


def _touch_part(t: models.Candidate) -> tuple:
    return (t.kind, t.touch_id, t.touch_ms // 1000, t.touch_ms, t.campaign_id, t.adgroup_id, t.ad_id, t.matched_by)


def _redis_failed(exc: BaseException, delay: float) -> None:
    log.warning("Redis unavailable (%s); retrying in %.1fs", exc, delay)


class Attributor:
    def __init__(self, settings: Settings, r: redis.Redis, ch: Client, database: str, stop: StopFlag,
                 name: str | None = None) -> None:
        self.settings = settings
        self.redis = r
        self.ch = ch
        # Inserts run on their own connection and thread while the next chunk is computed: a
        # chunk's inserts are mostly ClickHouse's work (the credit views), the rules are Python's.
        self.writer = clickhouse.connect(settings.clickhouse.url)
        self._writing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attributor-writer")
        # Likewise the next chunk's reads run ahead on theirs.
        self.loader = clickhouse.connect(settings.clickhouse.url)
        self._loading = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attributor-loader")
        self._pending: Future | None = None
        self.db = database
        self.stop = stop
        self.heartbeat = Heartbeat(settings.paths.heartbeat_file)
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.revisions_written = 0
        count = settings.attributor.partitions
        self.partitions = [Partition.of(n) for n in range(count)]
        self.members = Membership(r, self.name, count, int(settings.attributor.lease_s * 1000))
        #: Partitions whose lease this process holds (between ticks of the run loop).
        self.owned: set[int] = set()
        #: The partition the tick at hand works on: its lease, stamps and watermark.
        self._current = self.partitions[0]
        self.eraser = Eraser(r, ch, database, self._stamp_for, self._publish_for, settings.stream.shards)
        self._erasure_due = due_every(1.0)
        self.retention = Retention(settings, r, ch, database)
        self._retention_check_due = due_every(600.0)  # is the daily run due? (asked of Redis)
        self.delay_curves = DelayCurves(r, ch, database)
        self._delays_due = due_every(REFRESH_S)
        self._candidates_sql = (f"INSERT INTO {database}.attribution_candidates "
                                f"({', '.join(CANDIDATE_COLUMN_NAMES)}) VALUES")
        self._credits_sql = f"INSERT INTO {database}.credit_input ({', '.join(CREDIT_INPUT_COLUMN_NAMES)}) VALUES"
        self._marks_sql = (f"INSERT INTO {database}.feed_changes (advertiser_id, written_ms, model, event, "
                           "touch_minute, campaign_id, adgroup_id, ad_id) VALUES")
        self._next_prune = 0.0

    @property
    def written_ms(self) -> int:
        """Time stamp of the current partition's last writes; every later write is stamped after it."""
        return self._current.written_ms

    def ensure_group(self) -> None:
        for part in self.partitions:
            redis_client.ensure_group(self.redis, part.stream, keys.ATTRIBUTOR_GROUP)

    def _partition_of(self, advertiser_id: str) -> Partition:
        return self.partitions[records.notice_partition(advertiser_id, len(self.partitions))]

    def run(self) -> None:
        """Attribute the partitions whose leases this process holds; stand by while it holds none.

        Two attributors working on one partition at once could both restate one conversion and
        write two different copies of the same revision; a partition's lease gives it one writer,
        and the live attributors share the partitions (attribution/partitions.py). With one
        partition, a second attributor is a hot standby, which takes over (with the notices the
        first left pending) once the lease lapses.
        """
        retry_until_stopped("Redis", self.ensure_group, self.stop)  # Redis may be down or starting
        gc.freeze()  # what start-up built lives as long as the process: never scan it again
        log.info("attributor %s reading %d partition(s) of %s", self.name, len(self.partitions),
                 keys.ATTRIBUTION_STREAM)
        leading = False

        def lead_once() -> None:
            # Wait Redis out in place: what a tick had not acknowledged is read again (the rules
            # give the same answer twice), and the lease is taken afresh (not leading meanwhile).
            nonlocal leading
            was, leading = leading, False
            leading = self._lead_once(was)

        try:
            while not self.stop.is_set:
                self.heartbeat.beat()  # a standby beats too: it is ready to take over
                retry(lead_once, errors=(redis.ConnectionError, redis.TimeoutError), stop=self.stop,
                      backoff=Backoff(cap=self.settings.retry.backoff_cap_s), on_failure=_redis_failed)
        finally:
            self._release_leases()
        log.info("attributor %s stopped: %d revisions written", self.name, self.revisions_written)

    def _lead_once(self, leading: bool) -> bool:
        """One tick over the partitions this process holds, else a short wait; return whether it holds any."""
        self._rebalance()
        if not self.owned:
            if leading:
                log.warning("attributor %s holds no partition; standing by", self.name)
            self.stop.wait(self.settings.attributor.lease_s / 3)
            return False
        try:
            self.tick(partitions=self.owned)
        except LeaseLost:
            return True  # the tick stopped unacknowledged; the new holder reclaims its notices
        # The jobs that must run once, not once per attributor: on the holder of partition 0.
        if 0 in self.owned:
            self._prune_if_due()
            self._retention_if_due()
            self._delays_if_due()
        # Erasures restate credits: each is done by its advertiser's partition's holder.
        if self._erasure_due():
            owned = set(self.owned)
            retry(lambda: self.eraser.step(lambda adv: self._partition_of(adv).index in owned), errors=NETWORK_ERRORS,
                  on_failure=self._storage_failed, backoff=Backoff(cap=self.settings.retry.backoff_cap_s),
                  stop=self.stop)
        return True

    def _rebalance(self) -> None:
        """Between ticks: give back the partitions no longer ours, take (or renew) those that are."""
        wanted = self.members.wanted()
        for index in sorted(self.owned - wanted):
            self.members.give_back(self.partitions[index])
            log.info("attributor %s gave partition %d back", self.name, index)
        held = set()
        for index in sorted(wanted):
            part = self.partitions[index]
            if self.members.hold(part):
                held.add(index)
                if index not in self.owned:
                    log.info("attributor %s holds partition %d", self.name, index)
                    part.written_ms = 0  # stamp after whatever the previous holder published
            elif index in self.owned:
                log.warning("attributor %s lost partition %d", self.name, index)
        self.owned = held

    def _prune_if_due(self) -> None:
        """Drop days of the feed's change log no cursor may still need (18.16 has no TTL)."""
        if time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + 3600
        keep_from = time.strftime("%Y%m%d", time.gmtime(time.time() - FEED_RETENTION_DAYS * 86_400))
        try:
            # On a cluster, each node's local table (a Distributed table has no partitions).
            for client, db in cluster.local_clients(self.ch, self.db):
                old = client.execute(
                    "SELECT DISTINCT partition FROM system.parts WHERE database = %(db)s AND table = 'feed_changes' "
                    "AND active AND partition < %(keep)s", {"db": db, "keep": keep_from})
                for (partition,) in old:
                    client.execute(f"ALTER TABLE {db}.feed_changes DROP PARTITION {int(partition)}")
        except NETWORK_ERRORS as exc:
            log.warning("could not prune the feed's change log (%s); will retry", exc)

    def _delays_if_due(self) -> None:
        """Once a minute: the delay curves the optimizer feed's estimates read (off its request path)."""
        if not self._delays_due():
            return
        try:
            self.delay_curves.refresh()
        except NETWORK_ERRORS as exc:
            log.warning("could not refresh the conversion delay curves (%s); will retry", exc)

    def _retention_if_due(self) -> None:
        """Once a day: rows past each advertiser's retention, and buffer entries past their maximum age."""
        if not self._retention_check_due() or not self.retention.due():
            return
        try:
            done = self.retention.apply()
        except NETWORK_ERRORS as exc:
            log.warning("could not apply retention (%s); will retry", exc)
            return
        log.info("retention applied: %s", done)

    def _hold_lease(self) -> bool:
        """Take or renew the current partition's lease (and say we live: a long tick must not
        look dead to the others); False while another attributor holds it."""
        self.members.wanted()
        return self.members.hold(self._current)

    def _release_leases(self) -> None:
        try:
            for index in sorted(self.owned):
                self.members.give_back(self.partitions[index])
            self.members.leave()
        except redis.RedisError:
            pass  # they lapse by themselves
        self.owned = set()

    def tick(self, block_ms: int = 500, partitions: set[int] | None = None) -> int:
        """Process a batch of notices per partition (all, or those given): any a dead attributor
        left, else new ones, waiting up to ``block_ms`` for some; return how many."""
        parts = self.partitions if partitions is None else [self.partitions[n] for n in sorted(partitions)]
        done = 0
        for part in parts:
            done += self._tick_partition(part, self._pending_of_others(part))
        if done:
            return done
        for part, notices in self._read(parts, block_ms):
            done += self._tick_partition(part, notices)
        return done

    def _tick_partition(self, part: Partition, notices: list) -> int:
        if not notices:
            return 0
        self._current = part
        # A notice of another partition (written before the partition count changed) moves to
        # its partition's stream, in the MULTI that acknowledges it here: its advertiser keeps one writer.
        count = len(self.partitions)
        moved = [(entry_id, fields) for entry_id, fields in notices
                 if records.notice_partition(fields[records.ADVERTISER].decode(), count) != part.index]
        mine = [notice for notice in notices if notice not in moved] if moved else notices
        if mine:
            retry(lambda: self.attribute(mine), errors=NETWORK_ERRORS, on_failure=self._storage_failed,
                  backoff=Backoff(cap=self.settings.retry.backoff_cap_s))
        ids = [entry_id for entry_id, _ in notices]
        pipe = self.redis.pipeline(transaction=True)
        for _, fields in moved:
            pipe.xadd(records.notice_stream(fields[records.ADVERTISER].decode(), count), fields,
                      maxlen=1_000_000, approximate=True)
        pipe.xack(part.stream, keys.ATTRIBUTOR_GROUP, *ids)
        pipe.xdel(part.stream, *ids)
        # Everything stamped up to written_ms is now stored: the optimizer feed may serve it. In the
        # same MULTI on one Redis; a cluster's pipelines run no scripts, so there it follows.
        together = part.written_ms and not redis_client.is_cluster(self.redis)
        if together:
            self.members.publish(part, part.written_ms, client=pipe)
        pipe.execute()
        if part.written_ms and not together:
            self.members.publish(part, part.written_ms)
        return len(notices)

    def _storage_failed(self, exc: BaseException, delay: float) -> None:
        log.warning("ClickHouse unavailable (%s); retrying the tick in %.1fs", exc, delay)
        for client in (self.ch, self.writer, self.loader):
            client.disconnect()

    def _stamp(self, part: Partition | None = None) -> int:
        """A write time after every earlier one of the partition, even across attributors with
        skewed clocks.

        The feed's cursors compare these stamps (of one advertiser, so of one partition), so they must only grow.
        """
        part = part or self._current
        if not part.written_ms:
            part.written_ms = int(self.redis.get(part.watermark) or 0)
        part.written_ms = max(time.time_ns() // 1_000_000, part.written_ms + 1)
        return part.written_ms

    def _stamp_for(self, advertiser_id: str) -> int:
        return self._stamp(self._partition_of(advertiser_id))

    def _publish_for(self, advertiser_id: str, stamp_ms: int) -> None:
        self.members.publish(self._partition_of(advertiser_id), stamp_ms)

    def _read(self, parts: list[Partition], block_ms: int) -> list[tuple[Partition, list]]:
        """New notices of the partitions, in one call that waits for the first to come."""
        by_stream = {part.stream: part for part in parts}
        try:
            reply = self.redis.xreadgroup(keys.ATTRIBUTOR_GROUP, self.name, dict.fromkeys(by_stream, ">"),
                                          count=self.settings.attributor.batch, block=block_ms)
        except redis.ResponseError as exc:
            # The stream lost (NOGROUP) or deleted while we waited on it (UNBLOCKED): start again.
            if not str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                raise
            self.ensure_group()
            return []
        return [(by_stream[stream.decode()], entries) for stream, entries in reply or ()]

    def _pending_of_others(self, part: Partition) -> list:
        """Notices of the partition a dead attributor read but never acknowledged."""
        claimed = self.redis.xautoclaim(part.stream, keys.ATTRIBUTOR_GROUP, self.name,
                                        min_idle_time=self.settings.stream.claim_idle_ms, start_id="0-0",
                                        count=self.settings.attributor.batch)
        return [(entry_id, fields) for entry_id, fields in claimed[1] if fields]

    def attribute(self, notices: list) -> int:
        """Recompute every conversion the notices point at; write those whose result changed."""
        # A tick builds hundreds of thousands of small tuples that hold no reference cycles: the
        # cyclic garbage collector would walk them again and again while they live (a fifth of
        # the tick's CPU); reference counting frees them all the same.
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._attribute(notices)
        finally:
            if collecting:
                gc.enable()

    def _attribute(self, notices: list) -> int:
        conv_keys: dict[tuple, int | None] = {}
        touch_keys: set[tuple] = set()
        rate_keys: set[tuple] = set()
        for _, fields in notices:
            advertiser, kind, notice_keys = records.decode_notice(fields)
            if kind == records.NOTICE_CONVERSIONS:
                for key in notice_keys:
                    conv_keys[(advertiser, key.pixel_id, key.event, key.event_id)] = key.event_ms
            elif kind == records.NOTICE_RATES:
                rate_keys.update((advertiser, *key) for key in notice_keys)
            else:
                touch_keys.update((advertiser, key.kind, key.touch_id) for key in notice_keys)
        now_ms = self._stamp()
        touched, found = store.conversions_touched_by(self.ch, self.db, touch_keys)
        for key, event_ms in touched.items():
            conv_keys.setdefault(key, event_ms)
        # A big tick is written in chunks, and the feed's watermark moves after each: during a
        # burst the optimizer feed lags by one chunk's work, not by a whole tick's.
        items, size, written = list(conv_keys.items()), self.settings.attributor.chunk, 0
        chunks = [dict(items[start:start + size]) for start in range(0, len(items), size)]
        # Three stages overlap: the loader reads chunk n+1 while chunk n's rules run here and
        # chunk n-1 is inserted by the writer. Only reads of what the attributor itself wrote
        # (current revisions, candidates of a click) wait for the writer.
        loading = self._loading.submit(self._load, chunks[0]) if chunks else None
        try:
            for n, chunk in enumerate(chunks):
                loaded = loading.result()
                loading = self._loading.submit(self._load, chunks[n + 1]) if n + 1 < len(chunks) else None
                if n or self.owned:
                    # A long tick renews the lease as it goes: a standby must never take over, and
                    # restate the same conversions, while this one is still writing. A leading
                    # attributor checks before its first chunk too: it renews its leases once per
                    # turn over all its partitions, so by the time it writes one partition the
                    # turn may have outlasted that lease and another attributor taken it over.
                    if not self._hold_lease():
                        raise LeaseLost(f"attributor {self.name} lost the lease during a tick")
                    now_ms = self._stamp()
                # Every chunk but the last publishes its stamp once stored; the last one's is
                # published with the acknowledgement, after the touch marks below.
                written += self._write_behind(self._decide(chunk, *loaded), now_ms, publish=n + 1 < len(chunks))
        finally:
            if loading is not None:
                loading.exception()  # never leave the loader's connection busy behind a failed tick
            self._settle()
        self._mark_touches(found, now_ms)
        self._mark_revalued(rate_keys, now_ms)
        return written

    def _settle(self) -> None:
        """Wait for the chunk being written; raise what its inserts raised."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _mark_touches(self, touches: list[tuple], now_ms: int) -> None:
        """Tell the optimizer feed that these touchpoints' buckets changed (new clicks or views)."""
        if touches:
            rows = {(adv, now_ms, "", "", touch_ms // 60_000 * 60, campaign, adgroup, ad)
                    for adv, touch_ms, campaign, adgroup, ad in touches}
            self.ch.execute(self._marks_sql, columns(list(rows)), columnar=True)

    def _mark_revalued(self, rates: set[tuple], now_ms: int) -> None:
        """Tell the optimizer feed that buckets holding conversions in a currency whose rates were
        posted (from their first day on) changed value: the feed converts when it reads, and a
        poller with a cursor learns of the change here. A day earlier than posted, since the day
        is the advertiser's and the minutes are UTC; buckets the feed no longer keeps are left out."""
        for advertiser, currency, first_day in sorted(rates):
            self.ch.execute(
                f"""
                INSERT INTO {self.db}.feed_changes (advertiser_id, written_ms, model, event, touch_minute,
                                                    campaign_id, adgroup_id, ad_id)
                SELECT advertiser_id, toUInt64(%(now_ms)s), model, event, touch_minute, campaign_id, adgroup_id, ad_id
                FROM {self.db}.conversion_stats
                WHERE advertiser_id = %(adv)s AND currency = %(currency)s
                  AND conversion_minute >= toDateTime(%(from_s)s)
                  AND touch_minute >= toDateTime(%(kept_s)s)
                GROUP BY advertiser_id, model, event, touch_minute, campaign_id, adgroup_id, ad_id""",
                {"adv": advertiser, "currency": currency, "now_ms": now_ms,
                 "from_s": max(0, int(datetime.fromisoformat(first_day).replace(tzinfo=timezone.utc).timestamp())
                               - 86_400),
                 "kept_s": now_ms // 1000 - FEED_RETENTION_DAYS * 86_400})

    def compute(self, conv_keys: dict[tuple, int | None] | set[tuple]) -> list[Result]:
        """Attribute the conversions, together with those their counting rules tie them to.

        ``conv_keys`` maps conversion keys to their time in ms where known (a set is accepted).
        """
        if not isinstance(conv_keys, dict):
            conv_keys = dict.fromkeys(conv_keys)
        return self._decide(conv_keys, *self._load(conv_keys, self.ch))

    def _load(self, conv_keys: dict[tuple, int | None], ch: Client | None = None) -> tuple:
        """Read what deciding the conversions needs: the conversions (with every other conversion of
        their orders, since a repeated order id counts once), click ids on their browsers, touchpoints.

        Reads only what the sink and imports write, never the attributor's own tables, so it may
        run ahead of the writer.
        """
        ch = ch or self.loader
        conversions = store.load_conversions(ch, self.db, conv_keys)
        orders = store.same_order(ch, self.db, conversions)
        more = {(*order[:3], event_id): ms for order, seen in orders.items() for ms, _, event_id in seen
                if (*order[:3], event_id) not in conv_keys}
        conversions += store.load_conversions(ch, self.db, more)
        return conversions, orders, self._gather(ch, conversions)

    def _gather(self, ch: Client, conversions: list[store.Conversion]) -> tuple[dict, TouchIndex]:
        browser_clicks = store.browser_click_ids(ch, self.db, conversions)
        return browser_clicks, TouchIndex(store.load_touches(ch, self.db, conversions, browser_clicks, self.redis))

    def _decide(self, conv_keys: dict, conversions: list[store.Conversion], orders: dict,
                gathered: tuple[dict, TouchIndex]) -> list[Result]:
        settings: dict = {}
        results = self._results(conversions, settings, gathered)
        # Counting "once": the other conversions of the same click and event are decided together.
        once = {(r.conv.advertiser_id, r.conv.event, r.last_click.touch_id) for r in results
                if r.last_click and self._counting(settings, r.conv) == "once"}
        known = {r.key for r in results}
        if once:
            self._settle()  # the chunk being written may hold conversions of these clicks
        extra = store.sharing_clicks(self.ch, self.db, once) - known
        if extra:
            more = store.load_conversions(self.ch, self.db, dict.fromkeys(extra))
            results += self._results(more, settings, self._gather(self.ch, more))
        # Bots' conversions take no part in counting people's: neither the first of an order nor once per click.
        people = [r for r in results if r.not_counted != BOT]
        _dedup_orders(people, _without_bots(orders, {r.key for r in results if r.not_counted == BOT}))
        self._count_once(people, settings)
        return results

    def _results(self, conversions: list[store.Conversion], settings: dict,
                 gathered: tuple[dict, TouchIndex]) -> list[Result]:
        browser_clicks, index = gathered
        return [Result(c, index.candidates(c, browser_clicks), self._windows(settings, c)) for c in conversions]

    def _settings(self, cache: dict, advertiser_id: str) -> dict:
        if advertiser_id not in cache:
            cache[advertiser_id] = advertiser_settings(self.redis, advertiser_id)
        return cache[advertiser_id]

    def _windows(self, cache: dict, conv: store.Conversion) -> models.Windows:
        key = ("windows", conv.advertiser_id)
        if key not in cache:
            s = self._settings(cache, conv.advertiser_id)
            cache[key] = models.Windows(s["click_window_days"], s["view_window_days"])
        return cache[key]

    def _counting(self, cache: dict, conv: store.Conversion) -> str:
        counting = self._settings(cache, conv.advertiser_id)["counting"]
        return counting.get(conv.event, counting.get("default", "every"))

    def _count_once(self, results: list[Result], settings: dict) -> None:
        """Under "once", only the first conversion of an event per click counts."""
        by_click: dict[tuple, list[Result]] = {}
        for res in results:
            if not res.not_counted and res.last_click and self._counting(settings, res.conv) == "once":
                by_click.setdefault((res.conv.advertiser_id, res.conv.event, res.last_click.touch_id), []).append(res)
        for group in by_click.values():
            group.sort(key=lambda r: (r.conv.conversion_ms, r.conv.pixel_id, r.conv.event_id))
            for repeat in group[1:]:
                repeat.suppress("repeat_click")

    def write(self, results: list[Result], now_ms: int | None = None) -> int:
        """Store a new revision of every result that changed; return how many."""
        written = self._write_behind(results, now_ms)
        self._settle()
        return written

    def _write_behind(self, results: list[Result], now_ms: int | None = None, publish: bool = False) -> int:
        """Build the rows of every changed result and start inserting them; return how many changed.

        The inserts run on the writer thread; the next call (or ``_settle``) waits for them.
        """
        now_ms = now_ms or self._stamp()
        self._settle()  # the state read below must see the previous chunk's revisions
        state = store.current_state(self.ch, self.db, {res.key for res in results})
        candidate_rows, credit_rows, restated, written = [], [], {}, 0
        for res in results:
            content_hash = res.content_hash()
            revision, stored_hash = state.get(res.key, (0, None))
            if stored_hash == content_hash:
                continue  # unchanged: nothing to restate
            if revision:
                restated[res.key] = revision
            candidate_rows += res.candidate_rows(revision + 1, content_hash, now_ms)
            credit_rows += res.credit_rows(revision + 1, content_hash, now_ms)
            written += 1
        if credit_rows:
            # The previous revision's rows are cancelled in the same insert as the new ones: one
            # block, so the sums kept from credits never see one without the other.
            credit_rows += store.cancel_rows(self.ch, self.db, restated, now_ms)
            self.revisions_written += written
        if credit_rows or publish:
            self._pending = self._writing.submit(self._insert, candidate_rows, credit_rows, publish and now_ms)
        return written

    def _insert(self, candidate_rows: list[tuple], credit_rows: list[tuple], publish_ms: int) -> None:
        # Candidates first, credits last: the current revision is read from credits, so a crash
        # between the two inserts leaves the revision unwritten, and the re-run writes it. The
        # re-run may compute another result (a touchpoint arrived or changed meanwhile, or the
        # windows did): the revision's number then holds the orphan's candidates beside the
        # re-run's. Every reader takes candidates by (revision, content hash) of the current
        # credits row, which names the re-run's alone: cheaper than any write-side cure (a third
        # insert to mark a revision complete, or deleting the orphan, 18.16's ALTER DELETE being
        # a rewrite of whole parts), and the hot path writes nothing more.
        if credit_rows:
            self.writer.execute(self._candidates_sql, columns(candidate_rows), columnar=True)
            self.writer.execute(self._credits_sql, columns(credit_rows), columnar=True)
        if publish_ms:
            self._publish(publish_ms)

    def _publish(self, stamp_ms: int) -> None:
        """Everything of the current partition stamped up to ``stamp_ms`` is stored: let the
        optimizer feed serve it."""
        self.members.publish(self._current, stamp_ms)
