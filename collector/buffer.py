"""Append validated events to the Redis Stream in one round trip.

A Lua script checks, atomically and in one call: the pixel exists, the site domain or the
token may send for it, the stream is under its length guard; then it adds the request's events
as one stream entry and counts the rejected ones for diagnostics. One call per request.

The events may be split over several streams (``CLICKTRAIL_STREAM_SHARDS``): a request goes to
the shard its pixel and browser id hash to (``shard_of``), so one browser's events stay in one
stream, in order, while a busy pixel's browsers spread over all of them. On a Redis Cluster the
registry lives in one hash slot and each shard in its own, and a Lua call may touch one slot
only: there the same script checks the request in the registry's slot (with no events to add),
then ``append_stream.lua`` adds the entry in the shard's slot: two calls (docs/scaling.md).

With ``wait_replicas`` (``CLICKTRAIL_REDIS_WAIT_REPLICAS``), the entry's master is then asked
``WAIT`` on the connection that wrote it: the request is acknowledged only once that many
replicas hold the entry, so a master that crashes afterwards loses nothing acknowledged.
"""

from __future__ import annotations

import threading
import zlib
from typing import NamedTuple

import orjson
import redis

from clicktrail import keys, redis_client, scripting
from clicktrail.errors import BadRequest, BufferUnavailable, Forbidden, NotFound, Unauthorized
from collector.cluster_route import ClusterRoute
from collector.redis_line import ConnectionLine, SocketLine, bulk, command, line_for
from clicktrail.config import PrivacySettings
from collector.privacy import before_queue
from pixel.geo import Locator, no_locator, place_records
from pixel.records import EventRecord, TouchRecord, encode_records
from pixel.registry import host_allowed
from pixel.sources import describe

# The scripts (clicktrail/lua/append_events.lua, append_touch.lua) hold their KEYS and ARGV.
_APPEND_LUA = scripting.source("append_events")
_APPEND_TOUCH_LUA = scripting.source("append_touch")
_APPEND_STREAM_LUA = scripting.source("append_stream")


class Appended(NamedTuple):
    advertiser_id: str
    site_domain: str  # the pixel's registered domain the request's site matched ("" when not checked)


class EventBuffer:
    """The collector's handle on the stream."""

    def __init__(self, client: redis.Redis, max_len: int, retry_after_s: int, shards: int = 1,
                 locate: Locator = no_locator, privacy: PrivacySettings = PrivacySettings(), *,
                 wait_replicas: int = 0, wait_timeout_ms: int = 50) -> None:
        self._client = client
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = wait_timeout_ms
        self._wait = command(b"WAIT", str(wait_replicas).encode(), str(wait_timeout_ms).encode())
        self._locate = locate
        self._privacy = privacy
        self._local = threading.local()
        self._sha = client.register_script(_APPEND_LUA).sha
        self._touch_script = client.register_script(_APPEND_TOUCH_LUA)
        self._max_len = max_len
        self._retry_after = retry_after_s
        self.shards = shards
        self.streams = keys.event_streams(shards)
        self._cluster = redis_client.is_cluster(client)
        # Each shard's EVALSHA call's fixed head in Redis's wire format, packed once (see _packed).
        self._heads = [_head(self._sha, [stream, *_registry_keys()]) for stream in self.streams]
        if self._cluster:
            self._check_script = client.register_script(_APPEND_LUA)
            self._stream_script = client.register_script(_APPEND_STREAM_LUA)
            # The check's own first key: in the registry's slot, never written (it adds no events).
            self._check_keys = [keys.PREFIX + "events:check", *_registry_keys()]
            self._check_head = _head(self._sha, self._check_keys)
            self._stream_heads = [_head(self._stream_script.sha, [stream]) for stream in self.streams]
            route = ClusterRoute(client)
            self._route = route if route.plain else None

    def shard_of(self, pixel_id: str, records: list) -> int:
        """The shard of a request: a stable hash (CRC-32, the same in every process) of its pixel
        and its first event's browser id (the event id when it has none)."""
        if self.shards == 1:
            return 0
        first = records[0] if records else {}
        basis = f"{pixel_id}\x00{first.get('ttp') or first.get('event_id') or ''}"
        return zlib.crc32(basis.encode()) % self.shards

    def append(
        self,
        pixel_id: str,
        records: list[EventRecord],
        *,
        host: str = "",
        token_hash: str = "",
        rejected: list[str] | None = None,
        event_sources: tuple[str, ...] = (),
        id_field: str = "pixel_id",
    ) -> Appended:
        """Queue ``records`` for ``pixel_id``; return its advertiser and the site domain that matched.

        ``event_sources`` are the ``event_source`` values an Events API 2.0 request claims (its
        body's and its rows'); empty for the endpoints that take pixels only. ``pixel_id`` may
        then also be an app or an event set (pixel/sources.py) of the kind claimed. ``id_field``
        names the request field that holds the id, for the errors.

        Raises:
            NotFound: the pixel (or source) is not registered.
            Forbidden: the host is not one of the pixel's domains, or the token may not send for it.
            Unauthorized: the token is unknown.
            BadRequest: the id is a source that is not a pixel, and the request is not for its kind.
            BufferUnavailable: Redis is unreachable, too slow, or the stream is over its guard.
        """
        # Every record leaves here for the stream: the one place each one's final client IP (the
        # request's, or a server event's own user.ip) is known raw, so where it is is read now,
        # and then, at the door, the IP is anonymised and personal data scrubbed.
        place_records(self._locate, records)
        before_queue(records, self._privacy)
        # One entry per request, whatever its size: the stream, the sink's reads and its
        # acknowledgements all cost per entry, so a 100-event batch costs about what one event does.
        args = [pixel_id, host, token_hash, self._max_len, orjson.dumps(rejected) if rejected else "",
                len(records), encode_records(records) if records else "", ",".join(event_sources)]
        shard = self.shard_of(pixel_id, records)
        try:
            result = self._cluster_append(shard, args) if self._cluster else self._evalsha(shard, args)
        except redis.RedisError as exc:
            raise BufferUnavailable(
                "the event buffer is unavailable; retry later", code="buffer_unavailable"
            ) from exc
        status = result[0].decode()
        if status == "ok":
            if records and self._wait_replicas and len(result) > 3 and result[3] < self._wait_replicas:
                raise self._unconfirmed(result[3])
            return Appended(result[1].decode(), result[2].decode())
        if status in _SOURCE_ERRORS:
            raise _SOURCE_ERRORS[status](pixel_id, result[1].decode(), event_sources, id_field)
        if status == "unknown_pixel" and event_sources:
            raise NotFound(f"{id_field} {pixel_id!r} is not a registered event source: register a pixel "
                           "(clicktrail pixel create) or an app or event set (clicktrail source add)",
                           field=id_field, code="unknown_pixel")
        raise _ERRORS[status](pixel_id, host, id_field)

    def _line(self) -> SocketLine | ConnectionLine:
        """This thread's own connection, opened once and kept.

        Taking and returning a pooled connection on every request costs a lock and a poll of the
        socket; a connection per thread (gunicorn's gthread workers reuse their threads) does not.
        The process id guards against a connection inherited across a fork.
        """
        line = getattr(self._local, "line", None)
        if line is None or not line.in_this_process:
            line = self._local.line = line_for(self._client)
        return line

    def _cluster_append(self, shard: int, args: list) -> list:
        """On a Redis Cluster: check in the registry's slot, then add the entry in the shard's.

        Each call goes straight to its slot's master (collector/cluster_route.py), or through
        redis-py's cluster client where a socket of our own cannot reach the nodes (TLS). Not
        atomic as one call is, and need not be: a pixel removed between the two calls had its
        event accepted a moment before it went.
        """
        data, check_args = args[6], [*args[:6], "", args[7]]
        if self._route:
            result = self._route.call(self._check_keys[0], _packed(self._check_head, 5, check_args),
                                      _loader(_APPEND_LUA))
        else:
            result = self._check_script(keys=self._check_keys, args=check_args)
        if result[0] != b"ok" or not data:
            return result
        entry = [self._max_len, b"a", result[1], b"n", args[5], b"d", data]
        stream = self.streams[shard]
        if self._route:
            status = self._route.call(stream, _packed(self._stream_heads[shard], 1, entry),
                                      _loader(_APPEND_STREAM_LUA))
            if status[0] == b"ok" and self._wait_replicas:
                # The same socket as the write (a thread's line per node): WAIT counts its writes.
                return [*result[:3], self._route.call(stream, self._wait, _loader(_APPEND_STREAM_LUA))]
        elif self._wait_replicas:
            status, acked = self._with_wait(self._client.get_node_from_key(stream).redis_connection,
                                            self._stream_script, [stream], entry)
            return [*result[:3], acked] if status[0] == b"ok" else status
        else:
            status = self._stream_script(keys=[stream], args=entry)
        return result if status[0] == b"ok" else status

    def _evalsha(self, shard: int, args: list) -> list:
        """EVALSHA on this thread's connection (collector/redis_line.py).

        redis-py's command layer (pool checkout, retries, hooks, response callbacks) costs more
        CPU than the rest of a collector request; the request needs only the send and the read.
        """
        line = self._line()
        packed = _packed(self._heads[shard], 5, args)  # the stream and the four _registry_keys
        try:
            result = self._send(line, packed)
        except redis.ConnectionError:  # (a timeout is not one: it fails at once, the line closed)
            # A connection kept across a Redis restart fails on first use; one fresh attempt tells
            # a stale socket from a Redis that is really down (refused at once, so still fast).
            result = self._send(line, packed)
        if self._wait_replicas and result[0] == b"ok" and args[5]:
            # On the line that wrote: WAIT counts the replicas that have this connection's writes.
            return [*result[:3], line.call(self._wait)]
        return result

    def _with_wait(self, client: redis.Redis, script, script_keys: list, args: list) -> tuple[list, int]:
        """``script`` then WAIT in one pipeline: one connection, so WAIT counts the script's writes."""
        pipe = client.pipeline(transaction=False)
        script(keys=script_keys, args=args, client=pipe)
        pipe.execute_command("WAIT", self._wait_replicas, self._wait_timeout_ms)
        status, acked = pipe.execute()
        return status, acked

    def _unconfirmed(self, acked: int) -> BufferUnavailable:
        return BufferUnavailable(f"the event buffer's replicas did not confirm the events in time "
                                 f"({acked} of {self._wait_replicas}); retry later", code="buffer_unavailable")

    def _send(self, line: SocketLine | ConnectionLine, packed: bytes) -> list:
        try:
            return line.call(packed)
        except redis.exceptions.NoScriptError:  # a new Redis, or one restarted: load the script once
            line.call(command(b"SCRIPT", b"LOAD", _APPEND_LUA.encode()))
            return line.call(packed)

    def append_click(self, advertiser_id: str, landing_host: str, record: TouchRecord, cache_key: str,
                     cache_value: bytes, cache_ttl_s: int) -> None:
        """Queue a redirect click through the same stream as events, and keep it in the click cache.

        Raises Forbidden when the landing host is not one of the advertiser's site domains, and
        BufferUnavailable as ``append`` does.
        """
        place_records(self._locate, [record])
        before_queue([record], self._privacy)
        args = [advertiser_id, landing_host, self._max_len, 1, encode_records([record]), cache_value, cache_ttl_s]
        stream = self.streams[self.shard_of(advertiser_id, [{"ttp": record.get("touch_id")}])]
        # Not waited for (CLICKTRAIL_REDIS_WAIT_REPLICAS): a visitor's browser never retries a
        # redirect, so an unconfirmed click could only lose its click id from the landing URL.
        try:
            if self._cluster:
                status = self._cluster_click(stream, args, cache_key)
            else:
                status = self._touch_script(keys=[stream, keys.ADVERTISER_DOMAINS, cache_key], args=args)[0].decode()
        except redis.RedisError as exc:
            raise BufferUnavailable("the event buffer is unavailable", code="buffer_unavailable") from exc
        if status == "domain_not_allowed":
            raise Forbidden(f"landing host {landing_host!r} is not a site domain of advertiser {advertiser_id!r}",
                            field="landing", code="landing_not_allowed")
        if status == "overloaded":
            raise _ERRORS["overloaded"](advertiser_id, landing_host, "")

    def _cluster_click(self, stream: str, args: list, cache_key: str) -> str:
        """append_touch.lua's work in three calls, each in its own slot: the domain check, the
        entry, then the click cache. In that order: a click cached but never queued could be
        credited without being stored; a click queued but not cached is found in ClickHouse."""
        advertiser_id, landing_host, max_len, count, data, cache_value, cache_ttl_s = args
        raw = self._client.hget(keys.ADVERTISER_DOMAINS, advertiser_id)
        if not raw or not host_allowed(landing_host, orjson.loads(raw)):
            return "domain_not_allowed"
        status = self._stream_script(keys=[stream], args=[max_len, b"a", advertiser_id, b"k", b"t", b"n", count,
                                                          b"d", data])[0].decode()
        if status == "ok":
            try:
                self._client.set(cache_key, cache_value, ex=cache_ttl_s)
            except redis.RedisError:
                pass  # queued all the same: the attributor finds the click in ClickHouse
        return status

    @property
    def retry_after(self) -> int:
        return self._retry_after


def _head(sha: str, script_keys: list[str]) -> bytes:
    """The fixed head of an EVALSHA call (command, script, keys) in Redis's wire format."""
    return b"".join(bulk(a) for a in [b"EVALSHA", sha.encode(), str(len(script_keys)).encode(),
                                       *(k.encode() for k in script_keys)])


def _packed(head: bytes, key_count: int, args: list) -> bytes:
    """An EVALSHA call in Redis's wire format, its head packed beforehand (``_head``).

    redis-py's generic packer inspects and encodes every argument anew (a few percent of a
    request's CPU); the head never changes and the arguments are str, int or bytes.
    """
    parts = [b"*%d\r\n" % (3 + key_count + len(args)), head]
    parts.extend(bulk(a if a.__class__ is bytes else str(a).encode()) for a in args)
    return b"".join(parts)


def _loader(source: str):
    """Loads a script on a node's line that lacks it (a new node, a restarted one, a promoted replica)."""
    return lambda line: line.call(command(b"SCRIPT", b"LOAD", source.encode()))


def _registry_keys() -> list[str]:
    """append_events.lua's KEYS after the stream; read when a buffer is built, as the names
    depend on the kind of Redis (clicktrail/keys.py)."""
    return [keys.PIXELS, keys.TOKENS, keys.REJECTED_COUNTS, keys.SOURCES]


_ERRORS = {
    "unknown_pixel": lambda pixel, host, field: NotFound(
        f"pixel {pixel!r} is not registered", field=field, code="unknown_pixel"
    ),
    "domain_not_allowed": lambda pixel, host, field: Forbidden(
        f"site {host!r} is not a registered domain of pixel {pixel!r}", field="origin", code="domain_not_allowed"
    ),
    "bad_token": lambda pixel, host, field: Unauthorized(
        "the access token is not valid", field="Access-Token", code="bad_token"
    ),
    "token_scope": lambda pixel, host, field: Forbidden(
        "the access token lacks the 'events' scope", field="Access-Token", code="token_scope"
    ),
    "token_advertiser": lambda pixel, host, field: Forbidden(
        f"the access token's advertiser does not own pixel {pixel!r}", field="Access-Token", code="token_advertiser"
    ),
    "overloaded": lambda pixel, host, field: BufferUnavailable(
        "the event buffer is full; retry later", code="overloaded"
    ),
}

#: Refusals of a source that is not a pixel (pixel/sources.py), given its kind and what was claimed.
_SOURCE_ERRORS = {
    "not_a_pixel": lambda source, kind, claimed, field: BadRequest(
        f"{field} {source!r} is registered as {describe(kind)}, not a pixel: send its events to the "
        f"Events API 2.0 (POST /open_api/v1.3/event/track/) with event_source {kind!r}",
        field=field, code="not_a_pixel"
    ),
    "event_source_mismatch": lambda source, kind, claimed, field: BadRequest(
        f"event_source must be {kind!r} for {source!r}, registered as {describe(kind)} "
        f"(the request says {', '.join(repr(c) for c in claimed if c != kind)})",
        field="event_source", code="event_source_mismatch"
    ),
}
