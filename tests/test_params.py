"""The API's query parameters: any text is a value or a 400 naming the parameter, never a 500.

Property tests (hypothesis) drive the parsers with arbitrary text, Unicode digits included;
the HTTP tests send the values an attacker tried to every read endpoint of the real app.
"""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import HealthCheck, event, given, settings as hsettings, strategies as st
from werkzeug.datastructures import MultiDict

from clicktrail.errors import BadRequest
from pixel import registry
from pixel.registry import settings_of
from reporting import feed, params, report_query

ADVERTISER = settings_of(None)
REPORT_PARAMS = ("start", "end", "timezone", "dimensions", "metrics", "model", "click_window", "view_window",
                 "date_basis", "campaign_ids", "adgroup_ids", "ad_ids", "events", "order_by", "page", "page_size",
                 "format")
FEED_PARAMS = ("event", "level", "bucket", "cursor", "limit")
#: Text that looks like what a parser wants: digits of every script, dates, signs, blanks.
hostile = st.one_of(
    st.text(max_size=30),
    st.text(alphabet="0123456789²³¹٣٤൬๓-+ .eE:T/", max_size=25),
    st.dates(min_value=date(1, 1, 1)).map(date.isoformat),
    st.integers().map(str),
    st.sampled_from(["1", "7", "28", "0", "1000", "-1", "²", "１", "9999-12-31", "0001-01-01", "2026-02-30",
                     "20261101", "2026-W01-1", "campaign_id", "-spend", "csv", "ad"]),
)


def _args(names, data, most: int | None = None, **base) -> MultiDict:
    chosen = data.draw(st.lists(st.sampled_from(names), unique=True, max_size=most))
    return MultiDict({**base, **{name: data.draw(hostile) for name in chosen}})


#: Dates a report accepts, so that the other parameters are reached too.
some_day = st.dates(min_value=date(1970, 1, 1), max_value=date(2100, 12, 31)).map(date.isoformat)


@given(st.text(max_size=40))
def test_digits_are_ascii_digits_or_nothing(text):
    value = params.digits(text)
    if value is None:
        assert not (text.isascii() and text.isdigit() and len(text) <= params.MAX_DIGITS)
    else:
        assert str(value) == text.lstrip("0").rjust(1, "0") and value < 2**63


@given(hostile)
def test_whole_is_in_range_or_a_400_naming_it(text):
    try:
        value = params.whole(MultiDict({"page": text}), "page", 1, 1, 1_000_000)
    except BadRequest as exc:
        assert exc.field == "page" and "whole number from 1 to 1000000" in exc.message
    else:
        assert 1 <= value <= 1_000_000 and (text == "" or value == int(text))


@given(hostile)
def test_day_is_in_range_or_a_400_naming_it(text):
    try:
        value = params.day(MultiDict({"start": text}), "start")
    except BadRequest as exc:
        assert exc.field == "start" and "1970-01-01 to 2100-12-31" in exc.message
    else:
        assert date(1970, 1, 1) <= value <= date(2100, 12, 31) and value.isoformat() == text


@hsettings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_report_parameters_parse_or_name_the_parameter(data):
    start = data.draw(some_day)
    args = _args(REPORT_PARAMS, data, start=start, end=data.draw(st.one_of(st.just(start), some_day)))
    try:
        query = report_query.parse(args, ADVERTISER)
    except BadRequest as exc:
        assert exc.field in REPORT_PARAMS and exc.status == 400
    else:
        event("parsed")
        lo, hi = query.bounds()  # the instants a query would use are within what ClickHouse holds
        assert 0 <= lo < hi < 2**32


@hsettings(max_examples=300)
@given(st.data())
def test_feed_parameters_parse_or_name_the_parameter(data):
    args = _args(FEED_PARAMS, data, event="CompletePayment")
    try:
        query = feed.FeedQuery.from_args(args)
    except BadRequest as exc:
        assert exc.field in FEED_PARAMS and exc.status == 400
    else:
        assert 1 <= query.limit <= feed.MAX_LIMIT and (query.cursor is None or 0 <= query.cursor < 2**63)


# ---- through the real app ----------------------------------------------------------------------


@pytest.fixture
def auth(r):
    token = registry.create_token(r, "adv-1", ["reports", "optimizer"])
    return {"Authorization": f"Bearer {token}"}


DAY = {"start": "2026-11-01", "end": "2026-11-02"}
CASES = [
    ("/v1/reports", {**DAY, "page": "²"}, "page"),
    ("/v1/reports", {**DAY, "page_size": "１０"}, "page_size"),
    ("/v1/reports", {**DAY, "click_window": "²"}, "click_window"),
    ("/v1/reports", {**DAY, "view_window": "٠"}, "view_window"),
    ("/v1/reports", {**DAY, "page": "9" * 5000}, "page"),
    ("/v1/reports", {"start": "9999-12-31", "end": "9999-12-31"}, "start"),
    ("/v1/reports", {"start": "2100-12-31", "end": "2101-01-01"}, "end"),
    ("/v1/reports", {"start": "0001-01-01", "end": "0001-01-01"}, "start"),
    ("/v1/reports", {"start": "1969-12-31", "end": "1970-01-01"}, "start"),
    ("/v1/reports", {"start": "2026-W01-1", "end": "2026-11-02"}, "start"),
    ("/v1/conversions", {**DAY, "limit": "²"}, "limit"),
    ("/v1/conversions", {"start": "9999-12-31", "end": "9999-12-31"}, "start"),
    ("/v1/conversions", {"start": "2026-11-01", "end": "0001-01-01"}, "end"),
    ("/v1/optimizer/conversions", {"event": "CompletePayment", "limit": "²"}, "limit"),
    ("/v1/optimizer/conversions", {"event": "CompletePayment", "cursor": "²"}, "cursor"),
    ("/v1/optimizer/conversions", {"event": "CompletePayment", "cursor": "1" * 20}, "cursor"),
]


@pytest.mark.parametrize("path, query, field", CASES)
def test_hostile_values_are_a_400_naming_the_parameter(api_client, auth, path, query, field):
    resp = api_client.get(path, query_string=query, headers=auth)
    assert resp.status_code == 400, resp.get_data(as_text=True)
    error = resp.json["error"]
    assert error["field"] == field and error["code"] == "invalid_field" and error["message"]


@pytest.mark.parametrize("timezone", ["Pacific/Kiritimati", "America/Los_Angeles", "UTC"])
@pytest.mark.parametrize("dimensions", ["stat_time_hour,campaign_id", "ad_id,stat_time_day"])
def test_the_first_and_last_days_are_answered(api_client, auth, ch, timezone, dimensions):
    """1970-01-01 east of UTC starts before 1970, 2100-12-31 west of it ends in 2101: both answer."""
    for start, end in (("1970-01-01", "1970-01-02"), ("2100-12-30", "2100-12-31")):
        for extra in ({}, {"click_window": "1"}, {"format": "csv"}):
            query = {"start": start, "end": end, "timezone": timezone, "dimensions": dimensions, **extra}
            resp = api_client.get("/v1/reports", query_string=query, headers=auth)
            assert resp.status_code == 200, (query, resp.get_data(as_text=True))
            if "format" not in extra:
                assert resp.json["rows"] == [] and resp.json["totals"]["spend"] == 0.0
        resp = api_client.get("/v1/conversions", query_string={"start": start, "end": end, "timezone": timezone},
                              headers=auth)
        assert resp.status_code == 200 and resp.json["rows"] == [], resp.get_data(as_text=True)


ENDPOINTS = {"/v1/reports": REPORT_PARAMS, "/v1/conversions": REPORT_PARAMS + ("limit",),
             "/v1/optimizer/conversions": FEED_PARAMS}


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(st.data())
def test_any_parameters_are_an_answer_or_a_400_from_the_real_app(api_client, auth, ch, data):
    """Whatever reaches ClickHouse is a query it runs (1970 east of UTC, 2100 west of it, odd
    filters): the app answers 200 with valid JSON, or 400 naming the parameter."""
    import json

    path = data.draw(st.sampled_from(sorted(ENDPOINTS)))
    first = data.draw(st.dates(min_value=date(1970, 1, 1), max_value=date(2100, 12, 31)))
    last = min(first + timedelta(days=data.draw(st.integers(0, 370))), date(2100, 12, 31))
    base = {"start": first.isoformat(), "end": last.isoformat(), "event": "CompletePayment",
            "timezone": data.draw(st.sampled_from(["Pacific/Kiritimati", "Pacific/Pago_Pago", "UTC"]))}
    args = _args(ENDPOINTS[path], data, most=2, **base)
    resp = api_client.get(path, query_string=args, headers=auth)
    event(f"{path} {resp.status_code}")
    assert resp.status_code in (200, 400), (path, dict(args), resp.get_data(as_text=True)[:300])
    if resp.mimetype == "application/json":
        body = json.loads(resp.get_data(as_text=True), parse_constant=lambda name: pytest.fail(name))
        if resp.status_code == 400:
            assert body["error"]["field"] in ENDPOINTS[path] + ("event",) and body["error"]["message"]
