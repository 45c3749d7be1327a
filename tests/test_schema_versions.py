"""The schema and its dedup query pattern on both servers: Debian's 18.16 and a current ClickHouse."""

import secrets

import orjson
import pytest

from clicktrail import schema
from clicktrail.clickhouse import Features, server_features
from clicktrail.inserts import columns
from sink.rows import RowBuilder
from tests.chdb_client import ChdbClient


@pytest.fixture(scope="module")
def current(tmp_path_factory):
    client = ChdbClient(str(tmp_path_factory.mktemp("chdb")))
    yield client
    client.close()


def record(event_id: str, received_ms: int, source: str) -> dict:
    return {"pixel_id": "P1", "source": source, "event": "CompletePayment", "event_id": event_id,
            "event_ms": received_ms - 1000, "received_ms": received_ms, "url": "https://shop.example/?utm_source=x",
            "properties": {"value": 5}, "user_agent": "", "ip": "198.51.100.7"}


def rows(*records) -> list[tuple]:
    builder = RowBuilder(anonymize_ip=True, ua_cache_size=10)
    built, _, failures = builder.rows(b"1-0", {b"a": b"adv", b"n": b"1", b"d": orjson.dumps(list(records))})
    assert failures == []
    return built


def test_current_clickhouse_gets_the_newer_types(current):
    features = server_features(current)
    assert features.version >= (24,)
    schema.migrate(current, "ct")
    types = dict(current.execute("SELECT name, type FROM system.columns WHERE database = 'ct' AND table = 'events'"))
    assert types["event"] == "LowCardinality(String)"
    assert types["event_time"] == "DateTime('UTC')"
    assert schema.migrate(current, "ct") == []  # idempotent
    assert schema.current_version(current, "ct") == schema.MIGRATIONS[-1].version


def test_old_clickhouse_gets_plain_strings(ch, ch_database):
    types = dict(ch.execute(f"SELECT name, type FROM system.columns WHERE database = '{ch_database}' "
                            "AND table = 'events'"))
    expected = "LowCardinality(String)" if server_features(ch).low_cardinality else "String"
    assert types["event"] == expected


def test_features_gate_on_version():
    assert Features((18, 16, 1)).lc() == "String"
    assert Features((25, 8, 1)).lc() == "LowCardinality(String)"


@pytest.mark.parametrize("server", ["debian", "current"])
def test_copies_of_one_event_count_once_and_the_first_received_wins(server, current, ch, ch_database):
    client, db = (current, "ct") if server == "current" else (ch, ch_database)
    if server == "current":
        schema.migrate(current, db)
        current.execute(f"TRUNCATE TABLE {db}.events")
    insert = f"INSERT INTO {db}.events ({', '.join(schema.EVENT_COLUMN_NAMES)}) VALUES"
    first = rows(record("e1", 1_795_000_000_000, "browser"), record("e2", 1_795_000_000_000, "browser"))
    again = rows(record("e1", 1_795_000_005_000, "server"))
    client.execute(insert, columns(first), columnar=True)
    client.execute(insert, columns(again), columnar=True)
    assert client.execute(f"SELECT count() FROM {db}.events")[0][0] == 3
    kept = client.execute(f"SELECT event_id, source, ip FROM {db}.events_unique ORDER BY event_id")
    assert [tuple(r) for r in kept] == [("e1", "browser", "198.51.100.0"), ("e2", "browser", "198.51.100.0")]


@pytest.mark.parametrize("server", ["debian", "current"])
def test_upgrading_to_credits_keeps_the_latest_revision_and_fills_the_sums(server, current, ch, monkeypatch):
    """A database at version 5 (credits in `attributions`, every revision) upgrades in place."""
    client = current if server == "current" else ch
    db = f"ct_upgrade_{server}_{secrets.token_hex(3)}"  # runs side by side on one server must not share it
    client.execute(f"DROP DATABASE IF EXISTS {db}")
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:5])
    schema.migrate(client, db)
    monkeypatch.undo()
    names = [n for n in schema.ATTRIBUTION_COLUMN_NAMES]
    base = dict(advertiser_id="adv", pixel_id="P1", event="CompletePayment", event_id="e1",
                conversion_time=1_795_000_000, conversion_ms=1_795_000_000_000, value=20.0, currency="USD",
                device_type="pc", os="Linux", browser="Chrome", utm_source="", utm_campaign="", content_hash=1,
                attributed_ms=1, touch_kind="click", touch_time=1_794_990_000, touch_ms=1_794_990_000_000,
                adgroup_id="g", matched_by="click_id", model="last_click", click_window_days=7, view_window_days=1,
                credit=1.0)
    old = [{**base, "revision": 1, "touch_id": "A", "campaign_id": "cA", "ad_id": "adA"},
           {**base, "revision": 2, "touch_id": "B", "campaign_id": "cB", "ad_id": "adB"}]
    client.execute(f"INSERT INTO {db}.attributions ({', '.join(names)}) VALUES",
                   columns([tuple(row[n] for n in names) for row in old]), columnar=True)
    applied = schema.migrate(client, db)
    assert [m.version for m in applied] == list(range(6, len(schema.MIGRATIONS) + 1))
    assert client.execute(f"SELECT touch_id, revision, sign FROM {db}.credits") == [("B", 2, 1)]
    sums = f"SELECT ad_id, sum(conversions), sum(conversion_value) FROM {db}.conversion_stats GROUP BY ad_id ORDER BY ad_id"
    assert [tuple(r) for r in client.execute(sums)] == [("adB", 1.0, 20.0)]
    tables = {r[0] for r in client.execute(f"SHOW TABLES FROM {db}")}
    assert "attributions" not in tables and {"credits", "feed_changes", "touch_stats", "costs"} <= tables
    # After the upgrade, a restatement written as the attributor writes it (through credit_input:
    # revision 2 cancelled, revision 3 split between two models) reaches credits, the sums and the feed.
    head = {**base, "attributed_ms": 7, "click_window_days": 7, "view_window_days": 1}
    new = [{**head, "revision": 2, "touch_id": "B", "campaign_id": "cB", "ad_id": "adB", "sign": -1,
            "model_names": ["last_click"], "model_credits": [1.0]},
           {**head, "revision": 3, "touch_id": "C", "campaign_id": "cC", "ad_id": "adC", "sign": 1,
            "model_names": ["last_click", "linear"], "model_credits": [1.0, 0.5]}]
    client.execute(f"INSERT INTO {db}.credit_input ({', '.join(schema.CREDIT_INPUT_COLUMN_NAMES)}) VALUES",
                   columns([tuple(row[n] for n in schema.CREDIT_INPUT_COLUMN_NAMES) for row in new]), columnar=True)
    stored = client.execute(f"SELECT touch_id, revision, model, credit, sign FROM {db}.credits "
                            "ORDER BY revision, sign, model")
    assert [tuple(r) for r in stored] == [("B", 2, "last_click", 1.0, -1), ("B", 2, "last_click", 1.0, 1),
                                          ("C", 3, "last_click", 1.0, 1), ("C", 3, "linear", 0.5, 1)]
    assert [tuple(r) for r in client.execute(sums)] == [("adB", 0.0, 0.0), ("adC", 1.5, 30.0)]
    changed = client.execute(f"SELECT ad_id, model FROM {db}.feed_changes WHERE written_ms = 7 ORDER BY ad_id, model")
    assert [tuple(r) for r in changed] == [("adB", "last_click"), ("adC", "last_click"), ("adC", "linear")]
    client.execute(f"DROP DATABASE {db}")
