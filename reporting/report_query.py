"""The parameters of ``GET /v1/reports``, checked: each refusal names the parameter and the rule."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, available_timezones

from attribution import models
from clicktrail.errors import BadRequest
from reporting.params import choice, day, listed, whole

TIME_DIMENSIONS = ("stat_time_day", "stat_time_hour")
AD_DIMENSIONS = ("campaign_id", "adgroup_id", "ad_id")
#: Known only for conversions (from the converting event), not for clicks, views or spend.
#: country and region: where the converting event's client IP is (pixel/geo.py).
CONVERSION_DIMENSIONS = ("device_type", "os", "browser", "utm_source", "utm_campaign", "country", "region")
DIMENSIONS = TIME_DIMENSIONS + AD_DIMENSIONS + ("event",) + CONVERSION_DIMENSIONS
#: conversion_value and the money ratios are in the advertiser's currency; unconverted_conversions
#: are conversions whose value is left out of them for want of an exchange rate (reporting/money.py).
METRICS = ("spend", "impressions", "clicks", "ctr", "cpc", "cpm", "conversions", "conversion_value",
           "unconverted_conversions", "cvr", "cpa", "roas")
#: Metrics that need clicks, impressions or spend, which have no device, browser, UTM or place.
TOUCH_METRICS = ("spend", "impressions", "clicks", "ctr", "cpc", "cpm", "cvr", "cpa", "roas")
DATE_BASES = ("touch", "conversion")
FORMATS = ("json", "csv")
MAX_DAYS = 366
MAX_PAGE_SIZE = 1000
MAX_FILTER_VALUES = 1000


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


@dataclass(frozen=True)
class ReportQuery:
    start: date
    end: date
    timezone: str
    dimensions: tuple[str, ...]
    metrics: tuple[str, ...]
    model: str
    click_window: int
    view_window: int
    custom_windows: bool  # windows other than the advertiser's: recomputed from candidates
    date_basis: str
    filters: dict  # dimension -> tuple of values
    order_by: tuple[str, bool] | None  # (name, descending)
    page: int
    page_size: int
    format: str
    include_bots: bool = False  # bots' clicks and conversions counted too (pixel.bots)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def bounds(self) -> tuple[int, int]:
        """The report's instants as unix seconds: local midnight of start, local midnight after end.

        Never before 1970 (nothing is stored earlier, and ClickHouse's DateTime starts there),
        which 1970-01-01 east of UTC would be.
        """
        lo = datetime.combine(self.start, time(0), self.zone)
        hi = datetime.combine(self.end + timedelta(days=1), time(0), self.zone)
        return max(0, int(lo.timestamp())), max(0, int(hi.timestamp()))

    @property
    def needs_touches(self) -> bool:
        return any(m in TOUCH_METRICS for m in self.metrics)

    def echo(self, currency: str) -> dict:
        return {"start": self.start.isoformat(), "end": self.end.isoformat(), "timezone": self.timezone,
                "dimensions": list(self.dimensions), "metrics": list(self.metrics), "model": self.model,
                "click_window": self.click_window, "view_window": self.view_window, "date_basis": self.date_basis,
                "include_bots": self.include_bots, "currency": currency}


def _dimensions(args) -> tuple[str, ...]:
    dims = tuple(dict.fromkeys(listed(args, "dimensions")))
    for d in dims:
        if d not in DIMENSIONS:
            raise BadRequest(f"unknown dimension {d!r}; use any of {', '.join(DIMENSIONS)}", field="dimensions",
                             code="invalid_field")
    if all(t in dims for t in TIME_DIMENSIONS):
        raise BadRequest("use stat_time_day or stat_time_hour, not both", field="dimensions", code="invalid_field")
    return dims


def _metrics(args, dims: tuple[str, ...]) -> tuple[str, ...]:
    metrics = tuple(dict.fromkeys(listed(args, "metrics"))) or METRICS
    for m in metrics:
        if m not in METRICS:
            raise BadRequest(f"unknown metric {m!r}; use any of {', '.join(METRICS)}", field="metrics",
                             code="invalid_field")
    by_conversion = [d for d in dims if d in CONVERSION_DIMENSIONS]
    needing = [m for m in metrics if m in TOUCH_METRICS]
    if by_conversion and needing:
        raise BadRequest(f"{', '.join(needing)} cannot be broken down by {', '.join(by_conversion)}: that is known "
                         "only for conversions, not for clicks, impressions or spend", field="metrics",
                         code="invalid_combination")
    return metrics


def _filters(args) -> dict:
    filters = {}
    for name, dim in (("campaign_ids", "campaign_id"), ("adgroup_ids", "adgroup_id"), ("ad_ids", "ad_id"),
                      ("events", "event")):
        values = tuple(dict.fromkeys(listed(args, name)))
        if len(values) > MAX_FILTER_VALUES:
            raise BadRequest(f"at most {MAX_FILTER_VALUES} values", field=name, code="invalid_field")
        if values:
            filters[dim] = values
    return filters


def _order_by(args, dims: tuple[str, ...], metrics: tuple[str, ...]) -> tuple[str, bool] | None:
    text = args.get("order_by", "")
    if not text:
        return None
    name = text.lstrip("-")
    if name not in dims and name not in metrics:
        raise BadRequest("must be one of the requested dimensions or metrics, with '-' first for descending",
                         field="order_by", code="invalid_field")
    return name, text.startswith("-")


def parse(args, settings: dict) -> ReportQuery:
    start, end = day(args, "start"), day(args, "end")
    if end < start:
        raise BadRequest("must not be before start", field="end", code="invalid_field")
    if (end - start).days >= MAX_DAYS:
        raise BadRequest(f"the report may span at most {MAX_DAYS} days", field="end", code="invalid_field")
    tz = args.get("timezone") or settings["timezone"]
    if tz not in _zones():
        raise BadRequest("must be an IANA time zone name, e.g. Europe/Berlin", field="timezone",
                         code="invalid_field")
    dims = _dimensions(args)
    metrics = _metrics(args, dims)
    click = choice(args, "click_window", models.CLICK_WINDOWS, settings["click_window_days"])
    view = choice(args, "view_window", models.VIEW_WINDOWS, settings["view_window_days"])
    return ReportQuery(
        start=start, end=end, timezone=tz, dimensions=dims, metrics=metrics,
        model=choice(args, "model", models.MODELS, settings.get("model", models.DEFAULT_MODEL)),
        click_window=click, view_window=view,
        custom_windows=(click, view) != (settings["click_window_days"], settings["view_window_days"]),
        date_basis=choice(args, "date_basis", DATE_BASES, "touch"), filters=_filters(args),
        order_by=_order_by(args, dims, metrics), page=whole(args, "page", 1, 1, 1_000_000),
        page_size=whole(args, "page_size", 100, 1, MAX_PAGE_SIZE), format=choice(args, "format", FORMATS, "json"),
        include_bots=choice(args, "include_bots", ("true", "false"), "false") == "true",
    )
