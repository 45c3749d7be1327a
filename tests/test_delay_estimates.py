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
