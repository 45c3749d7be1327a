"""Event schema: standard events and the validation of one incoming event.

Browser events (the pixel's wire format) and server events (TikTok Events API 2.0 ``data[]``
rows) differ in shape but become the same record, ``pixel.records.EventRecord`` (a dict, queued
as JSON; its fields, and the columns each fills, are defined there).

Validation never raises for one bad event: it returns a ``Rejection`` naming the field and the
rule, so one bad row never sinks a batch. Every field a later stage reads is checked for type and
range here (the bounds below, documented in docs/wire-format.md), so whatever is accepted can be
serialised, queued and stored; the sink checks again, as records may come from an older collector.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
from dataclasses import dataclass
from typing import Any

import orjson

from pixel.hashing import hash_identifier, is_sha256_hex, sha256_hex
from pixel.records import IDENTIFIER_LISTS, EventRecord

#: TikTok's current standard events, the legacy ones it still accepts, and PageView.
STANDARD_EVENTS = frozenset(
    """AddPaymentInfo AddToCart AddToWishlist ApplicationApproval CompleteRegistration Contact
    CustomizeProduct Download FindLocation InitiateCheckout Lead Purchase Schedule Search StartTrial
    SubmitApplication SubmitForm Subscribe ViewContent CompletePayment PlaceAnOrder ClickButton
    PageView""".split()
)
SOURCES = ("browser", "image", "server")
#: TikTok's ``event_source``: where a server event happened (browser events are all ``web``).
EVENT_SOURCES = ("web", "app", "offline", "crm")

MAX_NAME = 100
MAX_ID = 128
MAX_URL = 8192
MAX_UA = 1024
MAX_SHORT = 256
MAX_TEXT = 1024  # content names and categories, search queries
#: Containers may nest this deep inside ``properties`` and inside each custom top-level field.
MAX_DEPTH = 16
#: Money (``value``, a content's ``price``): a bound that keeps sums over millions of events finite.
MAX_MONEY = 1e12
MAX_QUANTITY = 1e9
#: Items in ``contents`` or ``content_ids``.
MAX_ITEMS = 1000
#: Values of one identifier (``email``, ``phone``, ``external_id``): TikTok and Meta take lists of
#: hashes (a customer's several addresses); more than a handful is not one customer.
MAX_IDENTIFIER_VALUES = 10
#: The latest unix time in milliseconds accepted anywhere (2100-01-01); the earliest is 10**11 (1973).
MAX_UNIX_MS = 4_102_444_800_000
MIN_UNIX_MS = 10**11
#: Rejections of custom top-level fields name this, never the attacker-chosen key, so that the
#: rejection counts (Redis hash, Prometheus labels) stay a bounded set.
CUSTOM_FIELDS = "custom_fields"
#: A number sent as a string: ASCII digits only (``float`` would also take "1_000", "²" or "١٢").
#: ASCII control characters (a regex: a tenth of the cost of testing each character in Python).
_CONTROL = re.compile(r"[\x00-\x1f]")
_NUMERIC = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?", re.ASCII)
_USER_ID_ALIASES = {
    "email": "email",
    "sha256_email": "email",
    "phone": "phone",
    "phone_number": "phone",
    "sha256_phone_number": "phone",
    "external_id": "external_id",
}


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


class InvalidField(Exception):
    """A row of a batch breaks a rule: ``field`` names what broke it ("" for the row itself).

    The one invalid-input exception of the per-row parsers (events here, imported touchpoints and
    costs): each catches it per row and keeps it as that row's ``Rejection``, so it never leaves a
    parser, and the batch's other rows go on.
    """

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field or 'row'} {rule}")
        self.field = field
        self.rule = rule

    def rejection(self, index: int) -> Rejection:
        return Rejection(index, self.field, self.rule)


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
    # Server events: the body's event_source and partner_name (a row may name its own).
    event_source: str = "web"
    partner_name: str = ""


def _string(value: Any, field: str, max_len: int, *, required: bool = False) -> str:
    if value is None:
        if required:
            raise InvalidField(field, "is required")
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidField(field, "must be a string")
    text = str(value)
    if required and not text.strip():
        raise InvalidField(field, "must not be empty")
    if len(text) > max_len:
        raise InvalidField(field, f"must be at most {max_len} characters")
    return text


def object_field(value: Any, field: str) -> dict:
    """``value`` as an object; absent is empty; anything else is refused naming ``field``."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidField(field, "must be an object")
    return value


def _number(value: Any, field: str, bound: float = MAX_MONEY) -> float:
    """A finite number with absolute value at most ``bound``; ASCII numeric strings are accepted."""
    if isinstance(value, bool):
        raise InvalidField(field, "must be a number")
    if isinstance(value, str):
        text = value.strip()
        if not _NUMERIC.fullmatch(text):
            raise InvalidField(field, "must be a number")
        value = float(text)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidField(field, "must be a finite number")
    if not -bound <= value <= bound:
        raise InvalidField(field, f"must be from -{bound:.0f} to {bound:.0f}")
    return float(value)


def _depth_ok(value: Any, levels: int) -> bool:
    """Whether ``value`` nests at most ``levels`` containers deep (a scalar is 0 deep).

    Bounded: it never descends past ``levels``, so a 1000-deep body costs 16 steps, not 1000.
    """
    if value.__class__ is dict:
        children = value.values()
    elif value.__class__ is list:
        children = value
    else:
        return True
    if levels == 0:
        return False
    return all(_depth_ok(child, levels - 1) for child in children if child.__class__ in (dict, list))


def _event_name(raw: dict) -> str:
    name = _string(raw.get("event"), "event", MAX_NAME, required=True)
    if _CONTROL.search(name):
        raise InvalidField("event", "must not contain control characters")
    return name


def _check_time(event_ms: int, ctx: Context, field: str) -> None:
    if event_ms < ctx.received_ms - ctx.max_age_ms:
        raise InvalidField(field, f"must be at most {ctx.max_age_ms // 86_400_000} days old")
    if event_ms > ctx.received_ms + ctx.max_future_ms:
        raise InvalidField(field, f"must be at most {ctx.max_future_ms // 3_600_000} hours in the future")


def _browser_time(raw: dict, ctx: Context) -> tuple[int, int]:
    """Return (client ms, skew-corrected ms) from the browser's ``timestamp`` in unix ms."""
    value = raw.get("timestamp")
    if value is None:
        return 0, ctx.received_ms
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidField("timestamp", "must be unix time in milliseconds")
    if value > MAX_UNIX_MS:
        raise InvalidField("timestamp", "must be unix time in milliseconds before 2100")
    client_ms = int(value)
    if client_ms < MIN_UNIX_MS:
        raise InvalidField("timestamp", "must be unix time in milliseconds (this looks like seconds)")
    corrected = client_ms - ctx.skew_ms
    _check_time(corrected, ctx, "timestamp")
    return client_ms, corrected


def _server_time(raw: dict, ctx: Context) -> tuple[int, int]:
    """Return (client ms, ms) from the Events API's ``event_time`` in unix seconds."""
    value = raw.get("event_time")
    if value is None:
        raise InvalidField("event_time", "is required (unix time in seconds)")
    if isinstance(value, str) and _NUMERIC.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InvalidField("event_time", "must be unix time in seconds")
    if value > 10**11:
        raise InvalidField("event_time", "must be unix time in seconds (this looks like milliseconds)")
    client_ms = int(value * 1000)
    corrected = client_ms - ctx.skew_ms
    _check_time(corrected, ctx, "event_time")
    return client_ms, corrected


def identifier_values(value: Any, field: str, kind: str) -> list[str]:
    """Every value of an identifier (one, or a list as the Events API and Meta allow), each hashed
    (raw values are hashed here, hashed ones lower-cased), in the order sent, without repeats.
    Events and imported touchpoints (pixel/touchpoints.py) both take them through here: one set of
    rules, so a value hashes alike on both sides of a match.

    Empty values (``None``, "") are skipped; more than ``MAX_IDENTIFIER_VALUES`` items are refused,
    as is any item that is not a string (or a number: phone numbers are sent as numbers).
    """
    if not isinstance(value, list):
        hashed = hash_identifier(kind, _string(value, field, MAX_SHORT))
        return [hashed] if hashed else []
    if len(value) > MAX_IDENTIFIER_VALUES:
        raise InvalidField(field, f"must hold at most {MAX_IDENTIFIER_VALUES} values")
    values: list[str] = []
    for item in value:
        if isinstance(item, (list, dict)):
            raise InvalidField(field, "must be a string or a list of strings")
        hashed = hash_identifier(kind, _string(item, field, MAX_SHORT))
        if hashed and hashed not in values:
            values.append(hashed)
    return values


def _add_identifiers(record: dict, kind: str, values: list[str], field: str) -> None:
    """Add ``values`` to the record's identifiers of ``kind``: the first in ``record[kind]`` (its
    column), all of them in ``record[kind + "s"]`` when there is more than one (pixel/records.py).

    Several fields may name one kind (``email`` and ``sha256_email``): their values are merged,
    and together they must stay within ``MAX_IDENTIFIER_VALUES``.
    """
    merged = list(record.get(IDENTIFIER_LISTS[kind]) or ([record[kind]] if record.get(kind) else []))
    merged += [v for v in values if v not in merged]
    if len(merged) > MAX_IDENTIFIER_VALUES:
        raise InvalidField(field, f"must hold at most {MAX_IDENTIFIER_VALUES} values, "
                                  f"together with the other {kind} fields")
    if merged:
        record[kind] = merged[0]
    if len(merged) > 1:
        record[IDENTIFIER_LISTS[kind]] = merged


def _ip(value: Any, field: str) -> str:
    text = _string(value, field, 64)
    if not text:
        return ""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise InvalidField(field, "must be an IPv4 or IPv6 address") from None


def _user_other(value: Any) -> str:
    """A user field clicktrail has no column for: a string (or number), hashed by the caller.

    Refused under the name ``user``: the key is the sender's choice, and rejection counts must
    stay a bounded set.
    """
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidField("user", "other user fields must be strings")
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_SHORT:
        raise InvalidField("user", f"other user fields must be at most {MAX_SHORT} characters")
    return text


def _user(user: dict, record: dict, prefix: str) -> None:
    """Fill identity fields from a ``user`` object; hash anything personal left over."""
    extra: dict[str, str] = {}
    for key, value in user.items():
        field = f"{prefix}.{key}"
        if key in _USER_ID_ALIASES:
            kind = _USER_ID_ALIASES[key]
            _add_identifiers(record, kind, identifier_values(value, field, kind), field)
        elif key in ("ttclid", "ttp", "locale", "lead_id"):
            text = _string(value, field, MAX_SHORT)
            if key in ("ttclid", "ttp"):
                record[key] = record.get(key) or text
            elif text:
                extra[key] = text
        elif key == "ip":
            # Checked alike, but only a server (sending with a token) may set the stored IP: a
            # browser event's would be whatever the page, or anyone posting to it, chose.
            ip = _ip(value, field)
            if record["source"] == "server":
                record["ip"] = ip or record["ip"]
        elif key == "user_agent":
            record["user_agent"] = _string(value, field, MAX_UA) or record["user_agent"]
        else:
            # Names, city, zip...: personal data, so stored only as a hash (TikTok hashes them too).
            text = _user_other(value).strip()
            if text:
                extra[key] = text.lower() if is_sha256_hex(text) else sha256_hex(text.lower())
    if extra:
        record["user_extra"] = extra


#: String properties with a column of their own: (name, maximum length).
_TEXT_PROPERTIES = (("order_id", MAX_ID), ("content_type", MAX_SHORT), ("content_id", MAX_ID),
                    ("query", MAX_TEXT), ("search_string", MAX_TEXT))
_CONTENT_TEXT = (("content_id", MAX_ID), ("content_name", MAX_TEXT), ("content_category", MAX_TEXT),
                 ("content_type", MAX_SHORT))


def _properties(props: dict, field: str) -> dict:
    """Check and normalise the properties a later stage reads; keep the rest as sent (bounded depth)."""
    if not _depth_ok(props, MAX_DEPTH):
        raise InvalidField(field, f"must not nest deeper than {MAX_DEPTH} levels")
    if props.get("value") not in (None, ""):
        props["value"] = _number(props["value"], f"{field}.value")
    if props.get("currency") not in (None, ""):
        currency = _string(props["currency"], f"{field}.currency", MAX_SHORT).strip().upper()
        if len(currency) != 3 or not (currency.isascii() and currency.isalpha()):
            raise InvalidField(f"{field}.currency", "must be a 3-letter ISO 4217 code")
        props["currency"] = currency
    for name, limit in _TEXT_PROPERTIES:
        if props.get(name) is not None:
            props[name] = _string(props[name], f"{field}.{name}", limit)
    if props.get("contents") is not None:
        props["contents"] = _contents(props["contents"], f"{field}.contents")
    if props.get("content_ids") is not None:
        props["content_ids"] = _content_ids(props["content_ids"], f"{field}.content_ids")
    return props


def _contents(contents: Any, field: str) -> list[dict]:
    if not isinstance(contents, list) or not all(isinstance(c, dict) for c in contents):
        raise InvalidField(field, "must be a list of objects")
    if len(contents) > MAX_ITEMS:
        raise InvalidField(field, f"must hold at most {MAX_ITEMS} items")
    checked = []
    for item in contents:
        item = dict(item)
        for name, limit in _CONTENT_TEXT:
            if item.get(name) is not None:
                item[name] = _string(item[name], f"{field}.{name}", limit)
        if item.get("quantity") not in (None, ""):
            item["quantity"] = _number(item["quantity"], f"{field}.quantity", MAX_QUANTITY)
        if item.get("price") not in (None, ""):
            item["price"] = _number(item["price"], f"{field}.price")
        checked.append(item)
    return checked


def _content_ids(ids: Any, field: str) -> list[str]:
    if not isinstance(ids, list):
        raise InvalidField(field, "must be a list of strings")
    if len(ids) > MAX_ITEMS:
        raise InvalidField(field, f"must hold at most {MAX_ITEMS} items")
    return [_string(i, field, MAX_ID) for i in ids if i is not None]


def _derived_event_id(record: dict) -> str:
    """A stable id for an event sent without one, so that a client's retry still deduplicates."""
    basis = {k: record.get(k) for k in ("event", "client_ms", "url", "ttp", "email", "phone", "external_id")}
    # Further identifier values only when sent, so that ids derived for single values never change.
    for name in IDENTIFIER_LISTS.values():
        if name in record:
            basis[name] = record[name]
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
        # The custom fields are the dict's values: the dict itself is one more level.
        if not _depth_ok(extra, MAX_DEPTH + 1):
            raise InvalidField(CUSTOM_FIELDS, f"must not nest deeper than {MAX_DEPTH} levels")
        record["extra"] = extra
    event_id = _string(event_id_raw, "event_id", MAX_ID)
    record["id_generated"] = not event_id
    record["event_id"] = event_id or _derived_event_id(record)
    return record


_BROWSER_KEYS = frozenset(
    "event event_id timestamp page ttp ttclid user properties test_event_code limited_data_use".split()
)
_SERVER_KEYS = frozenset(
    "event event_id event_time page user properties limited_data_use event_source partner_name".split()
)


def _common(record: dict, raw: dict) -> None:
    page = object_field(raw.get("page"), "page")
    record["url"] = _string(page.get("url"), "page.url", MAX_URL)
    record["referrer"] = _string(page.get("referrer"), "page.referrer", MAX_URL)
    record["properties"] = _properties(dict(object_field(raw.get("properties"), "properties")), "properties")
    ldu = raw.get("limited_data_use", False)
    if not isinstance(ldu, bool):
        raise InvalidField("limited_data_use", "must be true or false")
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
    _user(object_field(raw.get("user"), "user"), record, "user")
    return _finish(record, raw, _BROWSER_KEYS, raw.get("event_id"))


def _event_source(value: Any, default: str) -> str:
    if value is None:
        return default
    if value not in EVENT_SOURCES:
        raise InvalidField("event_source", f"must be one of {', '.join(EVENT_SOURCES)}")
    return value


def _server_fields(record: dict, raw: dict, ctx: Context) -> None:
    """What only the Events API carries: event source, partner, ad click id, lead.

    ``ad`` and ``lead`` are not known keys, so they are also kept whole in ``extra``.
    """
    record["event_source"] = _event_source(raw.get("event_source"), ctx.event_source)
    record["partner_name"] = _string(raw.get("partner_name"), "partner_name", MAX_NAME) or ctx.partner_name
    ad = object_field(raw.get("ad"), "ad")
    # ad.callback is TikTok's click id for server events: used when the user gave no ttclid.
    record["ttclid"] = record["ttclid"] or _string(ad.get("callback"), "ad.callback", MAX_SHORT)
    lead = object_field(raw.get("lead"), "lead")
    lead_id = _string(lead.get("lead_id"), "lead.lead_id", MAX_ID) or record.get("user_extra", {}).get("lead_id", "")
    lead_source = _string(lead.get("lead_event_source"), "lead.lead_event_source", MAX_NAME)
    if lead_id:
        record["lead_id"] = lead_id
    if lead_source:
        record["lead_event_source"] = lead_source


def _server(raw: dict, ctx: Context) -> dict:
    record = _base(ctx)
    record["event"] = _event_name(raw)
    record["client_ms"], record["event_ms"] = _server_time(raw, ctx)
    record["ttp"] = record["ttclid"] = ""
    _common(record, raw)
    _user(object_field(raw.get("user"), "user"), record, "user")
    _server_fields(record, raw, ctx)
    return _finish(record, raw, _SERVER_KEYS, raw.get("event_id"))


def parse_event(raw: Any, index: int, ctx: Context) -> EventRecord | Rejection:
    """Validate one event; return its record, or a ``Rejection`` naming the field and rule."""
    if not isinstance(raw, dict):
        return Rejection(index, "", "event must be an object")
    try:
        return _server(raw, ctx) if ctx.source == "server" else _browser(raw, ctx)
    except InvalidField as exc:
        return exc.rejection(index)


def parse_events(rows: list, ctx: Context, parse=None) -> tuple[list[EventRecord], list[Rejection]]:
    """Every row through ``parse`` (``parse_event``, or another wire format's): the records and the refusals."""
    parse = parse or parse_event
    records: list[EventRecord] = []
    rejections: list[Rejection] = []
    for index, raw in enumerate(rows):
        result = parse(raw, index, ctx)
        (rejections if isinstance(result, Rejection) else records).append(result)
    return records, rejections
