"""GET /v1/reports and POST /v1/costs: every metric on a small data set with hand-computed values."""

from __future__ import annotations

import csv
import io
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from pixel import registry
from tests.attribution_world import HOUR, World, sha


@pytest.fixture
def world(client, api_client, tenant, sink, attributor, r, ch, ch_database):
    return World(client, api_client, tenant, sink, attributor, r, ch, ch_database)


def _day_start(days_ago: int) -> int:
    today = datetime.now(timezone.utc).date()
    d = today - timedelta(days=days_ago)
    return int(datetime(d.year, d.month, d.day, tzinfo=timezone.utc).timestamp())


def _date(ts: int) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).date().isoformat()


def _report(world, **params):
    resp = world.api.get("/v1/reports", query_string=params, headers=world.auth)
    assert resp.status_code == 200, resp.json
    return resp.json


def _costs(world, rows):
    resp = world.api.post("/v1/costs", json={"costs": rows}, headers=world.auth)
    assert resp.status_code == 200, resp.json
    return resp.json


def _ad(campaign: str) -> dict:
    return {"campaign_id": campaign, "adgroup_id": f"{campaign}-g", "ad_id": f"{campaign}-ad"}


@pytest.fixture
def shop(world):
    """Two campaigns on one UTC day D (two days ago): clicks, impressions, spend, conversions."""
    d = _day_start(2)
    world.click("cA1", d + 10 * HOUR, "A")
    world.click("cA2", d + 11 * HOUR, "A")
    for i in range(4):
        world.impression(f"iA{i}", d + 9 * HOUR, "A")
    world.click("cB1", d + 12 * HOUR, "B")
    world.convert("conv1", d + 10 * HOUR + 1800, value=30.0, ttclid="cA1")
    world.convert("conv2", d + 11 * HOUR + 1800, value=10.0, ttclid="cA2")
    world.convert("conv3", d + 13 * HOUR, value=0.0, ttclid="cB1")
    world.convert("organic", d + 13 * HOUR, value=99.0)
    _costs(world, [{"date": _date(d), **_ad("A"), "spend": 20.0},
                   {"date": _date(d), **_ad("B"), "spend": 5.0, "impressions": 1000}])
    world.settle()
    return d


def test_every_metric_by_campaign(world, shop):
    body = _report(world, start=_date(shop), end=_date(shop), dimensions="campaign_id")
    rows = {r["campaign_id"]: r for r in body["rows"]}
    assert rows["A"] == {"campaign_id": "A", "spend": 20.0, "impressions": 4, "clicks": 2, "ctr": 0.5, "cpc": 10.0,
                         "cpm": 5000.0, "conversions": 2.0, "conversion_value": 40.0, "unconverted_conversions": 0.0,
                         "cvr": 1.0, "cpa": 10.0, "roas": 2.0}
    assert rows["B"] == {"campaign_id": "B", "spend": 5.0, "impressions": 1000, "clicks": 1, "ctr": 0.001,
                         "cpc": 5.0, "cpm": 5.0, "conversions": 1.0, "conversion_value": 0.0,
                         "unconverted_conversions": 0.0, "cvr": 1.0, "cpa": 5.0, "roas": 0.0}
    assert set(rows) == {"A", "B"}  # the organic conversion has no campaign to be reported under
    assert body["totals"] == {"spend": 25.0, "impressions": 1004, "clicks": 3, "ctr": round(3 / 1004, 6),
                              "cpc": round(25 / 3, 6), "cpm": round(25000 / 1004, 6), "conversions": 3.0,
                              "conversion_value": 40.0, "unconverted_conversions": 0.0, "cvr": 1.0,
                              "cpa": round(25 / 3, 6), "roas": 1.6}
    assert body["query"]["model"] == "last_click" and body["query"]["click_window"] == 7
    assert body["page"] == {"page": 1, "page_size": 100, "total_rows": 2}


def test_ratios_without_a_denominator_are_null(world, shop):
    body = _report(world, start=_date(shop), end=_date(shop), dimensions="campaign_id", campaign_ids="A",
                   metrics="conversions,cpa,roas,ctr", events="Purchase")
    assert body["rows"] == [{"campaign_id": "A", "conversions": 0.0, "cpa": None, "roas": 0.0, "ctr": 0.5}]


def test_day_hour_and_ad_breakdowns_add_up(world, shop):
    d = shop
    body = _report(world, start=_date(d), end=_date(d), dimensions="stat_time_hour,ad_id",
                   metrics="clicks,conversions,spend", ad_ids="A-ad")
    by_hour = {r["stat_time_hour"]: r for r in body["rows"]}
    day = _date(d)
    assert by_hour[f"{day} 10:00"]["clicks"] == 1 and by_hour[f"{day} 10:00"]["conversions"] == 1.0
    assert by_hour[f"{day} 11:00"]["clicks"] == 1 and by_hour[f"{day} 11:00"]["conversions"] == 1.0
    # Spend is known per day: by hour it is spread evenly over the day's 24 hours.
    assert len(by_hour) == 24 and all(r["spend"] == round(20 / 24, 6) for r in by_hour.values())
    assert body["totals"]["spend"] == 20.0 and body["totals"]["clicks"] == 2


def test_date_basis_conversion_dates_by_the_conversion(world):
    d = _day_start(3)
    world.click("late-night", d + 23 * HOUR + 1800, "N")
    world.convert("next-morning", d + 24 * HOUR + 8 * HOUR, ttclid="late-night")
    world.settle()
    touch = _report(world, start=_date(d), end=_date(d + 86400), dimensions="stat_time_day",
                    metrics="clicks,conversions")
    assert touch["rows"] == [{"stat_time_day": _date(d), "clicks": 1, "conversions": 1.0}]
    by_conv = _report(world, start=_date(d), end=_date(d + 86400), dimensions="stat_time_day",
                      metrics="clicks,conversions", date_basis="conversion")
    assert by_conv["rows"] == [{"stat_time_day": _date(d), "clicks": 1, "conversions": 0.0},
                               {"stat_time_day": _date(d + 86400), "clicks": 0, "conversions": 1.0}]


def test_time_zone_buckets_around_midnight(world):
    """23:50 and 00:10 in Kolkata (UTC+5:30) are one UTC day but two local days."""
    d = _day_start(3)
    before, after = d + 18 * HOUR + 20 * 60, d + 18 * HOUR + 40 * 60
    world.click("k1", before, "K")
    world.click("k2", after, "K")
    world.convert("kc1", before + 60, ttclid="k1")
    world.convert("kc2", after + 60, ttclid="k2")
    world.settle()
    utc = _report(world, start=_date(d), end=_date(d), timezone="UTC", dimensions="stat_time_day",
                  metrics="clicks,conversions")
    assert utc["rows"] == [{"stat_time_day": _date(d), "clicks": 2, "conversions": 2.0}]
    local_day = datetime.fromtimestamp(before, ZoneInfo("Asia/Kolkata")).date()
    kolkata = _report(world, start=local_day.isoformat(), end=(local_day + timedelta(days=1)).isoformat(),
                      timezone="Asia/Kolkata", dimensions="stat_time_day", metrics="clicks,conversions")
    assert kolkata["rows"] == [
        {"stat_time_day": local_day.isoformat(), "clicks": 1, "conversions": 1.0},
        {"stat_time_day": (local_day + timedelta(days=1)).isoformat(), "clicks": 1, "conversions": 1.0}]
    hours = _report(world, start=local_day.isoformat(), end=(local_day + timedelta(days=1)).isoformat(),
                    timezone="Asia/Kolkata", dimensions="stat_time_hour", metrics="clicks")
    assert [r["stat_time_hour"] for r in hours["rows"]] == [f"{local_day} 23:00",
                                                             f"{local_day + timedelta(days=1)} 00:00"]


def _last_dst_start(zone: ZoneInfo) -> date:
    """The latest day before today with 23 hours in ``zone`` (clocks went forward)."""
    day = datetime.now(timezone.utc).date() - timedelta(days=1)
    for _ in range(400):
        start = datetime(day.year, day.month, day.day, tzinfo=zone)
        end = datetime.combine(day + timedelta(days=1), datetime.min.time(), zone)
        if end.timestamp() - start.timestamp() == 23 * 3600:
            return day
        day -= timedelta(days=1)
    raise AssertionError("no daylight-saving start in the last 400 days")


def test_spend_on_a_daylight_saving_day(world, r):
    """A 23-hour day in New York: 23 hourly shares locally; in UTC, split 19/23 and 4/23 over two days."""
    zone = ZoneInfo("America/New_York")
    registry.update_settings(r, world.tenant.advertiser, timezone="America/New_York")
    day = _last_dst_start(zone)
    _costs(world, [{"date": day.isoformat(), **_ad("S"), "spend": 23.0}])
    local = _report(world, start=day.isoformat(), end=day.isoformat(), dimensions="stat_time_hour",
                    metrics="spend")
    assert local["query"]["timezone"] == "America/New_York"
    hours = [r["stat_time_hour"] for r in local["rows"]]
    assert len(hours) == 23 and f"{day} 02:00" not in hours  # 02:00-03:00 never happened that night
    assert all(r["spend"] == 1.0 for r in local["rows"]) and local["totals"]["spend"] == 23.0
    utc = _report(world, start=day.isoformat(), end=(day + timedelta(days=1)).isoformat(), timezone="UTC",
                  dimensions="stat_time_day", metrics="spend")
    # Local midnight is 05:00 UTC (EST); the day ends at 04:00 UTC the next day (EDT).
    assert utc["rows"] == [{"stat_time_day": day.isoformat(), "spend": 19.0},
                           {"stat_time_day": (day + timedelta(days=1)).isoformat(), "spend": 4.0}]


def test_models_and_windows_change_the_credits(world):
    d = _day_start(2)
    world.click("first", d + 8 * HOUR, "F", user={"email": sha("x@example.com")})
    world.click("last", d + 9 * HOUR, "L", user={"email": sha("x@example.com")})
    world.click("old", d - 36 * HOUR, "O")
    world.convert("multi", d + 14 * HOUR, value=100.0, email="x@example.com")
    world.convert("slow", d + 12 * HOUR, value=8.0, ttclid="old")
    world.settle()

    def by_campaign(**params):
        body = _report(world, start=_date(d - 2 * 86400), end=_date(d), dimensions="campaign_id",
                       metrics="conversions,conversion_value", **params)
        return {row["campaign_id"]: (row["conversions"], row["conversion_value"]) for row in body["rows"]}

    assert by_campaign() == {"L": (1.0, 100.0), "O": (1.0, 8.0)}
    assert by_campaign(model="first_click") == {"F": (1.0, 100.0), "O": (1.0, 8.0)}
    assert by_campaign(model="linear") == {"F": (0.5, 50.0), "L": (0.5, 50.0), "O": (1.0, 8.0)}
    # A 1-day click window, recomputed from the stored candidates: the click 36 hours before no longer counts.
    assert by_campaign(click_window=1) == {"L": (1.0, 100.0)}
    assert by_campaign(click_window=1, model="linear") == {"F": (0.5, 50.0), "L": (0.5, 50.0)}


def test_csv_equals_json(world, shop):
    params = dict(start=_date(shop), end=_date(shop), dimensions="campaign_id,ad_id",
                  metrics="spend,clicks,conversions,cpa,ctr", order_by="-conversions")
    body = _report(world, **params)
    resp = world.api.get("/v1/reports", query_string={**params, "format": "csv"}, headers=world.auth)
    assert resp.status_code == 200 and resp.mimetype == "text/csv"
    assert "attachment" in resp.headers["Content-Disposition"]
    table = list(csv.DictReader(io.StringIO(resp.get_data(as_text=True))))
    assert [list(r) for r in table][0] == ["campaign_id", "ad_id", "spend", "clicks", "conversions", "cpa", "ctr"]
    # Amounts in the advertiser's currency (USD) with its two decimals; the rest as in JSON.
    as_json = [{k: "" if v is None else f"{v:.2f}" if k in ("spend", "cpa") else str(v) for k, v in row.items()}
               for row in body["rows"]]
    assert table == as_json and [r["campaign_id"] for r in table] == ["A", "B"]
    assert table[0]["spend"] == "20.00"


def test_paging_and_ordering(world, shop):
    first = _report(world, start=_date(shop), end=_date(shop), dimensions="campaign_id", metrics="spend",
                    order_by="spend", page_size=1)
    second = _report(world, start=_date(shop), end=_date(shop), dimensions="campaign_id", metrics="spend",
                     order_by="spend", page_size=1, page=2)
    assert first["rows"] == [{"campaign_id": "B", "spend": 5.0}]
    assert second["rows"] == [{"campaign_id": "A", "spend": 20.0}]
    assert first["totals"] == second["totals"] == {"spend": 25.0}
    assert first["page"]["total_rows"] == 2


def test_a_reposted_click_counts_once(world, shop):
    world.click("cA1", shop + 10 * HOUR, "A")  # the ad server sends the same click again
    world.settle()
    body = _report(world, start=_date(shop), end=_date(shop), dimensions="campaign_id", metrics="clicks",
                   campaign_ids="A")
    assert body["rows"] == [{"campaign_id": "A", "clicks": 2}]


def test_reposting_a_day_replaces_it(world, shop):
    _costs(world, [{"date": _date(shop), **_ad("A"), "spend": 7.5}])  # B is not in the new posting
    body = _report(world, start=_date(shop), end=_date(shop), dimensions="campaign_id", metrics="spend,impressions")
    assert body["rows"] == [{"campaign_id": "A", "spend": 7.5, "impressions": 4},
                            {"campaign_id": "B", "spend": 0.0, "impressions": 0}]


def test_another_advertiser_sees_nothing(world, shop, r):
    other = registry.create_token(r, "adv-other", ["reports"])
    body = world.api.get("/v1/reports", query_string={"start": _date(shop), "end": _date(shop),
                                                       "dimensions": "campaign_id"},
                         headers={"Authorization": f"Bearer {other}"}).json
    assert body["rows"] == [] and body["totals"]["conversions"] == 0.0 and body["totals"]["spend"] == 0.0
    adserver_only = registry.create_token(r, world.tenant.advertiser, ["adserver"])
    resp = world.api.get("/v1/reports", query_string={"start": _date(shop), "end": _date(shop)},
                         headers={"Authorization": f"Bearer {adserver_only}"})
    assert resp.status_code == 403
    assert world.api.get("/v1/reports", query_string={"start": _date(shop), "end": _date(shop)}).status_code == 401


@pytest.mark.parametrize("params, field, words", [
    ({"dimensions": "city"}, "dimensions", "unknown dimension 'city'"),
    ({"dimensions": "stat_time_day,stat_time_hour"}, "dimensions", "not both"),
    ({"metrics": "likes"}, "metrics", "unknown metric"),
    ({"dimensions": "device_type", "metrics": "clicks"}, "metrics", "cannot be broken down by device_type"),
    ({"start": "2026-02-30"}, "start", "YYYY-MM-DD"),
    ({"start": "2026-11-10", "end": "2026-11-09"}, "end", "not be before start"),
    ({"timezone": "Mars/Olympus"}, "timezone", "IANA"),
    ({"click_window": "3"}, "click_window", "1, 7, 14, 28"),
    ({"view_window": "30"}, "view_window", "0, 1, 7"),
    ({"model": "markov"}, "model", "last_click"),
    ({"date_basis": "order"}, "date_basis", "touch, conversion"),
    ({"order_by": "spend", "metrics": "clicks"}, "order_by", "requested dimensions or metrics"),
    ({"page_size": "5000"}, "page_size", "1 to 1000"),
    ({"format": "xml"}, "format", "json, csv"),
])
def test_bad_parameters_name_the_parameter(world, params, field, words):
    query = {"start": "2026-11-01", "end": "2026-11-02", **params}
    resp = world.api.get("/v1/reports", query_string=query, headers=world.auth)
    assert resp.status_code == 400
    assert resp.json["error"]["field"] == field and words in resp.json["error"]["message"], resp.json


@pytest.mark.parametrize("row, field, words", [
    ({"spend": -1}, "spend", "from 0 to 1,000,000,000,000"),
    ({"spend": "12"}, "spend", "number"),
    ({"spend": 1.7e308}, "spend", "from 0 to 1,000,000,000,000"),
    ({"spend": 1e12 + 1}, "spend", "from 0 to 1,000,000,000,000"),
    ({"spend": None}, "spend", "required"),
    ({"impressions": 2**64}, "impressions", "from 0 to 1,000,000,000,000"),
    ({"impressions": 2**63 - 1}, "impressions", "from 0 to 1,000,000,000,000"),
    ({"impressions": -1}, "impressions", "from 0 to 1,000,000,000,000"),
    ({"impressions": 1e30}, "impressions", "from 0 to 1,000,000,000,000"),
    ({"impressions": "10"}, "impressions", "number"),
    ({"impressions": True}, "impressions", "number"),
    ({"date": "2026/11/01"}, "date", "YYYY-MM-DD"),
    ({"date": "2999-01-01"}, "date", "future"),
    ({"ad_id": ""}, "ad_id", "required"),
    ({"impressions": 1.5}, "impressions", "whole number"),
])
def test_bad_cost_rows_are_refused_with_nothing_stored(world, row, field, words, ch, ch_database):
    good = {"date": _date(_day_start(1)), **_ad("Z"), "spend": 1.0}
    resp = world.api.post("/v1/costs", json={"costs": [good, {**good, "ad_id": "other", **row}]}, headers=world.auth)
    assert resp.status_code == 400 and resp.json["accepted"] == 0
    assert resp.json["rejected"] == [{"index": 1, "field": field, "rule": resp.json["rejected"][0]["rule"]}]
    assert words in resp.json["rejected"][0]["rule"]
    assert ch.execute(f"SELECT count() FROM {ch_database}.costs")[0][0] == 0


@pytest.mark.parametrize("params", [
    {"dimensions": "campaign_id,stat_time_day"},
    {"dimensions": "ad_id", "order_by": "-spend", "page_size": "1"},
    {"dimensions": "adgroup_id,stat_time_day", "order_by": "-clicks", "page": "2", "page_size": "1"},
    {"dimensions": "", "metrics": "spend,clicks,conversions,cpa"},
    {"dimensions": "campaign_id", "campaign_ids": "A", "model": "linear", "date_basis": "conversion"},
    {"dimensions": "device_type,os", "metrics": "conversions,conversion_value"},
])
def test_the_clickhouse_path_equals_the_python_path(world, shop, r, params):
    """Reports ClickHouse can sum, order and page in one query give what the general path gives."""
    from werkzeug.datastructures import MultiDict

    from reporting import report_query
    from reporting.reports import Report

    settings = registry.advertiser_settings(r, world.tenant.advertiser)
    query = report_query.parse(MultiDict({"start": _date(shop), "end": _date(shop), **params}), settings)
    report = Report(world.ch, world.db, world.tenant.advertiser, settings, query)
    assert report._summable_in_clickhouse()
    assert report._build_in_clickhouse() == report._build_in_python()
    assert report.build()["page"]["total_rows"] > 0


@pytest.mark.parametrize("model", ["last_click", "first_click", "linear", "time_decay", "position_based"])
@pytest.mark.parametrize("params", [
    {"dimensions": "campaign_id", "click_window": "1"},
    {"dimensions": "ad_id,stat_time_day", "click_window": "14", "view_window": "0", "date_basis": "conversion"},
    {"dimensions": "stat_time_hour,event", "click_window": "28", "timezone": "Asia/Kolkata", "campaign_ids": "F,L"},
])
def test_recomputed_windows_in_clickhouse_equal_the_rules_in_python(world, r, model, params):
    """Other windows than the advertiser's: the array-function SQL gives what attribution.models gives."""
    from werkzeug.datastructures import MultiDict

    from reporting import report_query
    from reporting.reports import Report

    d = _day_start(2)
    email = {"email": sha("p@example.com")}
    world.click("first", d + 8 * HOUR, "F", user=email)
    world.click("mid", d + 9 * HOUR, "M", user=email)
    world.impression("view", d + 10 * HOUR, "V", user=email)
    world.click("last", d + 11 * HOUR, "L", user=email)
    world.click("old", d - 3 * 86400, "O")
    world.convert("multi", d + 14 * HOUR, value=90.0, email="p@example.com")
    world.convert("slow", d + 12 * HOUR, value=8.0, ttclid="old")
    world.convert("viewed", d + 10 * HOUR + 600, event="AddToCart", value=3.0, email="p@example.com")
    world.convert("dup", d + 14 * HOUR, value=90.0, email="p@example.com", order_id="o-1")
    world.convert("dup2", d + 14 * HOUR + 5, value=90.0, email="p@example.com", order_id="o-1")
    world.settle()
    settings = registry.advertiser_settings(r, world.tenant.advertiser)
    query = report_query.parse(MultiDict({"start": _date(d - 4 * 86400), "end": _date(d), "model": model,
                                          **params}), settings)
    report = Report(world.ch, world.db, world.tenant.advertiser, settings, query)
    in_python = _by_the_rules(report)
    in_sql = report._recomputed_in_clickhouse()
    assert in_python  # the data set gives every case something to count
    assert {k: (round(c, 9), round(v, 9)) for k, (c, v, _unconverted) in in_sql.items()} == \
        {k: (round(c, 9), round(v, 9)) for k, (c, v) in in_python.items()}


def _by_the_rules(report) -> dict[tuple, tuple[float, float]]:
    """The oracle: attribution.models itself, run on the candidates the report's SQL reads."""
    from collections import defaultdict

    from attribution import models
    from reporting import report_query as rq

    q = report.q
    sql, params = report._candidates_sql()
    windows = models.Windows(q.click_window, q.view_window)
    names = ("event", "device_type", "os", "browser", "utm_source", "utm_campaign", "country", "region")
    out: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for conv_ms, value, _currency, *attrs, reason, touches in report.ch.execute(sql, params):
        if reason in ("duplicate_order", "repeat_click"):
            continue
        chosen = models.eligible([models.Candidate(*t) for t in touches if t[0]], conv_ms, windows)
        for touch, credit in zip(chosen, models.credits(q.model, chosen, conv_ms)):
            at_ms = touch.touch_ms if q.date_basis == "touch" else conv_ms
            if not report.lo * 1000 <= at_ms < report.hi * 1000 or not credit:
                continue
            values = {**dict(zip(names, attrs)), "campaign_id": touch.campaign_id, "adgroup_id": touch.adgroup_id,
                      "ad_id": touch.ad_id}
            if any(values[d] not in allowed for d, allowed in q.filters.items()):
                continue
            key = tuple(report._bucket(at_ms) if d in rq.TIME_DIMENSIONS else values[d] for d in q.dimensions)
            out[key][0] += credit
            out[key][1] += credit * value
    return {k: (v[0], v[1]) for k, v in out.items()}


def test_the_largest_cost_row_is_stored(world, ch, ch_database):
    day = _date(_day_start(1))
    _costs(world, [{"date": day, **_ad("Z"), "spend": 1e12, "impressions": 10**12}])
    body = _report(world, start=day, end=day, dimensions="campaign_id", metrics="spend,impressions,cpm")
    assert body["rows"] == [{"campaign_id": "Z", "spend": 1e12, "impressions": 10**12, "cpm": 1000.0}]


def _strict_json(text: str):
    """JSON as the standard has it: NaN and Infinity are not numbers there."""
    import json

    def refuse(name):
        raise AssertionError(f"{name} in a JSON answer")

    return json.loads(text, parse_constant=refuse)


def test_sums_beyond_the_largest_double_are_null_never_infinity(world, ch, ch_database):
    """Rows stored before today's bounds (two costs of 1.7e308, two conversions worth 1.7e308):
    their sums overflow a double, and are reported as null, in JSON and CSV (empty cells)."""
    d = _day_start(2)
    day = _date(d)
    world.click("c1", d + HOUR, "A")
    world.click("c2", d + HOUR, "B")
    world.convert("normal", d + 2 * HOUR, value=10.0, ttclid="c2")
    world.settle()
    minute = datetime.fromtimestamp(d + HOUR, timezone.utc)
    ch.execute(f"INSERT INTO {ch_database}.costs (advertiser_id, day, version, campaign_id, adgroup_id, ad_id, spend, "
               "impressions, has_impressions, currency) VALUES",
               [(world.tenant.advertiser, date.fromisoformat(day), 1, "A", "A-g", f"A-ad{i}", 1.7e308, 0, 0, "USD")
                for i in range(2)])
    ch.execute(f"INSERT INTO {ch_database}.conversion_stats (advertiser_id, model, touch_minute, event, campaign_id, "
               "adgroup_id, ad_id, touch_kind, conversion_minute, click_window_days, view_window_days, conversions, "
               "conversion_value) VALUES",
               [(world.tenant.advertiser, "last_click", minute, "CompletePayment", "A", "A-g", f"A-ad{i}", "click",
                 minute, 7, 1, 1.0, 1.7e308) for i in range(2)])
    for dims in ("campaign_id", "ad_id", "campaign_id,event"):  # joined in Python, in ClickHouse, per event
        params = dict(start=day, end=day, dimensions=dims)
        resp = world.api.get("/v1/reports", query_string=params, headers=world.auth)
        assert resp.status_code == 200
        body = _strict_json(resp.get_data(as_text=True))
        totals = body["totals"]
        assert (totals["spend"], totals["conversion_value"], totals["roas"], totals["cpa"]) == (None,) * 4
        assert totals["clicks"] == 2 and totals["conversions"] == 3.0
        text = world.api.get("/v1/reports", query_string={**params, "format": "csv"},
                             headers=world.auth).get_data(as_text=True)
        assert "inf" not in text.lower() and "nan" not in text.lower()
        if dims == "ad_id":  # each ad's own spend and value fit a double
            assert {r["ad_id"]: (r["spend"], r["conversion_value"]) for r in body["rows"]} == {
                "A-ad0": (1.7e308, 1.7e308), "A-ad1": (1.7e308, 1.7e308), "A-ad": (0.0, 0.0), "B-ad": (0.0, 10.0)}
            continue
        a, b = body["rows"]
        assert (a["campaign_id"], b["campaign_id"]) == ("A", "B")
        assert (a["spend"], a["conversion_value"], a["roas"], a["cpc"], a["cpa"], a["cpm"]) == (None,) * 6
        assert a["conversions"] == 2.0 and a["clicks"] == 1
        assert (b["spend"], b["conversion_value"], b["roas"], b["conversions"]) == (0.0, 10.0, None, 1.0)
        table = list(csv.DictReader(io.StringIO(text)))
        assert [(r["campaign_id"], r["spend"], r["conversion_value"], r["roas"]) for r in table] == [
            ("A", "", "", ""), ("B", "0.00", "10.00", "")]


FORMULAS = ['=HYPERLINK("http://x")', "+SUM(1,2)", "@SUM(1+1)", "-1+cmd|' /C calc'!A0", "-5", "-2.5e3"]


def test_csv_cells_never_start_a_formula(world):
    """Campaign ids an ad server may send are written so that a spreadsheet shows them as text;
    a plain number, negative too, stays a number."""
    d = _day_start(1)
    campaigns = FORMULAS  # tabs and carriage returns are refused in ids; tests/test_spreadsheet.py has them
    for i, campaign in enumerate(campaigns):
        world.click(f"k{i}", d + HOUR, campaign)
    world.settle()
    params = {"start": _date(d), "end": _date(d), "dimensions": "campaign_id", "metrics": "clicks", "format": "csv"}
    text = world.api.get("/v1/reports", query_string=params, headers=world.auth).get_data(as_text=True)
    cells = {row["campaign_id"] for row in csv.DictReader(io.StringIO(text))}
    assert cells == {"'" + c for c in campaigns[:4]} | {"-5", "-2.5e3"}
    for cell in cells:
        assert not cell.startswith(("=", "+", "@", "\t", "\r")) and (not cell.startswith("-") or float(cell) < 0)
    # The JSON answer keeps the ids as they are.
    body = _report(world, **{**params, "format": "json"})
    assert {row["campaign_id"] for row in body["rows"]} == set(campaigns)
