"""Edge rules of attribution (issue 14), in the attributor and in reports recomputing other windows.

Each scenario is a set of touchpoints and, per windows, the touchpoints that take part, with
their credits under every model computed by hand here (not by attribution.models). A
conversion is attributed under each windows (the advertiser's setting at that time), then the
setting is changed to something else and a report asks for each windows: the report recomputes
from the stored candidates and must give what the attributor gave.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

import pytest

from pixel import registry
from tests.attribution_world import DAY, HOUR, World, sha

MODELS = ("last_click", "first_click", "linear", "time_decay", "position_based")


@pytest.fixture
def world(client, api_client, tenant, sink, attributor, r, ch, ch_database):
    w = World(client, api_client, tenant, sink, attributor, r, ch, ch_database)
    w.settings_redis = r  # where set_windows changes the advertiser's setting
    return w


def shares(model: str, conv_at: int, touches: dict[str, int]) -> dict[str, float]:
    """Credits by hand: ``touches`` maps the touchpoints taking part to their time (seconds)."""
    names = sorted(touches, key=lambda name: (touches[name], name))  # oldest first
    n = len(names)
    if n == 1 or model == "linear":
        weights = [1.0] * n
    elif model == "last_click":
        weights = [0.0] * (n - 1) + [1.0]
    elif model == "first_click":
        weights = [1.0] + [0.0] * (n - 1)
    elif model == "position_based":
        weights = [0.5, 0.5] if n == 2 else [0.4] + [0.2 / (n - 2)] * (n - 2) + [0.4]
    else:  # time_decay: half-life 7 days
        weights = [2 ** (-(conv_at - touches[name]) / (7 * DAY)) for name in names]
    return {name: round(w / sum(weights), 9) for name, w in zip(names, weights)}


def set_windows(world, click: int, view: int) -> None:
    registry.update_settings(world.settings_redis, world.tenant.advertiser, click_window_days=click, view_window_days=view)


def report(world, model: str, click: int, view: int) -> dict[str, float]:
    """Conversions per campaign (each touchpoint has its own campaign, named after it), to the 6
    decimals reports give."""
    today = datetime.now(timezone.utc).date()
    params = {"start": (today - timedelta(days=30)).isoformat(), "end": today.isoformat(), "model": model,
              "click_window": click, "view_window": view, "dimensions": "campaign_id", "metrics": "conversions",
              "events": "CompletePayment"}
    resp = world.api.get("/v1/reports", query_string=params, headers=world.auth)
    assert resp.status_code == 200, resp.json
    return {row["campaign_id"]: round(row["conversions"], 6) for row in resp.json["rows"]}


@dataclass
class Scenario:
    touches: Callable[[World, int], dict[str, int]]  # posts the touchpoints; returns their times
    conversion: dict  # the converting user's identifiers
    windows: list[tuple[tuple[int, int], list[str]]]  # (click, view) -> the touchpoints taking part
    other: tuple[int, int]  # the advertiser's setting while the reports ask for each windows


EMAIL = "shopper@example.com"


def _levels(world, t):
    """The issue's example: the conversion's own click 9.96 days old (A), email matches 3 days and
    12 hours old (B, B2)."""
    at = {"A": t - int(9.96 * DAY), "B": t - 3 * DAY, "B2": t - 12 * HOUR}
    world.click("A", at["A"], "A")
    for name in ("B", "B2"):
        world.click(name, at[name], name, user={"email": sha(EMAIL)})
    return at


def _views(world, t):
    """Impressions only: one at the conversion's own second, one two hours before."""
    at = {"I0": t, "I1": t - 2 * HOUR}
    for name, when in at.items():
        world.impression(name, when, name, user={"email": sha(EMAIL)})
    return at


def _browser_views(world, t):
    """Impressions on the converting browser (browser_id level), a click on another device (email)."""
    at = {"V1": t - 5 * HOUR, "V2": t - 2 * HOUR, "E": t - DAY}
    for name in ("V1", "V2"):
        world.impression(name, at[name], name, user={"ttp": "browser-X"})
    world.click("E", at["E"], "E", user={"email": sha(EMAIL)})
    return at


SCENARIOS = {
    "the level is chosen among touchpoints inside the windows": Scenario(
        _levels, {"ttclid": "A", "email": EMAIL},
        [((14, 1), ["A"]),  # own click inside: it alone takes part, the matched clicks do not
         ((28, 1), ["A"]),
         ((7, 1), ["B", "B2"]),  # own click outside: falls through to the matched clicks inside
         ((1, 1), ["B2"])],
        other=(7, 0)),
    "a view window of 0 credits no impression, not even at the conversion's second": Scenario(
        _views, {"email": EMAIL},
        [((7, 0), []), ((28, 0), []), ((7, 1), ["I0", "I1"]), ((1, 7), ["I0", "I1"])],
        other=(14, 1)),
    "a click beats views only within the chosen level": Scenario(
        _browser_views, {"ttp": "browser-X", "email": EMAIL},
        [((7, 1), ["V1", "V2"]),  # the browser's views win over another device's click
         ((7, 0), ["E"]),  # views off: nothing at the browser level, the email click takes part
         ((1, 1), ["V1", "V2"])],
        other=(28, 7)),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_rules_in_the_attributor_and_in_reports_with_other_windows(world, name):
    """Every model, compared as {model: {windows: credits}} so a failure shows which model differs."""
    s = SCENARIOS[name]
    t = world.now
    at = s.touches(world, t)
    for i, ((click, view), _) in enumerate(s.windows):
        set_windows(world, click, view)
        world.convert(f"conv-{i}", t, **s.conversion)
        world.settle()  # attributed under this setting
    expected = {model: {w: shares(model, t, {n: at[n] for n in chosen}) if chosen else {} for w, chosen in s.windows}
                for model in MODELS}
    attributed = {model: {w: world.credits(f"conv-{i}", model) for i, (w, _) in enumerate(s.windows)}
                  for model in MODELS}
    assert attributed == {model: {w: credits or {"organic": 1.0} for w, credits in by_windows.items()}
                          for model, by_windows in expected.items()}
    set_windows(world, *s.other)
    # Every conversion recomputed under each windows: each gives what the attributor gave under them.
    n = len(s.windows)
    reported = {model: {w: report(world, model, *w) for w, _ in s.windows} for model in MODELS}
    assert reported == {model: {w: {touch: round(n * credit, 6) for touch, credit in credits.items() if credit}
                                for w, credits in by_windows.items()} for model, by_windows in expected.items()}


def test_the_setting_of_a_view_window_of_0_is_the_report_of_it(world):
    """The stored credits (setting 7/0) and a report asking for 7/0 explicitly agree: nothing."""
    t = world.now
    _views(world, t)
    set_windows(world, 7, 0)
    world.convert("conv", t, email=EMAIL)
    world.settle()
    assert world.credits("conv") == {"organic": 1.0}
    today = datetime.now(timezone.utc).date().isoformat()
    for extra in ({}, {"click_window": 7, "view_window": 0}):
        resp = world.api.get("/v1/reports", query_string={"start": today, "end": today, "metrics": "conversions",
                                                          "events": "CompletePayment", **extra}, headers=world.auth)
        assert resp.status_code == 200 and resp.json["totals"]["conversions"] == 0, resp.json


# ---- repeated order ids ---------------------------------------------------------------------

ORDERS = [  # (order, [(event id, seconds before now), ...] in arrival order, the one keeping the credit)
    ("O-late-first", [("o1-late", 0), ("o1-early", 60)], "o1-early"),
    ("O-early-first", [("o2-early", 60), ("o2-late", 0)], "o2-early"),
    ("O-same-time", [("o3-z", 0), ("o3-a", 0)], "o3-z"),  # same event time: the first received
]


def _send_orders(world, t, reverse=False):
    for order, conversions, _ in ORDERS:
        for event_id, before in (reversed(conversions) if reverse else conversions):
            world.convert(event_id, t - before, email=EMAIL, order_id=order)
            time.sleep(0.003)  # distinct receive times: the tie rule is about which came first
            world.settle()  # each attributed as it arrives: a later, earlier one takes the credit over


def test_a_repeated_order_id_keeps_the_earliest_in_any_arrival_order(world):
    t = world.now
    at = {"K1": t - 2 * HOUR, "K2": t - HOUR}
    for name, when in at.items():
        world.click(name, when, name, user={"email": sha(EMAIL)})
    _send_orders(world, t)
    _send_orders(world, t, reverse=True)  # a replay of the same events, in the other order
    expected, total = {}, {model: {"K1": 0.0, "K2": 0.0} for model in MODELS}
    for model in MODELS:
        for _, conversions, keeper in ORDERS:
            for event_id, before in conversions:
                credits = shares(model, t - before, at) if event_id == keeper else {"duplicate_order": 0.0}
                expected[model, event_id] = credits
                if event_id == keeper:
                    total[model] = {k: total[model][k] + credits[k] for k in at}
    assert {key: world.credits(key[1], key[0]) for key in expected} == expected
    set_windows(world, 28, 7)
    assert {model: report(world, model, 7, 1) for model in MODELS} == \
        {model: {k: round(v, 6) for k, v in total[model].items() if v} for model in MODELS}


# ---- explanations: why a conversion got nothing -----------------------------------------------


def explain(world, event_id: str) -> dict:
    resp = world.api.get(f"/v1/conversions/{event_id}/attribution", headers=world.auth)
    assert resp.status_code == 200, resp.json
    (conv,) = resp.json["conversions"]
    return conv


def _reasons(conv: dict) -> list[tuple[str, str]]:
    return [(r["code"], r["message"]) for r in conv["not_attributed_because"]]


def _touch(conv: dict, touch_id: str) -> dict:
    return next(tp for tp in conv["touchpoints"] if tp["touch_id"] == touch_id)


def headless(world, event_id: str, at: int) -> None:
    """A purchase sent by the pixel in a headless browser (flagged is_bot by the sink)."""
    body = {"sent_at": time.time_ns() // 1_000_000, "events": [
        {"event": "CompletePayment", "event_id": event_id, "timestamp": at * 1000, "ttp": "bot-browser",
         "page": {"url": "https://shop.example/thanks"}}]}
    ua = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0 Safari/537.36"
    resp = world.client.post(f"/e/{world.tenant.pixel_id}", json=body, headers={"User-Agent": ua})
    assert resp.status_code == 200 and resp.json["accepted"] == 1, resp.json


def test_explanations_say_why_a_conversion_got_nothing(world, r):
    t = world.now
    world.click("late", t - HOUR)
    world.convert("click-after", t - 2 * HOUR, ttclid="late")
    world.convert("no-such-click", t, ttclid="nope")
    world.click("old", t - 9 * DAY, "old")
    world.impression("old-view", t - 2 * DAY, "old", user={"email": sha("old@example.com")})
    world.convert("too-old", t, ttclid="old", email="old@example.com")
    world.convert("no-match", t, email="stranger@example.com")
    world.click("clk", t - HOUR, "C")
    world.convert("first", t - 60, ttclid="clk", order_id="ORDER-1")
    world.convert("again", t, ttclid="clk", order_id="ORDER-1")
    registry.update_settings(r, world.tenant.advertiser, counting="once", event="Download")
    world.convert("dl-1", t - 120, event="Download", ttclid="clk")
    world.convert("dl-2", t - 60, event="Download", ttclid="clk")
    headless(world, "headless", t)
    world.settle()

    assert _reasons(explain(world, "no-such-click")) == [
        ("click_id_not_found", "its click id nope matches no click of this advertiser")]
    assert _reasons(explain(world, "click-after")) == [
        ("click_id_not_found", "its click id late matches a click 0.04 days after the conversion")]
    too_old = explain(world, "too-old")
    assert too_old["attributed"] is False and _reasons(too_old) == [
        ("outside_windows", "every touchpoint is outside the windows: click old 9.00 days before (7-day click "
                            "window); impression old-view 2.00 days before (1-day view window)")]
    assert _reasons(explain(world, "no-match")) == [
        ("no_touchpoint", "no click or impression shares an identity with it (click id, browser id, external id, "
                          "email, phone) within the longest windows (28 days for clicks, 7 for impressions)")]

    again = explain(world, "again")
    because = ("duplicate of order ORDER-1: conversion first keeps the credit (the earliest event time; at the "
               "same time, the first received)")
    assert again["attributed"] is False and _reasons(again) == [("duplicate_order", because)]
    assert (_touch(again, "clk")["eligible"], _touch(again, "clk")["not_credited_because"]) == (False, because)
    first = explain(world, "first")
    assert first["attributed"] is True and first["not_attributed_because"] == []
    assert _touch(first, "clk")["eligible"] is True and _touch(first, "clk")["credit"]["last_click"] == 1.0

    repeat = explain(world, "dl-2")
    because = "counted once already: conversion dl-1 of Download is counted for click clk (counting once per click)"
    assert repeat["attributed"] is False and _reasons(repeat) == [("repeat_click", because)]
    assert _touch(repeat, "clk")["not_credited_because"] == because
    assert explain(world, "dl-1")["not_attributed_because"] == []

    assert [code for code, _ in _reasons(explain(world, "headless"))] == ["bot", "no_touchpoint"]


def test_explanation_of_an_impression_with_view_through_off(world):
    t = world.now
    set_windows(world, 7, 0)
    world.impression("seen", t, "S", user={"email": sha(EMAIL)})
    world.convert("conv", t, email=EMAIL)
    world.settle()
    conv = explain(world, "conv")
    assert conv["windows"] == {"click_days": 7, "view_days": 0} and conv["attributed"] is False
    assert _touch(conv, "seen")["not_credited_because"] == (
        "0.00 days before the conversion; view-through is off (view window 0)")
    assert _reasons(conv) == [("outside_windows", "every touchpoint is outside the windows: impression seen 0.00 "
                                                  "days before (view-through off)")]
