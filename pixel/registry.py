"""The registry of advertisers, their pixels (with allowed site domains) and API tokens.

It lives in Redis (``clicktrail.keys``) because the collector checks a pixel, its domains and a
token inside the same Lua call that queues the events: one round trip, always current, no cache
to go stale. Production Redis persists it with AOF along with the stream.
"""

from __future__ import annotations

import ipaddress
import re
import time

import orjson
import redis

from clicktrail import keys
from clicktrail.errors import RegistryError
from pixel import currencies, ids

SCOPES = ("events", "reports", "optimizer", "adserver", "privacy")
#: Attribution settings every new advertiser starts with (TikTok's defaults).
DEFAULT_SETTINGS = {
    "click_window_days": 7,
    "view_window_days": 1,
    # "every" conversion counts, or only the first per click ("once"); per event name, with a default.
    "counting": {"default": "every"},
    "timezone": "UTC",
    "currency": "USD",
    # The model the optimizer feed uses (reports may ask for any).
    "model": "last_click",
    # Days of events, touchpoints, identity links and credits kept; None keeps everything
    # (attribution/retention.py removes older rows once a day).
    "retention_days": None,
}
#: ``--retention-days forever``: back to keeping everything.
FOREVER = "forever"
MODELS = ("last_click", "first_click", "linear", "time_decay", "position_based")
CLICK_WINDOWS = (1, 7, 14, 28)
VIEW_WINDOWS = (0, 1, 7)
COUNTING = ("every", "once")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


def normalize_domain(value: str) -> str:
    """Return a site domain as stored: lower case, no scheme, path or port.

    A pixel accepts events from its domains and their subdomains.
    """
    text = value.strip().lower()
    text = re.sub(r"^[a-z][a-z0-9+.-]*://", "", text).split("/")[0]
    if text.startswith("[") and "]" in text:  # [::1]:8080
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:
        text = text.split(":")[0]
    text = text.rstrip(".")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not _HOSTNAME.match(text):
        raise RegistryError(f"domain {value!r} is not a valid host name (example: shop.example.com)")
    return text


def check_id(kind: str, value: str) -> str:
    if not ids.is_valid_id(value):
        raise RegistryError(f"{kind} {value!r} must be 1-64 characters of letters, digits, '_', '-' or '.'")
    return value


def ensure_advertiser(r: redis.Redis, advertiser_id: str) -> dict:
    """Return the advertiser, creating it with the default settings if new."""
    check_id("advertiser", advertiser_id)
    record = {"advertiser_id": advertiser_id, "created_at": int(time.time()), "settings": DEFAULT_SETTINGS}
    r.hsetnx(keys.ADVERTISERS, advertiser_id, orjson.dumps(record))
    return orjson.loads(r.hget(keys.ADVERTISERS, advertiser_id))


def update_settings(r: redis.Redis, advertiser_id: str, *, click_window_days: int | None = None,
                    view_window_days: int | None = None, counting: str | None = None,
                    event: str | None = None, model: str | None = None, timezone: str | None = None,
                    currency: str | None = None, retention_days: int | str | None = None) -> dict:
    """Change an advertiser's attribution settings; they apply to conversions attributed from now on.

    ``retention_days``: a number of days (at least 1), or FOREVER to keep everything again.
    """
    if click_window_days is not None and click_window_days not in CLICK_WINDOWS:
        raise RegistryError(f"click window must be one of {', '.join(map(str, CLICK_WINDOWS))} days")
    if view_window_days is not None and view_window_days not in VIEW_WINDOWS:
        raise RegistryError(f"view window must be one of {', '.join(map(str, VIEW_WINDOWS))} days (0 = off)")
    if counting is not None and counting not in COUNTING:
        raise RegistryError(f"counting must be one of {', '.join(COUNTING)}")
    if model is not None and model not in MODELS:
        raise RegistryError(f"model must be one of {', '.join(MODELS)}")
    if timezone is not None:
        _check_timezone(timezone)
    if currency is not None and not currencies.is_code(currency):
        raise RegistryError("currency must be an ISO 4217 code of three capital letters, e.g. USD")
    if retention_days is not None and retention_days != FOREVER and (
            isinstance(retention_days, bool) or not isinstance(retention_days, int) or retention_days < 1):
        raise RegistryError(f"retention must be a whole number of days, at least 1, or {FOREVER!r} "
                            "to keep everything")
    record = ensure_advertiser(r, advertiser_id)
    settings = {**DEFAULT_SETTINGS, **record.get("settings", {})}
    if click_window_days is not None:
        settings["click_window_days"] = click_window_days
    if view_window_days is not None:
        settings["view_window_days"] = view_window_days
    if counting is not None:
        settings["counting"] = {**settings["counting"], (event or "default"): counting}
    for name, value in (("model", model), ("timezone", timezone), ("currency", currency)):
        if value is not None:
            settings[name] = value
    if retention_days is not None:
        settings["retention_days"] = None if retention_days == FOREVER else retention_days
    record["settings"] = settings
    r.hset(keys.ADVERTISERS, advertiser_id, orjson.dumps(record))
    return settings


def retention_warning(settings: dict) -> str | None:
    """Why a retention shorter than the click window loses attributions, or None when it does not."""
    days, window = settings.get("retention_days"), settings["click_window_days"]
    if days is None or days >= window:
        return None
    return (f"retention of {days} day(s) is shorter than the {window}-day click window: attribution will no "
            f"longer see touchpoints older than {days} day(s), so conversions they led to count as organic")


def _check_timezone(name: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise RegistryError(f"time zone {name!r} is not an IANA time zone name (e.g. Europe/Berlin)") from exc


def advertiser_settings(r: redis.Redis, advertiser_id: str) -> dict:
    return settings_of(get_advertiser(r, advertiser_id))


def settings_of(record: dict | None) -> dict:
    """An advertiser record's settings, with the defaults for any it lacks."""
    return {**DEFAULT_SETTINGS, **(record or {}).get("settings", {})}


def get_advertiser(r: redis.Redis, advertiser_id: str) -> dict | None:
    raw = r.hget(keys.ADVERTISERS, advertiser_id)
    return orjson.loads(raw) if raw else None


def create_pixel(r: redis.Redis, advertiser_id: str, domains: list[str]) -> str:
    """Register a new pixel for an advertiser (created if new) and return its id."""
    if not domains:
        raise RegistryError("a pixel needs at least one site domain (--domain shop.example.com)")
    cleaned = sorted({normalize_domain(d) for d in domains})
    ensure_advertiser(r, advertiser_id)
    record = {"advertiser_id": advertiser_id, "domains": cleaned, "created_at": int(time.time())}
    while True:
        pixel_id = ids.new_pixel_id()
        if r.hexists(keys.SOURCES, pixel_id):  # an id is a pixel or an event source (pixel/sources.py)
            continue
        if r.hsetnx(keys.PIXELS, pixel_id, orjson.dumps(record)):
            break
    _add_advertiser_domains(r, advertiser_id, cleaned)
    return pixel_id


def _add_advertiser_domains(r: redis.Redis, advertiser_id: str, domains: list[str]) -> None:
    # WATCH makes the read-merge-write safe against another pixel created at the same time.
    with r.pipeline(transaction=True) as pipe:  # (a cluster pipeline is not one by default)
        while True:
            try:
                pipe.watch(keys.ADVERTISER_DOMAINS)
                current = pipe.hget(keys.ADVERTISER_DOMAINS, advertiser_id)
                merged = sorted(set(orjson.loads(current) if current else []) | set(domains))
                pipe.multi()
                pipe.hset(keys.ADVERTISER_DOMAINS, advertiser_id, orjson.dumps(merged))
                pipe.execute()
                return
            except redis.WatchError:
                continue


def advertiser_domains(r: redis.Redis, advertiser_id: str) -> list[str]:
    raw = r.hget(keys.ADVERTISER_DOMAINS, advertiser_id)
    return orjson.loads(raw) if raw else []


def host_allowed(host: str, domains: list[str]) -> bool:
    """A host is allowed when it is one of the domains or a subdomain of one.

    The one statement of the rule: Redis applies its Lua copy (clicktrail/lua/host_allowed.lua),
    which tests/test_lua.py checks against this one.
    """
    return any(host == d or host.endswith("." + d) for d in domains)


def get_pixel(r: redis.Redis, pixel_id: str) -> dict | None:
    raw = r.hget(keys.PIXELS, pixel_id)
    return orjson.loads(raw) if raw else None


def list_pixels(r: redis.Redis, advertiser_id: str) -> dict[str, dict]:
    return owned_records(r, keys.PIXELS, advertiser_id)


def owned_records(r: redis.Redis, hash_key: str, advertiser_id: str) -> dict[str, dict]:
    """The records of a registry hash (pixels, event sources) that belong to the advertiser, by id."""
    found = {}
    for record_id, raw in r.hscan_iter(hash_key, count=1000):
        record = orjson.loads(raw)
        if record["advertiser_id"] == advertiser_id:
            found[record_id.decode()] = record
    return found


def parse_scopes(text: str) -> list[str]:
    scopes = sorted({s.strip() for s in text.split(",") if s.strip()})
    unknown = [s for s in scopes if s not in SCOPES]
    if not scopes or unknown:
        bad = f"unknown scope {', '.join(unknown)}; " if unknown else ""
        raise RegistryError(f"{bad}scopes are a comma-separated list from: {', '.join(SCOPES)}")
    return scopes


def create_token(r: redis.Redis, advertiser_id: str, scopes: list[str]) -> str:
    """Create an API token and return it; only its SHA-256 is stored, so it cannot be shown again."""
    ensure_advertiser(r, advertiser_id)
    token = ids.new_token()
    record = {"advertiser_id": advertiser_id, "scopes": scopes, "created_at": int(time.time())}
    r.hset(keys.TOKENS, ids.token_hash(token), orjson.dumps(record))
    return token


def lookup_token(r: redis.Redis, token: str) -> dict | None:
    raw = r.hget(keys.TOKENS, ids.token_hash(token))
    return orjson.loads(raw) if raw else None
