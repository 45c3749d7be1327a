"""Event sources that are not pixels: a TikTok App ID, an offline event set, a CRM event set.

TikTok's Events API 2.0 names where its events come from with ``event_source`` and
``event_source_id``: a pixel code for ``web``, a TikTok App ID for ``app``, an event set id for
``offline`` and ``crm``. Pixels live in the registry (pixel/registry.py) with their site domains;
the other sources have no domains and no snippet, only an owner and a kind, and live in their own
hash (``clicktrail.keys.SOURCES``). The collector's append script looks an id up in both, so an id
is a pixel or a source, never both; the ids themselves come from TikTok (or the advertiser), so
registering one that another advertiser holds is refused rather than shared.

A source takes Events API 2.0 events whose ``event_source`` is its kind, and nothing else: a
pixel takes any (its site's server may send app or store events under it, as Meta's and TikTok's
do), but an app id posted as ``web`` is a mistake worth a clear refusal.
"""

from __future__ import annotations

import re
import time

import orjson
import redis

from clicktrail import keys
from clicktrail.errors import RegistryError
from pixel import registry

#: The kinds of source one registers (TikTok's ``event_source`` values), each with what it is.
KINDS = {"app": "TikTok App ID", "offline": "offline event set", "crm": "CRM event set"}
_ARTICLES = {"app": "a", "offline": "an", "crm": "a"}
MAX_NAME = 100
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def describe(kind: str) -> str:
    """What a source of ``kind`` is, for messages: "a TikTok App ID"."""
    return f"{_ARTICLES[kind]} {KINDS[kind]}" if kind in KINDS else f"a {kind} event source"


def _check_name(name: str) -> str:
    name = name.strip()
    if len(name) > MAX_NAME or _CONTROL.search(name):
        raise RegistryError(f"name must be at most {MAX_NAME} characters, without control characters")
    return name


def add_source(r: redis.Redis, advertiser_id: str, kind: str, source_id: str, name: str = "") -> dict:
    """Register ``source_id`` as an event source of ``kind`` for an advertiser (created if new).

    Adding it again for the same advertiser and kind renames it; any other clash is refused.
    Returns the stored record.
    """
    if kind not in KINDS:
        raise RegistryError(f"kind must be one of {', '.join(KINDS)}")
    registry.check_id(KINDS[kind], source_id)
    name = _check_name(name)
    registry.ensure_advertiser(r, advertiser_id)
    # WATCH both hashes: a pixel created with this id, or another advertiser's claim, in between
    # would otherwise slip past the checks.
    with r.pipeline(transaction=True) as pipe:  # (a cluster pipeline is not one by default)
        while True:
            try:
                pipe.watch(keys.PIXELS, keys.SOURCES)
                if pipe.hexists(keys.PIXELS, source_id):
                    raise RegistryError(f"{source_id!r} is a pixel id; an event source needs an id of its own")
                current = pipe.hget(keys.SOURCES, source_id)
                record = orjson.loads(current) if current else None
                if record and record["advertiser_id"] != advertiser_id:
                    raise RegistryError(f"{KINDS[kind]} {source_id!r} is registered by another advertiser")
                if record and record["kind"] != kind:
                    raise RegistryError(f"{source_id!r} is already registered as {describe(record['kind'])}; "
                                        "remove it first to change its kind")
                record = {"advertiser_id": advertiser_id, "kind": kind, "name": name,
                          "created_at": (record or {}).get("created_at") or int(time.time())}
                pipe.multi()
                pipe.hset(keys.SOURCES, source_id, orjson.dumps(record))
                pipe.execute()
                return record
            except redis.WatchError:
                continue


def get_source(r: redis.Redis, source_id: str) -> dict | None:
    raw = r.hget(keys.SOURCES, source_id)
    return orjson.loads(raw) if raw else None


def list_sources(r: redis.Redis, advertiser_id: str) -> dict[str, dict]:
    """The advertiser's sources by id, in id order."""
    return dict(sorted(registry.owned_records(r, keys.SOURCES, advertiser_id).items()))


def remove_source(r: redis.Redis, advertiser_id: str, source_id: str) -> dict:
    """Unregister an advertiser's source; its stored events stay. Returns the removed record."""
    with r.pipeline(transaction=True) as pipe:  # (a cluster pipeline is not one by default)
        while True:
            try:
                pipe.watch(keys.SOURCES)
                current = pipe.hget(keys.SOURCES, source_id)
                record = orjson.loads(current) if current else None
                # One answer for "none" and "another advertiser's", as the API gives for pixels.
                if record is None or record["advertiser_id"] != advertiser_id:
                    raise RegistryError(f"{source_id!r} is not an event source of advertiser {advertiser_id!r}")
                pipe.multi()
                pipe.hdel(keys.SOURCES, source_id)
                pipe.execute()
                return record
            except redis.WatchError:
                continue


def event_source(r: redis.Redis, source_id: str) -> dict | None:
    """A pixel or a source by id, as ``{"advertiser_id", "event_source", ...}``: what the API's
    per-source views need (a pixel is the ``web`` source)."""
    pixel = registry.get_pixel(r, source_id)
    if pixel is not None:
        return {**pixel, "event_source": "web"}
    source = get_source(r, source_id)
    return {**source, "event_source": source["kind"]} if source else None
