"""Event schema: standard events and the validation of one incoming event.

Browser events (the pixel's wire format) and server events (TikTok Events API 2.0 ``data[]``
rows) differ in shape but become the same record, a plain dict queued as JSON:

    pixel_id, source, event, event_id, id_generated, event_ms, client_ms, sent_ms, received_ms,
    url, referrer, ttp, ttclid, email, phone, external_id, ip, user_agent,
    properties, extra, user_extra, test_event_code, limited_data_use

Validation never raises for one bad event: it returns a ``Rejection`` naming the field and the
rule, so one bad row never sinks a batch.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from dataclasses import dataclass
from typing import Any

import orjson

from pixel.hashing import hash_identifier, is_sha256_hex, sha256_hex

#: TikTok's current standard events, the legacy ones it still accepts, and PageView.
STANDARD_EVENTS = frozenset(
    """AddPaymentInfo AddToCart AddToWishlist ApplicationApproval CompleteRegistration Contact
    CustomizeProduct Download FindLocation InitiateCheckout Lead Purchase Schedule Search StartTrial
    SubmitApplication SubmitForm Subscribe ViewContent CompletePayment PlaceAnOrder ClickButton
    PageView""".split()
)
SOURCES = ("browser", "image", "server")

MAX_NAME = 100
MAX_ID = 128
MAX_URL = 8192
MAX_UA = 1024
MAX_SHORT = 256
_USER_ID_ALIASES = {
    "email": "email",
    "sha256_email": "email",
    "phone": "phone",
    "phone_number": "phone",
    "sha256_phone_number": "phone",
    "external_id": "external_id",
}
_USER_PLAIN = {"ttclid", "ttp", "ip", "user_agent", "locale", "lead_id"}


@dataclass(frozen=True)
class Rejection:
    """Why one event of a batch was refused."""

    index: int
    field: str
    rule: str

    def to_dict(self) -> dict:
        return {"index": self.index, "field": self.field, "rule": self.rule}

    @property
    def reason(self) -> str:
        """Short label for metrics and diagnostics."""
        return f"{self.field or 'event'} {self.rule}"


@dataclass(frozen=True)
class Context:
    """What the collector knows about the request that carried the events."""

    pixel_id: str
    source: str
    received_ms: int
    skew_ms: int  # client clock minus server clock, from the body's send timestamp
    ip: str
    user_agent: str
    max_age_ms: int
    max_future_ms: int
    test_event_code: str = ""


class _Invalid(Exception):
    def __init__(self, field: str, rule: str) -> None:
        self.field = field
        self.rule = rule


def _string(value: Any, field: str, max_len: int, *, required: bool = False) -> str:
    if value is None:
        if required:
            raise _Invalid(field, "is required")
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _Invalid(field, "must be a string")
    text = str(value)
    if required and not text.strip():
        raise _Invalid(field, "must not be empty")
    if len(text) > max_len:
        raise _Invalid(field, f"must be at most {max_len} characters")
    return text


def _object(value: Any, field: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Invalid(field, "must be an object")
    return value


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool):
        raise _Invalid(field, "must be a number")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _Invalid(field, "must be a number") from None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Invalid(field, "must be a finite number")
    return float(value)


def _event_name(raw: dict) -> str:
    name = _string(raw.get("event"), "event", MAX_NAME, required=True)
    if any(ord(ch) < 32 for ch in name):
        raise _Invalid("event", "must not contain control characters")
    return name


def _check_time(event_ms: int, ctx: Context, field: str) -> None:
    if event_ms < ctx.received_ms - ctx.max_age_ms:
        raise _Invalid(field, f"must be at most {ctx.max_age_ms // 86_400_000} days old")
    if event_ms > ctx.received_ms + ctx.max_future_ms:
        raise _Invalid(field, f"must be at most {ctx.max_future_ms // 3_600_000} hours in the future")


def _browser_time(raw: dict, ctx: Context) -> tuple[int, int]:
    """Return (client ms, skew-corrected ms) from the browser's ``timestamp`` in unix ms."""
    value = raw.get("timestamp")
    if value is None:
        return 0, ctx.received_ms
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Invalid("timestamp", "must be unix time in milliseconds")
    client_ms = int(value)
    if client_ms < 10**11:
        raise _Invalid("timestamp", "must be unix time in milliseconds (this looks like seconds)")
    corrected = client_ms - ctx.skew_ms
    _check_time(corrected, ctx, "timestamp")
    return client_ms, corrected


def _server_time(raw: dict, ctx: Context) -> tuple[int, int]:
    """Return (client ms, ms) from the Events API's ``event_time`` in unix seconds."""
    value = raw.get("event_time")
    if value is None:
        raise _Invalid("event_time", "is required (unix time in seconds)")
    if isinstance(value, str) and value.strip().lstrip("-").replace(".", "", 1).isdigit():
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Invalid("event_time", "must be unix time in seconds")
    if value > 10**11:
        raise _Invalid("event_time", "must be unix time in seconds (this looks like milliseconds)")
    client_ms = int(value * 1000)
    corrected = client_ms - ctx.skew_ms
    _check_time(corrected, ctx, "event_time")
    return client_ms, corrected


def _identifier(value: Any, field: str, kind: str) -> str:
    if isinstance(value, list):  # the Events API allows a list of hashed values; keep the first
        value = next((v for v in value if v), None)
    text = _string(value, field, MAX_SHORT)
    return hash_identifier(kind, text)


def _ip(value: Any, field: str) -> str:
    text = _string(value, field, 64)
    if not text:
        return ""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise _Invalid(field, "must be an IPv4 or IPv6 address") from None


def _user(user: dict, record: dict, prefix: str) -> None:
    """Fill identity fields from a ``user`` object; hash anything personal left over."""
    extra: dict[str, str] = {}
    for key, value in user.items():
        field = f"{prefix}.{key}"
        if key in _USER_ID_ALIASES:
            kind = _USER_ID_ALIASES[key]
            hashed = _identifier(value, field, kind)
            if hashed:
                record[kind] = hashed
        elif key in ("ttclid", "ttp", "locale", "lead_id"):
            text = _string(value, field, MAX_SHORT)
            if key in ("ttclid", "ttp"):
                record[key] = record.get(key) or text
            elif text:
                extra[key] = text
        elif key == "ip":
            record["ip"] = _ip(value, field) or record["ip"]
        elif key == "user_agent":
            record["user_agent"] = _string(value, field, MAX_UA) or record["user_agent"]
        elif isinstance(value, str) and value.strip():
            # Names, city, zip...: personal data, so stored only as a hash (TikTok hashes them too).
            text = value.strip()
            extra[key] = text.lower() if is_sha256_hex(text) else sha256_hex(text.lower())
    if extra:
        record["user_extra"] = extra


def _properties(props: dict, field: str) -> dict:
    if "value" in props and props["value"] not in (None, ""):
        props["value"] = _number(props["value"], f"{field}.value")
    if "currency" in props and props["currency"] not in (None, ""):
        currency = _string(props["currency"], f"{field}.currency", MAX_SHORT).strip().upper()
        if len(currency) != 3 or not currency.isalpha():
            raise _Invalid(f"{field}.currency", "must be a 3-letter ISO 4217 code")
        props["currency"] = currency
    if "contents" in props and props["contents"] is not None:
        contents = props["contents"]
        if not isinstance(contents, list) or not all(isinstance(c, dict) for c in contents):
            raise _Invalid(f"{field}.contents", "must be a list of objects")
    if "order_id" in props and props["order_id"] is not None:
        props["order_id"] = _string(props["order_id"], f"{field}.order_id", MAX_ID)
    return props


def _derived_event_id(record: dict) -> str:
    """A stable id for an event sent without one, so that a client's retry still deduplicates."""
    basis = {k: record.get(k) for k in ("event", "client_ms", "url", "ttp", "email", "phone", "external_id")}
    basis["properties"] = record.get("properties")
    digest = hashlib.sha256(orjson.dumps(basis, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return "gen-" + digest[:32]


def _base(ctx: Context) -> dict:
    return {
        "pixel_id": ctx.pixel_id,
        "source": ctx.source,
        "received_ms": ctx.received_ms,
        "sent_ms": ctx.received_ms + ctx.skew_ms if ctx.skew_ms else 0,
        "ip": ctx.ip,
        "user_agent": ctx.user_agent,
        "test_event_code": ctx.test_event_code,
    }


def _finish(record: dict, raw: dict, known: frozenset, event_id_raw: Any) -> dict:
    extra = {k: v for k, v in raw.items() if k not in known}
    if extra:
        record["extra"] = extra
    event_id = _string(event_id_raw, "event_id", MAX_ID)
    record["id_generated"] = not event_id
    record["event_id"] = event_id or _derived_event_id(record)
    return record


_BROWSER_KEYS = frozenset(
    "event event_id timestamp page ttp ttclid user properties test_event_code limited_data_use".split()
)
_SERVER_KEYS = frozenset("event event_id event_time page user properties limited_data_use".split())


def _common(record: dict, raw: dict) -> None:
    page = _object(raw.get("page"), "page")
    record["url"] = _string(page.get("url"), "page.url", MAX_URL)
    record["referrer"] = _string(page.get("referrer"), "page.referrer", MAX_URL)
    record["properties"] = _properties(dict(_object(raw.get("properties"), "properties")), "properties")
    ldu = raw.get("limited_data_use", False)
    if not isinstance(ldu, bool):
        raise _Invalid("limited_data_use", "must be true or false")
    record["limited_data_use"] = ldu


def _browser(raw: dict, ctx: Context) -> dict:
    record = _base(ctx)
    record["event"] = _event_name(raw)
    record["client_ms"], record["event_ms"] = _browser_time(raw, ctx)
    record["ttp"] = _string(raw.get("ttp"), "ttp", MAX_SHORT)
    record["ttclid"] = _string(raw.get("ttclid"), "ttclid", MAX_SHORT)
    _common(record, raw)
    code = _string(raw.get("test_event_code"), "test_event_code", 64)
    record["test_event_code"] = code or ctx.test_event_code
    _user(_object(raw.get("user"), "user"), record, "user")
    return _finish(record, raw, _BROWSER_KEYS, raw.get("event_id"))


def _server(raw: dict, ctx: Context) -> dict:
    record = _base(ctx)
    record["event"] = _event_name(raw)
    record["client_ms"], record["event_ms"] = _server_time(raw, ctx)
    record["ttp"] = record["ttclid"] = ""
    _common(record, raw)
    _user(_object(raw.get("user"), "user"), record, "user")
    return _finish(record, raw, _SERVER_KEYS, raw.get("event_id"))


def parse_event(raw: Any, index: int, ctx: Context) -> dict | Rejection:
    """Validate one event; return its record, or a ``Rejection`` naming the field and rule."""
    if not isinstance(raw, dict):
        return Rejection(index, "", "event must be an object")
    try:
        return _server(raw, ctx) if ctx.source == "server" else _browser(raw, ctx)
    except _Invalid as exc:
        return Rejection(index, exc.field, exc.rule)


def parse_events(rows: list, ctx: Context) -> tuple[list[dict], list[Rejection]]:
    records: list[dict] = []
    rejections: list[Rejection] = []
    for index, raw in enumerate(rows):
        result = parse_event(raw, index, ctx)
        (rejections if isinstance(result, Rejection) else records).append(result)
    return records, rejections
