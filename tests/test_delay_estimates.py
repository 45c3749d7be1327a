"""Delay-corrected conversion estimates: the estimator's properties, and the optimizer feed's
``estimate=true`` on generated data whose delays follow a known distribution."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings as hsettings, strategies as st

from attribution.delays import GRID_S, Curve, build_curve, delay_group_sql, estimate, group_width_min

DAY = 86_400

delays_st = st.dictionaries(st.integers(0, 28 * 1440 - 1).map(lambda m: _group(m)),
                            st.floats(-3, 50, allow_nan=False), max_size=60)
clicks_st = st.dictionaries(st.integers(0, 28 * 1440 - 1), st.integers(-2, 400), max_size=200)


def _group(minute: int) -> int:
    width = group_width_min(minute)
    return minute // width * width


@given(delays_st, clicks_st, st.sampled_from([1, 7, 14, 28]))
@hsettings(max_examples=200, deadline=None)
def test_curve_is_a_monotone_cdf_in_0_1(delays, clicks, window_days):
    curve = build_curve(delays, clicks, window_days * DAY)
    if curve is None:
        return
    assert len(curve.cdf) == len([a for a in GRID_S if a < window_days * DAY]) == len(curve.var)
    assert all(0.0 <= f <= 1.0 for f in curve.cdf)
    assert all(a <= b + 1e-12 for a, b in zip(curve.cdf, curve.cdf[1:]))
    assert curve.cdf[0] == 0.0  # nothing arrives before the click
    assert all(v >= 0 for v in curve.var)
    ages = sorted(random.Random(1).uniform(0, window_days * DAY * 1.1) for _ in range(50))
    at = [curve.at(a)[0] for a in ages]
    assert all(a <= b + 1e-12 for a, b in zip(at, at[1:])) and all(0 <= f <= 1 for f in at)
    assert curve.at(window_days * DAY) == (1.0, 0.0)
    assert Curve.from_json(curve.to_json()) == curve


@given(st.floats(0, 1e6, allow_nan=False), st.floats(0, 1, allow_nan=False), st.floats(0, 1, allow_nan=False))
@hsettings(max_examples=300, deadline=None)
def test_expected_is_at_least_observed_and_inside_its_interval(observed, maturity, var):
    e = estimate(observed, maturity, var)
    assert e.expected >= observed * (1 - 1e-12)
    assert observed * (1 - 1e-12) <= e.low <= e.expected <= e.high
    assert 0 < e.maturity <= 1
    assert all(math.isfinite(x) for x in (e.expected, e.low, e.high))


def test_a_mature_bucket_is_its_observed_count():
    e = estimate(17.0, 1.0, 0.0)
    assert (e.expected, e.low, e.high) == (17.0, 17.0, 17.0)


def test_too_few_conversions_give_no_curve():
    assert build_curve({10: 5.0}, {m: 3 for m in range(0, 7 * 1440, 10)}, 7 * DAY) is None


def test_exponential_delays_are_recovered_under_censoring():
    """Clicks spread over 7 days, each converting once at an exponential delay (mean 6 h) if that
    has already happened: the curve matches the truncated exponential CDF, which counting the
    arrived delays alone underestimates in the tail."""
    rng = random.Random(7)
    window_min, mean_min = 7 * 1440, 360
    clicks: dict[int, int] = {}
    delays: dict[int, float] = {}
    for _ in range(20_000):
        age = rng.randrange(7 * 1440)
        clicks[age] = clicks.get(age, 0) + 1
        d = rng.expovariate(1 / mean_min)
        if d < age and rng.random() < 0.3:
            g = _group(int(d))
            delays[g] = delays.get(g, 0.0) + 1.0
    curve = build_curve(delays, clicks, window_min * 60)
    norm = 1 - math.exp(-window_min / mean_min)
    for hours in (1, 6, 24, 72):
        truth = (1 - math.exp(-hours * 60 / mean_min)) / norm
        assert abs(curve.at(hours * 3600)[0] - truth) < 0.03, (hours, curve.at(hours * 3600), truth)


def test_delay_groups_sql_matches_python(ch):
    minutes = [0, 1, 59, 60, 61, 64, 65, 1439, 1440, 1441, 1469, 1470, 10079, 10080, 10139, 10140, 40319]
    rows = ch.execute(f"SELECT m, {delay_group_sql('m')} FROM (SELECT arrayJoin(%(m)s) AS m)", {"m": minutes})
    assert {m: g for m, g in rows} == {m: _group(m) for m in minutes}


# --- Through the real system: Redis, ClickHouse, the apps, the sink and the attributor ---------

import time  # noqa: E402

import pytest  # noqa: E402

from bench import delay_bench  # noqa: E402
from clicktrail import keys  # noqa: E402
from pixel import registry  # noqa: E402
from tests.attribution_world import HOUR, World  # noqa: E402


@pytest.fixture
def world(client, api_client, tenant, sink, attributor, r, ch, ch_database):
    w = World(client, api_client, tenant, sink, attributor, r, ch, ch_database)
    w.optimizer = {"Authorization": f"Bearer {registry.create_token(r, tenant.advertiser, ['optimizer'])}"}
    return w


def _feed(world, **params):
    resp = world.api.get("/v1/optimizer/conversions", query_string={"event": "CompletePayment", **params},
                         headers=world.optimizer)
    assert resp.status_code == 200, resp.json
    return resp.json


def test_estimate_beats_the_naive_count_on_a_known_delay_mixture(world):
    g = delay_bench.generate(world.now, ads=6, clicks_per_hour=50, seed=11)
    delay_bench.send(g, world.api, world.client, world.token, world.tenant.pixel_id, world.tenant.token,
                     world.settle)
    assert world.attributor.delay_curves.refresh() == 1
    body = _feed(world, estimate="true")
    assert body["estimates"]["events"]["CompletePayment"]["conversions"] >= len(g.conversions) * 0.9
    res = delay_bench.compare(g, body["rows"], time.time())
    assert all(res[a]["buckets"] == 18 for a in delay_bench.AGES_H)
    for age_h in (1, 6, 24):  # the naive total misses a sixth to a half; the estimate's is near the truth
        assert res[age_h]["naive_bias"] < (-0.25 if age_h < 24 else -0.08), res
        assert abs(res[age_h]["estimate_bias"]) < abs(res[age_h]["naive_bias"]) * (0.5 if age_h < 24 else 1), res
    young = (1, 6, 24)
    naive = sum(res[a]["naive_error"] * res[a]["final"] for a in young)
    estimated = sum(res[a]["estimate_error"] * res[a]["final"] for a in young)
    assert estimated < naive * 0.8, res  # per bucket too
    assert sum(res[a]["coverage"] for a in delay_bench.AGES_H) / 4 >= 0.75, res  # 95 % intervals, roughly
    for row in body["rows"]:
        assert row["expected_low"] <= row["expected_conversions"] <= row["expected_high"]
        assert row["expected_conversions"] >= row["conversions"] and 0 < row["maturity"] <= 1


def test_estimates_are_opt_in_mature_rows_unchanged_and_tenants_apart(world, r):
    registry.update_settings(r, world.tenant.advertiser, click_window_days=1)
    old, young = world.now - 40 * HOUR, world.now - 2 * HOUR
    for i in range(30):  # enough conversions (at delays of minutes) to learn a curve from
        world.click(f"o{i}", old + i * 60, "O")
        world.convert(f"co{i}", old + i * 60 + 300, ttclid=f"o{i}")
    world.click("y1", young, "Y")
    world.convert("cy1", young + 60, ttclid="y1")
    world.settle()
    plain = _feed(world)
    assert "estimates" not in plain and all("expected_conversions" not in row for row in plain["rows"])
    assert _feed(world, estimate="false")["rows"] == plain["rows"]
    before = _feed(world, estimate="true")  # no curve yet: young rows say they do not know
    assert before["estimates"]["events"] == {"CompletePayment": None}
    y = next(row for row in before["rows"] if row["ad_id"] == "Y-ad")
    assert (y["expected_conversions"], y["maturity"]) == (None, None)
    other = registry.create_token(r, "adv-2", ["optimizer"])
    stale = build_curve({5: 30.0}, {m: 1 for m in range(1440)}, DAY, "last_click", 1)
    r.hset(keys.delay_curves("adv-2"), "CompletePayment", stale.to_json())  # adv-2 has no conversions now
    world.attributor._lead_once(False)  # a lead tick refreshes the curves (at most once a minute)
    assert not r.exists(keys.delay_curves("adv-2"))
    body = _feed(world, estimate="true")
    info = body["estimates"]["events"]["CompletePayment"]
    assert info["conversions"] == 31.0 and info["clicks"] == 31
    for row in body["rows"]:
        if row["ad_id"] == "O-ad":  # past the 1-day click window: as observed, fully mature
            assert row["maturity"] == 1.0
            assert row["expected_conversions"] == row["expected_low"] == row["expected_high"] == row["conversions"]
        else:  # 2 hours old, every learnt delay is 5 minutes: (nearly) mature already
            assert row["conversions"] == 1.0 and row["maturity"] == pytest.approx(1.0, abs=1e-6)
            assert row["expected_conversions"] == pytest.approx(1.0, abs=1e-4)
    # Another advertiser sees none of this advertiser's curves.
    resp = world.api.get("/v1/optimizer/conversions", query_string={"event": "CompletePayment", "estimate": "true"},
                         headers={"Authorization": f"Bearer {other}"})
    assert resp.status_code == 200 and resp.json["rows"] == []
    assert resp.json["estimates"]["events"] == {"CompletePayment": None}


def test_estimate_must_be_true_or_false(world):
    resp = world.api.get("/v1/optimizer/conversions", query_string={"event": "CompletePayment", "estimate": "yes"},
                         headers=world.optimizer)
    assert resp.status_code == 400 and resp.json["error"]["field"] == "estimate", resp.json
