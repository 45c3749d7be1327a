"""The records that cross the Redis streams and the rows they become: each defined once, here.

- ``EventRecord``: one validated event, as the collector queues it on the event stream.
- ``TouchRecord``: one redirect click, queued on the same stream in an entry of kind ``t``.
- ``EventRow``, ``TouchRow``: rows of the ``events`` and ``touchpoints`` tables, in column order.
  Each column names its ClickHouse type and the record fields it is built from:
  ``clicktrail/schema.py`` takes its column lists from here, the sink builds rows by field name,
  and tests/test_records.py fails when a record field has no column or a column no source.
- ``Notice``: what the sink (and the touchpoint import) tells the attributor was stored.

Why these kinds of type. Records are ``TypedDict``s: the stream holds JSON objects, and a
TypedDict is exactly the dict orjson decodes, described for the type checker. Decoding costs
nothing past ``orjson.loads`` (the sink's hot loop), entries written by any earlier version decode
as before, and a field of the wrong type (an older collector, a hand-requeued dead letter) still
reaches the sink's per-field checks, which refuse that one record with a reason, instead of
failing a constructor. Rows and notice keys are ``NamedTuple``s: rows are tuples, which the
columnar insert transposes with ``zip`` as before, and a field read by name is a C-level accessor,
as fast as an index.

Dependency-free but for orjson: its output is the encoding on the wire (compact JSON, UTF-8 as
is), byte for byte what every stage has written and read so far, and it is what the collector,
the sink and the attributor already use on their hot paths.
"""

# No ``from __future__ import annotations``: the rows' annotations are read at import time.

import zlib
from operator import attrgetter
from typing import Annotated, Any, NamedTuple, NotRequired, TypedDict, get_type_hints

import orjson

from clicktrail.keys import attribution_stream

# -- stream entries ---------------------------------------------------------------------------

#: Fields of an entry on the event stream (written by the collector's Lua scripts too, and kept
#: by dead letters) and of a notice on the attribution stream.
ADVERTISER = b"a"  # the advertiser id
KIND = b"k"  # event stream: TOUCH_ENTRY for touchpoints, absent for events; notices: "c" or "t"
COUNT = b"n"  # how many records DATA holds (event stream only)
DATA = b"d"  # the records (or notice keys) as one JSON array
#: Every field of an event-stream entry: what a dead letter keeps of one, and requeues.
ENTRY_FIELDS = (ADVERTISER, KIND, COUNT, DATA)
#: The KIND of an event-stream entry holding touchpoints (redirect clicks).
TOUCH_ENTRY = b"t"
#: The KIND of a notice: conversions (events stored), touchpoints (clicks, impressions stored) or
#: exchange rates (posted: the values of conversions already attributed change).
NOTICE_CONVERSIONS = "c"
NOTICE_TOUCHES = "t"
NOTICE_RATES = "r"


class EventRecord(TypedDict):
    """One validated event (pixel/events.py), browser and server alike."""

    pixel_id: str
    source: str  # browser, image or server
    event: str
    event_id: str
    id_generated: bool  # event_id was derived by the collector
    event_ms: int  # when it happened, skew-corrected, unix ms
    client_ms: int  # the sender's own timestamp, uncorrected (0 if none)
    sent_ms: int  # when the browser sent the batch, by its clock (0 if unknown)
    received_ms: int
    url: str
    referrer: str
    ttp: str  # first-party browser id
    ttclid: str
    email: NotRequired[str]  # SHA-256 hex, as are phone and external_id: the first value sent
    phone: NotRequired[str]
    external_id: NotRequired[str]
    # Every value (SHA-256 hex, first one included), only when more than one was sent: most events
    # carry one, and records queued before these were added have none (IDENTIFIER_LISTS).
    emails: NotRequired[list[str]]
    phones: NotRequired[list[str]]
    external_ids: NotRequired[list[str]]
    ip: str
    # Where the client IP is (pixel/geo.py), looked up by the collector before the IP is
    # anonymised; absent when unknown (and from records queued before they were added).
    country: NotRequired[str]  # ISO 3166-1 alpha-2
    region: NotRequired[str]  # ISO 3166-2, or the database's name for it
    user_agent: str
    properties: dict[str, Any]
    extra: NotRequired[dict[str, Any]]  # unknown top-level fields, as sent
    user_extra: NotRequired[dict[str, str]]  # other user fields, hashed
    test_event_code: str
    limited_data_use: bool
    # Server events only (absent from browser records and from records queued before they were
    # added: the sink stores event_source "web" and the rest empty).
    event_source: NotRequired[str]  # TikTok's: web, app, offline or crm
    partner_name: NotRequired[str]
    lead_id: NotRequired[str]  # the Events API's lead.lead_id (or user.lead_id)
    lead_event_source: NotRequired[str]


#: A multi-valued identifier's record field -> the field holding all its values (EventRecord).
IDENTIFIER_LISTS = {"email": "emails", "phone": "phones", "external_id": "external_ids"}


class TouchRecord(TypedDict):
    """One touchpoint queued on the event stream (a click through the redirect, collector/clicks.py)."""

    kind: str  # click or impression
    touch_id: str
    touch_ms: int
    campaign_id: str
    adgroup_id: str
    ad_id: str
    browser_id: str
    email: NotRequired[str]
    phone: NotRequired[str]
    external_id: NotRequired[str]
    ip: str
    country: NotRequired[str]  # as EventRecord's
    region: NotRequired[str]
    user_agent: str
    source: str  # redirect (imports are stored directly, not queued)
    received_ms: int
    # The collector's pixel.bots decision, which its click cache entry carries too (absent from
    # records queued before it was added: the sink decides from user_agent).
    is_bot: NotRequired[bool]


class Entry(NamedTuple):
    """An event-stream entry, decoded (its records not yet checked)."""

    advertiser_id: str
    is_touch: bool
    records: list  # of EventRecord, or of TouchRecord when is_touch


class EntryError(ValueError):
    """An entry that cannot be decoded at all."""


def encode_records(records: list) -> bytes:
    """The DATA of an entry: its records as one JSON array."""
    return orjson.dumps(records)


def entry_fields(advertiser_id: str, records: list, *, touch: bool = False) -> dict[bytes, bytes]:
    """An event-stream entry's fields, as the collector's scripts write them."""
    fields = {ADVERTISER: advertiser_id.encode()}
    if touch:
        fields[KIND] = TOUCH_ENTRY
    fields[COUNT] = str(len(records)).encode()
    fields[DATA] = encode_records(records)
    return fields


def is_touch_entry(fields: dict) -> bool:
    return fields.get(KIND) == TOUCH_ENTRY


def decode_entry(fields: dict) -> Entry:
    """Decode an event-stream entry; raise ``EntryError`` saying why when it cannot be."""
    try:
        advertiser = fields[ADVERTISER].decode()
        records = orjson.loads(fields[DATA])
    except Exception as exc:
        raise EntryError(f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(records, list):
        raise EntryError("d must be a JSON array of events")
    return Entry(advertiser, is_touch_entry(fields), records)


def entry_count(fields: dict) -> int:
    """How many records an entry says it holds (0 for an entry deleted since it was read)."""
    try:
        return int(fields.get(COUNT, 1)) if fields else 0
    except ValueError:
        return 1


# -- rows -------------------------------------------------------------------------------------


class Column(NamedTuple):
    """What a row field is in ClickHouse."""

    type: str  # the column's type; "{lc}" is LowCardinality(String) where the server has it
    source: tuple[str, ...]  # the record fields it is built from; () for facts of the entry or storage


def _col(ch_type: str, *source: str) -> Column:
    return Column(ch_type, source)


LC = "{lc}"
TEXT = "String"
DATETIME = "DateTime('UTC')"
U64 = "UInt64"
FLAG = "UInt8"


class EventRow(NamedTuple):
    """A row of the ``events`` table (docs/schema.md), built by the sink from an ``EventRecord``."""

    advertiser_id: Annotated[str, _col(LC)]  # the entry's
    pixel_id: Annotated[str, _col(LC, "pixel_id")]
    event: Annotated[str, _col(LC, "event")]
    event_id: Annotated[str, _col(TEXT, "event_id")]
    event_time: Annotated[int, _col(DATETIME, "event_ms")]  # unix seconds
    event_ms: Annotated[int, _col(U64, "event_ms")]
    client_ms: Annotated[int, _col(U64, "client_ms")]
    sent_ms: Annotated[int, _col(U64, "sent_ms")]
    received_at: Annotated[int, _col(DATETIME, "received_ms")]
    received_ms: Annotated[int, _col(U64, "received_ms")]
    source: Annotated[str, _col(LC, "source")]
    event_source: Annotated[str, _col(LC, "event_source")]
    partner_name: Annotated[str, _col(TEXT, "partner_name")]
    id_generated: Annotated[int, _col(FLAG, "id_generated")]
    browser_id: Annotated[str, _col(TEXT, "ttp")]
    click_id: Annotated[str, _col(TEXT, "ttclid", "url", "referrer")]
    email_sha256: Annotated[str, _col(TEXT, "email")]
    phone_sha256: Annotated[str, _col(TEXT, "phone")]
    external_id_sha256: Annotated[str, _col(TEXT, "external_id")]
    # Every value of each identifier, the first (the column above) included (migration 10).
    emails_sha256: Annotated[list, _col("Array(String)", "email", "emails")]
    phones_sha256: Annotated[list, _col("Array(String)", "phone", "phones")]
    external_ids_sha256: Annotated[list, _col("Array(String)", "external_id", "external_ids")]
    url: Annotated[str, _col(TEXT, "url")]
    url_host: Annotated[str, _col(LC, "url")]
    url_path: Annotated[str, _col(TEXT, "url")]
    referrer: Annotated[str, _col(TEXT, "referrer")]
    referrer_host: Annotated[str, _col(LC, "referrer")]
    utm_source: Annotated[str, _col(LC, "url")]
    utm_medium: Annotated[str, _col(LC, "url")]
    utm_campaign: Annotated[str, _col(TEXT, "url")]
    utm_content: Annotated[str, _col(TEXT, "url")]
    utm_term: Annotated[str, _col(TEXT, "url")]
    value: Annotated[float, _col("Float64", "properties")]
    currency: Annotated[str, _col(LC, "properties")]
    order_id: Annotated[str, _col(TEXT, "properties")]
    lead_id: Annotated[str, _col(TEXT, "lead_id")]
    lead_event_source: Annotated[str, _col(LC, "lead_event_source")]
    content_type: Annotated[str, _col(LC, "properties")]
    content_ids: Annotated[list, _col("Array(String)", "properties")]
    search_query: Annotated[str, _col(TEXT, "properties")]
    properties: Annotated[str, _col(TEXT, "properties")]  # JSON text
    extra: Annotated[str, _col(TEXT, "extra", "user_extra")]  # JSON text
    ip: Annotated[str, _col(TEXT, "ip")]
    country: Annotated[str, _col(LC, "country")]  # added by migration 13
    region: Annotated[str, _col(LC, "region")]
    user_agent: Annotated[str, _col(TEXT, "user_agent")]
    ua_browser: Annotated[str, _col(LC, "user_agent")]
    ua_browser_version: Annotated[str, _col(LC, "user_agent")]
    ua_os: Annotated[str, _col(LC, "user_agent")]
    ua_os_version: Annotated[str, _col(LC, "user_agent")]
    device_type: Annotated[str, _col(LC, "user_agent")]
    is_bot: Annotated[int, _col(FLAG, "user_agent")]
    test_event_code: Annotated[str, _col(TEXT, "test_event_code")]
    limited_data_use: Annotated[int, _col(FLAG, "limited_data_use")]
    stream_id: Annotated[str, _col(TEXT)]  # the entry's id and the record's index in it
    dedup_version: Annotated[int, _col(U64, "received_ms")]  # 2**64 - 1 - received_ms


class TouchRow(NamedTuple):
    """A row of the ``touchpoints`` table: from a ``TouchRecord`` (sink) or an imported touchpoint."""

    advertiser_id: Annotated[str, _col(LC)]
    kind: Annotated[str, _col(LC, "kind")]  # click or impression
    touch_id: Annotated[str, _col(TEXT, "touch_id")]  # click id (ttclid) or impression id
    touch_time: Annotated[int, _col(DATETIME, "touch_ms")]
    touch_ms: Annotated[int, _col(U64, "touch_ms")]
    campaign_id: Annotated[str, _col(TEXT, "campaign_id")]
    adgroup_id: Annotated[str, _col(TEXT, "adgroup_id")]
    ad_id: Annotated[str, _col(TEXT, "ad_id")]
    browser_id: Annotated[str, _col(TEXT, "browser_id")]
    email_sha256: Annotated[str, _col(TEXT, "email")]
    phone_sha256: Annotated[str, _col(TEXT, "phone")]
    external_id_sha256: Annotated[str, _col(TEXT, "external_id")]
    # Every value of each identifier, the first (the column above) included (migration 14): an
    # imported touchpoint may carry several; a redirect's click one at most.
    emails_sha256: Annotated[list, _col("Array(String)", "email")]
    phones_sha256: Annotated[list, _col("Array(String)", "phone")]
    external_ids_sha256: Annotated[list, _col("Array(String)", "external_id")]
    ip: Annotated[str, _col(TEXT, "ip")]
    country: Annotated[str, _col(LC, "country")]  # added by migration 13; "" for imports
    region: Annotated[str, _col(LC, "region")]
    user_agent: Annotated[str, _col(TEXT, "user_agent")]
    source: Annotated[str, _col(LC, "source")]  # redirect or import
    received_ms: Annotated[int, _col(U64, "received_ms")]
    # 1 for the first copy of a touchpoint id stored, 0 for re-posted or re-delivered copies, so
    # touch_stats counts each click once with a plain sum (added by migration 6).
    counted: Annotated[int, _col(FLAG)]
    # 1 for a bot's click (pixel.bots): stored, but no touchpoint and in no count (migration 11).
    is_bot: Annotated[int, _col(FLAG, "is_bot", "user_agent")]


def columns_of(row_type: type) -> dict[str, Column]:
    """A row type's columns by name, in column order."""
    hints = get_type_hints(row_type, include_extras=True)
    return {name: hints[name].__metadata__[0] for name in row_type._fields}


def column_types(row_type: type) -> list[tuple[str, str]]:
    """(name, ClickHouse type) of each column, in order: the form clicktrail/schema.py uses."""
    return [(name, column.type) for name, column in columns_of(row_type).items()]


# -- notices ----------------------------------------------------------------------------------


class ConversionKey(NamedTuple):
    """An event stored, as a notice names it (notices written before event_ms was added lack it)."""

    pixel_id: str
    event: str
    event_id: str
    event_ms: int | None


class TouchKey(NamedTuple):
    """A touchpoint stored, as a notice names it."""

    kind: str
    touch_id: str


class RateKey(NamedTuple):
    """Rates of a currency posted, as a notice names them: conversions from ``first_day`` on
    (YYYY-MM-DD, in the advertiser's time zone) may be worth something else now."""

    currency: str
    first_day: str


class Notice(NamedTuple):
    """One entry of the attribution stream: keys of one kind, all of one advertiser."""

    advertiser_id: str
    kind: str  # NOTICE_CONVERSIONS, NOTICE_TOUCHES or NOTICE_RATES
    keys: list  # of ConversionKey, TouchKey or RateKey


#: A stored row's key as a notice carries it: a plain tuple (orjson writes it as a JSON array;
#: it refuses NamedTuples), its fields named by ConversionKey / TouchKey.
conversion_key = attrgetter(*ConversionKey._fields)
touch_key = attrgetter(*TouchKey._fields)


def encode_notice(advertiser_id: str, kind: str, keys: list[tuple]) -> dict[bytes, bytes]:
    """A notice's stream fields; ``keys`` as ``conversion_key`` or ``touch_key`` make them."""
    return {ADVERTISER: advertiser_id.encode(), KIND: kind.encode(), DATA: orjson.dumps(keys)}


def notice_partition(advertiser_id: str, partitions: int) -> int:
    """The partition of an advertiser's notices: stable across processes, hosts and restarts
    (CRC-32, not Python's salted ``hash``), so every writer and the feed agree on it."""
    return zlib.crc32(advertiser_id.encode()) % partitions if partitions > 1 else 0


def notice_stream(advertiser_id: str, partitions: int) -> str:
    """The stream an advertiser's notices go to, out of ``partitions``."""
    return attribution_stream(notice_partition(advertiser_id, partitions))


def decode_notice(fields: dict) -> Notice:
    advertiser = fields[ADVERTISER].decode()
    kind = fields[KIND].decode()
    raw = orjson.loads(fields[DATA])
    if kind == NOTICE_CONVERSIONS:
        keys = [ConversionKey(pixel, event, event_id, ms[0] if ms else None) for pixel, event, event_id, *ms in raw]
    elif kind == NOTICE_RATES:
        keys = [RateKey(*key) for key in raw]
    else:
        keys = [TouchKey(*key) for key in raw]
    return Notice(advertiser, kind, keys)
