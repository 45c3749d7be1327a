"""The record contract (pixel/records.py): one definition of what crosses the streams and which
columns it fills, checked against the sink that builds rows, the collector's scripts that write
entries, the migrated tables, and entries written by the previous version."""

import ast
import inspect
import json
import textwrap
from typing import Annotated, NamedTuple, NotRequired, TypedDict

import orjson
import pytest

from clicktrail import schema
from collector.buffer import EventBuffer
from pixel import records
from pixel.records import Column, EventRecord, EventRow, TouchRecord, TouchRow
from sink import dead_letters
from sink.rows import RowBuilder

#: Columns filled from the entry or by storage rather than from a record field.
ENTRY_FACTS = {EventRow: {"advertiser_id", "stream_id"}, TouchRow: {"advertiser_id", "counted"}}

#: An entry exactly as the previous version's collector queued it (its Lua script's XADD), with a
#: record its validation produced: byte for byte what may still be waiting on a stream.
OLD_RECORD = (
    b'{"pixel_id":"CPIX1","source":"browser","received_ms":1767225600000,"sent_ms":0,"ip":"203.0.113.9",'
    b'"user_agent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 '
    b'Safari/537.36","test_event_code":"","event":"CompletePayment","client_ms":1767225599000,'
    b'"event_ms":1767225599000,"ttp":"tp-1","ttclid":"","url":"https://www.shop.example/thanks?utm_source=tt'
    b'&utm_campaign=spring&ttclid=E.C.P.1","referrer":"https://www.shop.example/cart","properties":{"value":42.5,'
    b'"currency":"EUR","order_id":"A-1","contents":[{"content_id":"sku-1","price":42.5}],"brand":"x"},'
    b'"limited_data_use":false,"email":"8c87b489ce35cf2e2f39f80e282cb2e804932a56a213983eeeb428407d43b52d",'
    b'"user_extra":{"first_name":"81f8f6dde88365f3928796ec7aa53f72820b06db8664f5fe76a7eb13e24546a2"},'
    b'"extra":{"surprise":{"kept":true}},"id_generated":false,"event_id":"old-1"}'
)
OLD_ENTRY = {b"a": b"adv-1", b"n": b"1", b"d": b"[" + OLD_RECORD + b"]"}

#: Every column of the old record's row, by name: what ClickHouse stores.
EXPECTED_ROW = {
    "advertiser_id": "adv-1", "pixel_id": "CPIX1", "event": "CompletePayment", "event_id": "old-1",
    "event_time": 1767225599, "event_ms": 1767225599000, "client_ms": 1767225599000, "sent_ms": 0,
    "received_at": 1767225600, "received_ms": 1767225600000, "source": "browser", "event_source": "web",
    "partner_name": "", "id_generated": 0,
    "browser_id": "tp-1", "click_id": "E.C.P.1",
    "email_sha256": "8c87b489ce35cf2e2f39f80e282cb2e804932a56a213983eeeb428407d43b52d",
    "phone_sha256": "", "external_id_sha256": "",
    # Records queued before the lists were added carry one value: the lists hold it alone.
    "emails_sha256": ["8c87b489ce35cf2e2f39f80e282cb2e804932a56a213983eeeb428407d43b52d"],
    "phones_sha256": [], "external_ids_sha256": [],
    "url": "https://www.shop.example/thanks?utm_source=tt&utm_campaign=spring&ttclid=E.C.P.1",
    "url_host": "www.shop.example", "url_path": "/thanks", "referrer": "https://www.shop.example/cart",
    "referrer_host": "www.shop.example", "utm_source": "tt", "utm_medium": "", "utm_campaign": "spring",
    "utm_content": "", "utm_term": "", "value": 42.5, "currency": "EUR", "order_id": "A-1", "lead_id": "",
    "lead_event_source": "", "content_type": "",
    "content_ids": ["sku-1"], "search_query": "",
    "properties": '{"value":42.5,"currency":"EUR","order_id":"A-1","contents":[{"content_id":"sku-1","price":42.5}],'
                  '"brand":"x"}',
    "extra": '{"surprise":{"kept":true},"user":{"first_name":'
             '"81f8f6dde88365f3928796ec7aa53f72820b06db8664f5fe76a7eb13e24546a2"}}',
    "ip": "203.0.113.0", "country": "", "region": "",  # queued before places were looked up
    "user_agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
    "ua_browser": "Chrome", "ua_browser_version": "120.0", "ua_os": "Linux", "ua_os_version": "",
    "device_type": "desktop", "is_bot": 0, "test_event_code": "", "limited_data_use": 0, "stream_id": "1-0/0",
    "dedup_version": 2**64 - 1 - 1767225600000,
}


# -- one definition ---------------------------------------------------------------------------


def contract_problems(record: type, row: type) -> list[str]:
    """What is wrong between a record and the row built from it (empty when they agree)."""
    fields = record.__required_keys__ | record.__optional_keys__
    columns = records.columns_of(row)
    sources = {name for column in columns.values() for name in column.source}
    problems = [f"record field {name!r} fills no column" for name in sorted(fields - sources)]
    problems += [f"column {col!r} is built from {name!r}, which the record lacks"
                 for col, column in columns.items() for name in column.source if name not in fields]
    problems += [f"column {col!r} names no record field it is built from"
                 for col, column in columns.items() if not column.source and col not in ENTRY_FACTS.get(row, ())]
    return problems


@pytest.mark.parametrize("record, row", [(EventRecord, EventRow), (TouchRecord, TouchRow)])
def test_every_record_field_fills_a_column_and_every_column_comes_from_the_record(record, row):
    assert contract_problems(record, row) == []


def test_a_field_added_to_the_record_alone_or_a_column_added_alone_is_caught():
    """What a newcomer's half-done change looks like to the check above."""
    with_coupon = TypedDict("WithCoupon", {**EventRecord.__annotations__, "coupon": NotRequired[str]})
    assert contract_problems(with_coupon, EventRow) == ["record field 'coupon' fills no column"]

    class RowWithCoupon(NamedTuple):
        advertiser_id: Annotated[str, Column("{lc}", ())]
        pixel_id: Annotated[str, Column("{lc}", ("pixel_id",))]
        coupon: Annotated[str, Column("String", ("coupon",))]
        loyalty: Annotated[str, Column("String", ())]

    found = contract_problems(EventRecord, RowWithCoupon)
    assert "column 'coupon' is built from 'coupon', which the record lacks" in found
    assert "column 'loyalty' names no record field it is built from" in found


def test_schema_column_lists_are_the_rows():
    assert schema.EVENT_COLUMNS == records.column_types(EventRow)
    assert schema.EVENT_COLUMN_NAMES == list(EventRow._fields)
    assert schema.TOUCH_COLUMNS == records.column_types(TouchRow)
    assert schema.TOUCH_COLUMN_NAMES == list(TouchRow._fields)
    assert records.column_types(EventRow)[:5] == [("advertiser_id", "{lc}"), ("pixel_id", "{lc}"), ("event", "{lc}"),
                                                  ("event_id", "String"), ("event_time", "DateTime('UTC')")]


@pytest.mark.parametrize("table, row", [("events", EventRow), ("touchpoints", TouchRow)])
def test_the_migrated_tables_have_exactly_the_rows_columns(ch, ch_database, table, row):
    """A column added to a row type needs a migration (and one added by a migration, a row field)."""
    stored = ch.execute("SELECT name, type FROM system.columns WHERE database = %(db)s AND table = %(table)s",
                        {"db": ch_database, "table": table})
    wanted = {name: column.type for name, column in records.columns_of(row).items()}
    assert {name for name, _ in stored} == set(wanted)
    for name, ch_type in stored:
        assert ch_type in (wanted[name].replace("{lc}", "String"), wanted[name].replace("{lc}", "LowCardinality(String)"))


def _sink_row_arguments() -> list[str]:
    """The names the sink's row builder passes to EventRow, in order (read from its source)."""
    source = textwrap.dedent(inspect.getsource(RowBuilder._row))
    calls = [node for node in ast.walk(ast.parse(source))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "EventRow"]
    assert len(calls) == 1, "the row builder makes its row in one EventRow(...) call"
    (call,) = calls
    assert not call.keywords
    assert all(isinstance(arg, ast.Name) for arg in call.args), "every value is a local named after its column"
    return [arg.id for arg in call.args]


def test_the_sink_makes_each_column_from_the_local_named_after_it_in_row_order():
    assert _sink_row_arguments() == list(EventRow._fields)


def test_every_column_of_a_row_gets_its_own_value():
    rows, indexes, failures = RowBuilder(anonymize_ip=True, ua_cache_size=8).rows(b"1-0", OLD_ENTRY)
    assert failures == [] and indexes == [0]
    (row,) = rows
    assert isinstance(row, EventRow)
    assert row._asdict() == EXPECTED_ROW


# -- the stream format, old and new -------------------------------------------------------------


def test_encoding_is_what_the_previous_version_wrote():
    record = orjson.loads(OLD_RECORD)
    assert records.entry_fields("adv-1", [record]) == OLD_ENTRY
    decoded = records.decode_entry(OLD_ENTRY)
    assert decoded == ("adv-1", False, [record])
    row = RowBuilder(anonymize_ip=True, ua_cache_size=8).rows(b"1-0", OLD_ENTRY)[0][0]
    # The previous sink's notice for this row, as it wrote it.
    assert records.encode_notice("adv-1", records.NOTICE_CONVERSIONS, [records.conversion_key(row)]) == {
        b"a": b"adv-1", b"k": b"c", b"d": b'[["CPIX1","CompletePayment","old-1",1767225599000]]'}


def test_notices_of_every_version_decode():
    conversions = records.decode_notice({b"a": b"adv-1", b"k": b"c", b"d": b'[["P","Purchase","e1",1767225599000],'
                                                                                b'["P","Lead","e2"]]'})
    assert conversions == ("adv-1", "c", [("P", "Purchase", "e1", 1767225599000), ("P", "Lead", "e2", None)])
    assert conversions.keys[1].event_ms is None  # notices from before event_ms was sent
    touches = records.decode_notice({b"a": b"adv-1", b"k": b"t", b"d": b'[["click","CLK1"],["impression","IMP1"]]'})
    assert touches.kind == records.NOTICE_TOUCHES
    assert [(key.kind, key.touch_id) for key in touches.keys] == [("click", "CLK1"), ("impression", "IMP1")]


def test_the_collectors_scripts_write_the_fields_the_records_name(client, tenant, r):
    body = {"events": [{"event": "PageView", "event_id": "fresh-1", "page": {"url": "https://shop.example/"}}]}
    assert client.post(f"/e/{tenant.pixel_id}", data=json.dumps(body)).json["accepted"] == 1
    click = {"kind": "click", "touch_id": "CLK-1", "touch_ms": 1767225600000, "campaign_id": "c", "adgroup_id": "g",
             "ad_id": "d", "browser_id": "", "ip": "198.51.100.7", "user_agent": "UA", "source": "redirect",
             "received_ms": 1767225600000}
    EventBuffer(r, 1000, 2).append_click(tenant.advertiser, "www.shop.example", click, "ct:test:click", b"v", 60)
    (_, events), (_, clicks) = r.xrange("ct:events")
    assert set(events) == {records.ADVERTISER, records.COUNT, records.DATA}
    entry = records.decode_entry(events)
    assert (entry.advertiser_id, entry.is_touch, entry.records[0]["event_id"]) == (tenant.advertiser, False, "fresh-1")
    assert set(clicks) == set(records.ENTRY_FIELDS) and clicks[records.KIND] == records.TOUCH_ENTRY
    assert records.decode_entry(clicks) == (tenant.advertiser, True, [click])


def test_old_entries_and_old_dead_letters_are_stored(sink, r, ch, ch_database):
    """An entry queued by the previous version, and a dead letter its sink wrote, are both stored."""
    r.xadd("ct:events", OLD_ENTRY)
    old_letter = {**OLD_ENTRY, b"d": b"[" + OLD_RECORD.replace(b'"old-1"', b'"old-2"') + b"]"}
    r.xadd("ct:events:dead", {**old_letter, b"id": b"1-0", b"index": b"0", b"reason": b"refused by ClickHouse: x",
                              b"consumer": b"old-sink"})
    sink.drain()
    assert dead_letters.requeue(r, 10) == 1
    sink.drain()
    stored = ch.execute(f"SELECT event_id, url_host, utm_campaign, value, click_id FROM {ch_database}.events_unique "
                        "ORDER BY event_id")
    assert stored == [("old-1", "www.shop.example", "spring", 42.5, "E.C.P.1"),
                      ("old-2", "www.shop.example", "spring", 42.5, "E.C.P.1")]
    keys = [key for _, fields in r.xrange("ct:attribution") for key in records.decode_notice(fields).keys]
    assert sorted(keys) == [("CPIX1", "CompletePayment", "old-1", 1767225599000),
                            ("CPIX1", "CompletePayment", "old-2", 1767225599000)]
