"""The migration files build the schema the code writes to, on 18.16 and on a current ClickHouse.

Migrations are frozen text (clicktrail/migrations/NNNN_name.sql); the column lists in
clicktrail/schema.py are what the sink and the attributor insert. These tests tie the two: a
database built from migration 1 on has every listed column, in order, with the listed type; an
old database upgraded from any version ends with exactly the schema of a fresh one; a migration
interrupted before it was recorded runs again harmlessly; and a released file's DDL never changes.
"""

from __future__ import annotations

import hashlib
import secrets

import pytest

from clicktrail import clickhouse, schema
from clicktrail.errors import ClicktrailError
from tests.chdb_client import ChdbClient
from tests.conftest import CLICKHOUSE_BASE

#: Tables the code inserts into, and the definitions its inserts are built from.
WRITTEN = {"events": schema.EVENT_COLUMNS, "touchpoints": schema.TOUCH_COLUMNS,
           "attribution_candidates": schema.CANDIDATE_COLUMNS, "credits": schema.CREDIT_COLUMNS,
           "credit_input": schema.CREDIT_INPUT_COLUMNS}

#: SHA-256 of each released migration's statements (comment lines excluded). A released migration
#: has run on someone's database: change the schema with a new file, never by editing one of these.
RELEASED = {
    1: "e33c81b7e14cc40c87b56908deaf124c7e427f8fdc6ede3ede62d4d802d51bbb",
    2: "2ffd79467515f2a0d93e95f4efe794d55dfb632a0cdf2d406725a1ea8dedb8b7",
    3: "2e9dd9303b98db224ce618396f9699e1327d5bc494f7a59c291f956f99e91f25",
    4: "76ca35a49fc1d43393063472a22511620863907b2d25216db5950311c9a9e598",
    5: "5d071ac0efa17b743bb2e18fef160ac3df8a08d99bcad77acbfeab195890ea6f",
    6: "94ab588f2b3e45a00322e6de9f5b76d35c7f1679896ac5d71ba7a4b0b362ed1b",
    7: "5a6ae526842f8ca23db1d31c965e98628e837fb2afc73380ad45afdafe533d1a",
    8: "07661a7b0c5a1fa0e41bea2eb2f888d2c14d3bf1f27aca770ea488d9029aa2c5",
    9: "f16aae30c7a97c1eb72eaaeafb1e403d01efbe76baf479de6568411be69b9bd4",
    10: "0faa41af669dfb972bf98cda60ac27ada6bbf7ed9e65ff07ce9440372643ba58",
    11: "a4a97c57ce89dfd84df63b8759de03274b2ad30ec90ffbaf25155c86c0291dac",
    12: "0fbc6b44028d97d0fcb4b53e5bd2bb7dc08c43e64e7ba16819c1433d582730bc",
    13: "3e2e7617ed4a931d1561840a524e1439a202484343395d0192c9f00ebefa5aa0",
    14: "0cdba6591b017179f6f68b746ae066350c66e28b04254976a18dba5489db3e54",
}


@pytest.fixture(scope="module")
def current(tmp_path_factory):
    client = ChdbClient(str(tmp_path_factory.mktemp("chdb-migrations")))
    yield client
    client.close()


@pytest.fixture(params=["debian", "current"])
def server(request, ch_database, current):
    """A client of either server and a fresh database name on it, dropped afterwards."""
    client = clickhouse.connect(CLICKHOUSE_BASE, database="default") if request.param == "debian" else current
    prefix = f"ct_mig_{secrets.token_hex(3)}"
    yield client, prefix
    for (name,) in client.execute(f"SELECT name FROM system.databases WHERE name LIKE '{prefix}%'"):
        client.execute(f"DROP DATABASE IF EXISTS {name}")


def _columns(client, db: str, table: str) -> list[tuple]:
    # system.columns lists a table's columns in their order (18.16 has no `position` column).
    rows = client.execute(f"SELECT name, type, default_kind, default_expression FROM system.columns "
                          f"WHERE database = '{db}' AND table = '{table}'")
    return [(position, *row) for position, row in enumerate(rows, 1)]


def _shape(client, db: str) -> dict:
    """Everything a schema is: each table's columns with defaults, engine, keys and full DDL."""
    tables = client.execute(f"SELECT name, engine_full, sorting_key, partition_key FROM system.tables "
                            f"WHERE database = '{db}' AND name != 'schema_migrations' ORDER BY name")
    return {name: (engine, sorting, partition, _columns(client, db, name),
                   client.execute(f"SHOW CREATE TABLE {db}.{name}")[0][0].replace(db, "DB"))
            for name, engine, sorting, partition in tables}


def test_a_database_built_from_the_files_has_every_column_the_code_writes(server):
    client, db = server
    features = clickhouse.server_features(client)
    assert [m.version for m in schema.migrate(client, db)] == list(range(1, len(schema.MIGRATIONS) + 1))
    for table, definition in WRITTEN.items():
        expected = [(i, name, kind.format(lc=features.lc())) for i, (name, kind) in enumerate(definition, 1)]
        assert [c[:3] for c in _columns(client, db, table)] == expected, table
    # The deduplicating view has every event column, with the table's values (argMax of a
    # LowCardinality column is a plain one on current servers).
    unique = {c[1]: _plain(c[2]) for c in _columns(client, db, "events_unique")}
    assert unique == {name: _plain(kind.format(lc=features.lc())) for name, kind in schema.EVENT_COLUMNS}


def _plain(kind: str) -> str:
    return kind[len("LowCardinality("):-1] if kind.startswith("LowCardinality(") else kind


def test_the_engines_keep_what_the_code_relies_on(server):
    client, db = server
    schema.migrate(client, db)
    tables = {name: (engine, sorting.replace(" ", "").split(",")) for name, engine, sorting in client.execute(
        f"SELECT name, engine_full, sorting_key FROM system.tables WHERE database = '{db}'")}
    # Copies of one event fold together (the first received kept): the key holds the dedup key.
    assert tables["events"][0].startswith("ReplacingMergeTree(dedup_version)")
    assert set(schema.DEDUP_KEY) <= set(tables["events"][1])
    assert tables["touchpoints"][0].startswith("ReplacingMergeTree(received_ms)")
    assert tables["credits"][0].startswith("CollapsingMergeTree(sign)")
    null = client.execute(f"SELECT engine FROM system.tables WHERE database = '{db}' AND name = 'credit_input'")
    assert [tuple(row) for row in null] == [("Null",)]
    # One insert into credit_input feeds credits, the report sums and the feed through its views.
    views = {name: query for name, query in client.execute(
        f"SELECT name, create_table_query FROM system.tables WHERE database = '{db}' AND engine = 'MaterializedView'")}
    assert {v for v, q in views.items() if f"FROM {db}.credit_input" in q} == {
        "credits_mv", "conversion_stats_mv", "feed_changes_mv"}


def test_upgrading_from_every_version_gives_the_fresh_schema(server, monkeypatch):
    client, prefix = server
    schema.migrate(client, f"{prefix}_fresh")
    fresh = _shape(client, f"{prefix}_fresh")
    assert {"events", "touchpoints", "credits", "credit_input", "touch_stats", "costs"} <= set(fresh)
    everything = schema.MIGRATIONS
    for k in range(1, len(everything)):
        db = f"{prefix}_from_{k}"
        monkeypatch.setattr(schema, "MIGRATIONS", everything[:k])
        schema.migrate(client, db)
        assert schema.current_version(client, db) == k
        monkeypatch.setattr(schema, "MIGRATIONS", everything)
        assert [m.version for m in schema.migrate(client, db)] == list(range(k + 1, len(everything) + 1))
        assert _shape(client, db) == fresh, f"upgraded from version {k}"


def test_a_migration_interrupted_before_it_was_recorded_runs_again(server):
    client, db = server
    schema.migrate(client, db)
    before = _shape(client, db)
    # As if every migration had run but none was recorded: all run again (ADD COLUMN included).
    client.execute(f"TRUNCATE TABLE {db}.schema_migrations")
    assert len(schema.migrate(client, db)) == len(schema.MIGRATIONS)
    assert _shape(client, db) == before


def _statements_digest(migration: schema.Migration) -> str:
    body = "\n".join(line for line in migration.text.splitlines() if not line.lstrip().startswith("--"))
    return hashlib.sha256(body.strip().encode()).hexdigest()


def test_released_migrations_are_never_edited():
    released = {m.version: _statements_digest(m) for m in schema.MIGRATIONS if m.version in RELEASED}
    edited = sorted(v for v, digest in released.items() if digest != RELEASED[v])
    assert edited == [], f"migrations {edited} changed: add a new migration file instead of editing a released one"
    assert set(RELEASED) <= {m.version for m in schema.MIGRATIONS}


def test_the_files_are_numbered_without_gaps(tmp_path):
    (tmp_path / "0001_first.sql").write_text("-- first\nSELECT 1;\n")
    assert [(m.version, m.name) for m in schema.load_migrations(tmp_path)] == [(1, "first")]
    (tmp_path / "0003_third.sql").write_text("-- third\nSELECT 3;\n")
    with pytest.raises(ClicktrailError, match="numbered 1..N"):
        schema.load_migrations(tmp_path)
    (tmp_path / "0003_third.sql").rename(tmp_path / "2_second.sql")
    with pytest.raises(ClicktrailError, match="2_second.sql"):
        schema.load_migrations(tmp_path)


def _upgrade_with_a_row(client, db: str, monkeypatch, version: int, insert: str) -> None:
    """Migrate ``db`` to just before ``version``, store a row with ``insert`` (``{db}`` in it), then
    migrate to the end, checking that ``version`` ran next."""
    everything = schema.MIGRATIONS
    monkeypatch.setattr(schema, "MIGRATIONS", everything[:version - 1])
    schema.migrate(client, db)
    client.execute(insert.replace("{db}", db))
    monkeypatch.setattr(schema, "MIGRATIONS", everything)
    assert [m.version for m in schema.migrate(client, db)][:1] == [version]


def test_rows_stored_before_migration_8_read_as_web_events(server, monkeypatch):
    """Migration 8 adds columns and remakes events_unique: rows already stored keep every value."""
    client, prefix = server
    db = f"{prefix}_old"
    # INSERT ... SELECT: the same text for both engines' clients (no client-side data block).
    _upgrade_with_a_row(client, db, monkeypatch, 8,
                        "INSERT INTO {db}.events (advertiser_id, pixel_id, event, event_id, event_time, source, "
                        "click_id, order_id, value, dedup_version) SELECT 'adv-1', 'CPIX1', 'Purchase', 'old-1', "
                        "toDateTime('2026-01-01 00:00:00', 'UTC'), 'server', 'E.C.P.1', 'A-1', 42.5, 7")
    rows = client.execute(f"SELECT event_id, source, click_id, order_id, value, event_source, partner_name, "
                          f"lead_id, lead_event_source FROM {db}.events_unique")
    assert [tuple(r) for r in rows] == [("old-1", "server", "E.C.P.1", "A-1", 42.5, "web", "", "", "")]


def test_rows_stored_before_migration_13_keep_their_values_and_sums_split_by_country(server, monkeypatch):
    """Migration 13 adds country and region, and puts them in conversion_stats's sorting key."""
    client, prefix = server
    db = f"{prefix}_geo"
    everything = schema.MIGRATIONS
    monkeypatch.setattr(schema, "MIGRATIONS", [m for m in everything if m.version < 13])
    schema.migrate(client, db)
    client.execute(f"INSERT INTO {db}.events (advertiser_id, pixel_id, event, event_id, event_time, source, ip, "
                   f"user_agent, value, dedup_version) SELECT 'adv-1', 'CPIX1', 'Purchase', 'old-1', "
                   f"toDateTime('2026-01-01 00:00:00', 'UTC'), 'browser', '193.0.6.0', 'UA', 42.5, 7")
    stats = ("advertiser_id, model, touch_minute, event, campaign_id, adgroup_id, ad_id, touch_kind, "
             "conversion_minute, click_window_days, view_window_days, device_type, os, browser, utm_source, "
             "utm_campaign, conversions, conversion_value")
    client.execute(f"INSERT INTO {db}.conversion_stats ({stats}) SELECT 'adv-1', 'last_click', "
                   f"toDateTime('2026-01-01 00:00:00', 'UTC'), 'Purchase', 'c', 'g', 'a', 'click', "
                   f"toDateTime('2026-01-01 00:00:00', 'UTC'), 7, 1, 'pc', 'Linux', 'Chrome', '', '', 1, 42.5")
    monkeypatch.setattr(schema, "MIGRATIONS", everything)
    assert [m.version for m in schema.migrate(client, db)][:1] == [13]
    rows = client.execute(f"SELECT event_id, ip, country, region, user_agent, value FROM {db}.events_unique")
    assert [tuple(r) for r in rows] == [("old-1", "193.0.6.0", "", "", "UA", 42.5)]
    # A conversion credited after the upgrade, through credit_input as the attributor writes it,
    # in another country: the kept sums hold both, apart, after merging.
    client.execute(f"INSERT INTO {db}.credit_input (advertiser_id, pixel_id, event, event_id, conversion_time, "
                   f"value, device_type, os, browser, country, region, touch_kind, touch_time, campaign_id, "
                   f"adgroup_id, ad_id, click_window_days, view_window_days, sign, model_names, model_credits) "
                   f"SELECT 'adv-1', 'CPIX1', 'Purchase', 'new-1', toDateTime('2026-01-01 00:00:30', 'UTC'), 10, "
                   f"'pc', 'Linux', 'Chrome', 'NL', 'NL-NH', 'click', toDateTime('2026-01-01 00:00:10', 'UTC'), "
                   f"'c', 'g', 'a', 7, 1, 1, ['last_click'], [1.]")
    client.execute(f"OPTIMIZE TABLE {db}.conversion_stats FINAL")
    sums = client.execute(f"SELECT country, region, conversions, conversion_value FROM {db}.conversion_stats "
                          f"ORDER BY country")
    assert [tuple(r) for r in sums] == [("", "", 1.0, 42.5), ("NL", "NL-NH", 1.0, 10.0)]
    (country,) = client.execute(f"SELECT country FROM {db}.credits WHERE event_id = 'new-1'")[0]
    assert country == "NL"


def test_rows_stored_before_migration_10_read_their_identifiers_as_lists_and_new_values_are_indexed(server,
                                                                                                monkeypatch):
    """Migration 10 adds the identifier lists: a row already stored reads its single value as a list
    of one; a row stored after it has every value of its lists in event_identities, once."""
    client, prefix = server
    db = f"{prefix}_ids"
    _upgrade_with_a_row(client, db, monkeypatch, 10,
                        "INSERT INTO {db}.events (advertiser_id, pixel_id, event, event_id, event_time, "
                        "email_sha256, external_id_sha256, dedup_version) SELECT 'adv-1', 'CPIX1', 'Purchase', "
                        "'old-1', toDateTime('2026-01-01 00:00:00', 'UTC'), 'e-old', 'x-old', 7")
    client.execute(f"INSERT INTO {db}.events (advertiser_id, pixel_id, event, event_id, event_time, email_sha256, "
                   f"emails_sha256, phone_sha256, phones_sha256) SELECT 'adv-1', 'CPIX1', 'Purchase', 'new-1', "
                   f"toDateTime('2026-01-02 00:00:00', 'UTC'), 'e1', ['e1', 'e2', 'e3'], 'p1', ['p1']")
    rows = client.execute(f"SELECT event_id, email_sha256, emails_sha256, phones_sha256, external_ids_sha256 "
                          f"FROM {db}.events_unique ORDER BY event_id")
    assert [tuple(r) for r in rows] == [("new-1", "e1", ["e1", "e2", "e3"], ["p1"], []),
                                        ("old-1", "e-old", ["e-old"], [], ["x-old"])]
    found = client.execute(f"SELECT event_id, identity_kind, identity FROM {db}.event_identities "
                           f"ORDER BY event_id, identity_kind, identity")
    assert [tuple(r) for r in found] == [("new-1", "email", "e1"), ("new-1", "email", "e2"), ("new-1", "email", "e3"),
                                         ("new-1", "phone", "p1"), ("old-1", "email", "e-old"),
                                         ("old-1", "external_id", "x-old")]


def test_touchpoints_stored_before_migration_11_count_as_before_and_bots_apart_after(server, monkeypatch):
    """Migration 11 flags bots' clicks: stored touchpoints read is_bot 0 and keep counting; from then
    on a bot's click goes to bot_touch_stats, never to touch_stats."""
    client, prefix = server
    db = f"{prefix}_old11"
    everything = schema.MIGRATIONS
    monkeypatch.setattr(schema, "MIGRATIONS", everything[:10])
    schema.migrate(client, db)
    insert = (f"INSERT INTO {db}.touchpoints (advertiser_id, kind, touch_id, touch_time, touch_ms, campaign_id, "
              "adgroup_id, ad_id, received_ms, counted{bot}) SELECT 'adv-1', 'click', '{id}', "
              "toDateTime('2026-01-01 00:00:00', 'UTC'), 1767225600000, 'c', 'g', 'a', 1, 1{flag}")
    client.execute(insert.format(bot="", id="old-1", flag=""))
    monkeypatch.setattr(schema, "MIGRATIONS", everything)
    assert [m.version for m in schema.migrate(client, db)] == list(range(11, len(everything) + 1))
    client.execute(insert.format(bot=", is_bot", id="person-1", flag=", 0"))
    client.execute(insert.format(bot=", is_bot", id="curl-1", flag=", 1"))
    flags = client.execute(f"SELECT touch_id, is_bot FROM {db}.touchpoints ORDER BY touch_id")
    assert [tuple(r) for r in flags] == [("curl-1", 1), ("old-1", 0), ("person-1", 0)]
    assert client.execute(f"SELECT sum(touches) FROM {db}.touch_stats")[0][0] == 2
    assert client.execute(f"SELECT sum(touches) FROM {db}.bot_touch_stats")[0][0] == 1


def test_touchpoints_stored_before_migration_14_read_their_identifiers_as_lists_and_new_values_are_indexed(
        server, monkeypatch):
    """Migration 14 adds the touchpoints' identifier lists: a row already stored reads its single
    value as a list of one; a row stored after it has every value of its lists in touch_identities, once."""
    client, prefix = server
    db = f"{prefix}_touch_ids"
    columns = ("advertiser_id, kind, touch_id, touch_time, touch_ms, campaign_id, adgroup_id, ad_id, received_ms, "
               "counted, email_sha256, external_id_sha256")
    _upgrade_with_a_row(client, db, monkeypatch, 14,
                        f"INSERT INTO {{db}}.touchpoints ({columns}) SELECT 'adv-1', 'click', 'old-1', "
                        "toDateTime('2026-01-01 00:00:00', 'UTC'), 1767225600000, 'c', 'g', 'a', 1, 1, 'e-old', 'x-old'")
    client.execute(f"INSERT INTO {db}.touchpoints ({columns}, emails_sha256, phone_sha256, phones_sha256) "
                   "SELECT 'adv-1', 'click', 'new-1', toDateTime('2026-01-02 00:00:00', 'UTC'), 1767312000000, 'c', "
                   "'g', 'a', 2, 1, 'e1', '', ['e1', 'e2', 'e3'], 'p1', ['p1']")
    rows = client.execute(f"SELECT touch_id, email_sha256, emails_sha256, phones_sha256, external_ids_sha256 "
                          f"FROM {db}.touchpoints ORDER BY touch_id")
    assert [tuple(r) for r in rows] == [("new-1", "e1", ["e1", "e2", "e3"], ["p1"], []),
                                        ("old-1", "e-old", ["e-old"], [], ["x-old"])]
    found = client.execute(f"SELECT touch_id, identity_kind, identity FROM {db}.touch_identities "
                           f"ORDER BY touch_id, identity_kind, identity")
    assert [tuple(r) for r in found] == [("new-1", "email", "e1"), ("new-1", "email", "e2"), ("new-1", "email", "e3"),
                                         ("new-1", "phone", "p1"), ("old-1", "email", "e-old"),
                                         ("old-1", "external_id", "x-old")]
