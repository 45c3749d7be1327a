"""Every Redis key clicktrail uses, in one place.

All keys share the ``ct:`` prefix so a shared Redis can be inspected (``SCAN MATCH ct:*``)
and so no other application's keys are ever touched.

On a Redis Cluster (``redis+cluster://`` URLs, see clicktrail/redis_client.py) a Lua call or a
MULTI may touch only keys of one hash slot. There the shared keys (registry, attribution notices,
dead letters, leases) carry the hash tag ``{ct}`` and so live together in one slot, while the event
stream is split into shards whose keys carry a tag each (``ct:{events:N}``) so that the cluster
spreads them over its masters. A process talks to one kind of Redis: ``use_cluster_layout()``,
called once when its client is built for a cluster, renames the shared keys below. The click
cache stays untagged on purpose: its keys are read and written one by one and should spread.
"""

PREFIX = "ct:"
#: The prefix of the shared keys on a Redis Cluster: one hash slot for all of them.
CLUSTER_PREFIX = "{ct}:"

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
#: acknowledgements and by imports: fields ``a`` (advertiser), ``k`` (``c`` conversions, ``t``
#: touchpoints or ``r`` exchange rates posted) and ``d`` (JSON list of keys). This is partition 0's;
#: with ``CLICKTRAIL_ATTRIBUTION_PARTITIONS`` > 1 the others are ``attribution_stream(n)``, and an
#: advertiser's notices all go to one (``records.notice_partition``).
ATTRIBUTION_STREAM = PREFIX + "attribution"
ATTRIBUTOR_GROUP = "attributor"

#: Name of the attributor that may work on partition 0 now (a lease with an expiry); others
#: stand by or work on other partitions (``attributor_lease(n)``).
ATTRIBUTOR_LEASE = PREFIX + "attributor:lease"

#: Hash attributor name -> ``<expires ms>:<partitions>``: the live attributors, each of which
#: works on the partitions ``n`` with ``n % live == its rank`` (see attribution/partitions.py).
ATTRIBUTORS = PREFIX + "attributors"

#: Recent clicks by click id, ``ct:click:<advertiser>:<click id>`` -> JSON, expiring 29 days after
#: the click (see pixel/click_cache.py). Untagged in cluster mode too (see above).
CLICK_CACHE_PREFIX = "ct:click:"

#: Hash ``<pixel_id>:<reason>`` -> count of events the collector rejected (diagnostics).
REJECTED_COUNTS = PREFIX + "stats:rejected"

#: Write time (ms) up to which everything the attributor stamped is stored; the optimizer feed's
#: cursors never go past it (see reporting/feed.py). Partition 0's; each partition has its own
#: (``feed_watermark(n)``), moved only by that partition's one writer.
FEED_WATERMARK = PREFIX + "feed:watermark"

#: Hash advertiser id -> version (µs) of its latest exchange-rate posting. The optimizer feed keeps
#: answers by it, so a rate posted later is in the next poll's values, never a kept answer's.
EXCHANGE_RATES_VERSION = PREFIX + "exchange_rates:version"

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

#: Hash schedule id -> JSON of a scheduled report (reporting/schedules.py), webhook secret included.
SCHEDULES = PREFIX + "schedules"

#: Names (of constants here: a cluster renames the keys) of the hashes of JSON objects (schedules,
#: alert rules) whose ``email.to`` lists the e-mail addresses
#: reports go to: the advertiser's own staff, configured by the operator, not tracked people. The
#: only place a raw address may be kept (tests/test_privacy_scan.py allows it there and nowhere
#: else); add a new owner of e-mail deliveries here.
RECIPIENT_HOLDERS = ("SCHEDULES", "RULES")

#: Name of the scheduler that runs due schedules now (a lease with an expiry); others stand by.
SCHEDULER_LEASE = PREFIX + "scheduler:lease"

#: When the leading scheduler last looked for due schedules (ms).
SCHEDULER_TICK = PREFIX + "scheduler:tick"

#: Hash rule id -> JSON of an alert rule (reporting/rules.py), webhook secret included.
RULES = PREFIX + "rules"

#: Hash rule id -> JSON ``{"state", "since", "value", "previous", "evaluated_at", "window_start",
#: "window_end", "transitions", "outbox", "last_notification"}``: where each rule stands and the
#: transition notifications not yet delivered (reporting/rule_runner.py). Written only by compare-
#: and-set with ``RULES`` (one slot on a cluster), so a deleted rule's state is never written back.
RULE_STATES = PREFIX + "rule_states"


def schedule_periods(schedule_id: str) -> str:
    """Hash period (local date of the run) -> JSON ``{"state", "attempts", "error", "at", "retry_at"}``
    of one schedule's runs: a ``delivered`` period is never delivered again. Deleted with the schedule."""
    return f"{PREFIX}schedule:{schedule_id}:periods"


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


# -- shards of the event stream ---------------------------------------------------------------

#: The shared keys above that move into the ``{ct}`` slot on a cluster (by their name here).
_SHARED = ("DEAD_LETTER_STREAM", "PIXELS", "SOURCES", "ADVERTISERS", "ADVERTISER_DOMAINS", "TOKENS",
           "ATTRIBUTION_STREAM", "ATTRIBUTOR_LEASE", "ATTRIBUTORS", "REJECTED_COUNTS", "FEED_WATERMARK",
           "ERASURE_QUEUE", "SCHEDULES", "SCHEDULER_LEASE", "SCHEDULER_TICK", "RULES", "RULE_STATES")
_cluster = False


def event_stream(shard: int) -> str:
    """The stream of shard ``shard`` (0-based) of the events.

    Shard 0 on a single Redis is ``ct:events``, the one stream there was before shards: a
    deployment that moves from one shard to several keeps its backlog there. Every other shard,
    and every shard on a cluster, is ``ct:{events:N}``: its own hash tag, so the cluster puts
    each shard where its slot lives.
    """
    if shard == 0 and not _cluster:
        return PREFIX + "events"
    return f"ct:{{events:{shard}}}"


def event_streams(shards: int) -> list[str]:
    return [event_stream(shard) for shard in range(shards)]


def is_cluster_layout() -> bool:
    return _cluster


def use_cluster_layout() -> None:
    """Rename the shared keys for a Redis Cluster: ``{ct}:pixels`` and so on, one slot for them all.

    Called by clicktrail/redis_client.py when it builds a cluster client; a process talks to one
    Redis deployment, so the names are the process's. Idempotent.
    """
    global _cluster, PREFIX, EVENTS_STREAM
    if _cluster:
        return
    _cluster = True
    names = globals()
    for name in _SHARED:
        names[name] = CLUSTER_PREFIX + names[name].removeprefix("ct:")
    PREFIX = CLUSTER_PREFIX
    EVENTS_STREAM = event_stream(0)


def _of_partition(key: str, partition: int) -> str:
    # Partition 0 keeps the unpartitioned name: one partition is the layout of before partitions,
    # and partition 0's keys never move when the count changes.
    return key if partition == 0 else f"{key}:{partition}"


def attribution_stream(partition: int) -> str:
    """The notices of one partition of the advertisers (``ATTRIBUTION_STREAM`` for partition 0)."""
    return _of_partition(ATTRIBUTION_STREAM, partition)


def attributor_lease(partition: int) -> str:
    """Who may attribute one partition now (``ATTRIBUTOR_LEASE`` for partition 0)."""
    return _of_partition(ATTRIBUTOR_LEASE, partition)


def feed_watermark(partition: int) -> str:
    """Up to which stamp one partition's writes are stored (``FEED_WATERMARK`` for partition 0)."""
    return _of_partition(FEED_WATERMARK, partition)
