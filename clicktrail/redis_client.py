"""Redis clients for the two kinds of caller.

The collector wants a client that fails fast: a request that cannot reach Redis within the
configured timeout is answered 503 at once rather than tying up a gunicorn worker. Workers
(sink, CLI) want patience instead: a few retries with backoff.

redis-py's connection pool notices a fork by its PID and starts afresh in the child, so a
client built in gunicorn's master before the workers fork is safe to use in each worker.
"""

from __future__ import annotations

import redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry


def fast(url: str, timeout_ms: int) -> redis.Redis:
    """A client for the request path: no retries, every socket operation bounded by ``timeout_ms``."""
    timeout = timeout_ms / 1000.0
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        health_check_interval=0,
    )


def patient(url: str) -> redis.Redis:
    """A client for workers and the CLI: retries connection errors with jittered backoff."""
    return redis.Redis.from_url(
        url,
        socket_timeout=30,
        socket_connect_timeout=5,
        retry=Retry(ExponentialWithJitterBackoff(base=0.1, cap=2.0), 3),
        health_check_interval=30,
    )


def ensure_group(r: redis.Redis, stream: str, group: str) -> None:
    """Create a consumer group reading ``stream`` from its start (and the stream, if missing).

    From the start, so entries added before any consumer ran are read too; an existing group is fine.
    """
    try:
        r.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
