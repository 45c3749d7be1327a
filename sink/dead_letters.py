"""The dead-letter stream: what the sink could not store, kept with the reason, to inspect and requeue."""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import redis

from clicktrail import keys, redis_client
from pixel import records

#: Fields of a dead letter that make up the original stream entry.
ENTRY_FIELDS = records.ENTRY_FIELDS


def listing(r: redis.Redis, count: int) -> Iterator[dict]:
    """The oldest ``count`` dead letters, described."""
    for letter_id, fields in r.xrange(keys.DEAD_LETTER_STREAM, count=count):
        yield {
            "id": letter_id.decode(),
            "entry": fields.get(b"id", b"").decode(),
            "index": fields.get(b"index", b"*").decode(),
            "reason": fields.get(b"reason", b"").decode(errors="replace"),
            "advertiser_id": fields.get(records.ADVERTISER, b"").decode(errors="replace"),
            "events": int(fields.get(records.COUNT, b"1") or 1),
        }


def requeue(r: redis.Redis, count: int, shards: int = 1) -> int:
    """Put the oldest ``count`` dead letters back on the event streams (after the cause is fixed).

    Each letter moves in one MULTI: added to the stream and removed from the dead letters
    together, so a letter is never lost nor requeued twice. Copies of events already stored
    are harmless: storage counts each event once. With several shards a letter goes to the shard
    its id hashes to. On a Redis Cluster the two keys are in different slots, so a letter is
    added, then removed: a crash in between requeues it twice, which storage folds.
    """
    cluster = redis_client.is_cluster(r)
    moved = 0
    start = "-"
    while moved < count:
        page = r.xrange(keys.DEAD_LETTER_STREAM, min=start, count=min(count - moved, 1000))
        if not page:
            break
        for letter_id, fields in page:
            entry = {name: fields[name] for name in ENTRY_FIELDS if name in fields}
            if records.DATA not in entry or records.ADVERTISER not in entry:  # nothing to store: left for inspection, passed over
                continue
            stream = keys.event_stream(zlib.crc32(letter_id) % shards)
            if cluster:
                r.xadd(stream, entry)
                r.xdel(keys.DEAD_LETTER_STREAM, letter_id)
            else:
                pipe = r.pipeline(transaction=True)
                pipe.xadd(stream, entry)
                pipe.xdel(keys.DEAD_LETTER_STREAM, letter_id)
                pipe.execute()
            moved += 1
        start = "(" + page[-1][0].decode()  # exclusive: the letters passed over stay behind
    return moved
