"""Reports and the optimizer feed give the same answers on Debian's ClickHouse 18.16 and a current one.

Production (docker-compose) runs a current LTS; the tests' server is 18.16. The same rows go into
both (the materialized views fill the kept sums on each), then every kind of report query and a
feed poll run on both engines and must agree.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
from werkzeug.datastructures import MultiDict

from clicktrail import schema
from clicktrail.inserts import columns
from pixel.registry import DEFAULT_SETTINGS
from reporting import report_query
from reporting.feed import Feed, FeedQuery
from reporting.reports import Report
from tests.chdb_client import ChdbClient

ADV = "adv"
DAY = 86_400
HOUR = 3_600
STAMP = int(time.time() * 1000) - 1000  # the attributor's write stamp, the same on both engines
MODELS = ("last_click", "first_click", "linear", "time_decay", "position_based")


@pytest.fixture(scope="module")
def current(tmp_path_factory):
    client = ChdbClient(str(tmp_path_factory.mktemp("chdb-queries")))
    schema.migrate(client, "ctq")
    yield client
    client.close()


def _day_start(days_ago: int) -> int:
    d = datetime.now(timezone.utc).date() - timedelta(days=days_ago)
    return int(datetime(d.year, d.month, d.day, tzinfo=timezone.utc).timestamp())


def _touch(kind, touch_id, at, campaign, ad, is_bot=0):
    return (ADV, kind, touch_id, at, at * 1000, campaign, f"{campaign}-g", ad, "", "e", "", "", ["e"], [], [], "", "",
            "", "", "import", at * 1000, 1, is_bot)


def _conversion(event_id, at, value, touches, credits_by_model, revision=1, currency="USD", content_hash=1):
    """Candidate rows and credit rows of one conversion (touches: (kind, id, at, campaign, ad, matched_by))."""
    head = dict(advertiser_id=ADV, pixel_id="P", event="CompletePayment", event_id=event_id, conversion_time=at,
                conversion_ms=at * 1000, value=value, currency=currency, device_type="pc", os="Linux",
                browser="Chrome", utm_source="tt", utm_campaign="", country="DE", region="", revision=revision,
                content_hash=content_hash, attributed_ms=STAMP)

    def part(t):
        kind, touch_id, t_at, campaign, ad, matched = t
        return dict(touch_kind=kind, touch_id=touch_id, touch_time=t_at, touch_ms=t_at * 1000, campaign_id=campaign,
                    adgroup_id=f"{campaign}-g", ad_id=ad, matched_by=matched)

    candidates = [tuple({**head, **part(t)}[n] for n in schema.CANDIDATE_COLUMN_NAMES) for t in touches]
    credits = []  # as the attributor writes them: one row per touchpoint, its models and credits as arrays
    for i, t in enumerate(touches):
        row = {**head, **part(t), "click_window_days": 7, "view_window_days": 1, "sign": 1,
               "model_names": list(credits_by_model), "model_credits": [s[i] for s in credits_by_model.values()]}
        credits.append(tuple(row[n] for n in schema.CREDIT_INPUT_COLUMN_NAMES))
    return candidates, credits


def _fill(client, db, d):
    k1, k2, old = ("click", "k1", d + 10 * HOUR, "A", "A1", "email"), ("click", "k2", d + 11 * HOUR, "B", "B1", "email"), \
        ("click", "old", d - 3 * DAY, "O", "O1", "click_id")
    touches = [_touch("click", "k1", d + 10 * HOUR, "A", "A1"), _touch("click", "k2", d + 11 * HOUR, "B", "B1"),
               _touch("impression", "v1", d + 9 * HOUR, "A", "A1"), _touch("click", "old", d - 3 * DAY, "O", "O1"),
               _touch("click", "kb", d + 10 * HOUR, "A", "A1", is_bot=1)]
    c1 = _conversion("c1", d + 12 * HOUR, 10.0, [k1, k2], {
        "last_click": [0.0, 1.0], "first_click": [1.0, 0.0], "linear": [0.5, 0.5], "time_decay": [0.4985, 0.5015],
        "position_based": [0.5, 0.5]})
    c2 = _conversion("c2", d + 12 * HOUR + 60, 5.0, [old], {m: [1.0] for m in MODELS}, currency="EUR")
    c3 = _conversion("c3", d + 12 * HOUR + 120, 7.0, [k1], {m: [1.0] for m in MODELS}, currency="GBP")  # no rate
    # A bot's conversion after a bot's click: stored as the attributor stores it, credited to nothing.
    bot_candidates, _ = _conversion("cb", d + 12 * HOUR + 120, 7.0, [("click", "kb", d + 10 * HOUR, "A", "A1",
                                                                        "click_id")], {m: [1.0] for m in MODELS})
    _, bot_credits = _conversion("cb", d + 12 * HOUR + 120, 7.0, [("", "", 0, "", "", "bot")],
                                 {m: [0.0] for m in MODELS})
    # An attributor died between its two inserts of c1's revision 1, whose re-run gave another result:
    # its candidates (another hash, a click on campaign X) were never credited, and no report counts them.
    orphan, _ = _conversion("c1", d + 12 * HOUR, 10.0, [("click", "kx", d + 11 * HOUR + 60, "X", "X1", "email")],
                            {m: [1.0] for m in MODELS}, content_hash=2)
    client.execute(f"INSERT INTO {db}.attribution_candidates ({', '.join(schema.CANDIDATE_COLUMN_NAMES)}) VALUES",
                   columns(orphan), columnar=True)
    client.execute(f"INSERT INTO {db}.touchpoints ({', '.join(schema.TOUCH_COLUMN_NAMES)}) VALUES",
                   columns(touches), columnar=True)
    for candidates, credits in (c1, c2, c3, (bot_candidates, bot_credits)):
        client.execute(f"INSERT INTO {db}.attribution_candidates ({', '.join(schema.CANDIDATE_COLUMN_NAMES)}) "
                       "VALUES", columns(candidates), columnar=True)
        client.execute(f"INSERT INTO {db}.credit_input ({', '.join(schema.CREDIT_INPUT_COLUMN_NAMES)}) VALUES",
                       columns(credits), columnar=True)
    day = datetime.fromtimestamp(d, timezone.utc).date()
    costs = [(ADV, day, 1, "A", "A-g", "A1", 4.0, 0, 0, "USD"), (ADV, day, 1, "B", "B-g", "B1", 6.0, 500, 1, "USD")]
    client.execute(f"INSERT INTO {db}.costs (advertiser_id, day, version, campaign_id, adgroup_id, ad_id, spend, "
                   "impressions, has_impressions, currency) VALUES", columns(costs), columnar=True)
    # EUR is worth 1.1 USD from 10 days before, and 1.2 from the day before (both kept: the latest counts).
    rates = [(ADV, "USD", "EUR", day - timedelta(days=10), 1.1, 1), (ADV, "USD", "EUR", day - timedelta(days=1), 1.2, 1)]
    client.execute(f"INSERT INTO {db}.exchange_rates (advertiser_id, advertiser_currency, currency, day, rate, version) "
                   "VALUES", columns(rates), columnar=True)


@pytest.fixture(scope="module")
def engines(current, ch_database):
    from clicktrail import clickhouse
    from tests.conftest import CLICKHOUSE_BASE

    old = clickhouse.connect(clickhouse.with_database(CLICKHOUSE_BASE, ch_database))
    for table in ("touchpoints", "attribution_candidates", "credits", "costs", "conversion_stats", "touch_stats",
                  "bot_touch_stats", "feed_changes", "exchange_rates"):
        old.execute(f"TRUNCATE TABLE {ch_database}.{table}")
    d = _day_start(2)
    _fill(old, ch_database, d)
    _fill(current, "ctq", d)
    return {"18.16": (old, ch_database), "current": (current, "ctq")}, d


def _iso_day(ts: int) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).date().isoformat()


@pytest.mark.parametrize("params", [
    {"dimensions": "campaign_id,stat_time_day"},
    {"dimensions": "ad_id", "order_by": "-spend"},
    {"dimensions": "stat_time_hour,campaign_id", "timezone": "Asia/Kolkata", "model": "linear"},
    {"dimensions": "campaign_id", "click_window": "1", "model": "time_decay"},
    {"dimensions": "device_type,utm_source", "metrics": "conversions,conversion_value", "date_basis": "conversion"},
    {"dimensions": "campaign_id", "include_bots": "true"},
    {"dimensions": "ad_id,stat_time_day", "click_window": "28", "include_bots": "true", "model": "linear"},
])
def test_reports_agree_across_engines(engines, params):
    both, d = engines
    query = report_query.parse(MultiDict({"start": _iso_day(d - 4 * DAY), "end": _iso_day(d), **params}),
                               DEFAULT_SETTINGS)
    answers = {name: Report(client, db, ADV, DEFAULT_SETTINGS, query).build() for name, (client, db) in both.items()}
    assert answers["18.16"]["rows"], answers
    assert answers["current"] == answers["18.16"]
    # c1's orphaned candidates (a later click, on campaign X) count nowhere: c1's credits do not name them.
    assert all(row.get("campaign_id") != "X" and row.get("ad_id") != "X1" for row in answers["18.16"]["rows"])
    if "unconverted_conversions" in answers["18.16"]["totals"]:  # EUR 5 at 1.2, GBP 7 with no rate
        assert answers["18.16"]["totals"]["unconverted_conversions"] == 1.0


def test_bots_count_only_when_asked_on_both_engines(engines):
    both, d = engines
    for client, db in both.values():
        def campaign_a(**params):
            query = report_query.parse(MultiDict({"start": _iso_day(d - 4 * DAY), "end": _iso_day(d),
                                                  "dimensions": "campaign_id", "metrics": "clicks,conversions",
                                                  **params}), DEFAULT_SETTINGS)
            rows = Report(client, db, ADV, DEFAULT_SETTINGS, query).build()["rows"]
            return next(row for row in rows if row["campaign_id"] == "A")

        # Campaign A: a person's click with a GBP conversion (c3), and a bot's click with its conversion.
        assert campaign_a() == {"campaign_id": "A", "clicks": 1, "conversions": 1.0}
        assert campaign_a(include_bots="true") == {"campaign_id": "A", "clicks": 2, "conversions": 2.0}


def test_the_feed_agrees_across_engines(engines):
    both, _ = engines
    query = FeedQuery(("CompletePayment",), "ad", "hour", None, 100)
    watermark = int(time.time() * 1000) + 1
    answers = {name: Feed(client, db, ADV, DEFAULT_SETTINGS, query).read(watermark)
               for name, (client, db) in both.items()}
    assert [r["ad_id"] for r in answers["18.16"]["rows"]] == ["O1", "A1", "B1"]  # by bucket
    assert answers["current"] == answers["18.16"]
    by_ad = {r["ad_id"]: (r["conversion_value"], r["unconverted_conversions"]) for r in answers["18.16"]["rows"]}
    assert by_ad["O1"] == (6.0, 0.0) and by_ad["A1"][1] == 1.0  # EUR 5 at 1.2; GBP has no rate
