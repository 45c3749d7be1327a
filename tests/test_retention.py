"""Retention by setting (`clicktrail advertiser set --retention-days`, `clicktrail retention apply`, the
attributor's daily run) and the buffers' maximum age, on real Redis and ClickHouse 18.16.

The world: adv-1 keeps 30 days, adv-2 keeps everything. Each has rows of one conversion (event,
its identity links, a click touchpoint, a candidate and a credit) at several ages:
- ``recent``: 5 days old, kept by both;
- ``edge``: 40 days old, adv-1 only, in a month input may still reach: removed by a mutation;
- ``shared``: a month 3 months back where adv-2 has rows too: adv-1's removed by a mutation;
- ``alone``: a month 5 months back where only adv-1 has rows: removed by dropping the partition.
Older rows than the events API accepts are written to ClickHouse directly, as the sink and the
attributor write them.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from clicktrail import config, keys
from clicktrail.errors import ConfigError
from clicktrail.inserts import columns
from clicktrail.schema import CANDIDATE_COLUMN_NAMES, CREDIT_INPUT_COLUMN_NAMES
from pixel import registry, retention
from sink import expiry
from tests.servers import env_for

DAY = 86_400
TABLES = ("events", "event_identities", "touchpoints", "touch_identities", "attribution_candidates", "credits")
ID_COLUMN = {"events": "event_id", "event_identities": "event_id", "touchpoints": "touch_id",
             "touch_identities": "touch_id", "attribution_candidates": "event_id", "credits": "event_id"}


def cli(settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clicktrail.cli", *args], env=env_for(settings),
                          capture_output=True, text=True, timeout=300)


def month_middle(months_back: int) -> int:
    """Noon (UTC) on the 15th of the month ``months_back`` before this one."""
    today = datetime.now(timezone.utc)
    index = today.year * 12 + today.month - 1 - months_back
    return int(datetime(index // 12, index % 12 + 1, 15, 12, tzinfo=timezone.utc).timestamp())


AGES = {"recent": lambda: int(time.time()) - 5 * DAY, "edge": lambda: int(time.time()) - 40 * DAY,
        "shared": lambda: month_middle(3), "alone": lambda: month_middle(5)}


def put_conversion(ch, db: str, adv: str, name: str, at: int) -> None:
    """One purchase with all it leaves behind: event, identity links, click, candidate, credit."""
    event_id, click = f"{adv}-{name}", f"{adv}-{name}-click"
    ch.execute(f"INSERT INTO {db}.events (advertiser_id, pixel_id, event, event_id, event_time, event_ms, "
               "browser_id, click_id, email_sha256, value, currency) VALUES",
               [(adv, "P", "CompletePayment", event_id, datetime.fromtimestamp(at, timezone.utc), at * 1000,
                 f"ttp-{event_id}", click, "e" * 64, 10.0, "USD")])
    ch.execute(f"INSERT INTO {db}.touchpoints (advertiser_id, kind, touch_id, touch_time, touch_ms, campaign_id, "
               "adgroup_id, ad_id, browser_id, source, received_ms, counted) VALUES",
               [(adv, "click", click, datetime.fromtimestamp(at - 60, timezone.utc), (at - 60) * 1000, "c", "g",
                 "a", f"ttp-{event_id}", "import", at * 1000, 1)])
    head = dict(advertiser_id=adv, pixel_id="P", event="CompletePayment", event_id=event_id,
                conversion_time=datetime.fromtimestamp(at, timezone.utc), conversion_ms=at * 1000, value=10.0,
                currency="USD", device_type="pc", os="Linux", browser="Chrome", utm_source="", utm_campaign="",
                country="", region="",
                revision=1, content_hash=1, attributed_ms=at * 1000, touch_kind="click", touch_id=click,
                touch_time=datetime.fromtimestamp(at - 60, timezone.utc), touch_ms=(at - 60) * 1000,
                campaign_id="c", adgroup_id="g", ad_id="a", matched_by="click_id", click_window_days=7,
                view_window_days=1, sign=1, model_names=["last_click"], model_credits=[1.0])
    ch.execute(f"INSERT INTO {db}.attribution_candidates ({', '.join(CANDIDATE_COLUMN_NAMES)}) VALUES",
               columns([tuple(head[n] for n in CANDIDATE_COLUMN_NAMES)]), columnar=True)
    ch.execute(f"INSERT INTO {db}.credit_input ({', '.join(CREDIT_INPUT_COLUMN_NAMES)}) VALUES",
               columns([tuple(head[n] for n in CREDIT_INPUT_COLUMN_NAMES)]), columnar=True)


def held(ch, db: str, adv: str) -> dict[str, set[str]]:
    """Per table, which of the advertiser's conversions (by age name) still have rows."""
    found = {}
    for table in TABLES:
        rows = ch.execute(f"SELECT DISTINCT {ID_COLUMN[table]} FROM {db}.{table} WHERE advertiser_id = %(a)s",
                          {"a": adv})
        found[table] = {row[0].split("-")[2] for row in rows}  # "adv-1-edge-click" -> "edge"
    return found


def kept_sums(ch, db: str, adv: str) -> tuple:
    conversions = ch.execute(f"SELECT sum(conversions), sum(conversion_value) FROM {db}.conversion_stats "
                             "WHERE advertiser_id = %(a)s AND model = 'last_click'", {"a": adv})[0]
    clicks = ch.execute(f"SELECT sum(touches) FROM {db}.touch_stats WHERE advertiser_id = %(a)s AND kind = 'click'",
                        {"a": adv})[0][0]
    return (*conversions, clicks)


def partitions(ch, db: str, table: str) -> set[str]:
    return {row[0] for row in ch.execute("SELECT DISTINCT partition FROM system.parts WHERE database = %(d)s "
                                         "AND table = %(t)s AND active", {"d": db, "t": table})}


def month_of(at: int) -> str:
    return time.strftime("%Y%m", time.gmtime(at))


@pytest.fixture
def world(r, ch, ch_database):
    for adv in ("adv-1", "adv-2"):
        registry.ensure_advertiser(r, adv)
        for name, at in AGES.items():
            if adv == "adv-1" or name in ("recent", "shared"):
                put_conversion(ch, ch_database, adv, name, at())
    return ch_database


def test_retention_removes_only_the_rows_past_the_advertisers_setting(world, settings, r, ch, api_client):
    db = world
    before = {adv: kept_sums(ch, db, adv) for adv in ("adv-1", "adv-2")}
    assert held(ch, db, "adv-1") == {t: {"recent", "edge", "shared", "alone"} for t in TABLES}

    set_days = cli(settings, "advertiser", "set", "--advertiser", "adv-1", "--retention-days", "30")
    assert set_days.returncode == 0, set_days.stderr
    assert json.loads(set_days.stdout)["retention_days"] == 30
    assert "warning" not in set_days.stderr  # 30 days is longer than the 7-day click window

    applied = cli(settings, "retention", "apply", "--wait")
    assert applied.returncode == 0, applied.stderr
    done = json.loads(applied.stdout)

    cutoff = retention.cutoff_ms(30)
    assert done["advertisers"] == {"adv-1": time.strftime("%Y-%m-%d", time.gmtime(cutoff / 1000))}
    assert held(ch, db, "adv-1") == {t: {"recent"} for t in TABLES}
    assert held(ch, db, "adv-2") == {t: {"recent", "shared"} for t in TABLES}  # no retention: all kept
    # The sums reports read are kept: they hold no identifier.
    assert {adv: kept_sums(ch, db, adv) for adv in ("adv-1", "adv-2")} == before

    # The month only adv-1 had rows in went by a partition drop; the others by mutations.
    alone, shared, edge = (month_of(AGES[n]()) for n in ("alone", "shared", "edge"))
    for table in TABLES:
        assert done["tables"][table]["dropped_partitions"] == [alone], table
        assert done["tables"][table]["deleted_rows"] >= 2, table  # edge and shared, by one mutation
        assert alone not in partitions(ch, db, table) and shared in partitions(ch, db, table)
    mutations = ch.execute("SELECT table, command FROM system.mutations WHERE database = %(d)s "
                           "AND command LIKE '%%adv-1%%'", {"d": db})
    assert {table for table, _ in mutations} == set(TABLES)
    assert all("e" * 64 not in command and "ttp-" not in command for _, command in mutations)

    # Reports say from which day the data is complete; adv-2 has no such day.
    tokens = {adv: registry.create_token(r, adv, ["reports"]) for adv in ("adv-1", "adv-2")}

    def report(adv: str, zone: str = "UTC") -> dict:
        day = time.strftime("%Y-%m-%d", time.gmtime())
        reply = api_client.get(f"/v1/reports?start={day}&end={day}&timezone={zone}",
                               headers={"Authorization": f"Bearer {tokens[adv]}"})
        assert reply.status_code == 200, reply.get_json()
        return reply.get_json()

    first_day = datetime.fromtimestamp(cutoff / 1000, timezone.utc).date()
    assert report("adv-1")["data_complete_from"] == first_day.isoformat()
    # In Tokyo the cutoff (a UTC midnight) is 09:00: that local day is cut, the next one is whole.
    assert report("adv-1", "Asia/Tokyo")["data_complete_from"] == (first_day + timedelta(days=1)).isoformat()
    assert report("adv-2")["data_complete_from"] is None
    advertiser = api_client.get("/v1/advertiser", headers={"Authorization": f"Bearer {tokens['adv-1']}"})
    assert advertiser.get_json()["data_complete_from"] == first_day.isoformat()
    assert advertiser.get_json()["settings"]["retention_days"] == 30

    # Keeping everything again restores nothing: the data stays complete only from the cutoff applied.
    assert cli(settings, "advertiser", "set", "--advertiser", "adv-1", "--retention-days", "forever").returncode == 0
    assert registry.advertiser_settings(r, "adv-1")["retention_days"] is None
    assert report("adv-1")["data_complete_from"] == first_day.isoformat()


def test_a_retention_shorter_than_the_click_window_warns_and_a_bad_one_is_refused(settings, r):
    short = cli(settings, "advertiser", "set", "--advertiser", "adv-1", "--retention-days", "3")
    assert short.returncode == 0 and json.loads(short.stdout)["retention_days"] == 3
    assert "shorter than the 7-day click window" in short.stderr
    assert "no longer see touchpoints older than 3 day(s)" in short.stderr
    # Longer click window later: the same warning.
    wider = cli(settings, "advertiser", "set", "--advertiser", "adv-1", "--retention-days", "14", "--click-window", "28")
    assert "shorter than the 28-day click window" in wider.stderr
    for bad in ("0", "-5", "two"):
        refused = cli(settings, "advertiser", "set", "--advertiser", "adv-1", "--retention-days", bad)
        assert refused.returncode == 2 and "retention" in refused.stderr.lower(), refused.stderr
    assert registry.advertiser_settings(r, "adv-1")["retention_days"] == 14


def test_the_attributor_applies_retention_once_a_day(world, settings, r, ch, attributor):
    registry.update_settings(r, "adv-1", retention_days=30)
    attributor._retention_if_due()
    assert attributor.retention.wait(120)
    assert held(ch, world, "adv-1")["events"] == {"recent"}
    last = int(r.get(keys.RETENTION_LAST_RUN))

    # Ran today: another old row waits for tomorrow's run, even from a restarted attributor.
    put_conversion(ch, world, "adv-1", "late", int(time.time()) - 60 * DAY)
    attributor._retention_check_due = lambda: True  # the ten-minute check comes round again
    attributor._retention_if_due()
    assert int(r.get(keys.RETENTION_LAST_RUN)) == last
    assert "late" in held(ch, world, "adv-1")["events"]
    assert not attributor.retention.due(time.time()) and attributor.retention.due(time.time() + DAY)


def test_retention_drops_cached_clicks_older_than_the_cutoff(r, ch, ch_database, settings):
    from attribution.retention import Retention
    from clicktrail import clickhouse

    registry.update_settings(r, "adv-1", retention_days=2)
    now_ms = int(time.time() * 1000)
    for adv in ("adv-1", "adv-2"):
        r.set(f"ct:click:{adv}:old", json.dumps([now_ms - 5 * DAY * 1000, "c", "g", "a", "ttp", "", "", ""]))
        r.set(f"ct:click:{adv}:new", json.dumps([now_ms - 60_000, "c", "g", "a", "ttp", "", "", ""]))
    done = Retention(settings, r, clickhouse.connect(settings.clickhouse.url), ch_database).apply()
    assert done["click_cache"] == 1
    assert sorted(k.decode() for k in r.scan_iter("ct:click:*")) == [
        "ct:click:adv-1:new", "ct:click:adv-2:new", "ct:click:adv-2:old"]


# ---- the buffers' maximum age -------------------------------------------------------------------

def old_id(days: float) -> str:
    return f"{int((time.time() - days * DAY) * 1000)}-0"


def test_stream_and_dead_letters_older_than_the_maximum_age_are_dropped_counted_and_logged(
        r, sink, api_client, caplog):
    sink.ensure_group()
    events = lambda n, tag: json.dumps([{"event": "PageView", "event_id": f"{tag}{i}"} for i in range(n)])  # noqa: E731
    r.xadd(keys.EVENTS_STREAM, {"a": "adv-1", "n": "3", "d": events(3, "stale")}, id=old_id(31))
    r.xadd(keys.EVENTS_STREAM, {"a": "adv-2", "n": "1", "d": events(1, "stale")}, id=old_id(30.5))
    fresh = r.xadd(keys.EVENTS_STREAM, {"a": "adv-1", "n": "2", "d": events(2, "fresh")}, id=old_id(29))
    # The old entries were read by a sink that died: they are pending in its group.
    r.xreadgroup(keys.SINK_GROUP, "dead-sink", {keys.EVENTS_STREAM: ">"}, count=10)
    r.xadd(keys.DEAD_LETTER_STREAM, {"id": "1-0", "index": "*", "reason": "x", "a": "adv-1", "n": "2",
                                     "d": events(2, "dead")}, id=old_id(45))
    kept_letter = r.xadd(keys.DEAD_LETTER_STREAM, {"id": "2-0", "index": "*", "reason": "x", "a": "adv-1",
                                                   "n": "1", "d": events(1, "dead")})

    with caplog.at_level(logging.ERROR, logger="sink.expiry"):
        dropped = expiry.expire(r, 30)

    assert dropped == {"events": {"adv-1": 3, "adv-2": 1}, "dead": {"adv-1": 2}}
    assert [e[0] for e in r.xrange(keys.EVENTS_STREAM)] == [fresh]
    assert [e[0] for e in r.xrange(keys.DEAD_LETTER_STREAM)] == [kept_letter]
    pending = {p["message_id"] for p in r.xpending_range(keys.EVENTS_STREAM, keys.SINK_GROUP, "-", "+", 10)}
    assert pending == {fresh}  # the dropped entries are no longer waiting for an acknowledgement
    messages = [rec.getMessage() for rec in caplog.records]
    assert any("dropped 3 events of advertiser adv-1" in m and "never stored" in m for m in messages), messages
    assert any("dropped 2 events of advertiser adv-1" in m and "never requeued" in m for m in messages), messages

    # Counted where the advertiser sees it, and again on a later run.
    expiry.expire(r, 30)
    token = registry.create_token(r, "adv-1", ["reports"])
    body = api_client.get("/v1/advertiser", headers={"Authorization": f"Bearer {token}"}).get_json()
    assert body["expired_events"] == {"stream": 3, "dead_letters": 2}
    assert body["data_complete_from"] is None


def test_retention_apply_expires_the_buffers_by_the_configured_age(settings, r):
    r.xadd(keys.EVENTS_STREAM, {"a": "adv-1", "n": "1", "d": "[{}]"}, id=old_id(3))
    r.xadd(keys.EVENTS_STREAM, {"a": "adv-1", "n": "1", "d": "[{}]"})
    env = env_for(settings, BUFFER_MAX_AGE_DAYS=2)
    ran = subprocess.run([sys.executable, "-m", "clicktrail.cli", "retention", "apply"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["buffers"] == {"events": {"adv-1": 1}, "dead": {}}
    assert "never stored" in ran.stderr
    assert r.xlen(keys.EVENTS_STREAM) == 1


def test_the_buffer_maximum_age_is_at_least_a_day():
    key = {"SECRET_KEY": "k" * 32}
    assert config.load(key, environ={}).stream.buffer_max_age_days == 30
    assert config.load(key, environ={"CLICKTRAIL_BUFFER_MAX_AGE_DAYS": "7"}).stream.buffer_max_age_days == 7
    with pytest.raises(ConfigError, match="BUFFER_MAX_AGE_DAYS must be at least 1"):
        config.load({**key, "BUFFER_MAX_AGE_DAYS": 0}, environ={})


def test_retention_runs_the_same_on_a_current_clickhouse(tmp_path, settings, r):
    """No TTL anywhere: the drops and mutations that 18.16 needs work on a current engine (chDB) too."""
    from attribution.retention import Retention
    from clicktrail import schema
    from tests.chdb_client import ChdbClient

    current = ChdbClient(str(tmp_path / "chdb"))
    try:
        schema.migrate(current, "ctr")
        for adv in ("adv-1", "adv-2"):
            registry.ensure_advertiser(r, adv)
            for name, at in AGES.items():
                if adv == "adv-1" or name == "recent":
                    put_conversion(current, "ctr", adv, name, at())
        registry.update_settings(r, "adv-1", retention_days=30)
        job = Retention(settings, r, current, "ctr")
        done = job.apply()
        assert job.wait(120)
        assert held(current, "ctr", "adv-1") == {t: {"recent"} for t in TABLES}
        assert held(current, "ctr", "adv-2") == {t: {"recent"} for t in TABLES}
        months = {month_of(AGES[name]()) for name in ("alone", "shared")}
        assert all(set(done["tables"][t]["dropped_partitions"]) == months for t in TABLES)
        assert all(done["tables"][t]["deleted_rows"] >= 1 for t in TABLES)  # the 40-day-old rows
    finally:
        current.close()
