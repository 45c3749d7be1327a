"""Turn stream entries into columns for one ClickHouse insert.

The sink does not trust its records: they may come from an older collector, or from a dead
letter requeued by hand. Every column filled from a record is type-checked here (strings are
strings, times are in range of their column), so that a record that is wrong fails while its row
is built, alone, with a reason, rather than inside the driver's serialisation of a whole block.
"""

from __future__ import annotations

from typing import NamedTuple

import orjson

from pixel import bots
from pixel.events import MAX_MONEY
from pixel.records import EntryError, EventRecord, EventRow, TouchRow, decode_entry
from sink import enrich
from pixel.scrub import anonymize_ip
from sink.enrich import EMPTY_URL, make_agent_parser, split_url

_dumps = orjson.dumps

_MAX_U64 = 2**64 - 1
#: DateTime columns hold seconds in 32 bits: times in ms must be below this.
_MAX_DATETIME_MS = 2**32 * 1000 - 1
_MAX_VALUE = MAX_MONEY  # beyond it a sum could overflow
#: The empty list of an identifier column, shared by the rows that have no value (most): rows are
#: only read (transposed and serialised), never changed, and one list less per column is cheaper.
_NO_VALUES: list[str] = []


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


def _identifiers(first: str, values: object, name: str) -> tuple[str, list[str]]:
    """An identifier's single column and list column: the record's list when it has one (more
    than one value was sent), else its single value alone, else nothing.

    The single column's value is the list's first: event_identity_values_mv (migration 10) indexes
    the list from its second item, the first being indexed from the single column.
    """
    if values is None or values == []:
        return first, [first] if first else []
    if values.__class__ is not list or not all(v.__class__ is str for v in values):
        raise RowError(f"{name} must be a list of strings")
    if not first:
        return values[0], values
    if values[0] != first:
        values = [first] + [v for v in values if v != first]
    return first, values


def _content_type(props: dict) -> str:
    """The first ``contents[].content_type``: where TikTok's own templates put it, per content."""
    contents = props.get("contents")
    if contents.__class__ is list:
        for item in contents:
            if item.__class__ is dict and item.get("content_type") not in (None, ""):
                return _str(item["content_type"], "properties.contents.content_type")
    return ""


def _place(get) -> tuple[str, str]:
    """The record's country and region (absent from records of older collectors, and when unknown)."""
    country, region = get("country", ""), get("region", "")
    if country.__class__ is region.__class__ is str:
        return country, region
    return _str(country, "country"), _str(region, "region")


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

    def rows(self, entry_id: bytes, fields: dict) -> tuple[list[EventRow | TouchRow], list[int], list[Failure]]:
        """Return the entry's rows (events or touchpoints), their indexes in the entry, and failures.

        Raises ``PoisonEntry`` when the entry itself cannot be decoded.
        """
        try:
            advertiser, is_touch, records = decode_entry(fields)
        except EntryError as exc:
            raise PoisonEntry(str(exc)) from exc
        stream_id = entry_id.decode()
        make = self._touch_row if is_touch else self._row
        rows, indexes, failures = [], [], []
        for index, record in enumerate(records):
            try:
                rows.append(make(f"{stream_id}/{index}", advertiser, record))
                indexes.append(index)
            except Exception as exc:  # whatever is wrong with one record is that record's fault
                failures.append(Failure(index, f"cannot build row: {type(exc).__name__}: {str(exc)[:500]}", record))
        return rows, indexes, failures

    def _row(self, stream_id: str, advertiser_id: str, r: EventRecord) -> EventRow:
        # The hot loop of the sink: plain dict lookups and class checks; a value of the wrong type
        # goes through _text/_ms, which convert it or refuse the row. Each column's value is put in
        # a local named after the column (see the end).
        get = r.get
        url = get("url") or ""
        if url.__class__ is not str:
            url = _text(url, "url")
        referrer = get("referrer") or ""
        if referrer.__class__ is not str:
            referrer = _text(referrer, "referrer")
        page = split_url(url)
        ref = split_url(referrer) if referrer else EMPTY_URL
        user_agent = get("user_agent") or ""
        if user_agent.__class__ is not str:
            user_agent = _text(user_agent, "user_agent")
        ua_browser, ua_browser_version, ua_os, ua_os_version, device_type, is_bot = (
            self._agent(user_agent) if user_agent else enrich.no_agent(get("source")))
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
        # Text fields in bulk: one chained class check for the usual case (all str); otherwise
        # _str converts each (numbers) or refuses the row, in column order.
        pixel_id, event, event_id, source = r["pixel_id"], r["event"], r["event_id"], r["source"]
        if not (pixel_id.__class__ is event.__class__ is event_id.__class__ is source.__class__ is str):
            pixel_id, event, event_id, source = (_str(pixel_id, "pixel_id"), _str(event, "event"),
                                                 _str(event_id, "event_id"), _str(source, "source"))
        browser_id, ttclid, email_sha256, phone_sha256, external_id_sha256 = (
            get("ttp", ""), get("ttclid", ""), get("email", ""), get("phone", ""), get("external_id", ""))
        if not (browser_id.__class__ is ttclid.__class__ is email_sha256.__class__ is phone_sha256.__class__
                is external_id_sha256.__class__ is str):
            browser_id, ttclid, email_sha256, phone_sha256, external_id_sha256 = (
                _str(browser_id, "ttp"), _str(ttclid, "ttclid"), _str(email_sha256, "email"),
                _str(phone_sha256, "phone"), _str(external_id_sha256, "external_id"))
        emails, phones, external_ids = get("emails"), get("phones"), get("external_ids")
        if emails is phones is external_ids is None:  # one value of each at most: most events
            emails_sha256 = [email_sha256] if email_sha256 else _NO_VALUES
            phones_sha256 = [phone_sha256] if phone_sha256 else _NO_VALUES
            external_ids_sha256 = [external_id_sha256] if external_id_sha256 else _NO_VALUES
        else:
            email_sha256, emails_sha256 = _identifiers(email_sha256, emails, "emails")
            phone_sha256, phones_sha256 = _identifiers(phone_sha256, phones, "phones")
            external_id_sha256, external_ids_sha256 = _identifiers(external_id_sha256, external_ids, "external_ids")
        if props:
            value = _value(props.get("value"))
            currency = _str(props.get("currency"), "properties.currency")
            order_id = _str(props.get("order_id"), "properties.order_id")
            content_type = _str(props.get("content_type"), "properties.content_type") or _content_type(props)
            content_ids = enrich.content_ids(props)
            search_query = _str(props.get("query") or props.get("search_string"), "properties.query")
            properties = _dumps(props).decode()
        else:  # most events (page views) have none: no calls for empty columns
            value, currency, order_id, content_type, content_ids, search_query, properties = 0.0, "", "", "", [], "", "{}"
        params = page.params
        if params:
            utm_source = params.get("utm_source", "")
            utm_medium = params.get("utm_medium", "")
            utm_campaign = params.get("utm_campaign", "")
            utm_content = params.get("utm_content", "")
            utm_term = params.get("utm_term", "")
        else:
            utm_source = utm_medium = utm_campaign = utm_content = utm_term = ""
        event_time = event_ms // 1000
        received_at = received_ms // 1000
        id_generated = 1 if get("id_generated") else 0
        # Server-event fields (Events API 2.0); records without them are browser events or were
        # queued before they existed: TikTok's default source, web.
        event_source = get("event_source") or "web"
        partner_name, lead_id = get("partner_name", ""), get("lead_id", "")
        lead_event_source = get("lead_event_source", "")
        if not (event_source.__class__ is partner_name.__class__ is lead_id.__class__ is lead_event_source.__class__
                is str):
            event_source, partner_name, lead_id, lead_event_source = (
                _str(event_source, "event_source"), _str(partner_name, "partner_name"), _str(lead_id, "lead_id"),
                _str(lead_event_source, "lead_event_source"))
        click_id = enrich.click_id(ttclid, page, ref)
        url_host, url_path, referrer_host = page.host, page.path, ref.host
        extra = _dumps(extra).decode() if extra else ""
        # The collector anonymised it already; entries queued by a collector from before that
        # may still hold a raw address, and anonymising twice changes nothing.
        ip = (anonymize_ip(ip) if self._anonymize else ip) if ip else ""
        country, region = _place(get)
        test_event_code = _str(get("test_event_code"), "test_event_code")
        limited_data_use = 1 if get("limited_data_use") else 0
        dedup_version = _MAX_U64 - received_ms
        # The row is made from locals named after its columns, in EventRow's field order:
        # tests/test_records.py reads this call and fails when the names differ from EventRow's
        # fields, so a column added, renamed or moved in pixel/records.py cannot land in the wrong
        # place. (Passing them by keyword would check that at run time, but made row building about
        # 15 % more costly in bench/validation_bench.py: CPython matches the keywords one by one.)
        return EventRow(
            advertiser_id, pixel_id, event, event_id, event_time, event_ms, client_ms, sent_ms, received_at,
            received_ms, source, event_source, partner_name, id_generated, browser_id, click_id, email_sha256,
            phone_sha256, external_id_sha256, emails_sha256, phones_sha256, external_ids_sha256, url, url_host,
            url_path, referrer, referrer_host, utm_source, utm_medium, utm_campaign, utm_content, utm_term, value,
            currency, order_id, lead_id, lead_event_source, content_type, content_ids, search_query, properties,
            extra, ip, country, region, user_agent, ua_browser, ua_browser_version, ua_os, ua_os_version,
            device_type, is_bot, test_event_code, limited_data_use, stream_id, dedup_version,
        )

    def _touch_row(self, stream_id: str, advertiser: str, r: dict) -> TouchRow:
        """A touchpoint row (clicks recorded by the redirect)."""
        ip = _str(r.get("ip"), "ip")
        touch_ms = _ms(r["touch_ms"], "touch_ms")
        email, phone = _str(r.get("email"), "email"), _str(r.get("phone"), "phone")
        external_id = _str(r.get("external_id"), "external_id")
        return TouchRow(
            advertiser_id=advertiser,
            kind=_str(r["kind"], "kind"),
            touch_id=_str(r["touch_id"], "touch_id"),
            touch_time=touch_ms // 1000,
            touch_ms=touch_ms,
            campaign_id=_str(r["campaign_id"], "campaign_id"),
            adgroup_id=_str(r["adgroup_id"], "adgroup_id"),
            ad_id=_str(r["ad_id"], "ad_id"),
            browser_id=_str(r.get("browser_id"), "browser_id"),
            email_sha256=email,
            phone_sha256=phone,
            external_id_sha256=external_id,
            # A redirect's click carries one value at most: a list of it, or none.
            emails_sha256=[email] if email else [],
            phones_sha256=[phone] if phone else [],
            external_ids_sha256=[external_id] if external_id else [],
            ip=(anonymize_ip(ip) if self._anonymize else ip) if ip else "",
            country=_str(r.get("country"), "country"),
            region=_str(r.get("region"), "region"),
            user_agent=_str(r.get("user_agent"), "user_agent"),
            source=_str(r.get("source"), "source") or "redirect",
            received_ms=_ms(r["received_ms"], "received_ms", _MAX_U64),
            counted=1,  # the sink clears it for a re-delivered click (see Sink._count_once)
            is_bot=_touch_is_bot(r),
        )


def _touch_is_bot(r: dict) -> int:
    """The collector's decision, else (a record queued before it made one) pixel.bots's."""
    flag = r.get("is_bot")
    if flag is None:
        return int(bots.is_bot(_str(r.get("user_agent"), "user_agent"), _str(r.get("source"), "source") or "redirect"))
    return 1 if flag else 0


