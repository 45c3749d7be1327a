"""The ClickHouse schema as numbered migrations.

Each migration is a list of statements that are safe to run again (``IF NOT EXISTS``), so a
migration interrupted half way simply runs again. Applied versions are recorded in
``schema_migrations``. Statements are built for the connected server's version: newer
features (LowCardinality) are used only where the server has them, so the same code runs on
Debian's ClickHouse 18.16 and on a current LTS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from clickhouse_driver import Client

from clicktrail.clickhouse import Features, server_features
from pixel import records

#: The events table's columns: (name, type) where type may use {lc} for LowCardinality(String).
#: Defined, with the record fields each is built from, by ``EventRow`` in pixel/records.py.
EVENT_COLUMNS: list[tuple[str, str]] = records.column_types(records.EventRow)
EVENT_COLUMN_NAMES = [name for name, _ in EVENT_COLUMNS]
#: The key that makes two rows the same event: pixel and server copies, retries, re-deliveries.
DEDUP_KEY = ("advertiser_id", "pixel_id", "event", "event_id")


def _events_table(db: str, f: Features) -> list[str]:
    columns = _columns_sql(EVENT_COLUMNS, f)
    # ReplacingMergeTree folds copies of one event together as parts merge, keeping the row with the
    # highest dedup_version (the sink writes max - received_ms, so the first copy received wins).
    # Merges are eventual, so queries still deduplicate: see events_unique and docs/schema.md.
    return [
        f"""CREATE TABLE IF NOT EXISTS {db}.events (
  {columns}
) ENGINE = ReplacingMergeTree(dedup_version)
PARTITION BY toYYYYMM(event_time)
ORDER BY (advertiser_id, pixel_id, event, toDate(event_time), event_id)"""
    ]


def _events_unique_view(db: str, f: Features) -> list[str]:
    keyed = set(DEDUP_KEY)
    # The version is renamed in a subquery: an alias equal to a column used inside another
    # aggregate is refused by ClickHouse ("aggregate function found inside another").
    picked = ",\n  ".join(f"argMax({name}, _v) AS {name}" for name in EVENT_COLUMN_NAMES if name not in keyed)
    return [
        f"""CREATE VIEW IF NOT EXISTS {db}.events_unique AS
SELECT
  {', '.join(DEDUP_KEY)},
  {picked}
FROM (SELECT *, dedup_version AS _v FROM {db}.events)
GROUP BY {', '.join(DEDUP_KEY)}"""
    ]


#: Rows per index mark in tables the attributor reads by key: thousands of scattered point
#: lookups per tick each read one granule, so small granules read far fewer rows (default 8192).
LOOKUP_GRANULARITY = 1024

#: Ad clicks and impressions: the touchpoints conversions are attributed to (``TouchRow``).
TOUCH_COLUMNS: list[tuple[str, str]] = records.column_types(records.TouchRow)
TOUCH_COLUMN_NAMES = [name for name, _ in TOUCH_COLUMNS]

#: Columns shared by the two attribution tables: the conversion, the revision, the touchpoint.
_CONVERSION_COLUMNS: list[tuple[str, str]] = [
    ("advertiser_id", "{lc}"),
    ("pixel_id", "{lc}"),
    ("event", "{lc}"),
    ("event_id", "String"),
    ("conversion_time", "DateTime('UTC')"),
    ("conversion_ms", "UInt64"),
    ("value", "Float64"),
    ("currency", "{lc}"),
    ("device_type", "{lc}"),
    ("os", "{lc}"),
    ("browser", "{lc}"),
    ("utm_source", "{lc}"),
    ("utm_campaign", "String"),
    ("revision", "UInt32"),
    ("content_hash", "UInt64"),
    ("attributed_ms", "UInt64"),
    ("touch_kind", "{lc}"),  # click, impression, or "" for a conversion with no touchpoint (organic)
    ("touch_id", "String"),
    ("touch_time", "DateTime('UTC')"),
    ("touch_ms", "UInt64"),
    ("campaign_id", "String"),
    ("adgroup_id", "String"),
    ("ad_id", "String"),
    ("matched_by", "{lc}"),  # click_id, browser_id, external_id, email, phone
]
CANDIDATE_COLUMNS = _CONVERSION_COLUMNS
CANDIDATE_COLUMN_NAMES = [name for name, _ in CANDIDATE_COLUMNS]
ATTRIBUTION_COLUMNS = _CONVERSION_COLUMNS + [
    ("model", "{lc}"),
    ("click_window_days", "UInt8"),
    ("view_window_days", "UInt8"),
    ("credit", "Float64"),
]
ATTRIBUTION_COLUMN_NAMES = [name for name, _ in ATTRIBUTION_COLUMNS]


def _columns_sql(columns: list[tuple[str, str]], f: Features) -> str:
    return ",\n  ".join(f"{name} {ctype.format(lc=f.lc())}" for name, ctype in columns)


def _touchpoints_table(db: str, f: Features) -> list[str]:
    # Re-posting a touchpoint replaces it: the latest copy received wins (an import may correct one).
    return [
        f"""CREATE TABLE IF NOT EXISTS {db}.touchpoints (
  {_columns_sql(TOUCH_COLUMNS[:-1], f)}
) ENGINE = ReplacingMergeTree(received_ms)
PARTITION BY toYYYYMM(touch_time)
ORDER BY (advertiser_id, kind, touch_id)
SETTINGS index_granularity = {LOOKUP_GRANULARITY}"""
    ]


def _attribution_tables(db: str, f: Features) -> list[str]:
    # Every revision of a conversion's attribution is written in one insert block, which ClickHouse
    # stores atomically; readers take the highest revision per conversion. Re-writing the same
    # revision (a tick re-run after a crash) gives identical rows, folded by the Replacing engine
    # and by FINAL, since the whole row identity is in the sorting key.
    key = "advertiser_id, pixel_id, event, event_id, revision"
    return [
        f"""CREATE TABLE IF NOT EXISTS {db}.attribution_candidates (
  {_columns_sql(CANDIDATE_COLUMNS, f)}
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(conversion_time)
ORDER BY ({key}, touch_kind, touch_id)""",
        f"""CREATE TABLE IF NOT EXISTS {db}.attributions (
  {_columns_sql(ATTRIBUTION_COLUMNS, f)}
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(conversion_time)
ORDER BY ({key}, model, touch_kind, touch_id)""",
    ]


def _identity_indexes(db: str, f: Features) -> list[str]:
    """Lookup tables by identity, filled by materialized views, so the attributor never scans.

    The attributor asks "which events carried this click id / browser id / hashed email" and
    "which touchpoints carry this identity"; the main tables are ordered for reports instead, so
    these two small tables, ordered by identity, answer with primary-key lookups.
    """
    lc = f.lc()
    pairs = lambda cols: "[" + ", ".join(f"({c}, '{k}')" for c, k in cols) + "]"  # noqa: E731
    event_pairs = pairs([("click_id", "click"), ("browser_id", "browser"), ("email_sha256", "email"),
                         ("phone_sha256", "phone"), ("external_id_sha256", "external_id")])
    touch_pairs = pairs([("browser_id", "browser"), ("email_sha256", "email"), ("phone_sha256", "phone"),
                         ("external_id_sha256", "external_id")])
    event_select = (f"SELECT advertiser_id, tupleElement(pair, 1) AS identity, tupleElement(pair, 2) AS "
                    f"identity_kind, pixel_id, event, event_id, event_time, event_ms, browser_id, click_id "
                    f"FROM {db}.events ARRAY JOIN arrayFilter(p -> tupleElement(p, 1) != '', {event_pairs}) AS pair")
    touch_select = (f"SELECT advertiser_id, tupleElement(pair, 1) AS identity, tupleElement(pair, 2) AS "
                    f"identity_kind, kind, touch_id, touch_time FROM {db}.touchpoints "
                    f"ARRAY JOIN arrayFilter(p -> tupleElement(p, 1) != '', {touch_pairs}) AS pair")
    return [
        f"""CREATE TABLE IF NOT EXISTS {db}.event_identities (
  advertiser_id {lc}, identity String, identity_kind {lc}, pixel_id {lc}, event {lc}, event_id String,
  event_time DateTime('UTC'), event_ms UInt64, browser_id String, click_id String
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (advertiser_id, identity, identity_kind, pixel_id, event, event_id)
SETTINGS index_granularity = {LOOKUP_GRANULARITY}""",
        f"""CREATE TABLE IF NOT EXISTS {db}.touch_identities (
  advertiser_id {lc}, identity String, identity_kind {lc}, kind {lc}, touch_id String, touch_time DateTime('UTC')
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(touch_time)
ORDER BY (advertiser_id, identity, identity_kind, kind, touch_id)
SETTINGS index_granularity = {LOOKUP_GRANULARITY}""",
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.event_identities_mv TO {db}.event_identities AS {event_select}",
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.touch_identities_mv TO {db}.touch_identities AS {touch_select}",
        # Backfill what was stored before the views existed (re-running adds copies the engine folds).
        f"INSERT INTO {db}.event_identities {event_select}",
        f"INSERT INTO {db}.touch_identities {touch_select}",
    ]


#: The credited rows the attributor writes: ATTRIBUTION_COLUMNS plus a sign. A restatement writes,
#: in ONE insert, the new revision's rows (sign 1) and copies of the previous revision's rows with
#: sign -1, so everything summed from this table (conversion_stats, feed_changes) stays exact.
CREDIT_COLUMNS = ATTRIBUTION_COLUMNS + [("sign", "Int8")]
CREDIT_COLUMN_NAMES = [name for name, _ in CREDIT_COLUMNS]
#: Conversion dimensions of reports kept in conversion_stats besides the ad and times.
STAT_DIMENSIONS = ("device_type", "os", "browser", "utm_source", "utm_campaign")


def _credits_and_stats(db: str, f: Features) -> list:
    """Credits with cancel rows, and what reports and the optimizer feed read, kept by views.

    The insert of a revision is one block, and materialized views run on that block, so the
    credited rows, the summed stats and the feed's change log can never disagree.
    """
    lc = f.lc()
    key = "advertiser_id, pixel_id, event, event_id, revision, model, touch_kind, touch_id"
    dims = ", ".join(STAT_DIMENSIONS)
    stat_keys = (f"advertiser_id, model, touch_minute, event, campaign_id, adgroup_id, ad_id, touch_kind, "
                 f"conversion_minute, click_window_days, view_window_days, {dims}")
    previous = ", ".join(ATTRIBUTION_COLUMN_NAMES)
    return [
        # Collapsing: a revision's rows and their cancel copies (same sorting key) vanish together
        # as parts merge, so the table keeps only the current revision of each conversion.
        f"""CREATE TABLE IF NOT EXISTS {db}.credits (
  {_columns_sql(CREDIT_COLUMNS, f)}
) ENGINE = CollapsingMergeTree(sign)
PARTITION BY toYYYYMM(conversion_time)
ORDER BY ({key})""",
        f"""CREATE TABLE IF NOT EXISTS {db}.conversion_stats (
  advertiser_id {lc}, model {lc}, touch_minute DateTime('UTC'), event {lc}, campaign_id String, adgroup_id String,
  ad_id String, touch_kind {lc}, conversion_minute DateTime('UTC'), click_window_days UInt8, view_window_days UInt8,
  device_type {lc}, os {lc}, browser {lc}, utm_source {lc}, utm_campaign String,
  conversions Float64, conversion_value Float64
) ENGINE = SummingMergeTree((conversions, conversion_value))
PARTITION BY toYYYYMM(touch_minute)
ORDER BY ({stat_keys})""",
        _stats_view(db, f"FROM {db}.credits"),
        # What changed when, for the optimizer feed's cursors: rows from credits (both signs, so
        # the bucket that lost a conversion is listed too) and touch marks written by the
        # attributor (event '').
        f"""CREATE TABLE IF NOT EXISTS {db}.feed_changes (
  advertiser_id {lc}, written_ms UInt64, model {lc}, event {lc}, touch_minute DateTime('UTC'),
  campaign_id String, adgroup_id String, ad_id String
) ENGINE = MergeTree
PARTITION BY toYYYYMMDD(toDateTime(intDiv(written_ms, 1000), 'UTC'))
ORDER BY (advertiser_id, written_ms)""",
        _feed_view(db, f"FROM {db}.credits"),
        # Clicks and impressions per ad and minute. Writers flag the first copy of each id
        # (`counted`), so a sum counts a re-posted or re-delivered touchpoint once: merging exact
        # distinct-count states instead costs ten times more per report.
        AddColumn("touchpoints", "counted", "UInt8 DEFAULT 1"),
        f"""CREATE TABLE IF NOT EXISTS {db}.touch_stats (
  advertiser_id {lc}, kind {lc}, touch_minute DateTime('UTC'), campaign_id String, adgroup_id String, ad_id String,
  touches UInt64
) ENGINE = SummingMergeTree(touches)
PARTITION BY toYYYYMM(touch_minute)
ORDER BY (advertiser_id, kind, touch_minute, campaign_id, adgroup_id, ad_id)""",
        f"""CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.touch_stats_mv TO {db}.touch_stats AS
SELECT advertiser_id, kind, toStartOfMinute(touch_time) AS touch_minute, campaign_id, adgroup_id, ad_id,
  toUInt64(sum(counted)) AS touches
FROM {db}.touchpoints GROUP BY advertiser_id, kind, touch_minute, campaign_id, adgroup_id, ad_id""",
        # Daily spend per ad; each posting of a day is one version, and the latest version of a
        # day is the day (re-posting a day replaces all of it).
        f"""CREATE TABLE IF NOT EXISTS {db}.costs (
  advertiser_id {lc}, day Date, version UInt64, campaign_id String, adgroup_id String, ad_id String,
  spend Float64, impressions UInt64, has_impressions UInt8, currency {lc}
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (advertiser_id, day, version, campaign_id, adgroup_id, ad_id)""",
        # Backfill: the current revision of what earlier versions stored, then touch counts. Each
        # runs only while its target is empty, so re-running the migration adds nothing twice.
        f"""INSERT INTO {db}.credits ({previous}, sign)
SELECT {previous}, 1 FROM {db}.attributions FINAL
WHERE (advertiser_id, pixel_id, event, event_id, revision) IN
      (SELECT advertiser_id, pixel_id, event, event_id, max(revision) FROM {db}.attributions
       GROUP BY advertiser_id, pixel_id, event, event_id)
  AND (SELECT count() FROM {db}.credits) = 0""",
        f"""INSERT INTO {db}.touch_stats
SELECT advertiser_id, kind, toStartOfMinute(touch_time) AS touch_minute, campaign_id, adgroup_id, ad_id,
  uniqExact(touch_id)
FROM {db}.touchpoints WHERE (SELECT count() FROM {db}.touch_stats) = 0
GROUP BY advertiser_id, kind, touch_minute, campaign_id, adgroup_id, ad_id""",
        f"DROP TABLE IF EXISTS {db}.attributions",
    ]


#: What the attributor inserts: one row per conversion and touchpoint (or none), with the models
#: crediting it and their credits as parallel arrays, expanded into `credits` by a view. A
#: conversion with one touchpoint (most of them) is one row instead of five.
CREDIT_INPUT_COLUMNS = _CONVERSION_COLUMNS + [
    ("click_window_days", "UInt8"),
    ("view_window_days", "UInt8"),
    ("sign", "Int8"),
    ("model_names", "Array(String)"),
    ("model_credits", "Array(Float64)"),
]
CREDIT_INPUT_COLUMN_NAMES = [name for name, _ in CREDIT_INPUT_COLUMNS]


def _credit_input(db: str, f: Features) -> list:
    """Credits written through a Null table, expanded per model by ClickHouse.

    The stats and the feed's change log are kept by views on the same input (18.16 does not run
    the views of a table written by another view), so one insert block still feeds all three.
    Stop the attributor while this runs: a revision written between the DROP and the CREATE
    would miss the stats.
    """
    expanded = f"FROM {db}.credit_input ARRAY JOIN model_names AS model, model_credits AS credit"
    return [
        f"""CREATE TABLE IF NOT EXISTS {db}.credit_input (
  {_columns_sql(CREDIT_INPUT_COLUMNS, f)}
) ENGINE = Null""",
        f"DROP TABLE IF EXISTS {db}.conversion_stats_mv",
        f"DROP TABLE IF EXISTS {db}.feed_changes_mv",
        f"""CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.credits_mv TO {db}.credits AS
SELECT {', '.join(CREDIT_COLUMN_NAMES)} {expanded}""",
        _stats_view(db, expanded),
        _feed_view(db, expanded),
    ]


def _stats_view(db: str, source: str) -> str:
    """conversion_stats from credited rows: attributed conversions only (organic ones have no ad to
    report under); zero credits (duplicates) add nothing."""
    return f"""CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.conversion_stats_mv TO {db}.conversion_stats AS
SELECT advertiser_id, model, toStartOfMinute(touch_time) AS touch_minute, event, campaign_id, adgroup_id, ad_id,
  touch_kind, toStartOfMinute(conversion_time) AS conversion_minute, click_window_days, view_window_days,
  {', '.join(STAT_DIMENSIONS)}, sign * credit AS conversions, sign * credit * value AS conversion_value
{source} WHERE touch_kind != '' AND credit != 0"""


def _feed_view(db: str, source: str) -> str:
    """feed_changes from credited rows of both signs, so a bucket that lost a conversion is listed too."""
    return f"""CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.feed_changes_mv TO {db}.feed_changes AS
SELECT advertiser_id, attributed_ms AS written_ms, model, event, toStartOfMinute(touch_time) AS touch_minute,
  campaign_id, adgroup_id, ad_id
{source} WHERE touch_kind != ''"""


@dataclass(frozen=True)
class AddColumn:
    """ALTER TABLE ... ADD COLUMN, skipped when the column exists (18.16 has no IF NOT EXISTS there)."""

    table: str
    name: str
    type: str

    def run(self, client: Client, db: str) -> None:
        # Names are our own identifiers (never user input), so they are inlined like every DDL name.
        exists = client.execute(f"SELECT count() FROM system.columns WHERE database = '{db}' "
                                f"AND table = '{self.table}' AND name = '{self.name}'")[0][0]
        if not exists:
            client.execute(f"ALTER TABLE {db}.{self.table} ADD COLUMN {self.name} {self.type}")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: Callable[[str, Features], list[str]]


MIGRATIONS: list[Migration] = [
    Migration(1, "events table", _events_table),
    Migration(2, "events_unique view: one row per (advertiser, pixel, event, event_id)", _events_unique_view),
    Migration(3, "touchpoints table: ad clicks and impressions", _touchpoints_table),
    Migration(4, "attribution tables: candidate touchpoints and credited rows, by revision", _attribution_tables),
    Migration(5, "identity lookup tables for the attributor, filled by materialized views", _identity_indexes),
    Migration(6, "credits with cancel rows; conversion and touch stats, feed change log and costs for reports",
              _credits_and_stats),
    Migration(7, "credits written through credit_input (one row per touchpoint, expanded per model)",
              _credit_input),
]


def _ensure_bookkeeping(client: Client, db: str) -> None:
    client.execute(f"CREATE DATABASE IF NOT EXISTS {db}")
    client.execute(
        f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
        "(version UInt32, name String, applied_at DateTime('UTC')) ENGINE = MergeTree ORDER BY version"
    )


def applied_versions(client: Client, db: str) -> set[int]:
    return {v for (v,) in client.execute(f"SELECT DISTINCT version FROM {db}.schema_migrations")}


def migrate(client: Client, db: str) -> list[Migration]:
    """Apply every migration not yet applied, in order; return those applied now."""
    features = server_features(client)
    _ensure_bookkeeping(client, db)
    done = applied_versions(client, db)
    applied = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        for statement in migration.statements(db, features):
            if isinstance(statement, AddColumn):
                statement.run(client, db)
            else:
                client.execute(statement)
        client.execute(
            f"INSERT INTO {db}.schema_migrations (version, name, applied_at) VALUES",
            [(migration.version, migration.name, _now())],
        )
        applied.append(migration)
    return applied


def current_version(client: Client, db: str) -> int:
    return max(applied_versions(client, db), default=0)


def _now():
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).replace(tzinfo=None)
