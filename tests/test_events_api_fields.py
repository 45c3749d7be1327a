"""Events API 2.0 kept whole: event_source, partner_name, ad.callback, contents[].content_type and
the lead fields land in their own columns of ClickHouse; browser events are stored as web events.

(Not covered here: every value of a multi-valued identifier, left for a later part of issue 13;
app and offline event sources registered from the CLI are in tests/test_app_sources.py.)
"""

import json
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from pixel.events import EVENT_SOURCES, Context, Rejection, parse_event
from pixel.records import entry_fields
from sink.rows import RowBuilder
from tests.conftest import now_ms, query_dicts

TRACK = "/open_api/v1.3/event/track/"


def stored(ch, db):
    return {row["event_id"]: row for row in query_dicts(ch, f"SELECT * FROM {db}.events_unique")}


def post(client, tenant, rows, **envelope):
    body = {"event_source": "web", "event_source_id": tenant.pixel_id, "data": rows, **envelope}
    return client.post(TRACK, json=body, headers={"Access-Token": tenant.token})


def test_each_event_source_partner_callback_content_type_and_lead_are_stored(client, tenant, sink, ch, ch_database):
    now = int(time.time()) - 60
    for source in ("app", "offline", "crm"):
        row = {
            "event": "SubmitForm", "event_time": now, "event_id": f"{source}-1",
            "ad": {"callback": f"E.C.P.{source}", "campaign_id": "c-7"},
            "lead": {"lead_id": f"lead-{source}", "lead_event_source": "CRM-X"},
            "properties": {"contents": [{"content_id": "sku-1"}, {"content_id": "sku-2", "content_type": "product"}]},
        }
        resp = post(client, tenant, [row], event_source=source, partner_name="Shopify")
        assert resp.status_code == 200 and resp.json["data"] == {"accepted": 1, "rejected": []}
    sink.drain()
    rows = stored(ch, ch_database)
    for source in ("app", "offline", "crm"):
        row = rows[f"{source}-1"]
        assert (row["source"], row["event_source"], row["partner_name"]) == ("server", source, "Shopify")
        assert row["click_id"] == f"E.C.P.{source}"  # ad.callback: no ttclid was given
        assert row["content_type"] == "product"  # from contents[], the top level has none
        assert (row["lead_id"], row["lead_event_source"]) == (f"lead-{source}", "CRM-X")
        # ad and lead are kept whole in extra too, with what has no column of its own.
        assert json.loads(row["extra"])["ad"] == {"callback": f"E.C.P.{source}", "campaign_id": "c-7"}
    # The callback is a click identity the attributor finds the conversion by.
    found = ch.execute(f"SELECT event_id FROM {ch_database}.event_identities "
                       "WHERE identity = 'E.C.P.crm' AND identity_kind = 'click'")
    assert [r[0] for r in found] == ["crm-1"]


def test_ttclid_wins_over_the_callback_and_top_level_content_type_over_contents(client, tenant, sink, ch, ch_database):
    row = {"event": "Purchase", "event_time": int(time.time()), "event_id": "both-1",
           "user": {"ttclid": "E.C.P.user", "lead_id": "L-9"}, "ad": {"callback": "E.C.P.ad"},
           "properties": {"content_type": "product_group", "contents": [{"content_type": "product"}]}}
    assert post(client, tenant, [row]).status_code == 200
    sink.drain()
    row = stored(ch, ch_database)["both-1"]
    assert (row["click_id"], row["content_type"]) == ("E.C.P.user", "product_group")
    assert (row["event_source"], row["partner_name"]) == ("web", "")
    assert row["lead_id"] == "L-9"  # user.lead_id, as older integrations send it


def test_browser_and_image_events_are_web_events(client, tenant, sink, ch, ch_database):
    now = now_ms()
    batch = {"sent_at": now, "events": [{"event": "ViewContent", "event_id": "b-1", "timestamp": now,
                                         "page": {"url": "https://shop.example/p"},
                                         "properties": {"contents": [{"content_id": "a", "content_type": "product"}]}}]}
    assert client.post(f"/e/{tenant.pixel_id}", data=json.dumps(batch),
                       headers={"Origin": "https://shop.example"}).status_code == 200
    assert client.get(f"/e/{tenant.pixel_id}.gif?ev=PageView&eid=i-1",
                      headers={"Referer": "https://shop.example/"}).status_code == 200
    sink.drain()
    rows = stored(ch, ch_database)
    assert {(r["source"], r["event_source"], r["partner_name"], r["lead_id"]) for r in rows.values()} == {
        ("browser", "web", "", ""), ("image", "web", "", "")}
    assert rows["b-1"]["content_type"] == "product"


def test_bad_new_fields_are_refused_by_name(client, tenant, sink, ch, ch_database):
    resp = post(client, tenant, [{"event": "Lead", "event_time": int(time.time()), "event_id": "x"}],
                partner_name="p" * 101)
    assert resp.status_code == 400
    assert resp.json["data"]["error"]["field"] == "partner_name"
    now = int(time.time())
    rows = [
        {"event": "Lead", "event_time": now, "event_id": "ok"},
        {"event": "Lead", "event_time": now, "event_id": "r1", "ad": {"callback": ["E.C.P.1"]}},
        {"event": "Lead", "event_time": now, "event_id": "r2", "ad": "E.C.P.1"},
        {"event": "Lead", "event_time": now, "event_id": "r3", "lead": {"lead_id": "x" * 129}},
        {"event": "Lead", "event_time": now, "event_id": "r4", "event_source": "tv"},
        {"event": "Lead", "event_time": now, "event_id": "r5",
         "properties": {"contents": [{"content_type": {"a": 1}}]}},
    ]
    resp = post(client, tenant, rows)
    assert resp.status_code == 200
    assert resp.json["data"]["rejected"] == [
        {"index": 1, "field": "ad.callback", "rule": "must be a string"},
        {"index": 2, "field": "ad", "rule": "must be an object"},
        {"index": 3, "field": "lead.lead_id", "rule": "must be at most 128 characters"},
        {"index": 4, "field": "event_source", "rule": "must be one of web, app, offline, crm"},
        {"index": 5, "field": "properties.contents.content_type", "rule": "must be a string"},
    ]
    sink.drain()
    assert list(stored(ch, ch_database)) == ["ok"]


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=300),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
                    max_leaves=8)
FIELD = st.one_of(JSON, st.sampled_from(EVENT_SOURCES))
BUILDER = RowBuilder(anonymize_ip=True, ua_cache_size=16)


@settings(max_examples=300, deadline=None)
@given(source=FIELD, partner=FIELD, ad=st.one_of(JSON, st.fixed_dictionaries({"callback": FIELD})),
       lead=st.one_of(JSON, st.fixed_dictionaries({"lead_id": FIELD, "lead_event_source": FIELD})),
       contents=st.lists(st.fixed_dictionaries({"content_type": FIELD}), max_size=3))
def test_any_values_of_the_new_fields_are_stored_right_or_refused_by_name(source, partner, ad, lead, contents):
    now = int(time.time() * 1000)
    ctx = Context(pixel_id="CPIX", source="server", received_ms=now, skew_ms=0, ip="", user_agent="",
                  max_age_ms=7 * 86_400_000, max_future_ms=86_400_000, event_source="app", partner_name="body")
    raw = {"event": "Lead", "event_time": now // 1000, "event_source": source, "partner_name": partner, "ad": ad,
           "lead": lead, "properties": {"contents": contents}}
    result = parse_event(raw, 0, ctx)
    if isinstance(result, Rejection):
        assert result.field in {"event_source", "partner_name", "ad", "ad.callback", "lead", "lead.lead_id",
                                "lead.lead_event_source", "properties.contents", "properties.contents.content_type",
                                "custom_fields"}
        return
    # Through the stream's encoding, as the sink reads it.
    rows, _, failures = BUILDER.rows(b"1-0", entry_fields("adv", [result]))
    assert failures == []
    (row,) = rows
    assert row.event_source == (source if source is not None else "app")
    assert row.event_source in EVENT_SOURCES
    assert row.partner_name == (str(partner) if partner not in (None, "") else "body")
    assert isinstance(row.click_id, str) and isinstance(row.lead_id, str) and isinstance(row.content_type, str)

