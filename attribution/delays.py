"""How long conversions take to arrive after the credited click, per advertiser and event.

The optimizer feed (``&estimate=true``) turns a young bucket's observed conversions into the count
expected once its click window has closed: ``expected = observed / F(age)``, where F is the share
of conversions that arrive within ``age`` of their click (the delay's distribution restricted to the
click window).

Estimator. Recent clicks are still open: a click 2 hours old has not yet had the chance to convert
at a 3-hour delay, so counting delays of conversions alone under-weights long delays (censoring).
Each click is a subject observed from its time to now; a click may bring several conversions
(counting "every") and fractional credits (multi-touch models), so the estimate is the Nelson–Aalen
estimator of the *mean cumulative function* of recurrent events (Nelson 1988; Lawless & Nadeau
1995), the counting-process form of Kaplan–Meier: the conversions per click by delay t,

    M(t) = sum over conversions with delay d < t of credit / n(d),    n(d) = clicks at least d old,

and ``F(t) = M(t) / M(W)`` for the click window W. With one conversion at most per click and rare
conversions, 1 - KM of the first conversion and M/M(W) coincide; unlike KM, M needs no "first
conversion" per click, which the kept sums cannot give. Its variance (Poisson counts per delay,
independent increments) is ``sum credit / n(d)^2``, which gives F's variance by the delta method.

Inputs are kept sums only: net credits of the current revisions (``sum(sign * credit)``) by delay,
and clicks by age from ``touch_stats``, both over the last ``LOOKBACK_DAYS``. Delays are grouped
coarser as they grow (1 minute under an hour, 5 under a day, 30 under a week, then 60), which
bounds the rows read; the at-risk count of a group is taken at its middle.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from dataclasses import dataclass

import orjson
import redis

from clicktrail import keys
from pixel.registry import settings_of

log = logging.getLogger("clicktrail.delays")

#: Days of clicks and of their conversions the estimate learns from.
LOOKBACK_DAYS = 28
#: Fewer conversions than this in the lookback: no estimate (the feed's fields are null).
MIN_CONVERSIONS = 20
#: Seconds between refreshes (the attributor recomputes every curve at most this often).
REFRESH_S = 60
#: A curve not refreshed for this long is dropped (an attributor that stopped leaves no stale curve).
KEEP_S = 86_400
Z95 = 1.959964


def _grid() -> list[int]:
    """Ages (seconds) at which F is kept: fine where it moves fast, coarse in the tail."""
    ages = list(range(0, 3600, 300)) + list(range(3600, 6 * 3600, 900))
    ages += list(range(6 * 3600, 48 * 3600, 3600)) + list(range(48 * 3600, 28 * 86_400 + 1, 6 * 3600))
    return ages


GRID_S = _grid()


def delay_group_sql(minutes: str) -> str:
    """ClickHouse expression: the start (minutes) of the delay group ``minutes`` falls in."""
    return (f"multiIf({minutes} < 60, {minutes}, {minutes} < 1440, intDiv({minutes}, 5) * 5, "
            f"{minutes} < 10080, intDiv({minutes}, 30) * 30, intDiv({minutes}, 60) * 60)")


def group_width_min(start_min: int) -> int:
    return 1 if start_min < 60 else 5 if start_min < 1440 else 30 if start_min < 10080 else 60


@dataclass(frozen=True)
class Curve:
    """F at ``GRID_S`` ages (up to the window), its variance, and what it was learnt from."""

    window_s: int
    cdf: tuple[float, ...]
    var: tuple[float, ...]
    conversions: float
    clicks: int
    computed_ms: int
    model: str

    def to_json(self) -> bytes:
        return orjson.dumps({"window_s": self.window_s, "cdf": self.cdf, "var": self.var,
                             "conversions": self.conversions, "clicks": self.clicks,
                             "computed_ms": self.computed_ms, "model": self.model})

    @classmethod
    def from_json(cls, raw: bytes | str) -> Curve:
        d = orjson.loads(raw)
        return cls(d["window_s"], tuple(d["cdf"]), tuple(d["var"]), d["conversions"], d["clicks"],
                   d["computed_ms"], d["model"])

    def at(self, age_s: float) -> tuple[float, float]:
        """(F, variance of F) at an age, linear between grid ages; 1 and 0 from the window on."""
        if age_s >= self.window_s:
            return 1.0, 0.0
        age_s = max(age_s, 0.0)
        i = bisect.bisect_right(GRID_S, age_s) - 1
        if i + 1 >= len(self.cdf):
            return self.cdf[-1], self.var[-1]
        span = GRID_S[i + 1] - GRID_S[i]
        w = (age_s - GRID_S[i]) / span
        return (self.cdf[i] + w * (self.cdf[i + 1] - self.cdf[i]),
                self.var[i] + w * (self.var[i + 1] - self.var[i]))

    def maturity(self, start_age_s: float, end_age_s: float) -> tuple[float, float]:
        """Mean (F, variance) over a bucket whose clicks are between these ages (clicks spread evenly)."""
        points = [start_age_s + (end_age_s - start_age_s) * (k + 0.5) / 12 for k in range(12)]
        values = [self.at(a) for a in points]
        return sum(f for f, _ in values) / 12, sum(v for _, v in values) / 12


def build_curve(delays: dict[int, float], clicks_by_age: dict[int, int], window_s: int, model: str = "",
                now_ms: int | None = None) -> Curve | None:
    """The curve from net credits by delay group (start minute -> credits) and clicks by age (minute -> count).

    None when too few conversions (or no click old enough to have had them) to say anything.
    """
    window_min = window_s // 60
    # n(d): clicks at least d minutes old, as a running sum from the oldest age down.
    oldest = max(clicks_by_age, default=-1)
    at_least = [0] * (oldest + 2)
    for age in range(oldest, -1, -1):
        at_least[age] = at_least[age + 1] + max(clicks_by_age.get(age, 0), 0)

    def at_risk(minute: float) -> int:
        m = int(minute)
        return at_least[m] if 0 <= m < len(at_least) else 0

    steps: list[tuple[float, float, float]] = []  # (delay s, increment of M, of its variance)
    total = 0.0
    for start, credit in sorted(delays.items()):
        if credit <= 0 or start >= window_min:
            continue  # nothing net (collapsed revisions), or beyond what the window may credit
        mid = start + group_width_min(start) / 2
        n = at_risk(mid) or at_risk(start)
        if n <= 0:
            continue  # no click that old is counted (erased or outside the lookback)
        steps.append((mid * 60, credit / n, credit / n / n))
        total += credit
    if total < MIN_CONVERSIONS or not steps:
        return None
    m_total = sum(s[1] for s in steps)
    v_total = sum(s[2] for s in steps)
    if m_total <= 0:
        return None
    cdf, var = [], []
    m_before = v_before = 0.0
    k = 0
    for age in (a for a in GRID_S if a < window_s):
        while k < len(steps) and steps[k][0] <= age:
            m_before += steps[k][1]
            v_before += steps[k][2]
            k += 1
        a, b = m_before, m_total - m_before  # independent increments: before and after this age
        cdf.append(min(a / m_total, 1.0))
        var.append((b * b * v_before + a * a * (v_total - v_before)) / m_total ** 4)
    clicks = at_least[0] if at_least else 0
    return Curve(window_s, tuple(cdf), tuple(var), round(total, 6), clicks,
                 now_ms if now_ms is not None else time.time_ns() // 1_000_000, model)


@dataclass(frozen=True)
class Estimate:
    expected: float
    low: float
    high: float
    maturity: float


def estimate(observed: float, maturity: float, maturity_var: float) -> Estimate:
    """Expected count once the window closes, with a 95 % interval.

    Given maturity F, the conversions still to come are negative-binomial (each of the bucket's
    final conversions has arrived with probability F): mean ``observed (1 - F) / F``, variance
    ``(observed + 1)(1 - F) / F^2`` (the +1 keeps a width when nothing arrived yet). F's own
    uncertainty adds ``(observed / F^2)^2 var(F)`` (delta method). The low end never goes under
    what has already arrived.
    """
    observed = max(observed, 0.0)
    f = min(max(maturity, 1e-3), 1.0)  # a bucket seconds old: at most 1000 times what arrived
    expected = observed / f
    sd = math.sqrt((observed + 1) * (1 - f) / (f * f) + (observed / (f * f)) ** 2 * max(maturity_var, 0.0))
    return Estimate(expected, max(observed, expected - Z95 * sd), expected + Z95 * sd, f)


class DelayCurves:
    """Refreshes every advertiser's curves from ClickHouse into Redis (run by the attributor)."""

    def __init__(self, r: redis.Redis, ch, database: str) -> None:
        self.redis, self.ch, self.db = r, ch, database

    def refresh(self, now_s: int | None = None) -> int:
        """Recompute and store every curve; return how many were stored."""
        now_s = int(time.time()) if now_s is None else now_s
        since = now_s - LOOKBACK_DAYS * 86_400
        settings = {a: settings_of(orjson.loads(raw))
                    for a, raw in ((k.decode() if isinstance(k, bytes) else k, v)
                                   for k, v in self.redis.hgetall(keys.ADVERTISERS).items())}
        delays = self._delays(since, now_s, tuple(sorted({s["model"] for s in settings.values()})) or ("",))
        clicks = self._clicks(since, now_s)
        curves: dict[str, dict[str, bytes]] = {}
        for (adv, model, event), by_delay in delays.items():
            s = settings.get(adv)
            if s is None or s["model"] != model:
                continue
            curve = build_curve(by_delay, clicks.get(adv, {}), s["click_window_days"] * 86_400, model,
                                now_s * 1000)
            if curve is not None:
                curves.setdefault(adv, {})[event] = curve.to_json()
        pipe = self.redis.pipeline(transaction=True)
        for adv in settings.keys() - curves.keys():
            pipe.delete(keys.delay_curves(adv))  # too few conversions left: no stale curve stays
        for adv, by_event in curves.items():
            key = keys.delay_curves(adv)
            pipe.delete(key)
            pipe.hset(key, mapping=by_event)
            pipe.expire(key, KEEP_S)
        pipe.execute()
        return sum(len(v) for v in curves.values())

    def _delays(self, since: int, now_s: int, models: tuple[str, ...]) -> dict[tuple, dict[int, float]]:
        minutes = "intDiv(conversion_ms - touch_ms, 60000)"
        rows = self.ch.execute(
            f"""
            SELECT advertiser_id, model, event, {delay_group_sql(minutes)} AS d, sum(sign * credit) AS c
            FROM {self.db}.credits
            WHERE touch_kind = 'click' AND touch_time >= toDateTime(%(since)s) AND touch_time <= toDateTime(%(now)s)
              AND model IN %(models)s AND conversion_ms >= touch_ms AND credit != 0
            GROUP BY advertiser_id, model, event, d""",
            {"since": since, "now": now_s, "models": models})  # only the models feeds use
        out: dict[tuple, dict[int, float]] = {}
        for adv, model, event, d, c in rows:
            out.setdefault((adv, model, event), {})[int(d)] = c
        return out

    def _clicks(self, since: int, now_s: int) -> dict[str, dict[int, int]]:
        rows = self.ch.execute(
            f"""
            SELECT advertiser_id, intDiv(%(now)s - toUInt32(touch_minute), 60) AS age, sum(touches)
            FROM {self.db}.touch_stats
            WHERE kind = 'click' AND touch_minute >= toDateTime(%(since)s) AND touch_minute <= toDateTime(%(now)s)
            GROUP BY advertiser_id, age""",
            {"since": since, "now": now_s})
        out: dict[str, dict[int, int]] = {}
        for adv, age, n in rows:
            n = n - 2 ** 64 if n >= 2 ** 63 else n  # erasures subtract as 2^64 complements
            out.setdefault(adv, {})[int(age)] = n
        return out


def read_curves(r: redis.Redis, advertiser_id: str, events: tuple[str, ...]) -> dict[str, Curve]:
    """The kept curves of an advertiser's events (those with one)."""
    raws = r.hmget(keys.delay_curves(advertiser_id), list(events))
    return {e: Curve.from_json(raw) for e, raw in zip(events, raws) if raw}
