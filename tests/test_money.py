"""Conversions in any currency, valued in the advertiser's: exchange rates, reports, the feed, CSV.

Everything goes through the real paths: events through the Events API, clicks and costs and rates
through the API, the sink and the attributor in process, Redis and ClickHouse real.
"""

from __future__ import annotations

import csv
import io
import math
from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clicktrail.errors import BadRequest
from pixel import registry
from pixel.currencies import minor_unit, money_text
from reporting.exchange_rates import MAX_RATE, parse_rates
from tests.attribution_world import DAY, HOUR, World


@pytest.fixture
def world(client, api_client, tenant, sink, attributor, r, ch, ch_database):
    w = World(client, api_client, tenant, sink, attributor, r, ch, ch_database)
    w.optimizer = {"Authorization": f"Bearer {registry.create_token(r, tenant.advertiser, ['optimizer'])}"}
    w.reader = {"Authorization": f"Bearer {registry.create_token(r, tenant.advertiser, ['reports'])}"}
    return w


def _day_start(days_ago: int) -> int:
    d = datetime.now(timezone.utc).date() - timedelta(days=days_ago)
    return int(datetime(d.year, d.month, d.day, tzinfo=timezone.utc).timestamp())


def _date(ts: int) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).date().isoformat()


def _rates(world, rows, auth=None):
    return world.api.post("/v1/exchange-rates", json={"rates": rows}, headers=auth or world.auth)


def _report(world, **params):
    resp = world.api.get("/v1/reports", query_string={"events": "CompletePayment", **params}, headers=world.auth)
    assert resp.status_code == 200, resp.json
    return resp.json


def _feed(world):
    resp = world.api.get("/v1/optimizer/conversions", query_string={"event": "CompletePayment", "level": "ad"},
                         headers=world.optimizer)
    assert resp.status_code == 200, resp.json
    return resp.json


def _diagnostics(world):
    resp = world.api.get(f"/v1/pixels/{world.tenant.pixel_id}/diagnostics", headers=world.reader)
    assert resp.status_code == 200, resp.json
    return resp.json


def test_a_conversion_is_valued_with_the_latest_rate_on_or_before_its_day(world):
    """EUR rates posted for D-3 (1.1) and D-1 (1.2), and one for tomorrow that no conversion has reached."""
    d = _day_start(3)
    world.click("k1", d + 1 * HOUR, "A")
    world.click("k2", d + 2 * DAY + HOUR, "B")
    world.click("k3", d + 3 * DAY - 2 * HOUR, "C")  # D-1 is the last day before today
    world.convert("eur-before", d + 2 * HOUR, value=100.0, currency="EUR", ttclid="k1")  # rate of D-3
    world.convert("eur-after", d + 2 * DAY + 2 * HOUR, value=100.0, currency="EUR", ttclid="k2")  # rate of D-1
    world.convert("usd", d + 3 * DAY - HOUR, value=7.0, currency="USD", ttclid="k3")
    world.settle()
    resp = _rates(world, [{"date": _date(d), "currency": "EUR", "rate": 1.1},
                          {"date": _date(d + 2 * DAY), "currency": "EUR", "rate": 1.2},
                          {"date": _date(d + 5 * DAY), "currency": "EUR", "rate": 9.0}])
    assert resp.status_code == 200 and resp.json == {"accepted": 3, "currency": "USD"}
    week = {"start": _date(d), "end": _date(d + 3 * DAY)}
    for dims in ("campaign_id", "ad_id", "campaign_id,stat_time_day"):  # joined in Python, in ClickHouse
        body = _report(world, dimensions=dims, **week)
        by_campaign = {}
        for row in body["rows"]:
            campaign = row["campaign_id"] if "campaign_id" in row else row["ad_id"][0]  # ads are "<campaign>-ad"
            by_campaign[campaign] = by_campaign.get(campaign, 0) + row["conversion_value"]
        assert by_campaign == {"A": 110.0, "B": 120.0, "C": 7.0}, dims
        assert body["totals"]["conversion_value"] == 237.0 and body["totals"]["unconverted_conversions"] == 0.0
        assert body["query"]["currency"] == "USD"
    # Other windows than the advertiser's recompute credits from the candidates, and value them alike.
    recomputed = _report(world, dimensions="campaign_id", click_window="28", **week)
    assert {r["campaign_id"]: r["conversion_value"] for r in recomputed["rows"]} == {"A": 110.0, "B": 120.0, "C": 7.0}
    feed = _feed(world)
    assert feed["currency"] == "USD"
    assert {r["ad_id"]: (r["conversion_value"], r["unconverted_conversions"]) for r in feed["rows"]} == {
        "A-ad": (110.0, 0.0), "B-ad": (120.0, 0.0), "C-ad": (7.0, 0.0)}


def _eur_and_usd(world, d: int, eur: float, usd: float) -> None:
    """A conversion in EUR credited to ad A, one in USD (the advertiser's currency) to ad B."""
    world.click("k1", d + HOUR, "A")
    world.click("k2", d + HOUR, "B")
    world.convert("eur", d + 2 * HOUR, value=eur, currency="EUR", ttclid="k1")
    world.convert("usd", d + 2 * HOUR, value=usd, currency="USD", ttclid="k2")
    world.settle()


def test_without_a_rate_a_conversion_counts_but_its_value_does_not_until_a_rate_is_posted(world):
    d = _day_start(2)
    _eur_and_usd(world, d, eur=50.0, usd=10.0)
    _costs = world.api.post("/v1/costs", json={"costs": [
        {"date": _date(d), "campaign_id": "A", "adgroup_id": "A-g", "ad_id": "A-ad", "spend": 20.0}]},
        headers=world.auth)
    assert _costs.status_code == 200, _costs.json
    day = {"start": _date(d), "end": _date(d)}

    body = _report(world, dimensions="campaign_id", **day)
    a = next(r for r in body["rows"] if r["campaign_id"] == "A")
    assert (a["conversions"], a["conversion_value"], a["unconverted_conversions"], a["roas"]) == (1.0, 0.0, 1.0, 0.0)
    assert (body["totals"]["conversions"], body["totals"]["conversion_value"],
            body["totals"]["unconverted_conversions"]) == (2.0, 10.0, 1.0)
    first_feed = _feed(world)
    assert {r["ad_id"]: (r["conversions"], r["conversion_value"], r["unconverted_conversions"])
            for r in first_feed["rows"]} == {"A-ad": (1.0, 0.0, 1.0), "B-ad": (1.0, 10.0, 0.0)}
    warning = _diagnostics(world)
    assert warning["unconverted_conversions_7d"] == 1
    assert [(w["code"], w["count"]) for w in warning["warnings"]] == [("unconverted_currency", 1)]
    assert "EUR" in warning["warnings"][0]["message"]

    # A rate of any earlier day applies to the conversion already attributed, without re-attributing it.
    assert _rates(world, [{"date": _date(d - 30 * DAY), "currency": "EUR", "rate": 1.1}]).status_code == 200
    body = _report(world, dimensions="campaign_id", **day)
    a = next(r for r in body["rows"] if r["campaign_id"] == "A")
    assert (a["conversions"], a["conversion_value"], a["unconverted_conversions"], a["roas"]) == (1.0, 55.0, 0.0, 2.75)
    assert body["totals"]["conversion_value"] == 65.0
    # The same poll as before (same watermark): not the answer kept from before the rate.
    assert {r["ad_id"]: (r["conversion_value"], r["unconverted_conversions"]) for r in _feed(world)["rows"]} == {
        "A-ad": (55.0, 0.0), "B-ad": (10.0, 0.0)}
    after = _diagnostics(world)
    assert after["unconverted_conversions_7d"] == 0 and after["warnings"] == []

    # Re-posting the date replaces the rate.
    assert _rates(world, [{"date": _date(d - 30 * DAY), "currency": "EUR", "rate": 1.5}]).status_code == 200
    assert _report(world, campaign_ids="A", **day)["totals"]["conversion_value"] == 75.0
    listed = world.api.get("/v1/exchange-rates", headers=world.auth).json
    assert listed == {"currency": "USD", "truncated": False,
                      "rates": [{"date": _date(d - 30 * DAY), "currency": "EUR", "rate": 1.5}]}


def test_values_in_the_advertisers_own_currency_or_without_one_need_no_rate(world, r):
    registry.update_settings(r, world.tenant.advertiser, currency="EUR")
    d = _day_start(1)
    for i, currency in enumerate(("EUR", "", "USD")):
        world.click(f"k{i}", d + HOUR, "A")
        world.convert(f"c{i}", d + 2 * HOUR, value=10.0, currency=currency, ttclid=f"k{i}")
    world.click("k-free", d + HOUR, "A")
    world.convert("free", d + 2 * HOUR, value=0.0, currency="GBP", ttclid="k-free")  # nothing to convert
    world.settle()
    totals = _report(world, start=_date(d), end=_date(d))["totals"]
    assert (totals["conversions"], totals["conversion_value"], totals["unconverted_conversions"]) == (4.0, 20.0, 1.0)
    # Rates stored while the advertiser was in USD are not rates to EUR.
    resp = _rates(world, [{"date": _date(d), "currency": "USD", "rate": 0.9}])
    assert resp.status_code == 200 and resp.json["currency"] == "EUR"
    totals = _report(world, start=_date(d), end=_date(d))["totals"]
    assert (totals["conversion_value"], totals["unconverted_conversions"]) == (29.0, 0.0)
    registry.update_settings(r, world.tenant.advertiser, currency="GBP")
    totals = _report(world, start=_date(d), end=_date(d))["totals"]
    # EUR and USD have no rate to GBP; the valueless GBP conversion still needs none.
    assert (totals["conversion_value"], totals["unconverted_conversions"]) == (10.0, 2.0)


def test_one_advertisers_rates_are_never_anothers(world, r):
    d = _day_start(1)
    world.click("k1", d + HOUR, "A")
    world.convert("eur", d + 2 * HOUR, value=10.0, currency="EUR", ttclid="k1")
    world.settle()
    other = {"Authorization": f"Bearer {registry.create_token(r, 'adv-2', ['adserver', 'reports'])}"}
    assert _rates(world, [{"date": _date(d), "currency": "EUR", "rate": 2.0}], auth=other).status_code == 200
    totals = _report(world, start=_date(d), end=_date(d))["totals"]
    assert (totals["conversion_value"], totals["unconverted_conversions"]) == (0.0, 1.0)
    assert world.api.get("/v1/exchange-rates", headers=world.auth).json["rates"] == []
    assert _rates(world, [{"date": _date(d), "currency": "EUR", "rate": 1.1}]).status_code == 200
    theirs = world.api.get("/v1/exchange-rates", headers=other).json
    assert theirs["rates"] == [{"date": _date(d), "currency": "EUR", "rate": 2.0}]
    # A token without the adserver scope neither posts nor reads rates; none at all gets 401.
    reader = _rates(world, [{"date": _date(d), "currency": "EUR", "rate": 3.0}], auth=world.reader)
    assert reader.status_code == 403 and reader.json["error"]["field"] == "Authorization"
    assert world.api.get("/v1/exchange-rates", headers=world.reader).status_code == 403
    assert world.api.post("/v1/exchange-rates", json={"rates": []}).status_code == 401
    assert _report(world, start=_date(d), end=_date(d))["totals"]["conversion_value"] == 11.0


@pytest.mark.parametrize(("row", "field", "words"), [
    ({"date": "2026-13-01", "currency": "EUR", "rate": 1.1}, "date", "YYYY-MM-DD"),
    ({"date": "1969-12-31", "currency": "EUR", "rate": 1.1}, "date", "1970-01-01"),
    ({"date": "2101-01-01", "currency": "EUR", "rate": 1.1}, "date", "2100-12-31"),
    ({"currency": "EUR", "rate": 1.1}, "date", "required"),
    ({"date": "2026-01-01", "currency": "eur", "rate": 1.1}, "currency", "ISO 4217"),
    ({"date": "2026-01-01", "currency": "EURO", "rate": 1.1}, "currency", "ISO 4217"),
    ({"date": "2026-01-01", "currency": "USD", "rate": 1.1}, "currency", "own currency"),
    ({"date": "2026-01-01", "currency": "EUR", "rate": 0}, "rate", "above 0"),
    ({"date": "2026-01-01", "currency": "EUR", "rate": -1.1}, "rate", "above 0"),
    ({"date": "2026-01-01", "currency": "EUR", "rate": "1.1"}, "rate", "a number"),
    ({"date": "2026-01-01", "currency": "EUR", "rate": True}, "rate", "a number"),
    ({"date": "2026-01-01", "currency": "EUR", "rate": 1e300}, "rate", "at most"),
    ("EUR 1.1", "", "an object"),
])
def test_a_bad_rate_is_refused_naming_the_field_and_nothing_is_stored(world, row, field, words):
    good = {"date": "2026-01-01", "currency": "GBP", "rate": 1.3}
    resp = _rates(world, [good, row])
    assert resp.status_code == 400
    assert resp.json["accepted"] == 0
    [rejection] = resp.json["rejected"]
    assert (rejection["index"], rejection["field"]) == (1, field) and words in rejection["rule"]
    assert world.api.get("/v1/exchange-rates", headers=world.auth).json["rates"] == []


@pytest.mark.parametrize("body", [[], {}, {"rates": []}, {"rates": {"date": "2026-01-01"}}, {"rate": []}])
def test_a_body_without_a_rates_list_is_refused(world, body):
    resp = world.api.post("/v1/exchange-rates", json=body, headers=world.auth)
    assert resp.status_code == 400 and resp.json["error"]["field"] == "rates"


def test_the_same_currency_and_date_twice_in_one_posting_is_refused(world):
    resp = _rates(world, [{"date": "2026-01-01", "currency": "EUR", "rate": 1.1},
                          {"date": "2026-01-01", "currency": "EUR", "rate": 1.2}])
    assert resp.status_code == 400 and resp.json["rejected"][0]["index"] == 1


def test_csv_money_is_rounded_to_the_currencys_minor_unit_and_json_keeps_it_whole(world, r):
    d = _day_start(2)
    world.click("k1", d + HOUR, "A")
    world.click("k2", d + HOUR, "A")
    world.click("k3", d + HOUR, "A")
    world.convert("c1", d + 2 * HOUR, value=1000.0, currency="EUR", ttclid="k1")
    world.settle()
    assert _rates(world, [{"date": _date(d), "currency": "EUR", "rate": 1.00005}]).status_code == 200
    assert world.api.post("/v1/costs", json={"costs": [
        {"date": _date(d), "campaign_id": "A", "adgroup_id": "A-g", "ad_id": "A-ad", "spend": 23.0}]},
        headers=world.auth).status_code == 200
    params = {"start": _date(d), "end": _date(d), "dimensions": "stat_time_hour",
              "metrics": "spend,clicks,cpc,conversion_value,roas"}
    body = _report(world, **params)
    hour = next(r for r in body["rows"] if r["stat_time_hour"].endswith("01:00"))
    assert (hour["spend"], hour["cpc"], hour["conversion_value"]) == (0.958333, 0.319444, 1000.05)
    resp = world.api.get("/v1/reports", query_string={**params, "events": "CompletePayment", "format": "csv"},
                         headers=world.auth)
    table = {row["stat_time_hour"]: row for row in csv.DictReader(io.StringIO(resp.get_data(as_text=True)))}
    row = table[hour["stat_time_hour"]]
    assert (row["spend"], row["cpc"], row["conversion_value"], row["clicks"]) == ("0.96", "0.32", "1000.05", "3")
    assert row["roas"] == str(hour["roas"])  # a ratio, not money: as in JSON
    # The same in yen (no decimals) and Kuwaiti dinars (three).
    for currency, expected in (("JPY", ("1", "0", "1000")), ("KWD", ("0.958", "0.319", "1000.050"))):
        registry.update_settings(r, world.tenant.advertiser, currency=currency)
        assert _rates(world, [{"date": _date(d), "currency": "EUR", "rate": 1.00005}]).status_code == 200
        resp = world.api.get("/v1/reports", query_string={**params, "events": "CompletePayment", "format": "csv"},
                             headers=world.auth)
        row = {r["stat_time_hour"]: r for r in csv.DictReader(io.StringIO(resp.get_data(as_text=True)))}[
            hour["stat_time_hour"]]
        assert (row["spend"], row["cpc"], row["conversion_value"]) == expected, currency


def test_minor_units_and_rounding():
    assert [minor_unit(c) for c in ("USD", "EUR", "JPY", "KRW", "BHD", "KWD", "CLF", "XYZ")] == [2, 2, 0, 0, 3, 3, 4, 2]
    assert money_text(9.583333, "USD") == "9.58"
    assert money_text(0.125, "USD") == "0.13"  # half up, as written, not as the double's binary value
    assert money_text(1234.5, "JPY") == "1235"
    assert money_text(1.25, "KWD") == "1.250"
    assert money_text(-0.001, "USD") == "0.00"
    assert money_text(-2.5, "EUR") == "-2.50"
    assert money_text(1.7e308, "USD").endswith(".00")


# --- the body parser, property-based ----------------------------------------------------------

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                     max_leaves=8)
_dates = st.one_of(st.dates().map(date.isoformat), st.text(max_size=12), _json)
_codes = st.one_of(st.sampled_from(["EUR", "GBP", "USD", "JPY", "eur", "EURO", "", "€"]), st.text(max_size=4), _json)
_numbers = st.one_of(st.floats(), st.integers(), st.just(MAX_RATE), st.just(0), _json)
_rows = st.one_of(st.fixed_dictionaries({"date": _dates, "currency": _codes, "rate": _numbers},
                                        optional={"x": _json}), _json)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.one_of(st.fixed_dictionaries({"rates": st.lists(_rows, max_size=6)}), _json))
def test_the_rates_parser_accepts_only_valid_rates_and_names_the_field_of_each_refusal(body):
    try:
        rates, rejections = parse_rates(body, "USD")
    except BadRequest as exc:
        assert exc.field == "rates"
        assert not (isinstance(body, dict) and isinstance(body.get("rates"), list) and body["rates"])
        return
    rows = body["rates"]
    assert len(rates) + len(rejections) == len(rows)
    for rate in rates:
        assert date(1970, 1, 1) <= rate.day <= date(2100, 12, 31)
        assert len(rate.currency) == 3 and rate.currency.isupper() and rate.currency.isascii() and rate.currency != "USD"
        assert math.isfinite(rate.rate) and 0 < rate.rate <= MAX_RATE
    for rejection in rejections:
        assert rejection.field in ("", "date", "currency", "rate") and rejection.rule
        assert 0 <= rejection.index < len(rows)
    assert len({(r.day, r.currency) for r in rates}) == len(rates)


def test_a_feed_poller_with_a_cursor_learns_of_a_rate_posted_later(world):
    d = _day_start(1)
    _eur_and_usd(world, d, eur=40.0, usd=5.0)
    first = _feed(world)
    assert {r["ad_id"]: (r["conversion_value"], r["unconverted_conversions"]) for r in first["rows"]} == {
        "A-ad": (0.0, 1.0), "B-ad": (5.0, 0.0)}
    assert _rates(world, [{"date": _date(d), "currency": "EUR", "rate": 1.25}]).status_code == 200
    world.settle()  # the attributor marks the buckets the rate re-valued
    resp = world.api.get("/v1/optimizer/conversions", headers=world.optimizer,
                         query_string={"event": "CompletePayment", "level": "ad", "cursor": first["next_cursor"]})
    later = resp.json
    # Only the re-valued bucket comes back, with its full current counts and a higher revision.
    assert [(r["ad_id"], r["conversions"], r["conversion_value"], r["unconverted_conversions"])
            for r in later["rows"]] == [("A-ad", 1.0, 50.0, 0.0)]
    assert later["rows"][0]["revision"] > max(r["revision"] for r in first["rows"])


# --- migration 12 keeps what was summed -------------------------------------------------------

def _credit_input_row(**values) -> tuple:
    """A credit_input row as the attributor writes it: the given columns, every other one empty."""
    from clicktrail import schema

    empty = {"String": "", "LowCardinality(String)": "", "{lc}": "", "Float64": 0.0, "Array(String)": [],
             "Array(Float64)": []}
    row = {}
    for name, kind in schema.CREDIT_INPUT_COLUMNS:
        if name in values:
            row[name] = values[name]
        elif kind.startswith("DateTime"):
            row[name] = datetime(2026, 11, 1, tzinfo=timezone.utc)
        else:
            row[name] = empty.get(kind, 0)
    return tuple(row[name] for name, _ in schema.CREDIT_INPUT_COLUMNS)


def test_migration_12_splits_the_kept_sums_by_currency_and_keeps_them(monkeypatch):
    """Sums written before migration 12 mixed currencies under one key; after it, the same
    conversions are summed per currency, restatements included, and new writes carry theirs."""
    import secrets

    from clicktrail import clickhouse, schema
    from clicktrail.inserts import columns
    from tests.conftest import CLICKHOUSE_BASE

    client = clickhouse.connect(CLICKHOUSE_BASE, database="default")
    db = f"ct_mig12_{secrets.token_hex(3)}"
    at = datetime(2026, 11, 1, 10, 0, tzinfo=timezone.utc)

    def write(rows):
        # The columns this database has at its version (later migrations add more).
        have = {name for (name,) in client.execute(
            "SELECT name FROM system.columns WHERE database = %(db)s AND table = 'credit_input'", {"db": db})}
        kept = [i for i, name in enumerate(schema.CREDIT_INPUT_COLUMN_NAMES) if name in have]
        names = [schema.CREDIT_INPUT_COLUMN_NAMES[i] for i in kept]
        client.execute(f"INSERT INTO {db}.credit_input ({', '.join(names)}) VALUES",
                       columns([tuple(row[i] for i in kept) for row in rows]), columnar=True)

    def conversion(event_id, value, currency, revision=1, sign=1):
        return _credit_input_row(advertiser_id="adv", pixel_id="P", event="CompletePayment", event_id=event_id,
                                 conversion_time=at, value=value, currency=currency, revision=revision,
                                 touch_kind="click", touch_id=f"k-{event_id}", touch_time=at, campaign_id="A",
                                 ad_id="A-ad", matched_by="click_id", click_window_days=7, view_window_days=1,
                                 sign=sign, model_names=["last_click"], model_credits=[1.0])

    try:
        monkeypatch.setattr(schema, "MIGRATIONS", [m for m in schema.MIGRATIONS if m.version < 12])
        schema.migrate(client, db)
        write([conversion("eur", 100.0, "EUR"), conversion("usd", 10.0, "USD")])
        # A restatement of the EUR conversion: its cancel copy and the new revision in one block.
        write([conversion("eur", 100.0, "EUR", sign=-1), conversion("eur", 80.0, "EUR", revision=2)])
        assert client.execute(f"SELECT sum(conversions), sum(conversion_value) FROM {db}.conversion_stats") == \
            [(2.0, 90.0)]  # EUR and USD summed together
        monkeypatch.undo()
        assert [m.version for m in schema.migrate(client, db)] == [m.version for m in schema.MIGRATIONS
                                                                    if m.version >= 12]
        sums = f"SELECT currency, sum(conversions), sum(conversion_value) FROM {db}.conversion_stats " \
               "GROUP BY currency ORDER BY currency"
        assert client.execute(sums) == [("EUR", 1.0, 80.0), ("USD", 1.0, 10.0)]
        write([conversion("gbp", 5.0, "GBP"), conversion("free", 0.0, "GBP")])
        assert client.execute(sums) == [("", 1.0, 0.0), ("EUR", 1.0, 80.0), ("GBP", 1.0, 5.0), ("USD", 1.0, 10.0)]
    finally:
        client.execute(f"DROP DATABASE IF EXISTS {db}")


def test_listing_rates_by_currency_checks_the_code(world):
    assert _rates(world, [{"date": "2026-01-01", "currency": "EUR", "rate": 1.1},
                          {"date": "2026-01-01", "currency": "GBP", "rate": 1.3}]).status_code == 200
    only = world.api.get("/v1/exchange-rates", query_string={"currency": "GBP"}, headers=world.auth)
    assert only.json["rates"] == [{"date": "2026-01-01", "currency": "GBP", "rate": 1.3}]
    bad = world.api.get("/v1/exchange-rates", query_string={"currency": "gbp"}, headers=world.auth)
    assert bad.status_code == 400 and bad.json["error"]["field"] == "currency"
