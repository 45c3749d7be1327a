"""GET /v1/optimizer/conversions: counts equal the attribution results; cursors; revisions; tenants."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone

import pytest

from pixel import registry
from tests.attribution_world import HOUR, World, sha


@pytest.fixture
def world(client, api_client, tenant, sink, attributor, r, ch, ch_database):
    w = World(client, api_client, tenant, sink, attributor, r, ch, ch_database)
    w.optimizer = {"Authorization": f"Bearer {registry.create_token(r, tenant.advertiser, ['optimizer'])}"}
    return w


def _poll(world, cursor=None, **params):
    query = {"event": "CompletePayment", "level": "ad", "bucket": "hour", **params}
    if cursor is not None:
        query["cursor"] = cursor
    resp = world.api.get("/v1/optimizer/conversions", query_string=query, headers=world.optimizer)
    assert resp.status_code == 200, resp.json
    return resp.json


def _hour(ts: int) -> str:
    return datetime.fromtimestamp(ts // 3600 * 3600, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _by_key(rows):
    return {(r["bucket_start"], r["ad_id"], r["event"]): r for r in rows}


def _stored_last_click(world) -> dict:
    """Conversions per (touch hour, ad) straight from the current credits, as the attributor wrote them."""
    rows = world.ch.execute(f"""
        SELECT touch_time, ad_id, sum(credit * sign), sum(credit * value * sign) FROM {world.db}.credits
        WHERE model = 'last_click' AND touch_kind != '' AND event = 'CompletePayment'
        GROUP BY touch_time, ad_id""")
    out: dict = defaultdict(lambda: [0.0, 0.0])
    for touch_time, ad, count, value in rows:
        ts = int(touch_time.replace(tzinfo=timezone.utc).timestamp())
        out[(_hour(ts), ad)][0] += count
        out[(_hour(ts), ad)][1] += value
    return {k: tuple(v) for k, v in out.items() if v[0]}


def test_first_poll_counts_equal_the_attribution_results(world):
    t = world.now - 5 * HOUR
    world.click("a1", t, "A")
    world.click("a2", t + 60, "A")
    world.click("b1", t + 2 * HOUR, "B")
    world.impression("v1", t + 2 * HOUR, "B")
    world.convert("c1", t + 600, value=12.5, ttclid="a1")
    world.convert("c2", t + 700, value=7.5, ttclid="a2")
    world.convert("c3", t + 2 * HOUR + 60, value=1.0, ttclid="b1")
    world.convert("view", t + 2 * HOUR + 60, event="AddToCart", ttclid="b1")
    world.settle()
    body = _poll(world)
    rows = _by_key(body["rows"])
    assert rows[(_hour(t), "A-ad", "CompletePayment")] == {
        "bucket_start": _hour(t), "campaign_id": "A", "adgroup_id": "A-g", "ad_id": "A-ad",
        "event": "CompletePayment", "clicks": 2, "impressions": 0, "conversions": 2.0, "conversion_value": 20.0,
        "unconverted_conversions": 0.0, "revision": rows[(_hour(t), "A-ad", "CompletePayment")]["revision"]}
    b = rows[(_hour(t + 2 * HOUR), "B-ad", "CompletePayment")]
    assert (b["clicks"], b["impressions"], b["conversions"], b["conversion_value"]) == (1, 1, 1.0, 1.0)
    assert {(k[0], k[1]): (r["conversions"], r["conversion_value"]) for k, r in rows.items()} == \
        _stored_last_click(world)
    assert all(r["event"] == "CompletePayment" for r in body["rows"])  # AddToCart was not asked for
    assert body["attribution"]["model"] == "last_click" and body["has_more"] is False
    assert body["complete_through"] < _hour(t)  # these buckets may still change


def test_cursor_returns_exactly_the_changed_buckets(world):
    t = world.now - 6 * HOUR
    world.click("a1", t, "A")
    world.click("b1", t + 2 * HOUR, "B")
    world.convert("c1", t + 60, ttclid="a1")
    world.convert("c2", t + 2 * HOUR + 60, ttclid="b1")
    world.settle()
    first = _poll(world)
    again = _poll(world, cursor=first["next_cursor"])
    assert again["rows"] == [] and again["next_cursor"] == first["next_cursor"]  # polling again is safe
    world.convert("c3", t + 120, value=5.0, ttclid="a1")
    world.settle()
    changed = _poll(world, cursor=first["next_cursor"])
    assert [(r["bucket_start"], r["ad_id"]) for r in changed["rows"]] == [(_hour(t), "A-ad")]
    row, before = changed["rows"][0], _by_key(first["rows"])[(_hour(t), "A-ad", "CompletePayment")]
    assert row["conversions"] == 2.0 and row["conversion_value"] == 15.0  # full counts, never a delta
    assert row["revision"] > before["revision"]
    # The same cursor again gives the same answer.
    assert _poll(world, cursor=first["next_cursor"])["rows"] == changed["rows"]


def test_late_click_moves_a_conversion_and_both_buckets_come_back(world):
    t = world.now - 30 * HOUR
    email = sha("late@example.com")
    world.click("early", t, "E", user={"email": email})
    world.convert("buy", t + 20 * HOUR, value=40.0, email="late@example.com")
    world.settle()
    first = _poll(world)
    assert _by_key(first["rows"])[(_hour(t), "E-ad", "CompletePayment")]["conversions"] == 1.0
    # A click imported late, nearer the conversion, takes the last-click credit.
    world.click("later", t + 10 * HOUR, "L", user={"email": email})
    world.settle()
    changed = _by_key(_poll(world, cursor=first["next_cursor"])["rows"])
    assert set(changed) == {(_hour(t), "E-ad", "CompletePayment"), (_hour(t + 10 * HOUR), "L-ad", "CompletePayment")}
    assert changed[(_hour(t), "E-ad", "CompletePayment")]["conversions"] == 0.0
    assert changed[(_hour(t), "E-ad", "CompletePayment")]["clicks"] == 1
    assert changed[(_hour(t + 10 * HOUR), "L-ad", "CompletePayment")]["conversions"] == 1.0
    assert changed[(_hour(t + 10 * HOUR), "L-ad", "CompletePayment")]["conversion_value"] == 40.0


def test_levels_and_minute_buckets(world):
    t = (world.now - 3 * HOUR) // HOUR * HOUR + 600  # both clicks inside one hour, whenever the test runs
    world.click("a1", t, "A")
    world.click("a2", t + 120, "A")
    world.convert("c1", t + 30, ttclid="a1")
    world.convert("c2", t + 150, ttclid="a2")
    world.settle()
    campaign = _poll(world, level="campaign")["rows"]
    assert [(r["campaign_id"], r["clicks"], r["conversions"]) for r in campaign] == [("A", 2, 2.0)]
    assert "ad_id" not in campaign[0] and "adgroup_id" not in campaign[0]
    minutes = _poll(world, bucket="minute", level="adgroup")["rows"]
    assert [(r["bucket_start"][11:16], r["clicks"], r["conversions"]) for r in minutes] == [
        (datetime.fromtimestamp(t, timezone.utc).strftime("%H:%M"), 1, 1.0),
        (datetime.fromtimestamp(t + 120, timezone.utc).strftime("%H:%M"), 1, 1.0)]


def test_the_advertisers_model_drives_the_feed(world, r):
    t = world.now - 4 * HOUR
    email = sha("m@example.com")
    world.click("f", t, "F", user={"email": email})
    world.click("l", t + HOUR, "L", user={"email": email})
    world.convert("c", t + 2 * HOUR, email="m@example.com")
    world.settle()
    registry.update_settings(r, world.tenant.advertiser, model="linear")
    rows = _poll(world)["rows"]
    assert {r_["campaign_id"]: r_["conversions"] for r_ in rows} == {"F": 0.5, "L": 0.5}


def test_tokens_of_another_advertiser_or_scope(world, r):
    t = world.now - HOUR
    world.click("a1", t, "A")
    world.convert("c1", t + 60, ttclid="a1")
    world.settle()
    other = registry.create_token(r, "adv-other", ["optimizer"])
    body = world.api.get("/v1/optimizer/conversions", query_string={"event": "CompletePayment"},
                         headers={"Authorization": f"Bearer {other}"}).json
    assert body["rows"] == []
    reports_only = registry.create_token(r, world.tenant.advertiser, ["reports"])
    resp = world.api.get("/v1/optimizer/conversions", query_string={"event": "CompletePayment"},
                         headers={"Authorization": f"Bearer {reports_only}"})
    assert resp.status_code == 403 and resp.json["error"]["field"] == "Authorization"
    resp = world.api.get("/v1/optimizer/conversions", query_string={"event": "CompletePayment"})
    assert resp.status_code == 401


@pytest.mark.parametrize("params, field", [
    ({"event": ""}, "event"),
    ({"level": "account"}, "level"),
    ({"bucket": "day"}, "bucket"),
    ({"cursor": "abc"}, "cursor"),
    ({"limit": "0"}, "limit"),
    ({"limit": "²"}, "limit"),
    ({"cursor": "²"}, "cursor"),
    ({"cursor": "１２３"}, "cursor"),
])
def test_bad_parameters_name_the_parameter(world, params, field):
    resp = world.api.get("/v1/optimizer/conversions", query_string={"event": "CompletePayment", **params},
                         headers=world.optimizer)
    assert resp.status_code == 400 and resp.json["error"]["field"] == field, resp.json


def test_a_small_limit_pages_through_every_change(world):
    t = world.now - 8 * HOUR
    for i in range(3):  # three ticks, so three distinct change stamps
        world.click(f"k{i}", t + i * HOUR, f"C{i}")
        world.convert(f"c{i}", t + i * HOUR + 60, ttclid=f"k{i}")
        world.settle()
    seen, cursor, polls = [], None, 0
    while True:
        body = _poll(world, cursor=cursor, limit=1)
        seen += [r["campaign_id"] for r in body["rows"]]
        cursor, polls = body["next_cursor"], polls + 1
        if not body["has_more"]:
            break
    assert sorted(seen) == ["C0", "C1", "C2"] and polls == 3


def test_a_cursor_older_than_the_kept_changes_is_refused(world):
    resp = world.api.get("/v1/optimizer/conversions", query_string={"event": "CompletePayment",
                                                                     "cursor": "1600000000000"},
                         headers=world.optimizer)
    assert resp.status_code == 400 and resp.json["error"]["code"] == "cursor_expired"


def test_the_attributor_drops_days_of_changes_no_cursor_needs(world, ch, ch_database):
    old_ms = (world.now - 40 * 86400) * 1000
    ch.execute(f"INSERT INTO {ch_database}.feed_changes (advertiser_id, written_ms, model, event, touch_minute, "
               "campaign_id, adgroup_id, ad_id) VALUES",
               [("adv-1", old_ms, "", "", world.now - 40 * 86400, "c", "g", "a"),
                ("adv-1", world.now * 1000, "", "", world.now, "c", "g", "a")])
    world.attributor._prune_if_due()
    assert [r[0] for r in ch.execute(f"SELECT written_ms FROM {ch_database}.feed_changes")] == [world.now * 1000]


def test_pollers_asking_at_once_share_one_answer():
    """Threads asking for the same answer while it is being built wait for it instead of querying."""
    import threading
    import time

    from reporting.feed import _Responses

    answers, builds = _Responses(), []

    def build():
        builds.append(1)
        time.sleep(0.2)
        return {"rows": [{"n": len(builds)}]}

    got = []
    threads = [threading.Thread(target=lambda: got.append(answers.get("k", build))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and got == [{"rows": [{"n": 1}]}] * 8
    assert answers.get("k", build) == {"rows": [{"n": 1}]} and len(builds) == 1  # kept for later polls


def test_a_big_tick_moves_the_watermark_after_each_chunk(world, monkeypatch, ch, ch_database):
    """Within one tick, each chunk's credits are stored before the feed may serve them."""
    world.unattributed_conversions(5, chunk=2)
    attributor = world.attributor
    seen, publish = [], attributor._publish

    def watched(stamp_ms):
        publish(stamp_ms)
        mark = int(attributor.redis.get("ct:feed:watermark"))
        seen.append(ch.execute(f"SELECT uniqExact(event_id) FROM {ch_database}.credits "
                               f"WHERE attributed_ms <= {mark} AND event_id LIKE 'c%'")[0][0])

    monkeypatch.setattr(attributor, "_publish", watched)
    attributor.settle()
    assert seen == [2, 4]  # published between the three chunks, each time covering what was stored
    assert len(_poll(world)["rows"]) == 5


def test_a_value_sum_beyond_the_largest_double_is_null_never_infinity(world, ch, ch_database):
    """Two conversions worth 1.7e308 each (stored before today's bounds) in one bucket: the sum is
    no double, and the feed says null, in valid JSON."""
    import json

    t = world.now - 3 * HOUR
    world.click("k1", t, "C")
    world.convert("c1", t + 60, value=10.0, ttclid="k1")
    world.settle()
    minute = datetime.fromtimestamp(t // 60 * 60, timezone.utc)
    ch.execute(f"INSERT INTO {ch_database}.conversion_stats (advertiser_id, model, touch_minute, event, campaign_id, "
               "adgroup_id, ad_id, touch_kind, conversion_minute, click_window_days, view_window_days, conversions, "
               "conversion_value) VALUES",
               [(world.tenant.advertiser, "last_click", minute, "CompletePayment", "C", "C-g", "C-ad", "click",
                 minute, 7, 1, 1.0, 1.7e308)] * 2)
    resp = world.api.get("/v1/optimizer/conversions", query_string={"event": "CompletePayment"},
                         headers=world.optimizer)
    assert resp.status_code == 200
    body = json.loads(resp.get_data(as_text=True), parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    (row,) = body["rows"]
    assert (row["ad_id"], row["conversions"], row["conversion_value"], row["clicks"]) == ("C-ad", 3.0, None, 1)
