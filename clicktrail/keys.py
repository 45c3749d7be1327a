"""Every Redis key clicktrail uses, in one place.

All keys share the ``ct:`` prefix so a shared Redis can be inspected (``SCAN MATCH ct:*``)
and so no other application's keys are ever touched.
"""

PREFIX = "ct:"

#: Stream of accepted events, one entry per accepted request: fields ``a`` (advertiser id),
#: ``n`` (number of events), ``d`` (the events as a JSON array) and, for clicks recorded by the
#: redirect, ``k`` = ``t`` (touchpoints). The sink deletes entries
#: once stored, so its length is the backlog in requests.
EVENTS_STREAM = PREFIX + "events"

#: Consumer group of the sink workers on ``EVENTS_STREAM``.
SINK_GROUP = "sink"

#: What the sink gave up on: fields ``id`` (original entry id), ``index`` (the event's position in
#: the entry, or ``*`` for the whole entry), ``reason``, ``consumer``, ``a`` and ``d`` (the events).
DEAD_LETTER_STREAM = PREFIX + "events:dead"

#: Hash pixel id -> JSON ``{"advertiser_id", "domains": [...], "created_at"}``.
PIXELS = PREFIX + "pixels"

#: Hash event source id -> JSON ``{"advertiser_id", "kind", "name", "created_at"}``: the event
#: sources that are not pixels (a TikTok App ID, an offline or CRM event set; see pixel/sources.py).
#: An id is a pixel or a source, never both.
SOURCES = PREFIX + "sources"

#: Hash advertiser id -> JSON ``{"advertiser_id", "created_at", "settings": {...}}``.
ADVERTISERS = PREFIX + "advertisers"

#: Hash advertiser id -> JSON list of every site domain of its pixels (click redirect targets).
ADVERTISER_DOMAINS = PREFIX + "advertiser_domains"

#: Hash SHA-256(token) -> JSON ``{"advertiser_id", "scopes": [...], "created_at"}``.
TOKENS = PREFIX + "tokens"

#: Stream of what the attributor must (re)consider, written by the sink in the same MULTI as its
#: acknowledgements and by imports: fields ``a`` (advertiser), ``k`` (``c`` conversions or ``t``
#: touchpoints) and ``d`` (JSON list of keys).
ATTRIBUTION_STREAM = PREFIX + "attribution"
ATTRIBUTOR_GROUP = "attributor"

#: Name of the attributor that may work now (a lease with an expiry); others stand by.
ATTRIBUTOR_LEASE = PREFIX + "attributor:lease"

#: Recent clicks by click id, ``ct:click:<advertiser>:<click id>`` -> JSON, expiring 29 days after
#: the click (see pixel/click_cache.py).
CLICK_CACHE_PREFIX = PREFIX + "click:"

#: Hash ``<pixel_id>:<reason>`` -> count of events the collector rejected (diagnostics).
REJECTED_COUNTS = PREFIX + "stats:rejected"

#: Write time (ms) up to which everything the attributor stamped is stored; the optimizer feed's
#: cursors never go past it (see reporting/feed.py).
FEED_WATERMARK = PREFIX + "feed:watermark"

#: Erasure requests not yet done: sorted set request id -> requested time (ms). See pixel/erasure.py.
ERASURE_QUEUE = PREFIX + "erasures"

#: Hash advertiser id -> the latest retention cutoff applied (ms): nothing of the advertiser older
#: than it is held any more (reports' ``data_complete_from``). See attribution/retention.py.
RETENTION_APPLIED = PREFIX + "retention:applied"

#: When the retention job last ran (ms): the attributor runs it once a day, across restarts.
RETENTION_LAST_RUN = PREFIX + "retention:last_run"

#: Hash ``<advertiser>:<stream>`` -> accepted events dropped unstored from ``events`` or
#: ``dead`` letters for being older than the buffers' maximum age (see sink/expiry.py).
EXPIRED_COUNTS = PREFIX + "stats:expired"


def erasure_audit(request_id: str) -> str:
    """The audit record of an erasure request (JSON; kept for good, holds no identifier)."""
    return f"{PREFIX}erasure:{request_id}"


def erasure_work(request_id: str) -> str:
    """An erasure's identifiers and progress (JSON), deleted when it is done."""
    return f"{PREFIX}erasure:{request_id}:work"


def delay_curves(advertiser_id: str) -> str:
    """Hash event -> JSON curve of conversion delays (attribution/delays.py), refreshed every minute by
    the attributor and read by the optimizer feed's ``estimate=true``; expires a day after the last refresh."""
    return f"{PREFIX}delays:{advertiser_id}"
