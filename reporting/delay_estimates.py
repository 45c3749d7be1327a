"""The feed's ``estimate=true``: each row's conversions corrected for those still to come.

Reads only the delay curves the attributor keeps in Redis (attribution/delays.py, one read per
request, in the feed's own pipeline): nothing is computed from raw data on the request path.
"""

from __future__ import annotations

from attribution.delays import Curve, estimate
from clicktrail.timestamps import utc_iso


class Estimator:
    def __init__(self, curves: dict[str, Curve], window_s: int, now_s: float) -> None:
        self.curves = curves
        self.window_s = window_s
        self.now_s = now_s

    @classmethod
    def from_raw(cls, events: tuple[str, ...], raws: list, settings: dict, now_s: float) -> Estimator:
        curves = {e: Curve.from_json(raw) for e, raw in zip(events, raws or ()) if raw}
        return cls(curves, settings["click_window_days"] * 86_400, now_s)

    def cache_key(self) -> tuple:
        """What decides the estimates beyond the feed's own key: the minute and the curves' versions."""
        return (int(self.now_s // 60), tuple(sorted((e, c.computed_ms) for e, c in self.curves.items())))

    def fields(self, event: str, bucket_s: int, size_s: int, observed: float) -> dict:
        """expected_conversions, its interval and the maturity of one row (null without a curve)."""
        youngest, oldest = self.now_s - (bucket_s + size_s), self.now_s - bucket_s
        if youngest >= self.window_s:  # the window has closed on every click of the bucket
            return {"expected_conversions": observed, "expected_low": observed, "expected_high": observed,
                    "maturity": 1.0}
        curve = self.curves.get(event)
        if curve is None:
            return dict.fromkeys(("expected_conversions", "expected_low", "expected_high", "maturity"))
        f, var = curve.maturity(max(youngest, 0.0), max(oldest, 0.0))
        e = estimate(observed, f, var)
        return {"expected_conversions": round(e.expected, 6), "expected_low": round(e.low, 6),
                "expected_high": round(e.high, 6), "maturity": round(e.maturity, 6)}

    def describe(self, events: tuple[str, ...]) -> dict:
        """What the estimates were computed from, per event (null: too few conversions to learn from)."""
        return {"as_of": utc_iso(int(self.now_s * 1000), "seconds"),
                "events": {e: ({"curve_computed_at": utc_iso(c.computed_ms, "seconds"),
                                "conversions": c.conversions, "clicks": c.clicks}
                               if (c := self.curves.get(e)) else None) for e in events}}
