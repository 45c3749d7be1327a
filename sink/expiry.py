"""The buffers' maximum age: entries older than it leave the event stream and the dead letters.

Both hold what clients sent (hashed identifiers, anonymised IPs, URLs), so they may not keep it
for ever. An entry of the event stream that old is an accepted event that was never stored (the
sink could not reach ClickHouse for weeks, or its entry was stuck): dropping it loses data, so
every drop is counted per advertiser (``keys.EXPIRED_COUNTS``, shown by diagnostics) and logged as
an error. A dead letter that old was never requeued by an operator.

Entries are deleted one by one (XDEL), not with XTRIM MINID, so that an entry the sink stores
and deletes at the same moment is not counted as lost: only the entries this call deleted are.
"""

from __future__ import annotations

import logging
import time

import orjson
import redis

from clicktrail import keys
from pixel import records

log = logging.getLogger(__name__)

#: Which buffers expire, by the name their counts go under.
BUFFERS = {"events": keys.EVENTS_STREAM, "dead": keys.DEAD_LETTER_STREAM}
PAGE = 1000


def expire(r: redis.Redis, max_age_days: int, now_s: float | None = None) -> dict[str, dict[str, int]]:
    """Drop entries older than ``max_age_days`` from both buffers; return events dropped per buffer and advertiser."""
    now_s = time.time() if now_s is None else now_s
    min_id = int((now_s - max_age_days * 86_400) * 1000)
    dropped = {name: _expire_stream(r, stream, min_id) for name, stream in BUFFERS.items()}
    for name, by_advertiser in dropped.items():
        for adv, count in by_advertiser.items():
            r.hincrby(keys.EXPIRED_COUNTS, f"{adv}:{name}", count)
            what = "accepted events were never stored" if name == "events" else "dead-lettered events were never requeued"
            log.error("buffer max age (%d days): dropped %d events of advertiser %s from %s; these %s",
                      max_age_days, count, adv, BUFFERS[name], what)
    return dropped


def _expire_stream(r: redis.Redis, stream: str, min_id: int) -> dict[str, int]:
    by_advertiser: dict[str, int] = {}
    while True:
        page = r.xrange(stream, max=str(min_id - 1), count=PAGE) if min_id > 0 else []
        if not page:
            return by_advertiser
        pipe = r.pipeline(transaction=True)
        for entry_id, _ in page:
            pipe.xdel(stream, entry_id)
            if stream == keys.EVENTS_STREAM:  # nobody will acknowledge it any more
                pipe.xack(stream, keys.SINK_GROUP, entry_id)
        replies = pipe.execute(raise_on_error=False)
        step = 2 if stream == keys.EVENTS_STREAM else 1
        for (_, fields), deleted in zip(page, replies[::step]):
            if deleted == 1:
                adv = fields.get(records.ADVERTISER, b"?").decode(errors="replace")
                by_advertiser[adv] = by_advertiser.get(adv, 0) + _events_in(fields)
        if len(page) < PAGE:
            return by_advertiser


def _events_in(fields: dict) -> int:
    """Events an entry (or a dead letter) holds: its records, or its count when they cannot be read."""
    try:
        data = orjson.loads(fields[records.DATA])
        if isinstance(data, list):
            return len(data)
    except (KeyError, orjson.JSONDecodeError):
        pass
    try:
        return int(fields.get(records.COUNT, b"1"))
    except ValueError:
        return 1
