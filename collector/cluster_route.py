"""The collector's calls on a Redis Cluster, each sent straight to the master of its key's slot.

redis-py's ``RedisCluster`` keeps the map of slots to nodes and follows the cluster through
failovers; its command layer, though, costs more CPU per call than the rest of a collector
request (see docs/scaling.md). So the collector asks it only where a key lives, and sends its
two calls per request on sockets of its own (collector/redis_line.py's ``SocketLine``, one per
thread and node). When a node has gone, or answers that the slot moved, the map is read again
from the cluster and the request fails with the usual 503 (a MOVED is retried once at the new
master at once: the command was not run).

For a cluster reached over TLS, or whatever else a socket of our own cannot speak, the calls go
through redis-py's cluster client: slower, but correct.
"""

from __future__ import annotations

import threading

import redis
from redis.cluster import RedisCluster

from clicktrail.lifecycle import pid
from collector.redis_line import Address, SocketLine

#: Error replies that say the map of slots is out of date (or the cluster is changing it).
_STALE_MAP = ("MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN")


class ClusterRoute:
    def __init__(self, client: RedisCluster) -> None:
        self._client = client
        self._local = threading.local()
        self._slots: dict[str, int] = {}

    @property
    def plain(self) -> bool:
        """True when the nodes speak plain TCP, which a socket of our own can."""
        node = self._client.get_default_node()
        return node.redis_connection.connection_pool.connection_class is redis.Connection

    def call(self, key: str, packed: bytes, on_noscript) -> list:
        """Send ``packed`` (one command on ``key``) to the master of ``key``'s slot; return its reply.

        ``on_noscript(line)`` loads the script on a node that lacks it.
        """
        try:
            return self._send(key, packed, on_noscript)
        except redis.ResponseError as exc:
            if not str(exc).startswith(_STALE_MAP):
                raise
            self._refresh()
            if not str(exc).startswith("MOVED"):
                raise
            return self._send(key, packed, on_noscript)
        except redis.ConnectionError:
            # A socket kept across a node's restart fails on first use; one fresh attempt (after
            # reading the map again: the node may have been replaced) tells it from a node down.
            self._refresh()
            return self._send(key, packed, on_noscript)
        except redis.TimeoutError:
            self._refresh()
            raise

    def _send(self, key: str, packed: bytes, on_noscript) -> list:
        line = self._line(key)
        try:
            return line.call(packed)
        except redis.exceptions.NoScriptError:
            on_noscript(line)
            return line.call(packed)

    def _line(self, key: str) -> SocketLine:
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = self._client.keyslot(key)
        node = self._client.nodes_manager.get_node_from_slot(slot)
        lines = getattr(self._local, "lines", None)
        if lines is None or getattr(self._local, "pid", None) != pid():
            lines = self._local.lines = {}
            self._local.pid = pid()
        line = lines.get(node.name)
        if line is None:
            line = lines[node.name] = SocketLine(_address(node))
        return line

    def _refresh(self) -> None:
        try:
            self._client.nodes_manager.initialize()
        except redis.RedisError:
            pass  # no node answers now; the next request tries again


def _address(node) -> Address:
    settings = node.redis_connection.connection_pool.connection_kwargs
    timeout = settings.get("socket_timeout")
    return Address(host=node.host, port=node.port, username=settings.get("username") or "",
                   password=settings.get("password") or "", client_name=settings.get("client_name") or "",
                   keepalive=bool(settings.get("socket_keepalive")),
                   connect_timeout=settings.get("socket_connect_timeout") or timeout, timeout=timeout)
