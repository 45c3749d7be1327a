"""Attribution scenarios with hand-computed credits, through the real collector, sink, API and attributor."""

from datetime import datetime, timedelta, timezone

import pytest

from pixel import registry
from tests.attribution_world import DAY, HOUR, World, sha


@pytest.fixture
def world(client, api_client, tenant, sink, attributor, r, ch, ch_database):
    return World(client, api_client, tenant, sink, attributor, r, ch, ch_database)


def test_click_window_edges(world):
    t = world.now
    world.click("inside", t - 7 * DAY + 1)
    world.click("outside", t - 7 * DAY - 1)
    world.convert("conv-in", t, ttclid="inside")
    world.convert("conv-out", t, ttclid="outside")
    world.settle()
    assert world.credits("conv-in") == {"inside": 1.0}
    assert world.credits("conv-out") == {"organic": 1.0}


def test_view_window_edges(world):
    t = world.now
    world.impression("seen", t - DAY + 1, user={"email": sha("in@example.com")})
    world.impression("stale", t - DAY - 1, user={"email": sha("out@example.com")})
    world.convert("conv-in", t, email="in@example.com")
    world.convert("conv-out", t, email="out@example.com")
    world.settle()
    assert world.credits("conv-in") == {"seen": 1.0}
    assert world.credits("conv-out") == {"organic": 1.0}


def test_a_click_in_window_beats_a_later_impression(world):
    t = world.now
    user = {"email": sha("jane@example.com")}
    world.click("clk", t - 2 * DAY, user=user)
    world.impression("imp", t - HOUR, user=user)
    world.convert("conv", t, email="jane@example.com")
    world.settle()
    for model in ("last_click", "first_click", "linear"):
        assert world.credits("conv", model) == {"clk": 1.0}


def test_several_clicks_under_every_model(world):
    t = world.now
    user = {"external_id": sha("user-7")}
    for name, days in (("c1", 5), ("c2", 3), ("c3", 1)):
        world.click(name, t - days * DAY, user=user)
    world.convert("conv", t, external_id="user-7")
    world.settle()
    assert world.credits("conv", "last_click") == {"c1": 0.0, "c2": 0.0, "c3": 1.0}
    assert world.credits("conv", "first_click") == {"c1": 1.0, "c2": 0.0, "c3": 0.0}
    assert world.credits("conv", "linear") == {"c1": round(1 / 3, 9), "c2": round(1 / 3, 9), "c3": round(1 / 3, 9)}
    assert world.credits("conv", "position_based") == {"c1": 0.4, "c2": 0.2, "c3": 0.4}
    weights = [2 ** (-5 / 7), 2 ** (-3 / 7), 2 ** (-1 / 7)]  # half-life 7 days
    expected = {name: round(w / sum(weights), 9) for name, w in zip(("c1", "c2", "c3"), weights)}
    assert world.credits("conv", "time_decay") == expected
    for model in ("last_click", "first_click", "linear", "time_decay", "position_based"):
        assert sum(row["credit"] for row in world.latest("conv", model)) == 1.0


def test_browser_id_stitches_a_later_conversion_to_the_landing_click(world):
    t = world.now
    world.click("landing-click", t - 2 * DAY)
    world.browse("landing-view", t - 2 * DAY + 10, ttp="browser-B", ttclid="landing-click")
    world.convert("conv", t, ttp="browser-B")  # no click id on the conversion itself
    world.settle()
    (row,) = world.latest("conv")
    assert (row["touch_id"], row["matched_by"], row["credit"]) == ("landing-click", "browser_id", 1.0)


def test_cross_device_by_hashed_email(world):
    t = world.now
    world.click("phone-click", t - 3 * DAY, user={"email": sha("Jane@Example.com")})
    world.convert("desktop-conv", t, email="  jane@example.com ")
    world.settle()
    (row,) = world.latest("desktop-conv")
    assert (row["touch_id"], row["matched_by"]) == ("phone-click", "email")


def test_the_conversions_own_click_id_beats_a_later_identity_match(world):
    t = world.now
    world.click("own", t - 6 * DAY)
    world.click("other-device", t - DAY, user={"email": sha("x@example.com")})
    world.convert("conv", t, ttclid="own", email="x@example.com")
    world.settle()
    assert world.credits("conv") == {"own": 1.0}


def test_pixel_and_server_copies_count_once(world):
    t = world.now
    world.click("clk", t - HOUR)
    world.convert("same-id", t, ttclid="clk")
    body = {"events": [{"event": "CompletePayment", "event_id": "same-id", "timestamp": t * 1000, "ttclid": "clk",
                        "page": {"url": "https://shop.example/thanks"}, "properties": {"value": 10}}]}
    assert world.client.post(f"/e/{world.tenant.pixel_id}", json=body).status_code == 200
    world.settle()
    rows = world.latest("same-id")
    assert len(rows) == 1 and rows[0]["credit"] == 1.0


def test_a_repeated_order_id_counts_once(world):
    t = world.now
    world.click("clk", t - HOUR)
    world.convert("first", t - 60, ttclid="clk", order_id="ORDER-1")
    world.convert("again", t, ttclid="clk", order_id="ORDER-1")
    world.settle()
    assert world.credits("first") == {"clk": 1.0}
    assert world.credits("again") == {"duplicate_order": 0.0}


def test_counting_once_per_click_is_per_event(world, r):
    registry.update_settings(r, world.tenant.advertiser, counting="once", event="Download")
    t = world.now
    world.click("clk", t - HOUR)
    world.convert("dl-1", t - 120, event="Download", ttclid="clk")
    world.convert("dl-2", t - 60, event="Download", ttclid="clk")
    world.convert("buy-1", t - 60, ttclid="clk")
    world.convert("buy-2", t, ttclid="clk")
    world.settle()
    assert world.credits("dl-1") == {"clk": 1.0}
    assert world.credits("dl-2") == {"repeat_click": 0.0}
    assert world.credits("buy-1") == world.credits("buy-2") == {"clk": 1.0}  # every purchase counts


HEADLESS = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 "
            "Safari/537.36")


def test_a_bots_conversion_is_credited_to_nothing_and_takes_nothing_from_people(world, r):
    """A bot's conversion (its user agent in the event) gets no credit, and is neither the first of
    an order nor the one conversion of a click counted once: the person's conversion after it counts."""
    registry.update_settings(r, world.tenant.advertiser, counting="once", event="Download")
    t = world.now
    world.click("clk", t - HOUR)
    world.convert("bot-buy", t - 120, ttclid="clk", order_id="ORDER-9", user_agent=HEADLESS)
    world.convert("person-buy", t - 60, ttclid="clk", order_id="ORDER-9")
    world.convert("bot-dl", t - 120, event="Download", ttclid="clk", user_agent="python-requests/2.31.0")
    world.convert("person-dl", t - 60, event="Download", ttclid="clk")
    world.settle()
    for model in ("last_click", "first_click", "linear", "time_decay", "position_based"):
        assert world.credits("bot-buy", model) == world.credits("bot-dl", model) == {"bot": 0.0}
        assert world.credits("person-buy", model) == world.credits("person-dl", model) == {"clk": 1.0}


def test_a_late_click_restates_an_unattributed_conversion(world):
    t = world.now
    world.convert("early", t, ttclid="late-click")
    world.settle()
    assert world.credits("early") == {"organic": 1.0} and world.revision("early") == 1
    world.click("late-click", t - HOUR, campaign="spring")
    world.settle()
    (row,) = world.latest("early")
    assert (row["touch_id"], row["credit"], row["revision"], row["campaign_id"]) == ("late-click", 1.0, 2, "spring")


def test_windows_are_exact_durations_not_calendar_days(world):
    now = datetime.fromtimestamp(world.now, timezone.utc)
    conversion = now.replace(hour=23, minute=59, second=59)
    if conversion > now:
        conversion -= timedelta(days=1)
    conv_at = int(conversion.timestamp())
    day_start = int((conversion - timedelta(days=7)).replace(hour=0, minute=0, second=1).timestamp())
    world.click("seven-calendar-days", day_start)  # 7 days 23:59:58 before: outside a 7-day window
    world.click("just-inside", conv_at - 7 * DAY)  # exactly 7 days before: inside (edges included)
    world.convert("midnight-conv", conv_at, ttclid="seven-calendar-days")
    world.convert("edge-conv", conv_at, ttclid="just-inside")
    world.settle()
    assert world.credits("midnight-conv") == {"organic": 1.0}
    assert world.credits("edge-conv") == {"just-inside": 1.0}


def test_unchanged_results_are_not_restated(world):
    t = world.now
    world.click("clk", t - HOUR)
    world.convert("conv", t, ttclid="clk")
    world.settle()
    world.click("unrelated", t - HOUR, user={"email": sha("someone@else.com")})
    world.convert("conv", t, ttclid="clk")  # a client retry of the same event
    world.settle()
    assert world.revision("conv") == 1


def test_explanation_lists_every_candidate_and_why(world):
    t = world.now
    world.click("own", t - 6 * DAY)
    world.click("other-device", t - DAY, user={"email": sha("x@example.com")})
    world.click("too-old", t - 9 * DAY, user={"email": sha("x@example.com")})
    world.convert("conv", t, ttclid="own", email="x@example.com")
    world.settle()
    resp = world.api.get("/v1/conversions/conv/attribution", headers=world.auth)
    assert resp.status_code == 200
    (conv,) = resp.json["conversions"]
    assert conv["windows"] == {"click_days": 7, "view_days": 1} and conv["attributed"] is True
    touch = {tp["touch_id"]: tp for tp in conv["touchpoints"]}
    assert touch["own"]["credit"]["last_click"] == 1.0 and touch["own"]["not_credited_because"] is None
    assert touch["other-device"]["not_credited_because"] == "matched by email; a stronger match (click_id) exists"
    assert touch["too-old"]["not_credited_because"] == (
        "9.00 days before the conversion, outside the 7-day click window")


def test_explanation_is_private_to_the_advertiser(world, r):
    world.click("clk", world.now - HOUR)
    world.convert("conv", world.now, ttclid="clk")
    world.settle()
    other = registry.create_token(r, "adv-2", ["reports"])
    resp = world.api.get("/v1/conversions/conv/attribution", headers={"Authorization": f"Bearer {other}"})
    assert resp.status_code == 404
    wrong_scope = registry.create_token(r, world.tenant.advertiser, ["events"])
    resp = world.api.get("/v1/conversions/conv/attribution", headers={"Authorization": f"Bearer {wrong_scope}"})
    assert resp.status_code == 403 and resp.json["error"]["code"] == "token_scope"
    assert world.api.get("/v1/conversions/conv/attribution").status_code == 401


def test_clicks_missing_from_the_cache_are_found_in_storage(world, r):
    t = world.now
    world.click("cached", t - HOUR, campaign="from-cache")
    world.click("evicted", t - HOUR, campaign="from-storage")
    assert r.exists("ct:click:adv-1:cached") and r.exists("ct:click:adv-1:evicted")
    r.delete("ct:click:adv-1:evicted")  # as if Redis had lost it
    world.convert("conv-a", t, ttclid="cached")
    world.convert("conv-b", t, ttclid="evicted")
    world.settle()
    assert world.latest("conv-a")[0]["campaign_id"] == "from-cache"
    assert world.latest("conv-b")[0]["campaign_id"] == "from-storage"
    ttl = r.ttl("ct:click:adv-1:cached")
    assert 28 * DAY < ttl <= 29 * DAY - HOUR  # kept as long as the longest window can reach the click


def test_test_events_are_never_attributed(world):
    t = world.now
    world.click("clk", t - HOUR)
    body = {"event_source": "web", "event_source_id": world.tenant.pixel_id, "test_event_code": "TEST42",
            "data": [{"event": "CompletePayment", "event_id": "testing", "event_time": t, "user": {"ttclid": "clk"}}]}
    resp = world.client.post("/open_api/v1.3/event/track/", json=body,
                             headers={"Access-Token": world.tenant.token})
    assert resp.status_code == 200
    world.convert("real", t, ttclid="clk")
    world.settle()
    assert world.latest("testing") == []
    assert world.credits("real") == {"clk": 1.0}
