"""The advertiser view and pixel diagnostics of the API, from events sent through the real collector."""

import time
from datetime import datetime, timezone

import pytest

from pixel import registry
from pixel.snippet import build_snippet
from tests.conftest import Tenant

DAY = 86_400
CLICK = "E.C.P.diag-click"


def iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def no_merges(ch, ch_database):
    """Keep every stored copy of an event for the test, so copy counts do not depend on merge timing."""
    ch.execute(f"SYSTEM STOP MERGES {ch_database}.events")
    yield
    ch.execute(f"SYSTEM START MERGES {ch_database}.events")


@pytest.fixture
def reports(r, tenant):
    return bearer(registry.create_token(r, tenant.advertiser, ["reports"]))


def browser(client, pixel_id: str, events: list, origin: str = "https://shop.example"):
    return client.post(f"/e/{pixel_id}", json={"events": events}, headers={"Origin": origin})


def server(client, tenant: Tenant, data: list, **envelope):
    body = {"event_source": "web", "event_source_id": tenant.pixel_id, "data": data, **envelope}
    return client.post("/open_api/v1.3/event/track/", json=body, headers={"Access-Token": tenant.token})


def send_traffic(client, api_client, r, tenant: Tenant, sink, attributor, now: int) -> None:
    """Five unique events (one a test event) in seven copies, one refused event, one refused request."""
    page_view = {"event": "PageView", "event_id": "pv-1", "timestamp": (now - 600) * 1000,
                 "page": {"url": "https://shop.example/"}}
    for _ in range(2):  # a browser retry: two copies of one event
        assert browser(client, tenant.pixel_id, [page_view]).json == {"accepted": 1, "rejected": []}
    order = {"event": "CompletePayment", "event_id": "order-1", "timestamp": (now - 300) * 1000,
             "page": {"url": f"https://shop.example/thanks?ttclid={CLICK}"}, "properties": {"value": 20}}
    assert browser(client, tenant.pixel_id, [order]).json == {"accepted": 1, "rejected": []}
    # The server copy of the same order, received second: one event, under the pixel's source.
    resp = server(client, tenant, [{"event": "CompletePayment", "event_id": "order-1",
                                    "event_time": now - 290, "properties": {"value": 20}}])
    assert resp.json["data"] == {"accepted": 1, "rejected": []}
    # Two days old (inside 7 days, outside 24 hours), and a row too old to accept.
    resp = server(client, tenant, [{"event": "Lead", "event_id": "lead-old", "event_time": now - 2 * DAY},
                                   {"event": "Lead", "event_id": "lead-stale", "event_time": now - 8 * DAY}])
    assert resp.json["data"]["accepted"] == 1 and len(resp.json["data"]["rejected"]) == 1
    resp = server(client, tenant, [{"event": "Lead", "event_id": "lead-test", "event_time": now - 120}],
                  test_event_code="TEST1")
    assert resp.json["data"] == {"accepted": 1, "rejected": []}
    resp = client.get(f"/e/{tenant.pixel_id}.gif?ev=PageView&eid=img-1&ts={(now - 60) * 1000}"
                      "&url=https://shop.example/nojs")
    assert resp.status_code == 200
    # Refused as a whole (a page on a domain not registered for the pixel): counted per event it held.
    resp = browser(client, tenant.pixel_id, [dict(page_view, event_id="pv-evil")],
                   origin="https://evil.example")
    assert resp.status_code == 403 and resp.json["error"]["code"] == "domain_not_allowed"
    sink.drain()
    attributor.settle()
    # The click arrives after the order: the attributor restates it (a second revision, cancel rows).
    adserver = bearer(registry.create_token(r, tenant.advertiser, ["adserver"]))
    resp = api_client.post("/v1/clicks", headers=adserver, json={"clicks": [
        {"click_id": CLICK, "click_time": now - 3600, "campaign_id": "cmp", "adgroup_id": "grp",
         "ad_id": "ad"}]})
    assert resp.json == {"accepted": 1, "rejected": []}
    attributor.settle()


def test_pixel_diagnostics_counts_every_field(client, api_client, r, tenant, reports, sink, attributor,
                                              settings, no_merges):
    now = int(time.time()) - 5
    other = Tenant(r, "adv-2", "other.example")  # the same event ids on another tenant's pixel change nothing
    assert browser(client, other.pixel_id, [{"event": "PageView", "event_id": "pv-1",
                                             "page": {"url": "https://other.example/"}}],
                   origin="https://other.example").status_code == 200
    send_traffic(client, api_client, r, tenant, sink, attributor, now)
    before_ms = time.time_ns() // 1_000_000

    resp = api_client.get(f"/v1/pixels/{tenant.pixel_id}/diagnostics", headers=reports)

    assert resp.status_code == 200, resp.json
    body = resp.json
    generated = datetime.strptime(body.pop("generated_at"), "%Y-%m-%dT%H:%M:%S.%fZ")
    generated = generated.replace(tzinfo=timezone.utc)
    assert before_ms - 1 <= generated.timestamp() * 1000 <= time.time_ns() // 1_000_000 + 1
    assert body == {
        "pixel_id": tenant.pixel_id,
        "event_source": "web",
        "advertiser_id": "adv-1",
        "events": [
            {"event": "CompletePayment", "source": "browser", "last_24h": 1, "last_7d": 1, "bots_7d": 0},
            {"event": "Lead", "source": "server", "last_24h": 1, "last_7d": 2, "bots_7d": 0},
            {"event": "PageView", "source": "browser", "last_24h": 1, "last_7d": 1, "bots_7d": 0},
            {"event": "PageView", "source": "image", "last_24h": 1, "last_7d": 1, "bots_7d": 0},
        ],
        "test_events_7d": 1,
        "last_event_at": iso(now - 60),  # the image event, the latest by event time
        "received_7d": 7,  # pv-1 twice, order-1 from pixel and server, lead-old, lead-test, img-1
        "duplicates_merged_7d": 2,
        "rejected": {"event_time must be at most 7 days old": 1,
                     "request: page domain is not registered for the pixel": 1},
        "click_id_share_7d": 1 / 5,  # order-1 of 5 unique events
        "matched_share_7d": 1 / 4,  # order-1 of the 4 that are not test events
        "bots_excluded_7d": {"clicks": 0, "conversions": 0},  # bots: tests/test_bots_end_to_end.py
        "unconverted_conversions_7d": 0,
        "warnings": [],
        "snippet": build_snippet(tenant.pixel_id, settings.site.public_url.rstrip("/")),
    }
    assert f"ttq.load('{tenant.pixel_id}'" in body["snippet"]


def test_a_pixel_with_no_traffic_has_nulls_not_zeros(api_client, tenant, reports, ch):
    body = api_client.get(f"/v1/pixels/{tenant.pixel_id}/diagnostics", headers=reports).json
    counts = (body["events"], body["received_7d"], body["duplicates_merged_7d"], body["rejected"])
    assert counts == ([], 0, 0, {})
    assert (body["last_event_at"], body["click_id_share_7d"], body["matched_share_7d"]) == (None, None, None)
    assert body["bots_excluded_7d"] == {"clicks": 0, "conversions": 0}


def test_other_tenants_pixels_are_indistinguishable_from_missing_ones(api_client, r, tenant, ch):
    other = bearer(registry.create_token(r, "adv-2", ["reports"]))
    theirs = api_client.get(f"/v1/pixels/{tenant.pixel_id}/diagnostics", headers=other)
    missing = api_client.get("/v1/pixels/CNOSUCHPIXEL00000000/diagnostics", headers=other)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json["error"]["field"] == missing.json["error"]["field"] == "pixel_id"
    assert theirs.json["error"]["code"] == missing.json["error"]["code"]


@pytest.mark.parametrize("path", ["/v1/advertiser", "/v1/pixels/{pixel}/diagnostics"])
def test_tokens_need_the_reports_scope(api_client, r, tenant, path):
    url = path.format(pixel=tenant.pixel_id)
    events_only = bearer(tenant.token)
    resp = api_client.get(url, headers=events_only)
    assert resp.status_code == 403 and resp.json["error"]["code"] == "token_scope"
    resp = api_client.get(url)
    assert resp.status_code == 401 and resp.json["error"]["code"] == "missing_token"
    resp = api_client.get(url, headers=bearer("ctk_nope"))
    assert resp.status_code == 401 and resp.json["error"]["code"] == "bad_token"


def test_advertiser_lists_its_settings_and_only_its_pixels(api_client, r, tenant, reports):
    second = registry.create_pixel(r, "adv-1", ["b.example", "A.example"])
    registry.create_pixel(r, "adv-2", ["other.example"])
    registry.update_settings(r, "adv-1", click_window_days=28, view_window_days=0)

    body = api_client.get("/v1/advertiser", headers=reports).json

    assert body["advertiser_id"] == "adv-1"
    assert body["settings"]["click_window_days"] == 28 and body["settings"]["view_window_days"] == 0
    assert body["settings"] == registry.advertiser_settings(r, "adv-1")
    expected = {tenant.pixel_id: ["shop.example"], second: ["a.example", "b.example"]}
    assert body["pixels"] == [{"pixel_id": p, "domains": expected[p]} for p in sorted(expected)]
