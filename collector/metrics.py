"""Prometheus metrics, correct under several gunicorn workers.

With ``PROMETHEUS_MULTIPROC_DIR`` set (``clicktrail collector`` sets it before any worker
starts), each worker writes its samples to memory-mapped files there and ``/metrics`` sums
them, so a scrape sees every worker, not just the one that answered it.
"""

from __future__ import annotations

import os
from functools import lru_cache

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess, values
from prometheus_client.core import GaugeMetricFamily

from clicktrail.lifecycle import pid

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Every update checks the process id to notice a fork; by default that is a system call
    # (os.getpid), four per collector request. The same answer, kept (see lifecycle.pid), through
    # the hook prometheus_client documents for a custom process identifier (MultiProcessValue's
    # docstring, client_python#514), not through a private attribute.
    values.ValueClass = values.MultiProcessValue(process_identifier=pid)

EVENTS_ACCEPTED = Counter("clicktrail_events_accepted", "Events queued for storage", ["source"])
EVENTS_REJECTED = Counter("clicktrail_events_rejected", "Events refused, by reason", ["source", "reason"])
REQUESTS = Counter("clicktrail_requests", "Collector requests by endpoint and status", ["endpoint", "status"])
LATENCY = Histogram(
    "clicktrail_request_seconds",
    "Collector request latency",
    ["endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)


class StreamCollector:
    """Reads the streams' length, pending and dead-letter counts at scrape time (summed over shards)."""

    def __init__(self, redis_client, streams: list[str], group: str, dead: str) -> None:
        self._redis = redis_client
        self._streams, self._group, self._dead = list(streams), group, dead

    def collect(self):
        length = GaugeMetricFamily("clicktrail_stream_length", "Entries in the event stream (backlog)")
        pending = GaugeMetricFamily("clicktrail_stream_pending", "Entries read by a sink but not yet stored")
        dead = GaugeMetricFamily("clicktrail_dead_letter_length", "Entries in the dead-letter stream")
        try:
            # One key per command: a cluster's pipeline sends each to the node of its slot.
            pipe = self._redis.pipeline(transaction=False)
            pipe.xlen(self._dead)
            present = [stream for stream in self._streams if self._redis.exists(stream)]
            for stream in present:
                pipe.xlen(stream)
                pipe.xinfo_groups(stream)
            dead_len, *replies = pipe.execute()
        except Exception:  # a scrape must not fail because Redis is down; the gauges are just absent
            return []
        lengths, groups = replies[0::2], replies[1::2]
        length.add_metric([], sum(lengths))
        dead.add_metric([], dead_len)
        pending.add_metric([], sum(next((g["pending"] for g in found if _name(g) == self._group), 0)
                                   for found in groups))
        return [length, pending, dead]


def _name(group: dict) -> str:
    name = group.get("name")
    return name.decode() if isinstance(name, bytes) else str(name)


def render(stream_collector: StreamCollector) -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY as registry  # single process: tests, dev server
    scrape = CollectorRegistry()
    scrape.register(stream_collector)
    return generate_latest(registry) + generate_latest(scrape)


# Looking up a labelled child validates and hashes its labels on every call; the request path
# keeps the children it has used. Label values are bounded (sources, endpoints, status codes and
# the fixed set of rejection rules). prometheus_client notices a fork by itself.
@lru_cache(maxsize=4096)
def _child(metric, labels: tuple):
    return metric.labels(*labels)


def count_accepted(source: str, events: int) -> None:
    if events:
        _child(EVENTS_ACCEPTED, (source,)).inc(events)


def count_rejected(source: str, reason: str) -> None:
    _child(EVENTS_REJECTED, (source, reason)).inc()


def observe_request(endpoint: str, status: int, seconds: float) -> None:
    _child(REQUESTS, (endpoint, str(status))).inc()
    _child(LATENCY, (endpoint,)).observe(seconds)
