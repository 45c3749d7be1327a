"""Meta Conversions API receiver: Meta's own facebook-business SDK against a real gunicorn collector."""

from __future__ import annotations

import hashlib
import json
import time

import orjson
import pytest
from facebook_business.adobjects.serverside.action_source import ActionSource
from facebook_business.adobjects.serverside.content import Content
from facebook_business.adobjects.serverside.custom_data import CustomData
from facebook_business.adobjects.serverside.event import Event
from facebook_business.adobjects.serverside.event_request import EventRequest
from facebook_business.adobjects.serverside.user_data import UserData
from facebook_business.api import FacebookAdsApi
from facebook_business.exceptions import FacebookRequestError
from facebook_business.session import FacebookSession
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from collector import meta_capi
from pixel.events import Context
from pixel.registry import create_token
from tests import http
from tests.attribution_world import World
from tests.conftest import now_ms, query_dicts

UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def stored(ch, db):
    return query_dicts(ch, f"SELECT * FROM {db}.events_unique ORDER BY event_ms")


@pytest.fixture
def graph(spawn, monkeypatch):
    """A real collector, with Meta's SDK pointed at it (FacebookSession.GRAPH, its documented host)."""
    base = spawn.collector(workers=1)
    monkeypatch.setattr(FacebookSession, "GRAPH", base)
    return base


def purchase(event_time: int, event_id: str = "ord-1") -> Event:
    user = UserData(emails=["Joe.Smith@Example.com"], phones=["+1 (650) 555-1212"], external_ids=["user-42"],
                    client_ip_address="203.0.113.9", client_user_agent=UA,
                    fbc="fb.1.1554763741205.IwAR2F4-dbP0l7Mn1IawQQGCINEz7PYXQvwjNwB_qa2ofrHyiLjcbCRxTDMgk",
                    fbp="fb.1.1558571054389.1098115397", first_name="Joe")
    custom = CustomData(value=123.45, currency="usd", order_id="ord-1",
                        contents=[Content(product_id="sku-1", quantity=2, item_price=61.7, title="Red shoe")])
    return Event(event_name="Purchase", event_time=event_time, event_id=event_id, user_data=user,
                 custom_data=custom, event_source_url="https://shop.example/thanks",
                 action_source=ActionSource.WEBSITE)


def test_sdk_purchase_is_stored_and_deduplicated_with_the_pixel_copy(graph, tenant, sink, ch, ch_database):
    FacebookAdsApi.init(access_token=tenant.token, crash_log=False)
    event_time = int(time.time()) - 60
    reply = EventRequest(events=[purchase(event_time)], pixel_id=tenant.pixel_id,
                         test_event_code="TEST123").execute()
    assert reply.events_received == 1
    assert reply.messages == [] and reply.fbtrace_id
    # The pixel's own copy of the same purchase, sent after the server's.
    browser = {"sent_at": now_ms(), "events": [{"event": "Purchase", "event_id": "ord-1", "timestamp": now_ms(),
                                                "page": {"url": "https://shop.example/thanks"}}]}
    assert http.call("POST", f"{graph}/e/{tenant.pixel_id}", orjson.dumps(browser)).status == 200
    sink.drain()
    (row,) = stored(ch, ch_database)
    assert (row["source"], row["event"], row["event_id"]) == ("server", "Purchase", "ord-1")
    assert row["event_ms"] == event_time * 1000
    assert row["url"] == "https://shop.example/thanks"
    # The SDK hashes Meta's way (phone: digits only, no "+"); stored as it sent them.
    assert (row["email_sha256"], row["phone_sha256"], row["external_id_sha256"]) == (
        sha("joe.smith@example.com"), sha("16505551212"), sha("user-42"))
    assert row["click_id"] == "IwAR2F4-dbP0l7Mn1IawQQGCINEz7PYXQvwjNwB_qa2ofrHyiLjcbCRxTDMgk"
    assert row["browser_id"] == "fb.1.1558571054389.1098115397"
    assert row["ip"].startswith("203.0.113.")
    assert row["device_type"] == "desktop"
    assert (row["value"], row["currency"], row["order_id"]) == (123.45, "USD", "ord-1")
    assert row["content_ids"] == ["sku-1"]
    assert row["test_event_code"] == "TEST123"
    extra = json.loads(row["extra"])
    assert extra["action_source"] == "website" and row["event_source"] == "web"
    assert extra["user"] == {"fn": sha("joe")}
    (count,) = ch.execute(f"SELECT count() FROM (SELECT 1 FROM {ch_database}.events_unique "
                          "GROUP BY advertiser_id, pixel_id, event, event_id)")[0]
    assert count == 1


def test_sdk_purchase_is_attributed_to_the_ad_click_of_its_fbclid(graph, client, api_client, tenant, sink,
                                                                  attributor, r, ch, ch_database):
    world = World(client, api_client, tenant, sink, attributor, r, ch, ch_database)
    fbclid = "IwAR2F4-dbP0l7Mn1IawQQGCINEz7PYXQvwjNwB_qa2ofrHyiLjcbCRxTDMgk"
    world.click(fbclid, world.now - 3600, "spring")  # the ad server's click, keyed by the fbclid
    world.click("other-click", world.now - 1800, "autumn")
    FacebookAdsApi.init(access_token=tenant.token, crash_log=False)
    assert EventRequest(events=[purchase(world.now, "ord-A")], pixel_id=tenant.pixel_id).execute().events_received == 1
    world.settle()
    assert world.credits("ord-A") == {fbclid: 1.0}
    assert world.latest("ord-A")[0]["campaign_id"] == "spring"


def test_sdk_sees_metas_errors(graph, tenant, r, sink, ch, ch_database):
    FacebookAdsApi.init(access_token="not-a-token", crash_log=False)
    with pytest.raises(FacebookRequestError) as caught:
        EventRequest(events=[purchase(int(time.time()))], pixel_id=tenant.pixel_id).execute()
    assert caught.value.http_status() == 401
    assert (caught.value.api_error_type(), caught.value.api_error_code()) == ("OAuthException", 190)

    FacebookAdsApi.init(access_token=create_token(r, tenant.advertiser, ["reports"]), crash_log=False)
    with pytest.raises(FacebookRequestError) as caught:
        EventRequest(events=[purchase(int(time.time()))], pixel_id=tenant.pixel_id).execute()
    assert (caught.value.http_status(), caught.value.api_error_code()) == (403, 200)

    # One bad event refuses the whole batch, as Meta does; the error names it.
    FacebookAdsApi.init(access_token=tenant.token, crash_log=False)
    old = purchase(int(time.time()) - 30 * 86400, event_id="too-old")
    with pytest.raises(FacebookRequestError) as caught:
        EventRequest(events=[purchase(int(time.time()), "fine"), old], pixel_id=tenant.pixel_id).execute()
    assert (caught.value.http_status(), caught.value.api_error_code()) == (400, 100)
    assert "data[1].event_time" in caught.value.api_error_message()
    assert caught.value.body()["error"]["fbtrace_id"]

    with pytest.raises(FacebookRequestError) as caught:
        EventRequest(events=[purchase(int(time.time()))], pixel_id="no-such-pixel").execute()
    assert (caught.value.http_status(), caught.value.api_error_code(), caught.value.api_error_subcode()) == (
        400, 100, 33)
    sink.drain()
    assert stored(ch, ch_database) == []


def test_json_body_with_raw_identifiers_hashed_by_us(client, tenant, sink, ch, ch_database):
    event = {"event_name": "Lead", "event_time": int(time.time()), "event_id": "lead-1", "action_source": "physical_store",
             "user_data": {"em": ["  Jane@Example.COM "], "ph": "+44 1234 567890", "fbc": "fb.1.1.abc"},
             "custom_data": {"value": "10", "currency": "eur", "content_ids": ["a", "b"]}}
    resp = client.post(f"/v23.0/{tenant.pixel_id}/events", json={"data": [json.dumps(event)],
                                                                  "access_token": tenant.token})
    assert resp.status_code == 200, resp.json
    assert resp.json["events_received"] == 1 and resp.json["messages"] == []
    sink.drain()
    (row,) = stored(ch, ch_database)
    assert (row["email_sha256"], row["phone_sha256"]) == (sha("jane@example.com"), sha("+441234567890"))
    assert (row["click_id"], row["currency"], row["content_ids"]) == ("abc", "EUR", ["a", "b"])
    assert json.loads(row["extra"])["action_source"] == "physical_store"
    assert row["event_source"] == "offline"  # Meta's action_source as TikTok's event_source


@pytest.mark.parametrize(("body", "field"), [
    ({}, "data"),
    ({"data": "not json"}, "data"),
    ({"data": "[]"}, "data"),
    ({"data": [{"event_name": "Lead", "event_time": 1, "action_source": "other", "user_data": {"em": "x"}}]},
     "data[0].event_time"),
    ({"data": [{"event_name": "Lead", "event_time": 1, "action_source": "tv"}]}, "data[0].action_source"),
    ({"data": ["{not json"]}, "data[0]."),
    ({"data": [{"event_name": "Lead", "event_time": 1, "action_source": "website", "user_data": {"em": "x"}}]},
     "data[0].user_data.client_user_agent"),
    ({"data": [{"event_name": "Lead", "event_time": int(time.time()), "action_source": "physical_store",
                "user_data": {"fbc": "IwAR123"}}]}, "data[0].user_data.fbc"),
    ({"data": [{"event_name": "Lead", "event_time": int(time.time()), "action_source": "physical_store",
                "user_data": {"em": "x"}, "custom_data": {"currency": "dollars"}}]}, "data[0].custom_data.currency"),
])
def test_bad_input_is_a_400_in_metas_shape(client, tenant, body, field):
    resp = client.post(f"/v18.0/{tenant.pixel_id}/events?access_token={tenant.token}", json=body)
    assert resp.status_code == 400
    error = resp.json["error"]
    assert (error["type"], error["code"]) == ("OAuthException", 100)
    assert field in error["message"] and error["fbtrace_id"]


def test_missing_token_and_unknown_version(client, tenant):
    resp = client.post(f"/v18.0/{tenant.pixel_id}/events", data={"data": "[]"})
    assert resp.status_code == 401 and resp.json["error"]["code"] == 190
    assert resp.headers["WWW-Authenticate"].startswith("OAuth ")
    assert client.post(f"/latest/{tenant.pixel_id}/events", data={"access_token": tenant.token}).status_code == 404


@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Integers in the range a JSON body can carry here (orjson's, as the collector parses with it).
@given(st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                        st.sampled_from(["event_name", "event_time", "action_source", "user_data", "custom_data",
                                         "em", "ph", "fbc", "fbp", "contents", "value", "currency", "page", "x"]),
                        inner, max_size=5), max_leaves=20))
def test_any_event_is_a_record_or_a_rejection_never_an_exception(event):
    now = int(time.time() * 1000)
    ctx = Context(pixel_id="px", source="server", received_ms=now, skew_ms=0, ip="", user_agent="",
                  max_age_ms=7 * 86_400_000, max_future_ms=86_400_000)
    for sent in (event, json.dumps(event)):  # an object, or a JSON string as the SDK sends
        records, rejections = meta_capi.parse_meta_events([sent], ctx)
        assert len(records) + len(rejections) == 1
        for record in records:
            orjson.dumps(record)  # what is accepted can be queued
        for rejection in rejections:
            assert rejection.index == 0 and rejection.rule


@hsettings(max_examples=100, deadline=None)
@given(st.text(max_size=40), st.sampled_from(["em", "ph", "external_id", "fn"]))
def test_raw_identifiers_are_never_stored_raw(value, key):
    event = {"event_name": "Lead", "event_time": int(time.time()), "action_source": "email",
             "user_data": {key: value}}
    ctx = Context(pixel_id="px", source="server", received_ms=int(time.time() * 1000), skew_ms=0, ip="",
                  user_agent="", max_age_ms=86_400_000, max_future_ms=86_400_000)
    records, _ = meta_capi.parse_meta_events([event], ctx)
    for record in records:
        stored = [record.get(k, "") for k in ("email", "phone", "external_id")]
        stored += list(record.get("user_extra", {}).values())
        assert all(v == "" or (len(v) == 64 and v == v.lower()) for v in stored)
