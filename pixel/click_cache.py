"""Recent clicks in Redis, by click id, for the attributor's lookups.

ClickHouse is the record of every touchpoint, but it is slow at thousands of scattered
point lookups (each costs it about 70 us, whatever the granule size), and every conversion
carrying a click id needs one. So each click is also kept in Redis under its click id for as
long as any window can reach it (28 days from the click, plus a day); the attributor reads
them with one MGET per batch and asks ClickHouse only for what Redis does not have. About
200 bytes of Redis memory per click.
"""

from __future__ import annotations

import orjson
import redis
from redis.cluster import RedisCluster

from clicktrail import keys
from pixel.touchpoints import Touch

#: The longest click window, plus a day for late conversions.
TTL_S = 29 * 86_400


def key(advertiser_id: str, click_id: str) -> str:
    return f"{keys.CLICK_CACHE_PREFIX}{advertiser_id}:{click_id}"


def value(t: Touch) -> bytes:
    fields = [t.touch_ms, t.campaign_id, t.adgroup_id, t.ad_id, t.browser_id, t.email, t.phone, t.external_id,
              t.is_bot]
    # An imported click's further identifier values (a list of [kind, value]), only when it has
    # some: a redirect's click (the hot path) keeps its short entry.
    return orjson.dumps(fields + [t.more] if t.more else fields)


#: Values of an entry without further identifier values (``value``).
_PLAIN = 9


def ttl_s(touch_ms: int, now_s: float) -> int:
    """Seconds the click stays useful: 0 when it is already older than the longest window."""
    return max(0, int(touch_ms / 1000 + TTL_S - now_s))


def put(pipe: redis.client.Pipeline, touches: list[Touch], now_s: float) -> None:
    """Queue SETs for the clicks among ``touches`` on ``pipe`` (the caller executes it)."""
    for t in touches:
        expires = ttl_s(t.touch_ms, now_s)
        if t.kind == "click" and expires:
            pipe.set(key(t.advertiser_id, t.touch_id), value(t), ex=expires)


def get(r: redis.Redis, wanted: set[tuple[str, str]]) -> tuple[list[Touch], set[tuple[str, str]]]:
    """Look up (advertiser, click id) pairs; return the clicks found and the pairs not found.

    One round trip (MGETs of 5,000 keys in a pipeline) and one JSON parse for all the values. On a
    Redis Cluster the keys spread over all slots: redis-py's ``mget_nonatomic`` asks each node
    for its own (an MGET per slot, pipelined per node).
    """
    ordered = list(wanted)
    if isinstance(r, RedisCluster):
        raws = r.mget_nonatomic([key(a, c) for a, c in ordered]) if ordered else []
    else:
        pipe = r.pipeline(transaction=False)
        for start in range(0, len(ordered), 5000):
            pipe.mget([key(a, c) for a, c in ordered[start : start + 5000]])
        raws = [raw for reply in pipe.execute() for raw in reply]
    hits = [(pair, raw) for pair, raw in zip(ordered, raws) if raw is not None]
    values = orjson.loads(b"[" + b",".join(raw for _, raw in hits) + b"]") if hits else []
    # Touch(...), not Touch._make: entries written before is_bot was added have one value less.
    found = [Touch(advertiser, "click", click_id, *value) if len(value) <= _PLAIN
             else Touch(advertiser, "click", click_id, *value[:_PLAIN], more=tuple(map(tuple, value[_PLAIN])))
             for ((advertiser, click_id), _), value in zip(hits, values)]
    missing = {pair for pair, raw in zip(ordered, raws) if raw is None}
    return found, missing
