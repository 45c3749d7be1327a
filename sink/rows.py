"""Turn stream entries into columns for one ClickHouse insert.

The sink does not trust its records: they may come from an older collector, or from a dead
letter requeued by hand. Every column filled from a record is type-checked here (strings are
strings, times are in range of their column), so that a record that is wrong fails while its row
is built, alone, with a reason, rather than inside the driver's serialisation of a whole block.
"""

from __future__ import annotations

from typing import NamedTuple

import orjson

from pixel.events import MAX_MONEY
from sink.enrich import EMPTY_URL, anonymize_ip, click_id, content_ids, make_agent_parser, split_url

_dumps = orjson.dumps

_MAX_U64 = 2**64 - 1
#: DateTime columns hold seconds in 32 bits: times in ms must be below this.
_MAX_DATETIME_MS = 2**32 * 1000 - 1
_MAX_VALUE = MAX_MONEY  # beyond it a sum could overflow


class PoisonEntry(Exception):
    """An entry that can never be stored (undecodable or malformed): it goes to the dead letters."""


def _str(value: object, name: str) -> str:
    return value if value.__class__ is str else _text(value, name)


def _value(value: object) -> float:
    if value is None or value == "":  # the collector lets "" through as "no value"
        return 0.0
    if value.__class__ not in (int, float) or not -_MAX_VALUE <= value <= _MAX_VALUE:
        raise RowError(f"properties.value must be a number from -{_MAX_VALUE:.0f} to {_MAX_VALUE:.0f}")
    return float(value)


class RowError(ValueError):
    """A record field that its column cannot take."""


def _text(value: object, name: str) -> str:
    """A string column's value when the record's is not a str (the hot path checks str inline)."""
    if value is None:
        return ""
    if value.__class__ in (int, float):  # a number where text belongs (older collectors let it by)
        return str(value)
    raise RowError(f"{name} must be a string, not {type(value).__name__}")


def _ms(value: object, name: str, top: int = _MAX_DATETIME_MS) -> int:
    """A time in ms (or another unsigned count) for a UInt64 or DateTime column."""
    if value is None:
        return 0
    if value.__class__ is float and value.is_integer():
        value = int(value)
    if value.__class__ is not int or not 0 <= value <= top:
        raise RowError(f"{name} must be an integer from 0 to {top}, not {value!r:.40}")
    return value


class Failure(NamedTuple):
    """One event of an entry that cannot be stored, and why."""

    index: int
    reason: str
    record: object


class RowBuilder:
    """Builds rows from entries, with the enrichment settings of one sink process."""

    def __init__(self, anonymize_ip: bool, ua_cache_size: int) -> None:
        self._anonymize = anonymize_ip
        self._agent = make_agent_parser(ua_cache_size)

    def rows(self, entry_id: bytes, fields: dict) -> tuple[list[tuple], list[int], list[Failure]]:
        """Return the entry's rows (events or touchpoints), their indexes in the entry, and failures.

        Raises ``PoisonEntry`` when the entry itself cannot be decoded.
        """
        try:
            advertiser = fields[b"a"].decode()
            records = orjson.loads(fields[b"d"])
        except Exception as exc:
            raise PoisonEntry(f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(records, list):
            raise PoisonEntry("d must be a JSON array of events")
        stream_id = entry_id.decode()
        make = self._touch_row if is_touch_entry(fields) else self._row
        rows, indexes, failures = [], [], []
        for index, record in enumerate(records):
            try:
                rows.append(make(f"{stream_id}/{index}", advertiser, record))
                indexes.append(index)
            except Exception as exc:  # whatever is wrong with one record is that record's fault
                failures.append(Failure(index, f"cannot build row: {type(exc).__name__}: {str(exc)[:500]}", record))
        return rows, indexes, failures

    def _row(self, stream_id: str, advertiser: str, r: dict) -> tuple:
        # The hot loop of the sink: plain dict lookups and class checks; a value of the wrong type
        # goes through _text/_ms, which convert it or refuse the row.
        get = r.get
        url = get("url") or ""
        if url.__class__ is not str:
            url = _text(url, "url")
        referrer = get("referrer") or ""
        if referrer.__class__ is not str:
            referrer = _text(referrer, "referrer")
        page = split_url(url)
        ref = split_url(referrer) if referrer else EMPTY_URL
        ua = get("user_agent") or ""
        if ua.__class__ is not str:
            ua = _text(ua, "user_agent")
        agent = self._agent(ua)
        props = get("properties") or {}
        if props.__class__ is not dict:
            raise RowError("properties must be an object")
        extra = get("extra")
        if get("user_extra"):
            extra = dict(extra or {}, user=r["user_extra"])
        ip = get("ip") or ""
        if ip.__class__ is not str:
            ip = _text(ip, "ip")
        event_ms = r["event_ms"]
        if event_ms.__class__ is not int or not 0 <= event_ms <= _MAX_DATETIME_MS:
            event_ms = _ms(event_ms, "event_ms")
        received_ms = r["received_ms"]
        if received_ms.__class__ is not int or not 0 <= received_ms <= _MAX_DATETIME_MS:
            received_ms = _ms(received_ms, "received_ms")
        client_ms = get("client_ms") or 0
        if client_ms.__class__ is not int or not 0 <= client_ms <= _MAX_U64:
            client_ms = _ms(client_ms, "client_ms", _MAX_U64)
        sent_ms = get("sent_ms") or 0
        if sent_ms.__class__ is not int or not 0 <= sent_ms <= _MAX_U64:
            sent_ms = _ms(sent_ms, "sent_ms", _MAX_U64)
        value = props.get("value")
        params = page.params
        return (
            advertiser,
            _str(r["pixel_id"], "pixel_id"),
            _str(r["event"], "event"),
            _str(r["event_id"], "event_id"),
            event_ms // 1000,
            event_ms,
            client_ms,
            sent_ms,
            received_ms // 1000,
            received_ms,
            _str(r["source"], "source"),
            1 if get("id_generated") else 0,
            _str(get("ttp"), "ttp"),
            click_id(_str(get("ttclid"), "ttclid"), page, ref),
            _str(get("email"), "email"),
            _str(get("phone"), "phone"),
            _str(get("external_id"), "external_id"),
            url,
            page.host,
            page.path,
            referrer,
            ref.host,
            params.get("utm_source", "") if params else "",
            params.get("utm_medium", "") if params else "",
            params.get("utm_campaign", "") if params else "",
            params.get("utm_content", "") if params else "",
            params.get("utm_term", "") if params else "",
            _value(value),
            _str(props.get("currency"), "properties.currency"),
            _str(props.get("order_id"), "properties.order_id"),
            _str(props.get("content_type"), "properties.content_type"),
            content_ids(props) if props else [],
            _str(props.get("query") or props.get("search_string"), "properties.query"),
            _dumps(props).decode() if props else "{}",
            _dumps(extra).decode() if extra else "",
            (anonymize_ip(ip) if self._anonymize else ip) if ip else "",
            ua,
            *agent,
            _str(get("test_event_code"), "test_event_code"),
            1 if get("limited_data_use") else 0,
            stream_id,
            _MAX_U64 - received_ms,
        )

    def _touch_row(self, stream_id: str, advertiser: str, r: dict) -> tuple:
        """A touchpoint row in ``TOUCH_COLUMN_NAMES`` order (clicks recorded by the redirect)."""
        ip = _str(r.get("ip"), "ip")
        touch_ms = _ms(r["touch_ms"], "touch_ms")
        return (
            advertiser,
            _str(r["kind"], "kind"),
            _str(r["touch_id"], "touch_id"),
            touch_ms // 1000,
            touch_ms,
            _str(r["campaign_id"], "campaign_id"),
            _str(r["adgroup_id"], "adgroup_id"),
            _str(r["ad_id"], "ad_id"),
            _str(r.get("browser_id"), "browser_id"),
            _str(r.get("email"), "email"),
            _str(r.get("phone"), "phone"),
            _str(r.get("external_id"), "external_id"),
            (anonymize_ip(ip) if self._anonymize else ip) if ip else "",
            _str(r.get("user_agent"), "user_agent"),
            _str(r.get("source"), "source") or "redirect",
            _ms(r["received_ms"], "received_ms", _MAX_U64),
            1,  # counted; the sink clears it for a re-delivered click (see Sink._count_once)
        )


def is_touch_entry(fields: dict) -> bool:
    return fields.get(b"k") == b"t"
