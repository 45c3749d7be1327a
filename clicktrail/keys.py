"""Every Redis key clicktrail uses, in one place.

All keys share the ``ct:`` prefix so a shared Redis can be inspected (``SCAN MATCH ct:*``)
and so no other application's keys are ever touched.
"""

PREFIX = "ct:"

#: Stream of accepted events, one entry per event: fields ``a`` (advertiser id) and ``d``
#: (the event as JSON). The sink deletes entries once stored, so its length is the backlog.
EVENTS_STREAM = PREFIX + "events"

#: Consumer group of the sink workers on ``EVENTS_STREAM``.
SINK_GROUP = "sink"

#: Entries the sink gave up on: fields ``id`` (original entry id), ``reason``, ``a``, ``d``.
DEAD_LETTER_STREAM = PREFIX + "events:dead"

#: Hash pixel id -> JSON ``{"advertiser_id", "domains": [...], "created_at"}``.
PIXELS = PREFIX + "pixels"

#: Hash advertiser id -> JSON ``{"advertiser_id", "created_at", "settings": {...}}``.
ADVERTISERS = PREFIX + "advertisers"

#: Hash SHA-256(token) -> JSON ``{"advertiser_id", "scopes": [...], "created_at"}``.
TOKENS = PREFIX + "tokens"

#: Hash ``<pixel_id>:<reason>`` -> count of events the collector rejected (diagnostics).
REJECTED_COUNTS = PREFIX + "stats:rejected"
