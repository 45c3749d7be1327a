"""The sink worker: Redis Stream → ClickHouse, at least once, deduplicated in storage.

One loop: reclaim entries left pending by dead consumers, read a batch (bounded by count and
time), build rows, insert them in one block, then acknowledge and delete the entries. An entry
is acknowledged only after its row is stored or it has been moved to the dead-letter stream,
so a sink killed at any point loses nothing; what it had inserted but not acknowledged is
inserted again by whoever reclaims it, and the storage's dedup key folds the copies.

With the events split into shards (``CLICKTRAIL_STREAM_SHARDS``) each shard's stream has its own
consumer group; a sink reads the shards it is given (all by default), one batch from one shard
at a time in turn, so a batch is settled in its shard's stream alone.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import socket
import time
from typing import NamedTuple

import orjson
import redis
from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors

from clicktrail import keys, redis_client
from clicktrail.backoff import Backoff, retry
from clicktrail.config import Settings
from clicktrail.clickhouse import NETWORK_ERRORS
from clicktrail.inserts import columns, count_once
from clicktrail.lifecycle import Heartbeat, StopFlag, retry_until_stopped
from clicktrail.schema import EVENT_COLUMN_NAMES, TOUCH_COLUMN_NAMES
from pixel import records
from pixel.records import EventRow, TouchRow
from pixel.scrub import scrub_opaque, scrub_records_json
from sink.rows import PoisonEntry, RowBuilder

log = logging.getLogger("clicktrail.sink")

#: Server errors that say nothing about the rows: retry the batch as it is, never dead-letter it.
SYSTEMIC_CODES = {
    16,  # no such column: the schema is behind, run `clicktrail migrate`
    60,  # unknown table
    81,  # unknown database
    159,  # timeout exceeded
    164,  # readonly
    202,  # too many simultaneous queries
    209,  # socket timeout
    210,  # network error
    241,  # memory limit exceeded
    242,  # table is read only
    252,  # too many parts: inserts outpace merges
    425,  # system error
}

Entry = tuple[bytes, dict]
#: A consumer idle this long with nothing pending belongs to a sink that is gone.
DEAD_CONSUMER_IDLE_MS = 86_400_000


class DeadLetter(NamedTuple):
    entry_id: bytes
    index: str  # the event's position in the entry, "*" for the whole entry
    reason: str
    fields: dict


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Sink:
    def __init__(self, settings: Settings, r: redis.Redis, ch: Client, database: str, stop: StopFlag,
                 name: str | None = None, shards: list[int] | None = None) -> None:
        self.settings = settings
        self.redis = r
        self.cluster = redis_client.is_cluster(r)
        self.streams = keys.event_streams(settings.stream.shards)
        if shards is not None:
            self.streams = [self.streams[shard] for shard in shards]
        self.stream = self.streams[0]  # the shard this turn of the loop reads and settles
        self._turn = 0
        self.ch = ch
        self.db = database
        self.name = name or consumer_name()
        self.stop = stop
        self.heartbeat = Heartbeat(settings.paths.heartbeat_file)
        self.builder = RowBuilder(settings.privacy.anonymize_ip, settings.sink.ua_cache_size)
        self.insert_sql = f"INSERT INTO {database}.events ({', '.join(EVENT_COLUMN_NAMES)}) VALUES"
        self.touch_insert_sql = f"INSERT INTO {database}.touchpoints ({', '.join(TOUCH_COLUMN_NAMES)}) VALUES"
        self.stored = 0
        self.dead = 0
        self._last_reclaim: dict[str, float] = {}

    # -- set-up ------------------------------------------------------------------------------

    def ensure_group(self) -> None:
        """Create the consumer groups from the streams' start, so events queued before any sink ran count."""
        for stream in self.streams:
            redis_client.ensure_group(self.redis, stream, keys.SINK_GROUP)

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        retry_until_stopped("Redis", self.ensure_group, self.stop)  # Redis may be down or starting
        # What exists now lives for the whole process: keep the collector from walking it again.
        gc.freeze()
        log.info("sink %s reading %s as group %s", self.name, ", ".join(self.streams), keys.SINK_GROUP)
        while not self.stop.is_set:
            self.heartbeat.beat()
            self.run_once()
        log.info("sink %s stopped: %d events stored, %d dead-lettered", self.name, self.stored, self.dead)

    def run_once(self) -> int:
        """Reclaim, read and store one batch of the next shard; return how many entries it settled."""
        self.stream = self.streams[self._turn % len(self.streams)]
        self._turn += 1
        entries = self._read_batch(self._reclaim_if_due())
        if entries:
            self.store(entries)
        return len(entries)

    def _read_batch(self, entries: list[Entry]) -> list[Entry]:
        """Add entries until the batch holds SINK_BATCH_SIZE events or SINK_BATCH_WAIT_MS has passed."""
        batch = list(entries)
        events = sum(records.entry_count(fields) for _, fields in batch)
        limit = self.settings.sink.batch_size
        deadline = time.monotonic() + self.settings.sink.batch_wait_ms / 1000.0
        while events < limit and not self.stop.is_set:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                break
            # Entries hold one request each; size the read by the events per entry seen so far.
            per_entry = max(1, events // len(batch)) if batch else 1
            count = max(1, min(self.settings.sink.read_count, (limit - events) // per_entry))
            # Short blocks notice a stop soon, and with several shards a quiet one soon gives way.
            reply = self._read(count, block_ms=min(remaining_ms, 500 if len(self.streams) == 1 else 50))
            if reply:
                batch.extend(reply)
                events += sum(records.entry_count(fields) for _, fields in reply)
            elif batch:
                break  # the stream is drained: store what we have now rather than wait
        return batch

    def _read(self, count: int, block_ms: int) -> list[Entry]:
        try:
            reply = self._redis_call(
                self.redis.xreadgroup, keys.SINK_GROUP, self.name, {self.stream: ">"},
                count=count, block=block_ms,
            )
        except redis.ResponseError as exc:
            # NOGROUP: Redis lost the stream (a restart without persistence); UNBLOCKED: the stream
            # was deleted while we waited on it (DEL, FLUSHDB). Either way there is nothing to
            # store: make the group again and read on.
            if not str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                raise
            self.ensure_group()
            return []
        return reply[0][1] if reply else []

    # -- storing -----------------------------------------------------------------------------

    def store(self, entries: list[Entry]) -> None:
        """Store every event of ``entries``, dead-letter what cannot be stored, then acknowledge them all."""
        tables = {False: _Pending(self.insert_sql), True: _Pending(self.touch_insert_sql)}
        dead: list[DeadLetter] = []
        # A batch is tens of thousands of fresh tuples with no reference cycles: the garbage
        # collector would walk them again and again while they are built, turned into columns and
        # sent (about a fifth of the time).
        gc.disable()
        try:
            self._build(entries, tables, dead)
            notices = self._insert_all(entries, tables, dead)
        finally:
            gc.enable()
        self._settle([entry_id for entry_id, _ in entries], dead, notices)

    def _build(self, entries: list[Entry], tables: dict, dead: list[DeadLetter]) -> None:
        for entry_id, fields in entries:
            if not fields:  # claimed after deletion: nothing left to store
                continue
            try:
                built, indexes, failures = self.builder.rows(entry_id, fields)
            except PoisonEntry as exc:
                dead.append(DeadLetter(entry_id, "*", f"cannot decode: {exc}", fields))
                continue
            pending = tables[records.is_touch_entry(fields)]
            pending.rows.extend(built)
            pending.owners.extend((entry_id, index) for index in indexes)
            dead.extend(DeadLetter(entry_id, str(f.index), f.reason, _one_event(fields, f.record))
                        for f in failures)

    def _insert_all(self, entries: list[Entry], tables: dict, dead: list[DeadLetter]) -> list[tuple]:
        """Insert each table's rows; refused rows join ``dead``; return notices for the attributor."""
        by_id = dict(entries)
        decoded: dict[bytes, list] = {}  # an entry's records, decoded again only if one is refused
        notices: list[tuple] = []
        for is_touch, pending in tables.items():
            if is_touch and pending.rows:
                # A click re-delivered after a crash is stored again (harmless), but counted once.
                pending.rows = self._count_once(pending.rows)
            stored, refused = self._insert(pending.sql, pending.rows, list(range(len(pending.rows))))
            notices.extend(_notice(is_touch, pending.rows[i]) for i in stored)
            for i, reason in refused:
                entry_id, index = pending.owners[i]
                if entry_id not in decoded:
                    decoded[entry_id] = orjson.loads(by_id[entry_id][records.DATA])
                record = decoded[entry_id][index]
                dead.append(DeadLetter(entry_id, str(index), reason, _one_event(by_id[entry_id], record)))
        return notices

    def _insert(self, sql: str, rows: list[tuple], ids: list) -> tuple[list, list[tuple[object, str]]]:
        """Insert rows, isolating rows ClickHouse cannot take; return (stored ids, [(refused id, reason)])."""
        if not rows:
            return [], []
        backoff = Backoff(cap=self.settings.retry.backoff_cap_s)

        def transient(exc: BaseException) -> bool:
            # A refusal says nothing about the rows when systemic, and a block is tried twice more
            # before it is bisected; a single row refused is refused for what it holds.
            if isinstance(exc, ch_errors.ServerException):
                return exc.code in SYSTEMIC_CODES or len(rows) > 1 and backoff.failures < 2
            return True

        try:
            retry(lambda: self.ch.execute(sql, columns(rows), columnar=True), backoff=backoff,
                  errors=(*NETWORK_ERRORS, ch_errors.ServerException), when=transient,
                  on_failure=self._storage_failed)
            return ids, []
        except Exception as exc:
            # A refused row, or anything the driver raised while serialising the block
            # (AttributeError, TypeError, struct.error...): some row holds a value its column cannot
            # take. The driver dropped the connection; bisecting finds the row, and its batch-mates are stored.
            return self._split(sql, rows, ids, exc)

    def _split(self, sql, rows, ids, exc) -> tuple[list, list[tuple[object, str]]]:
        """Bisect a refused block so one bad row never holds back the others."""
        if len(rows) == 1:
            by = "refused by ClickHouse" if isinstance(exc, ch_errors.ServerException) else "cannot be written"
            log.warning("row %s %s: %s: %s", ids[0], by, type(exc).__name__, exc)
            return [], [(ids[0], f"{by}: {type(exc).__name__}: {str(exc)[:500]}")]
        mid = len(rows) // 2
        left_ok, left_bad = self._insert(sql, rows[:mid], ids[:mid])
        right_ok, right_bad = self._insert(sql, rows[mid:], ids[mid:])
        return left_ok + right_ok, left_bad + right_bad

    def _count_once(self, rows: list[tuple]) -> list[tuple]:
        return retry(lambda: count_once(self.ch, self.db, rows), errors=NETWORK_ERRORS,
                     backoff=Backoff(cap=self.settings.retry.backoff_cap_s), on_failure=self._storage_failed)

    def _storage_failed(self, exc: BaseException, delay: float) -> None:
        log.warning("ClickHouse insert failed (%s: %s); nothing acknowledged, retrying in %.1fs",
                    type(exc).__name__, str(exc).splitlines()[0][:200], delay)
        self.ch.disconnect()
        # No stop flag: wait even when stopping, the batch must be stored before we may exit (a
        # second signal forces it).

    def _settle(self, entry_ids: list[bytes], dead: list[DeadLetter], notices: list[tuple] = ()) -> None:
        """In one MULTI: dead letters aside, tell the attributor what was stored, acknowledge and delete.

        Being one transaction, a sink that dies before it leaves everything to be redelivered,
        and one that dies after has told the attributor about every stored row.
        """
        if not entry_ids:
            return
        pipe = self.redis.pipeline(transaction=True)
        if self.cluster and (dead or notices):
            # A MULTI spans one hash slot: the letters and notices (in {ct}) go first, then the
            # shard's acknowledgements. A sink dying between the two leaves its entries to be
            # redelivered, and their letters and notices are written twice: harmless, as a
            # requeued copy is stored once and a notice asks only to look again.
            first = self._letters_and_notices(self.redis.pipeline(transaction=True), dead, notices)
            self._redis_call(first.execute)
        else:
            self._letters_and_notices(pipe, dead, notices)
        for start in range(0, len(entry_ids), 10_000):
            chunk = entry_ids[start : start + 10_000]
            pipe.xack(self.stream, keys.SINK_GROUP, *chunk)
            pipe.xdel(self.stream, *chunk)
        self._redis_call(pipe.execute)
        self.stored += len(notices)
        self.dead += len(dead)
        if dead:
            log.warning("moved %d events to %s", len(dead), keys.DEAD_LETTER_STREAM)

    def _letters_and_notices(self, pipe, dead: list[DeadLetter], notices) -> redis.client.Pipeline:
        anonymize = self.settings.privacy.anonymize_ip
        for letter in dead:
            record = dict(letter.fields or {})
            # Kept for days, maybe requeued: no raw personal data, even from an entry an older
            # collector queued before it scrubbed at the door (pixel/scrub.py).
            if records.DATA in record:
                record[records.DATA] = scrub_records_json(record[records.DATA], anonymize)
            # The letter's own facts last: an entry's fields cannot pass for them.
            record.update({b"id": letter.entry_id, b"index": letter.index,
                           b"reason": scrub_opaque(letter.reason, anonymize).encode(), b"consumer": self.name.encode()})
            pipe.xadd(keys.DEAD_LETTER_STREAM, record)
        partitions = self.settings.attributor.partitions
        for (advertiser, kind), items in _group_notices(notices).items():
            # Capped (approximately) so that a deployment without an attributor cannot fill Redis.
            pipe.xadd(records.notice_stream(advertiser, partitions), records.encode_notice(advertiser, kind, items),
                      maxlen=1_000_000, approximate=True)
        return pipe

    # -- reclaiming ----------------------------------------------------------------------------

    def _reclaim_if_due(self) -> list[Entry]:
        idle_ms = self.settings.stream.claim_idle_ms
        now = time.monotonic()
        if now - self._last_reclaim.get(self.stream, 0.0) < min(idle_ms / 2000.0, 10.0):
            return []
        self._last_reclaim[self.stream] = now
        return self.reclaim(idle_ms)

    def reclaim(self, idle_ms: int) -> list[Entry]:
        """Take over entries pending longer than ``idle_ms``; dead-letter those delivered too often.

        XPENDING then XCLAIM rather than XAUTOCLAIM: only XPENDING tells how many times each entry
        was delivered, which is what decides that an entry is poison.
        """
        try:
            return self._reclaim(idle_ms)
        except redis.ResponseError as exc:
            # The stream (or its group) was deleted under us, as in `_read`: nothing is pending.
            if not (str(exc).startswith("NOGROUP") or "no such key" in str(exc)):
                raise
            self.ensure_group()
            return []

    def _reclaim(self, idle_ms: int) -> list[Entry]:
        self._forget_dead_consumers()
        pending = self._redis_call(
            self.redis.xpending_range, self.stream, keys.SINK_GROUP, min="-", max="+",
            count=self.settings.sink.read_count, idle=idle_ms,
        )
        if not pending:
            return []
        deliveries = {p["message_id"]: p["times_delivered"] for p in pending}
        claimed = self._redis_call(
            self.redis.xclaim, self.stream, keys.SINK_GROUP, self.name, idle_ms, list(deliveries)
        )
        limit = self.settings.sink.max_deliveries
        keep, dead, given_up = [], [], []
        for entry_id, fields in claimed:
            if deliveries.get(entry_id, 0) >= limit:
                given_up.append(entry_id)
                dead.extend(_letters_per_event(entry_id, f"not stored after {deliveries[entry_id]} deliveries",
                                               fields))
            else:
                keep.append((entry_id, fields))
        self._settle(given_up, dead)
        if keep:
            log.info("reclaimed %d entries left pending by other consumers", len(keep))
        return keep

    def _forget_dead_consumers(self) -> None:
        """Remove consumers that hold nothing and have been idle for a day (sinks long gone).

        Every sink process joins the group under a new name; without this the group's consumer
        list would grow with every restart.
        """
        for consumer in self._redis_call(self.redis.xinfo_consumers, self.stream, keys.SINK_GROUP):
            name = consumer["name"]
            name = name.decode() if isinstance(name, bytes) else name
            if consumer["pending"] == 0 and consumer["idle"] > DEAD_CONSUMER_IDLE_MS and name != self.name:
                self.redis.xgroup_delconsumer(self.stream, keys.SINK_GROUP, name)

    def _redis_call(self, fn, *args, **kwargs):
        """Call Redis, waiting out an outage: the stream is the only copy of unsettled events."""
        return retry(lambda: fn(*args, **kwargs), errors=(redis.ConnectionError, redis.TimeoutError),
                     backoff=Backoff(cap=self.settings.retry.backoff_cap_s), on_failure=_redis_failed)


def _redis_failed(exc: BaseException, delay: float) -> None:
    log.warning("Redis unavailable (%s); retrying in %.1fs", exc, delay)


class _Pending:
    """Rows bound for one table, and which entry and index each came from."""

    def __init__(self, sql: str) -> None:
        self.sql = sql
        self.rows: list[tuple] = []
        self.owners: list[tuple[bytes, int]] = []


def _notice(is_touch: bool, row: EventRow | TouchRow) -> tuple:
    """(advertiser, notice kind, key) of a stored row: the key as pixel/records.py's ConversionKey or TouchKey."""
    if is_touch:
        return row.advertiser_id, records.NOTICE_TOUCHES, records.touch_key(row)
    return row.advertiser_id, records.NOTICE_CONVERSIONS, records.conversion_key(row)


def _group_notices(notices) -> dict[tuple[str, str], list]:
    grouped: dict[tuple[str, str], list] = {}
    for advertiser, kind, key in notices:
        grouped.setdefault((advertiser, kind), []).append(key)
    return grouped



def _one_event(fields: dict, record: object) -> dict:
    """The fields of a dead letter holding one event of an entry (its kind kept, for touchpoints).

    A record orjson cannot write back (nested past its 254 levels) is written by the standard
    library's encoder, and failing that the letter keeps the whole entry: nothing is lost, and the
    letter's index still names the event.
    """
    try:
        data = orjson.dumps([record])
    except orjson.JSONEncodeError:
        try:
            data = json.dumps([record]).encode()
        except (RecursionError, TypeError, ValueError):
            return fields
    one = {records.ADVERTISER: fields.get(records.ADVERTISER, b""), records.COUNT: b"1", records.DATA: data}
    if records.KIND in fields:
        one[records.KIND] = fields[records.KIND]
    return one


def _letters_per_event(entry_id: bytes, reason: str, fields: dict) -> list[DeadLetter]:
    """Dead letters for an entry given up on: one per event where it decodes, so that a requeue
    stores each event on its own and one poison event cannot take its batch-mates with it again."""
    try:
        decoded = orjson.loads(fields[records.DATA])
    except Exception:
        decoded = None
    if not isinstance(decoded, list) or not decoded:
        return [DeadLetter(entry_id, "*", reason, fields)]
    return [DeadLetter(entry_id, str(index), reason, _one_event(fields, record))
            for index, record in enumerate(decoded)]
