"""Attribution rules: windows, identity precedence, click-beats-view, and the credit models.

Everything here is pure and works on one conversion and its candidate touchpoints, so the
rules can be read and tested apart from storage. See docs/attribution.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from pixel.touchpoints import Touch

DAY_MS = 86_400_000
CLICK_WINDOWS = (1, 7, 14, 28)
VIEW_WINDOWS = (0, 1, 7)
MAX_CLICK_WINDOW_MS = max(CLICK_WINDOWS) * DAY_MS
MAX_VIEW_WINDOW_MS = max(VIEW_WINDOWS) * DAY_MS
MODELS = ("last_click", "first_click", "linear", "time_decay", "position_based")
DEFAULT_MODEL = "last_click"
TIME_DECAY_HALF_LIFE_MS = 7 * DAY_MS
#: How a touchpoint was tied to the conversion, strongest first.
MATCH_LEVELS = ("click_id", "browser_id", "identity")
IDENTITY_MATCHES = ("external_id", "email", "phone")
_LEVELS = {name: i for i, name in enumerate(MATCH_LEVELS)}


# A named tuple, not a dataclass: the attributor builds hundreds of thousands per second.
class Candidate(NamedTuple):
    kind: str  # click or impression
    touch_id: str
    touch_ms: int
    campaign_id: str
    adgroup_id: str
    ad_id: str
    matched_by: str  # click_id, browser_id, external_id, email or phone

    @property
    def level(self) -> int:
        """0 for the strongest identity (the conversion's own click id), 2 for cross-device."""
        return _LEVELS.get(self.matched_by, 2)

    @property
    def order_key(self) -> tuple[int, str]:
        # Tie rule: touchpoints at the same millisecond are ordered by touch id, so every model
        # and every re-run picks the same one.
        return (self.touch_ms, self.touch_id)


def candidate(touch: Touch, matched_by: str) -> Candidate:
    """A touchpoint as the attribution rules see it, with how it was tied to a conversion."""
    return Candidate._make((*touch[1:7], matched_by))  # kind, touch_id, touch_ms .. ad_id


@dataclass(frozen=True)
class Windows:
    click_days: int = 7
    view_days: int = 1

    def __post_init__(self) -> None:
        if self.click_days not in CLICK_WINDOWS:
            raise ValueError(f"click window must be one of {CLICK_WINDOWS} days")
        if self.view_days not in VIEW_WINDOWS:
            raise ValueError(f"view window must be one of {VIEW_WINDOWS} days")

    def contains(self, touch: Candidate, conversion_ms: int) -> bool:
        """Inside the window: not after the conversion, and at most the window before it (edges included).

        A view window of 0 is off: no impression counts, not even one at the conversion's own
        millisecond (an age of 0 would fit a zero-length window).
        """
        age = conversion_ms - touch.touch_ms
        if touch.kind == "click":
            return 0 <= age <= self.click_days * DAY_MS
        return self.view_days > 0 and 0 <= age <= self.view_days * DAY_MS


def in_longest_windows(touch: Candidate, conversion_ms: int) -> bool:
    """Candidates are kept for the longest windows any report may ask for."""
    age = conversion_ms - touch.touch_ms
    return 0 <= age <= (MAX_CLICK_WINDOW_MS if touch.kind == "click" else MAX_VIEW_WINDOW_MS)


def eligible(candidates: list[Candidate], conversion_ms: int, windows: Windows) -> list[Candidate]:
    """The touchpoints that share credit, in time order.

    1. Only touchpoints inside the windows count (a view window of 0: no impression).
    2. Among those, the strongest identity level with any touchpoint wins: the conversion's own click id,
       then click ids seen earlier on the same browser, then shared hashed identifiers.
    3. Within that level, a click beats an impression: impressions count only when no click does.

    So a conversion whose own click is outside the click window falls through to a weaker match
    inside it (another device's click), and the same candidates give another answer under other
    windows; reports recomputing other windows apply these same steps.
    """
    if len(candidates) <= 1:  # most conversions: no levels, kinds or ties to settle
        return [candidates[0]] if candidates and windows.contains(candidates[0], conversion_ms) else []
    inside = [t for t in candidates if windows.contains(t, conversion_ms)]
    if not inside:
        return []
    best = min(t.level for t in inside)
    level = [t for t in inside if t.level == best]
    clicks = [t for t in level if t.kind == "click"]
    chosen = clicks or [t for t in level if t.kind != "click"]
    # One touchpoint may be matched twice (by click id and by email): count it once.
    unique = {t.touch_id: t for t in sorted(chosen, key=lambda t: (t.order_key, t.level))}
    return sorted(unique.values(), key=lambda t: t.order_key)


def order_keeper(seen: list[tuple[int, int, str]]) -> str:
    """Of the conversions sharing an order id, as (event ms, first received ms, event id), the one
    that keeps the credit: the earliest event time, then the first received, then the event id.

    It depends on the conversions only, never on the order they arrived or were attributed in,
    so a replay of the same events in any order gives the same answer.
    """
    return min(seen)[2]


def _exact(weights: list[float]) -> list[float]:
    """Normalise weights so the credits sum to exactly 1.0 (the remainder goes to the largest)."""
    total = math.fsum(weights)
    credits = [w / total for w in weights]
    biggest = max(range(len(credits)), key=lambda i: (credits[i], i))
    credits[biggest] = 1.0 - math.fsum(c for i, c in enumerate(credits) if i != biggest)
    return credits


def credits(model: str, touches: list[Candidate], conversion_ms: int) -> list[float]:
    """Credits for time-ordered ``touches``, summing to exactly 1 (one touchpoint: all of it)."""
    n = len(touches)
    if n == 0:
        return []
    if n == 1:
        return [1.0]
    if model == "last_click":
        return [0.0] * (n - 1) + [1.0]
    if model == "first_click":
        return [1.0] + [0.0] * (n - 1)
    if model == "linear":
        return _exact([1.0] * n)
    if model == "time_decay":
        return _exact([2.0 ** (-(conversion_ms - t.touch_ms) / TIME_DECAY_HALF_LIFE_MS) for t in touches])
    if model == "position_based":
        if n == 2:
            return [0.5, 0.5]
        middle = 0.2 / (n - 2)
        return _exact([0.4] + [middle] * (n - 2) + [0.4])
    raise ValueError(f"unknown model {model!r}; models are {', '.join(MODELS)}")
