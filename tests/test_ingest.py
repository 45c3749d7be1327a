"""Events posted through each endpoint land in ClickHouse with every field right."""

import gzip
import hashlib
import json
import time
from datetime import datetime, timezone

import orjson

from tests.conftest import now_ms, query_dicts

CHROME_MAC = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def stored(ch, db, where="1"):
    return query_dicts(ch, f"SELECT * FROM {db}.events_unique WHERE {where} ORDER BY event_ms")


def test_browser_event_is_stored_with_every_field(client, tenant, sink, ch, ch_database):
    sent = now_ms()
    body = {
        "sent_at": sent + 60_000,  # the browser's clock runs a minute fast
        "events": [
            {
                "event": "CompletePayment",
                "event_id": "evt-1",
                "timestamp": sent + 60_000 - 1500,
                "page": {
                    "url": "https://www.shop.example/thanks?utm_source=tiktok&utm_medium=paid&utm_campaign=spring"
                    "&utm_content=v1&utm_term=shoes&ttclid=E.C.P.click1",
                    "referrer": "https://www.shop.example/cart",
                },
                "ttp": "browser-abc",
                "user": {"email": sha("jane@example.com"), "phone": sha("+16505551212"),
                         "external_id": sha("user-42")},
                "properties": {"value": 42.5, "currency": "eur", "order_id": "A-1001", "content_type": "product",
                               "contents": [{"content_id": "sku-1", "quantity": 2}], "brand_tier": "gold"},
                "test_event_code": "TEST42",
                "surprise": {"kept": True},
            }
        ],
    }
    resp = client.post(
        f"/e/{tenant.pixel_id}",
        data=json.dumps(body),
        headers={"Origin": "https://www.shop.example", "Content-Type": "text/plain;charset=UTF-8",
                 "User-Agent": CHROME_MAC},
        environ_base={"REMOTE_ADDR": "203.0.113.77"},
    )
    assert resp.status_code == 200
    assert resp.json == {"accepted": 1, "rejected": []}
    assert resp.headers["Access-Control-Allow-Origin"] == "https://www.shop.example"
    sink.drain()

    (row,) = stored(ch, ch_database)
    assert row["advertiser_id"] == "adv-1"
    assert row["pixel_id"] == tenant.pixel_id
    assert row["event"] == "CompletePayment"
    assert row["event_id"] == "evt-1"
    assert row["source"] == "browser"
    # Skew corrected: the event happened 1.5 s before the browser sent it, by the server's clock.
    assert abs((row["received_ms"] - row["event_ms"]) - 1500) <= 5
    assert row["client_ms"] == sent + 60_000 - 1500
    assert row["event_time"] == datetime.fromtimestamp(row["event_ms"] // 1000, timezone.utc)
    assert row["browser_id"] == "browser-abc"
    assert row["click_id"] == "E.C.P.click1"
    assert row["email_sha256"] == sha("jane@example.com")
    assert row["phone_sha256"] == sha("+16505551212")
    assert row["external_id_sha256"] == sha("user-42")
    assert row["url_host"] == "www.shop.example"
    assert row["url_path"] == "/thanks"
    assert row["referrer_host"] == "www.shop.example"
    assert (row["utm_source"], row["utm_medium"], row["utm_campaign"], row["utm_content"], row["utm_term"]) == (
        "tiktok", "paid", "spring", "v1", "shoes")
    assert row["value"] == 42.5
    assert row["currency"] == "EUR"
    assert row["order_id"] == "A-1001"
    assert row["content_type"] == "product"
    assert row["content_ids"] == ["sku-1"]
    assert json.loads(row["properties"])["brand_tier"] == "gold"
    assert json.loads(row["extra"]) == {"surprise": {"kept": True}}
    assert row["ip"] == "203.0.113.0"
    assert row["user_agent"] == CHROME_MAC
    assert (row["ua_browser"], row["ua_os"], row["device_type"], row["is_bot"]) == ("Chrome", "Mac OS X", "desktop", 0)
    assert row["test_event_code"] == "TEST42"


def test_raw_identifiers_are_hashed_before_they_are_queued(client, tenant, sink, r, ch, ch_database):
    """A caller that forgot to hash: the raw value never reaches Redis or ClickHouse."""
    body = {"events": [{"event": "Lead", "event_id": "l1", "page": {"url": "https://shop.example/"},
                        "user": {"email": "  Jane@Example.com", "phone": "+1 650 555 1212"}}]}
    assert client.post(f"/e/{tenant.pixel_id}", data=json.dumps(body)).status_code == 200
    queued = r.xrange("ct:events")[0][1][b"d"]
    assert b"Jane" not in queued and b"650" not in queued
    sink.drain()
    (row,) = stored(ch, ch_database)
    assert row["email_sha256"] == sha("jane@example.com")
    assert row["phone_sha256"] == sha("+16505551212")


def test_gzip_body_is_accepted(client, tenant, sink, ch, ch_database):
    body = {"events": [{"event": "PageView", "event_id": f"p{i}", "page": {"url": "https://shop.example/"}}
                       for i in range(20)]}
    resp = client.post(f"/e/{tenant.pixel_id}", data=gzip.compress(json.dumps(body).encode()),
                       headers={"Content-Encoding": "gzip", "Origin": "https://shop.example"})
    assert resp.status_code == 200 and resp.json["accepted"] == 20
    sink.drain()
    assert len(stored(ch, ch_database)) == 20


def test_image_pixel_records_one_event_and_answers_a_gif(client, tenant, sink, ch, ch_database):
    resp = client.get(
        f"/e/{tenant.pixel_id}.gif?ev=ViewContent&eid=img-1&value=9.99&currency=USD&ttclid=CLK9&campaign_note=x",
        headers={"Referer": "https://shop.example/product/1", "User-Agent": CHROME_MAC},
    )
    assert resp.status_code == 200 and resp.mimetype == "image/gif" and resp.data.startswith(b"GIF89a")
    sink.drain()
    (row,) = stored(ch, ch_database)
    assert (row["event"], row["event_id"], row["source"], row["click_id"]) == ("ViewContent", "img-1", "image", "CLK9")
    assert row["url"] == "https://shop.example/product/1"
    assert (row["value"], row["currency"]) == (9.99, "USD")
    assert json.loads(row["extra"]) == {"campaign_note": "x"}


def test_image_pixel_answers_a_gif_even_when_refused(client, sink, r):
    resp = client.get("/e/NOPE.gif?ev=PageView", headers={"Referer": "https://shop.example/"})
    assert resp.status_code == 200 and resp.mimetype == "image/gif"
    assert r.xlen("ct:events") == 0


def test_server_event_is_stored_with_every_field(client, tenant, sink, ch, ch_database):
    event_time = int(time.time()) - 120
    body = {
        "event_source": "web",
        "event_source_id": tenant.pixel_id,
        "test_event_code": "SRV1",
        "partner_name": "acme",
        "data": [
            {
                "event": "CompletePayment",
                "event_time": event_time,
                "event_id": "order-77",
                "user": {"ttclid": "E.C.P.srv", "ttp": "ttp-9", "external_id": sha("u-9"), "email": sha("a@b.co"),
                         "phone": sha("+441234567890"), "ip": "2001:db8:abcd:12:1::5",
                         "user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
                                       "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
                         "first_name": "Jane"},
                "properties": {"value": "19.90", "currency": "GBP", "order_id": "order-77",
                               "contents": [{"content_id": "a"}, {"content_id": "b"}], "query": "red shoes"},
                "page": {"url": "https://shop.example/checkout/done", "referrer": "https://tiktok.com/"},
            }
        ],
    }
    resp = client.post("/open_api/v1.3/event/track/", json=body, headers={"Access-Token": tenant.token})
    assert resp.status_code == 200
    assert resp.json["code"] == 0 and resp.json["data"] == {"accepted": 1, "rejected": []}
    assert resp.json["request_id"]
    sink.drain()
    (row,) = stored(ch, ch_database)
    assert (row["source"], row["event"], row["event_id"]) == ("server", "CompletePayment", "order-77")
    assert row["event_ms"] == event_time * 1000
    assert (row["click_id"], row["browser_id"]) == ("E.C.P.srv", "ttp-9")
    assert (row["email_sha256"], row["phone_sha256"], row["external_id_sha256"]) == (
        sha("a@b.co"), sha("+441234567890"), sha("u-9"))
    assert row["ip"] == "2001:db8:abcd::"
    assert (row["device_type"], row["ua_os"]) == ("mobile", "iOS")
    assert (row["value"], row["currency"], row["search_query"]) == (19.9, "GBP", "red shoes")
    assert row["content_ids"] == ["a", "b"]
    assert row["test_event_code"] == "SRV1"
    extra = json.loads(row["extra"])
    assert extra["user"] == {"first_name": sha("jane")}  # personal data only as a hash
    assert "Jane" not in row["extra"]


def test_one_bad_row_does_not_sink_the_batch(client, tenant, sink, ch, ch_database):
    now = int(time.time())
    rows = [
        {"event": "Lead", "event_time": now, "event_id": "ok-1"},
        {"event": "Lead", "event_time": now - 8 * 86400, "event_id": "too-old"},
        {"event_time": now, "event_id": "no-name"},
        {"event": "Lead", "event_time": now, "event_id": "bad-value", "properties": {"value": "lots"}},
        {"event": "Lead", "event_time": now + 2 * 86400, "event_id": "future"},
        {"event": "Lead", "event_time": now, "event_id": "ok-2"},
    ]
    body = {"event_source": "web", "event_source_id": tenant.pixel_id, "data": rows}
    resp = client.post("/open_api/v1.3/event/track/", json=body, headers={"Access-Token": tenant.token})
    assert resp.status_code == 200
    assert resp.json["code"] == 0
    assert resp.json["data"]["accepted"] == 2
    assert resp.json["data"]["rejected"] == [
        {"index": 1, "field": "event_time", "rule": "must be at most 7 days old"},
        {"index": 2, "field": "event", "rule": "is required"},
        {"index": 3, "field": "properties.value", "rule": "must be a number"},
        {"index": 4, "field": "event_time", "rule": "must be at most 24 hours in the future"},
    ]
    sink.drain()
    assert sorted(row["event_id"] for row in stored(ch, ch_database)) == ["ok-1", "ok-2"]


def test_event_without_id_gets_a_stable_one_so_retries_deduplicate(client, tenant, sink, ch, ch_database):
    body = {"event_source": "web", "event_source_id": tenant.pixel_id,
            "data": [{"event": "Lead", "event_time": int(time.time()), "user": {"external_id": "u1"}}]}
    for _ in range(2):
        assert client.post("/open_api/v1.3/event/track/", json=body,
                           headers={"Access-Token": tenant.token}).status_code == 200
    sink.drain()
    (row,) = stored(ch, ch_database)
    assert row["event_id"].startswith("gen-") and row["id_generated"] == 1


def test_browser_and_server_copies_count_once(client, tenant, sink, ch, ch_database):
    now = now_ms()
    browser = {"sent_at": now, "events": [{"event": "CompletePayment", "event_id": "shared-1", "timestamp": now,
                                           "page": {"url": "https://shop.example/done"}}]}
    server = {"event_source": "web", "event_source_id": tenant.pixel_id,
              "data": [{"event": "CompletePayment", "event_id": "shared-1", "event_time": now // 1000 + 1}]}
    assert client.post(f"/e/{tenant.pixel_id}", data=orjson.dumps(browser)).status_code == 200
    assert client.post("/open_api/v1.3/event/track/", json=server,
                       headers={"Access-Token": tenant.token}).status_code == 200
    assert client.post(f"/e/{tenant.pixel_id}", data=orjson.dumps(browser)).status_code == 200  # a retry
    sink.drain()
    rows = stored(ch, ch_database)
    assert len(rows) == 1
    assert rows[0]["source"] == "browser"  # the first copy received is the one kept
    (count,) = ch.execute(
        f"SELECT count() FROM (SELECT 1 FROM {ch_database}.events "
        "GROUP BY advertiser_id, pixel_id, event, event_id)"
    )[0]
    assert count == 1


def test_collector_on_the_sites_own_domain_sets_the_browser_id_cookie(client, tenant):
    body = {"events": [{"event": "PageView", "event_id": "fp-1", "ttp": "ABC123xyz",
                        "page": {"url": "https://www.shop.example/"}}]}
    first_party = client.post(f"/e/{tenant.pixel_id}", data=json.dumps(body), base_url="https://t.shop.example",
                              headers={"Origin": "https://www.shop.example"})
    cookie = first_party.headers["Set-Cookie"]
    assert cookie.startswith("_ttp=ABC123xyz;")
    assert "Domain=shop.example" in cookie and "Max-Age=34214400" in cookie and "Secure" in cookie
    assert "HttpOnly" not in cookie
    third_party = client.post(f"/e/{tenant.pixel_id}", data=json.dumps(body), base_url="https://collector.other",
                              headers={"Origin": "https://www.shop.example"})
    assert "Set-Cookie" not in third_party.headers


def test_server_clock_skew_is_corrected_from_sent_at(client, tenant, sink, ch, ch_database):
    now = time.time()
    body = {"event_source": "web", "event_source_id": tenant.pixel_id, "sent_at": now + 3600,  # an hour fast
            "data": [{"event": "Lead", "event_id": "skewed", "event_time": int(now + 3600 - 10)}]}
    resp = client.post("/open_api/v1.3/event/track/", json=body, headers={"Access-Token": tenant.token})
    assert resp.status_code == 200
    sink.drain()
    (row,) = stored(ch, ch_database)
    assert abs(row["received_ms"] - row["event_ms"] - 10_000) < 1500
