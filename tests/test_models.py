"""The credit models against independently published numbers and their own definitions.

Journeys and expected totals re-derived from eeghor/mta's heuristic-model tests (MIT): three
base journeys, `direct` (2 conversions), `search > email` (3) and `search > social > email` (5).
"""

import math

import pytest

from attribution.models import DAY_MS, MODELS, Candidate, Windows, credits, eligible, order_keeper

JOURNEYS = [(["direct"], 2), (["search", "email"], 3), (["search", "social", "email"], 5)]


def path(channels, start_ms=0, step_ms=DAY_MS):
    return [Candidate("click", f"{i}-{c}", start_ms + i * step_ms, c, "", "", "identity") for i, c in enumerate(channels)]


def totals(model):
    out: dict[str, float] = {}
    for channels, conversions in JOURNEYS:
        touches = path(channels)
        for touch, credit in zip(touches, credits(model, touches, touches[-1].touch_ms)):
            out[touch.campaign_id] = out.get(touch.campaign_id, 0.0) + credit * conversions
    return out


@pytest.mark.parametrize("model, expected", [
    ("first_click", {"direct": 2, "search": 8, "email": 0, "social": 0}),
    ("last_click", {"direct": 2, "search": 0, "email": 8, "social": 0}),
    ("linear", {"direct": 2, "search": 19 / 6, "email": 19 / 6, "social": 5 / 3}),
    ("position_based", {"direct": 2, "search": 3.5, "email": 3.5, "social": 1}),
])
def test_totals_match_the_published_fixture(model, expected):
    got = totals(model)
    assert got.keys() == expected.keys()
    for channel, value in expected.items():
        assert got[channel] == pytest.approx(value, abs=1e-12), channel


def test_position_based_two_touches_split_evenly():
    assert credits("position_based", path(["a", "b"]), DAY_MS) == [0.5, 0.5]


def test_time_decay_halves_per_week():
    touches = [Candidate("click", "week-ago", 0, "", "", "", "identity"),
               Candidate("click", "now", 7 * DAY_MS, "", "", "", "identity")]
    older, newer = credits("time_decay", touches, 7 * DAY_MS)
    assert older / newer == pytest.approx(0.5)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("n", [1, 2, 3, 7, 31])
def test_credits_sum_to_exactly_one(model, n):
    touches = path([f"c{i}" for i in range(n)], step_ms=DAY_MS // 7)
    got = credits(model, touches, touches[-1].touch_ms + 1000)
    assert len(got) == n and math.fsum(got) == 1.0 and all(c >= 0 for c in got)
    if n == 1:
        assert got == [1.0]


def test_ties_in_time_are_broken_by_touch_id():
    a = Candidate("click", "a", 1000, "", "", "", "identity")
    b = Candidate("click", "b", 1000, "", "", "", "identity")
    chosen = eligible([b, a], 2000, Windows())
    assert [t.touch_id for t in chosen] == ["a", "b"]
    assert credits("last_click", chosen, 2000) == [0.0, 1.0]  # the later id wins last click


def test_windows_reject_values_reports_may_not_ask_for():
    with pytest.raises(ValueError, match="click window must be one of"):
        Windows(click_days=3)
    with pytest.raises(ValueError, match="view window must be one of"):
        Windows(view_days=2)


def test_view_window_off_ignores_impressions():
    imp = Candidate("impression", "i", 0, "", "", "", "identity")
    assert eligible([imp], 1000, Windows(view_days=0)) == []
    assert eligible([imp], 0, Windows(view_days=0)) == []  # not even at the conversion's own millisecond
    assert eligible([imp, imp._replace(touch_id="j")], 0, Windows(view_days=0)) == []
    assert eligible([imp], 1000, Windows(view_days=1)) == [imp]


def test_the_level_is_chosen_among_touchpoints_inside_the_windows():
    own = Candidate("click", "own", 0, "", "", "", "click_id")
    other = Candidate("click", "other", 7 * DAY_MS, "", "", "", "email")
    at = own.touch_ms + 10 * DAY_MS
    assert eligible([own, other], at, Windows(click_days=7)) == [other]  # own click outside: falls through
    assert eligible([own, other], at, Windows(click_days=14)) == [own]


def test_an_order_is_kept_by_the_earliest_event_then_the_first_received():
    assert order_keeper([(2000, 1, "a"), (1000, 9, "z")]) == "z"
    assert order_keeper([(1000, 9, "a"), (1000, 1, "z")]) == "z"
    assert order_keeper([(1000, 1, "b"), (1000, 1, "a")]) == "a"
