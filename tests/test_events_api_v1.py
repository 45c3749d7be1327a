"""TikTok Events API 1.0 (``/pixel/track/``, ``/pixel/batch/``), posted by TikTok's own Python SDK.

The official ``tiktok-business-api-sdk-official`` client, with only its host changed, posts to a
real gunicorn collector; a real sink stores what it queued in ClickHouse. Refusals and hostile
bodies go through the in-process app: each is a TikTok-style 4xx or a per-row refusal, never a 5xx.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone

import business_api_client
import orjson
import pytest
from business_api_client.rest import ApiException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pixel import registry
from pixel.events_v1 import parse_event_v1
from tests.conftest import now_ms, query_dicts

TRACK = "/open_api/v1.3/pixel/track/"
BATCH = "/open_api/v1.3/pixel/batch/"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def iso(seconds_ago: float = 0) -> str:
    return (datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def stored(ch, db):
    return query_dicts(ch, f"SELECT * FROM {db}.events_unique ORDER BY event_id")


def sdk_for(base: str) -> business_api_client.EventCallbackApi:
    """The SDK as its README sets it up, with the host pointed at the collector."""
    configuration = business_api_client.Configuration()
    configuration.host = base
    return business_api_client.EventCallbackApi(business_api_client.ApiClient(configuration))


def test_the_official_sdk_pixel_track_is_stored(spawn, tenant, sink, ch, ch_database):
    base = spawn.collector(workers=1)
    api = sdk_for(base)
    when = iso(120)
    body = business_api_client.PixelTrackBody(
        pixel_code=tenant.pixel_id, event="CompletePayment", event_id="order-v1-1", timestamp=when,
        context=business_api_client.PixelContext(
            ad=business_api_client.PixelContextAd(callback="E.C.P.v1click"),
            page=business_api_client.PixelContextPage(url="https://shop.example/done",
                                                      referrer="https://shop.example/cart"),
            user=business_api_client.PixelContextUser(external_id=sha("u-1"), phone_number="+44 1234 567890",
                                                      email=" Jane@Example.com ", ttp="ttp-v1"),
            ip="203.0.113.77", user_agent="Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0"),
        properties=business_api_client.PixelProperties(
            value=42.5, currency="eur", query="red shoes",
            contents=[business_api_client.PixelContent(content_id="sku-1", quantity=2, price=21.25)]))
    answer = api.pixel_track(tenant.token, body=body)
    # The SDK raises TiktokSDKError unless `code` is 0, and then hands back only `data` and `request_id`.
    assert answer["request_id"] and answer["data"] == {"accepted": 1, "rejected": []}
    sink.drain()
    (row,) = stored(ch, ch_database)
    assert (row["source"], row["event"], row["event_id"]) == ("server", "CompletePayment", "order-v1-1")
    assert row["event_ms"] == int(datetime.strptime(when, "%Y-%m-%dT%H:%M:%SZ")
                                  .replace(tzinfo=timezone.utc).timestamp()) * 1000
    assert (row["click_id"], row["browser_id"]) == ("E.C.P.v1click", "ttp-v1")
    assert row["email_sha256"] == sha("jane@example.com")  # the raw value is normalised and hashed
    assert row["phone_sha256"] == sha("+441234567890")
    assert row["external_id_sha256"] == sha("u-1")
    assert (row["url"], row["referrer"]) == ("https://shop.example/done", "https://shop.example/cart")
    assert row["ip"] == "203.0.113.0"  # anonymised
    assert (row["value"], row["currency"], row["search_query"]) == (42.5, "EUR", "red shoes")
    assert row["content_ids"] == ["sku-1"]
    assert "Jane" not in row["extra"] and "567890" not in row["extra"]


def test_the_official_sdk_pixel_batch_and_the_pixels_copy_count_once(spawn, tenant, sink, ch, ch_database):
    base = spawn.collector(workers=1)
    api = sdk_for(base)
    sent = now_ms()
    browser = {"sent_at": sent, "events": [{"event": "CompletePayment", "event_id": "shared-v1", "timestamp": sent,
                                            "page": {"url": "https://shop.example/done"}}]}
    import urllib.request
    request = urllib.request.Request(f"{base}/e/{tenant.pixel_id}", data=orjson.dumps(browser),
                                     headers={"Origin": "https://shop.example", "Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 200
    batch = [
        business_api_client.PixelbatchBatch(
            type="track", event="CompletePayment", event_id="shared-v1", timestamp=iso(),
            context=business_api_client.PixelContext(user=business_api_client.PixelContextUser(email=sha("a@b.co"))),
            properties=business_api_client.PixelProperties(value=10, currency="USD")),
        business_api_client.PixelbatchBatch(
            type="track", event="AddToCart", event_id="cart-v1", timestamp=iso(60),
            context=business_api_client.PixelContext(ad=business_api_client.PixelContextAd(callback="E.C.P.b"))),
    ]
    answer = api.pixel_batch(tenant.token, body=business_api_client.PixelBatchBody(pixel_code=tenant.pixel_id,
                                                                                    batch=batch))
    assert answer["data"] == {"accepted": 2, "rejected": []}
    sink.drain()
    rows = stored(ch, ch_database)
    assert [(r["event"], r["event_id"], r["source"]) for r in rows] == [
        ("AddToCart", "cart-v1", "server"), ("CompletePayment", "shared-v1", "browser")]  # the first copy kept
    assert rows[0]["click_id"] == "E.C.P.b"
    (count,) = ch.execute(f"SELECT count() FROM (SELECT 1 FROM {ch_database}.events "
                          "GROUP BY advertiser_id, pixel_id, event, event_id)")[0]
    assert count == 2


def test_a_partly_refused_batch_is_a_success_for_the_sdk_with_the_refusals_in_data(spawn, tenant, sink, ch,
                                                                                   ch_database):
    api = sdk_for(spawn.collector(workers=1))
    batch = [business_api_client.PixelbatchBatch(event="Lead", event_id="fine", timestamp=iso()),
             business_api_client.PixelbatchBatch(event="Lead", event_id="stale", timestamp=iso(30 * 86400))]
    answer = api.pixel_batch(tenant.token, body=business_api_client.PixelBatchBody(pixel_code=tenant.pixel_id,
                                                                                    batch=batch))
    assert answer["data"] == {"accepted": 1, "rejected": [
        {"index": 1, "field": "timestamp", "rule": "must be at most 7 days old"}]}
    sink.drain()
    assert [row["event_id"] for row in stored(ch, ch_database)] == ["fine"]


def test_the_sdk_sees_a_refused_request_as_an_error(spawn, tenant, r):
    api = sdk_for(spawn.collector(workers=1))
    body = business_api_client.PixelTrackBody(pixel_code=tenant.pixel_id, event="Lead", timestamp=iso())
    with pytest.raises(ApiException) as refused:
        api.pixel_track(registry.create_token(r, "adv-other", ["events"]), body=body)
    assert refused.value.status == 403
    assert orjson.loads(refused.value.body)["code"] == 40001


def test_rows_are_refused_one_by_one_with_their_1_0_names(client, tenant, sink, ch, ch_database):
    rows = [
        {"event": "Lead", "event_id": "ok-1", "timestamp": iso()},
        {"event": "Lead", "event_id": "old", "timestamp": iso(8 * 86400)},
        {"event": "Lead", "event_id": "no-time"},
        {"event": "Lead", "event_id": "not-iso", "timestamp": "1700000000"},
        {"event": "Lead", "event_id": "bad-url", "timestamp": iso(), "context": {"page": {"url": ["x"]}}},
        {"event": "Lead", "event_id": "bad-ip", "timestamp": iso(), "context": {"ip": "999.1.1.1"}},
        {"event": "Lead", "event_id": "bad-click", "timestamp": iso(), "context": {"ad": {"callback": {"a": 1}}}},
        {"event": "Lead", "event_id": "bad-value", "timestamp": iso(), "properties": {"value": "lots"}},
        {"event": "Lead", "event_id": "v2-shape", "timestamp": iso(), "user": {"email": "a@b.co"}},
        "not an object",
        {"event": "Lead", "event_id": "ok-2", "timestamp": iso(), "type": "track"},
    ]
    resp = client.post(BATCH, json={"pixel_code": tenant.pixel_id, "batch": rows},
                       headers={"Access-Token": tenant.token})
    assert resp.status_code == 200 and resp.json["code"] == 0
    assert resp.json["message"] == "partial success: 9 of 11 events rejected"
    assert resp.json["data"]["accepted"] == 2
    assert [(x["index"], x["field"]) for x in resp.json["data"]["rejected"]] == [
        (1, "timestamp"), (2, "timestamp"), (3, "timestamp"), (4, "context.page.url"), (5, "context.ip"),
        (6, "context.ad.callback"), (7, "properties.value"), (8, "user"), (9, "")]
    assert resp.json["data"]["rejected"][0]["rule"] == "must be at most 7 days old"
    sink.drain()
    assert [row["event_id"] for row in stored(ch, ch_database)] == ["ok-1", "ok-2"]


@pytest.mark.parametrize("path, body, headers, status, code, field", [
    (TRACK, {"event": "Lead"}, "token", 400, 40002, "pixel_code"),
    (BATCH, {"pixel_code": "P", "batch": []}, "token", 400, 40002, "batch"),
    (BATCH, {"pixel_code": "P", "batch": [{}] * 1001}, "token", 400, 40002, "batch"),
    (TRACK, {"pixel_code": "P", "event": "Lead", "test_event_code": ["x"]}, "token", 400, 40002, "test_event_code"),
    (TRACK, {"pixel_code": "CNOSUCHPIXEL", "event": "Lead", "timestamp": "now"}, "token", 404, 40002, None),
    (TRACK, {"pixel_code": "P", "event": "Lead"}, "none", 401, 40001, "Access-Token"),
    (TRACK, [1, 2], "token", 400, 40002, "body"),
])
def test_whole_request_errors_are_tiktok_style(client, tenant, path, body, headers, status, code, field):
    if isinstance(body, dict) and body.get("pixel_code") == "P":
        body = {**body, "pixel_code": tenant.pixel_id}
    resp = client.post(path, json=body, headers={"Access-Token": tenant.token} if headers == "token" else {})
    assert resp.status_code == status
    assert resp.json["code"] == code and resp.json["request_id"]
    if field:
        assert resp.json["data"]["error"]["field"] == field


def test_a_track_whose_only_event_is_refused_is_a_400_listing_it(client, tenant):
    resp = client.post(TRACK, json={"pixel_code": tenant.pixel_id, "event": "Lead", "timestamp": "yesterday"},
                       headers={"Access-Token": tenant.token})
    assert resp.status_code == 400 and resp.json["code"] == 40002
    assert resp.json["data"]["rejected"] == [
        {"index": 0, "field": "timestamp", "rule": "must be an ISO 8601 date and time"}]


@pytest.mark.parametrize("context, field", [
    ({"user": {"ip": "nope"}}, "context.user.ip"),
    ({"ip": "nope"}, "context.ip"),
    ({"user": {"ttclid": ["x"]}, "ad": {"callback": "E.C.P.ok"}}, "context.user.ttclid"),
    ({"user": {"email": {"a": 1}}}, "context.user.email"),
    ({"page": "https://shop.example/"}, "context.page"),
    ([], "context"),
])
def test_a_refused_field_is_named_as_the_sender_wrote_it(context, field):
    from pixel.events import Context

    ctx = Context(pixel_id="P", source="server", received_ms=now_ms(), skew_ms=0, ip="", user_agent="",
                  max_age_ms=7 * 86_400_000, max_future_ms=86_400_000)
    assert parse_event_v1({"event": "Lead", "timestamp": iso(), "context": context}, 0, ctx).field == field


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                    max_leaves=20)
FIELDS = st.sampled_from(["event", "event_id", "timestamp", "context", "properties", "limited_data_use", "type",
                          "user", "page"])
CONTEXT = st.fixed_dictionaries({}, optional={
    "ad": st.fixed_dictionaries({}, optional={"callback": JSON}) | JSON,
    "page": st.fixed_dictionaries({}, optional={"url": JSON, "referrer": JSON}) | JSON,
    "user": st.dictionaries(st.sampled_from(["email", "phone_number", "external_id", "ttp", "ttclid", "x"]), JSON),
    "ip": JSON, "user_agent": JSON, "locale": JSON})
ROWS = st.dictionaries(FIELDS, JSON, max_size=6) | st.fixed_dictionaries(
    {"event": st.sampled_from(["Lead", "CompletePayment"]), "timestamp": st.sampled_from([iso(), iso(3600), "x"]),
     "context": CONTEXT}, optional={"properties": JSON, "event_id": JSON}) | JSON


@settings(max_examples=300, database=None, deadline=None, derandomize=True)
@given(ROWS)
def test_any_1_0_row_is_a_record_or_a_rejection_never_an_exception(row):
    from pixel.events import Context, Rejection

    ctx = Context(pixel_id="P", source="server", received_ms=now_ms(), skew_ms=0, ip="", user_agent="",
                  max_age_ms=7 * 86_400_000, max_future_ms=86_400_000)
    result = parse_event_v1(row, 0, ctx)
    if isinstance(result, Rejection):
        assert result.rule
    else:
        assert result["event_ms"] > 0 and result["source"] == "server"
        orjson.dumps(result)  # what is accepted can be queued


@settings(max_examples=60, database=None, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(body=JSON | st.fixed_dictionaries({"batch": st.lists(ROWS, max_size=3)}, optional={"test_event_code": JSON})
       | st.dictionaries(FIELDS, JSON), batch=st.booleans())
def test_hostile_bodies_get_a_tiktok_answer_never_a_5xx(client, tenant, body, batch):
    if isinstance(body, dict) and ("batch" in body or not batch):
        body = {**body, "pixel_code": tenant.pixel_id}
    resp = client.post(BATCH if batch else TRACK, data=json.dumps(body),
                       headers={"Access-Token": tenant.token, "Content-Type": "application/json"})
    assert resp.status_code in (200, 400, 404), resp.json
    assert set(resp.json) == {"code", "message", "request_id", "data"}
    assert (resp.json["code"] == 0) == (resp.status_code == 200)
