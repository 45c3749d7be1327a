"""Redis clients for the two kinds of caller.

The collector wants a client that fails fast: a request that cannot reach Redis within the
configured timeout is answered 503 at once rather than tying up a gunicorn worker. Workers
(sink, CLI) want patience instead: a few retries with backoff.

redis-py's connection pool notices a fork by its PID and starts afresh in the child, so a
client built in gunicorn's master before the workers fork is safe to use in each worker.

A URL ``redis+cluster://host:port,host:port/`` (``rediss+cluster://`` for TLS, user and password
as in a redis:// URL) names a Redis Cluster by some of its nodes: the client is redis-py's
``RedisCluster``, which learns the rest of the cluster from them and follows it through
failovers and resharding. Building one switches the process to the cluster's key names
(clicktrail/keys.py).
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

from clicktrail import keys
from clicktrail.errors import ConfigError

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def is_cluster(client) -> bool:
    return isinstance(client, RedisCluster)


def fast(url: str, timeout_ms: int) -> redis.Redis:
    """A client for the request path: no retries, every socket operation bounded by ``timeout_ms``."""
    timeout = timeout_ms / 1000.0
    settings = dict(socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))
    if is_cluster_url(url):
        # Redirections (MOVED, ASK) are still followed; a node that does not answer is a 503 now.
        return cluster(url, **settings)
    return redis.Redis.from_url(url, **settings, retry_on_timeout=False, health_check_interval=0)


def patient(url: str) -> redis.Redis:
    """A client for workers and the CLI: retries connection errors with jittered backoff."""
    settings = dict(socket_timeout=30, socket_connect_timeout=5,
                    retry=Retry(ExponentialWithJitterBackoff(base=0.1, cap=2.0), 3))
    if is_cluster_url(url):
        return cluster(url, **settings)
    return redis.Redis.from_url(url, **settings, health_check_interval=30)


def cluster(url: str, **settings) -> RedisCluster:
    """A ``RedisCluster`` client for a ``redis+cluster://`` URL (see the module's docstring)."""
    nodes, username, password, tls = cluster_address(url)
    keys.use_cluster_layout()
    return RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in nodes], username=username,
                        password=password, ssl=tls, **settings)


def cluster_address(url: str) -> tuple[list[tuple[str, int]], str | None, str | None, bool]:
    """(nodes as (host, port), username, password, TLS) of a ``redis+cluster://`` URL.

    Raises ConfigError naming what is wrong (a database other than 0, no node, a bad host:port),
    never the whole URL: it may hold a password.
    """
    parts = urlsplit(url)
    if parts.scheme not in CLUSTER_SCHEMES:
        raise ConfigError(f"a Redis Cluster URL starts with redis+cluster:// or rediss+cluster://, not {parts.scheme}://")
    if parts.path.strip("/") not in ("", "0"):
        raise ConfigError(f"a Redis Cluster has only database 0; remove {parts.path!r} from the URL")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    nodes = [_node(address) for address in hosts.split(",") if address]
    if not nodes:
        raise ConfigError("the Redis Cluster URL names no node (redis+cluster://host:port,host:port/)")
    return nodes, unquote(username) or None, unquote(password) or None, parts.scheme == "rediss+cluster"


def _node(address: str) -> tuple[str, int]:
    """``host:port``, ``host`` (port 6379) or ``[v6 address]:port``."""
    host, port = address, ""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest.removeprefix(":")
    elif ":" in address:
        host, _, port = address.rpartition(":")
    try:
        number = int(port or 6379)
    except ValueError:
        number = 0
    if not host or not 0 < number < 65536:
        raise ConfigError(f"{address!r} in the Redis Cluster URL is not host:port")
    return host, number


def ensure_group(r: redis.Redis, stream: str, group: str) -> None:
    """Create a consumer group reading ``stream`` from its start (and the stream, if missing).

    From the start, so entries added before any consumer ran are read too; an existing group is fine.
    """
    try:
        r.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
