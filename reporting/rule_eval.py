"""An alert rule's metric over one window, and whether its condition holds.

``event_count`` counts unique events of one name *received* in the window (``received_ms``, not
the time the page claims), test events left out: what a pixel delivered, the thing a "pixel went
silent" rule watches. The attributed metrics are ``/v1/reports``' own sums (reporting/reports.py's
Report) over the window's instants instead of whole days, by *conversion* time: a window ending now
counted by click time would always look short of the conversions still to come, and every
"fall" rule would fire on it. Spend, known per day, is spread evenly over the day's hours (as in a
report by hour) and an hour counts when it starts inside the window.

Undefined values (docs/operations.md, "Alert rules"): a ratio without a denominator has no value,
and a condition on no value is not true, so a rule never fires on one and a firing rule resolves
when its metric becomes undefined. One exception, because it is what a CPA alert is for: spend
with no conversion at all is a CPA above every threshold (``infinite``), shown as value null with
the note "spend without conversions".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

from werkzeug.datastructures import MultiDict

from reporting import report_query as rq
from reporting import rules
from reporting.reports import Report

SPEND_WITHOUT_CONVERSIONS = "spend without conversions"
NO_DENOMINATOR = {"cpa": "no spend and no conversions", "roas": "no spend"}


@dataclass(frozen=True)
class Measure:
    value: float | None  # math.inf: see the module's note on CPA
    note: str | None = None

    @property
    def shown(self) -> float | None:
        """The value as JSON can hold it (null for undefined or infinite)."""
        return self.value if self.value is not None and math.isfinite(self.value) else None


class _WindowReport(Report):
    """A report over the instants [lo, hi) instead of whole days of a time zone."""

    def __init__(self, ch, db, advertiser_id, settings, query, lo: int, hi: int) -> None:
        super().__init__(ch, db, advertiser_id, settings, query)
        self.lo, self.hi = lo, hi

    def _day_parts(self, day: date, zone) -> list[tuple[int, float]]:
        # Always by hour: whole days would put a day's spend in a 1 h window or none of it.
        start = int(datetime(day.year, day.month, day.day, tzinfo=zone).timestamp())
        end = int(datetime.combine(date.fromordinal(day.toordinal() + 1), datetime.min.time(), zone).timestamp())
        hours = list(range(start, end, 3600))
        return [(h, 1.0 / len(hours)) for h in hours]


def measure(ch, db: str, rule: dict, settings: dict, lo: int, hi: int) -> Measure:
    """The rule's metric over [lo, hi) (unix seconds)."""
    if rule["metric"] == rules.EVENT_COUNT:
        return Measure(float(_event_count(ch, db, rule, lo, hi)))
    return _attributed(ch, db, rule, settings, lo, hi)


def _event_count(ch, db: str, rule: dict, lo: int, hi: int) -> int:
    pixel = rule["scope"].get("pixel_id")
    ((count,),) = ch.execute(
        f"""SELECT uniqExact(event_id) FROM {db}.events
            WHERE advertiser_id = %(adv)s {'AND pixel_id = %(pixel)s' if pixel else ''} AND event = %(event)s
              AND received_ms >= %(lo)s AND received_ms < %(hi)s AND test_event_code = ''""",
        {"adv": rule["advertiser_id"], "pixel": pixel, "event": rule["event"], "lo": lo * 1000, "hi": hi * 1000})
    return count


def _attributed(ch, db: str, rule: dict, settings: dict, lo: int, hi: int) -> Measure:
    metric = rule["metric"]
    zone = ZoneInfo(settings["timezone"])
    args = MultiDict({"start": datetime.fromtimestamp(lo, zone).date().isoformat(),
                      "end": datetime.fromtimestamp(hi - 1, zone).date().isoformat(),
                      "metrics": f"{metric},spend,conversions", "date_basis": "conversion"})
    for level, value in rule["scope"].items():  # campaign_id -> campaign_ids, ...
        args[level + "s"] = value
    if rule.get("event"):
        args["events"] = rule["event"]
    query = rq.parse(args, settings)
    totals = _WindowReport(ch, db, rule["advertiser_id"], settings, query, lo, hi).build()["totals"]
    value = totals[metric]
    if value is not None:
        return Measure(float(value))
    if metric == "cpa" and totals["spend"] and not totals["conversions"]:
        return Measure(math.inf, SPEND_WITHOUT_CONVERSIONS)
    return Measure(None, NO_DENOMINATOR.get(metric, "no value"))


def holds(condition: dict, now: Measure, before: Measure | None) -> bool:
    """Whether the condition is true of ``now`` (and the window ``before`` it, for a change)."""
    value = now.value
    if value is None:
        return False
    if "op" in condition:
        threshold = condition["threshold"]
        return {">": value > threshold, ">=": value >= threshold, "<": value < threshold,
                "<=": value <= threshold, "==": value == threshold}[condition["op"]]
    prior = before.value if before else None
    if prior is None:
        return False
    change = _change_percent(prior, value)
    if condition["change"] == "rise":
        return change >= condition["percent"]
    return -change >= condition["percent"]


def _change_percent(prior: float, value: float) -> float:
    """The change from ``prior`` to ``value`` in % of ``prior``; from 0 (or to infinity) any rise is
    infinite and there is no fall; from infinity to a number is a fall of 100 %."""
    if prior == value:
        return 0.0
    if prior == 0 or value == math.inf:
        return math.inf
    if prior == math.inf:
        return -100.0
    return (value - prior) / prior * 100.0
