"""The ClickHouse schema: the columns the code writes, and the runner of the numbered migrations.

Each migration is a file, ``clicktrail/migrations/NNNN_name.sql``, frozen once released: its DDL is
plain text, never built from the column lists below, so changing a list cannot change what an old
migration creates (a new column is a new migration; see docs/schema.md). Statements are safe to
run again (``IF NOT EXISTS``), so a migration interrupted half way simply runs again. Applied
versions are recorded in ``schema_migrations``. The text is specialised for the connected
server's version: ``{lc}`` becomes LowCardinality(String) only where the server has it, so the
same files run on Debian's ClickHouse 18.16 and on a current LTS.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from clickhouse_driver import Client

from clicktrail.clickhouse import Features, server_features
from clicktrail.errors import ClicktrailError
from pixel import records

#: The events table's columns: (name, type) where type may use {lc} for LowCardinality(String).
#: Defined, with the record fields each is built from, by ``EventRow`` in pixel/records.py.
EVENT_COLUMNS: list[tuple[str, str]] = records.column_types(records.EventRow)
EVENT_COLUMN_NAMES = [name for name, _ in EVENT_COLUMNS]
#: The key that makes two rows the same event: pixel and server copies, retries, re-deliveries.
DEDUP_KEY = ("advertiser_id", "pixel_id", "event", "event_id")

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
    ("country", "{lc}"),  # the converting event's (migration 13)
    ("region", "{lc}"),
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

#: The credited rows the attributor writes: ATTRIBUTION_COLUMNS plus a sign. A restatement writes,
#: in ONE insert, the new revision's rows (sign 1) and copies of the previous revision's rows with
#: sign -1, so everything summed from this table (conversion_stats, feed_changes) stays exact.
CREDIT_COLUMNS = ATTRIBUTION_COLUMNS + [("sign", "Int8")]
CREDIT_COLUMN_NAMES = [name for name, _ in CREDIT_COLUMNS]

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


#: Where the migration files live: package data, so they ship inside the wheel.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_FILE_NAME = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")
#: An ALTER the runner makes idempotent itself: 18.16 has no ADD COLUMN IF NOT EXISTS.
_ADD_COLUMN = re.compile(r"ALTER TABLE (\w+)\.(\w+) ADD COLUMN (\w+) ")


@dataclass(frozen=True)
class Migration:
    """One migration file: its first line is ``-- <name>``, then statements each ending in ``;``.

    Lines starting with ``--`` are comments and never sent; ``{db}`` stands for the database and
    ``{lc}`` for the server's low-cardinality string type.
    """

    version: int
    name: str
    text: str

    def statements(self, db: str, features: Features) -> list[str]:
        body = "\n".join(line for line in self.text.splitlines() if not line.lstrip().startswith("--"))
        # clickhouse-driver sends one statement per call, so the file is cut at each ';' ending a line.
        return [part.strip().replace("{db}", db).replace("{lc}", features.lc())
                for part in re.split(r";[ \t]*$", body, flags=re.MULTILINE) if part.strip()]


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Every NNNN_name.sql in ``directory``, numbered 1, 2, 3... without a gap."""
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.fullmatch(path.name)
        text = path.read_text("utf-8")
        if match is None or not text.startswith("-- "):
            raise ClicktrailError(f"migration {path.name}: want NNNN_name.sql starting with a '-- name' line")
        found.append(Migration(int(match.group(1)), text.split("\n", 1)[0][3:].strip(), text))
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise ClicktrailError(f"migrations in {directory} must be numbered 1..N: {[m.version for m in found]}")
    return found


MIGRATIONS: list[Migration] = load_migrations()


def _ensure_bookkeeping(client: Client, db: str) -> None:
    client.execute(f"CREATE DATABASE IF NOT EXISTS {db}")
    client.execute(
        f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
        "(version UInt32, name String, applied_at DateTime('UTC')) ENGINE = MergeTree ORDER BY version"
    )


def applied_versions(client: Client, db: str) -> set[int]:
    return {v for (v,) in client.execute(f"SELECT DISTINCT version FROM {db}.schema_migrations")}


def migrate(client: Client, db: str, *, rewrite: Callable[[str], str] | None = None,
            until: int | None = None) -> list[Migration]:
    """Apply every migration not yet applied, in order; return those applied now.

    ``rewrite`` changes each statement before it is sent (a cluster's replicated engines);
    ``until`` stops after that version (a cluster's replicas take each migration in turn).
    """
    features = server_features(client)
    if is_cluster_database(client, db):
        return _check_cluster_current(client, db)
    _ensure_bookkeeping(client, db)
    done = applied_versions(client, db)
    applied = []
    for migration in MIGRATIONS:
        if migration.version in done or (until is not None and migration.version > until):
            continue
        for statement in migration.statements(db, features):
            statement = rewrite(statement) if rewrite else statement
            if not _column_exists(client, statement):
                client.execute(statement)
        client.execute(
            f"INSERT INTO {db}.schema_migrations (version, name, applied_at) VALUES",
            [(migration.version, migration.name, _now())],
        )
        applied.append(migration)
    return applied


def is_cluster_database(client: Client, db: str) -> bool:
    """True when ``db`` is the Distributed side of a cluster schema (clicktrail/cluster.py): its
    bookkeeping is a view of the node's local database."""
    return client.execute("SELECT count() FROM system.tables WHERE database = %(d)s "
                          "AND name = 'schema_migrations' AND engine = 'View'", {"d": db})[0][0] > 0


def _check_cluster_current(client: Client, db: str) -> list[Migration]:
    # A cluster is migrated on all its nodes at once; a single-server run here would create
    # local tables beside the Distributed ones.
    missing = [m.version for m in MIGRATIONS if m.version not in applied_versions(client, db)]
    if missing:
        raise ClicktrailError(f"database {db} is on a ClickHouse cluster and lacks migrations {missing}: "
                              "run `clicktrail migrate --cluster NAME`")
    return []


def _column_exists(client: Client, statement: str) -> bool:
    """True when ``statement`` adds a column that is already there (a migration run again)."""
    add = _ADD_COLUMN.match(statement)
    if add is None:
        return False
    # Names are our own identifiers from the migration files, so they are inlined like every DDL name.
    db, table, name = add.groups()
    return client.execute(f"SELECT count() FROM system.columns WHERE database = '{db}' "
                          f"AND table = '{table}' AND name = '{name}'")[0][0] > 0


def current_version(client: Client, db: str) -> int:
    return max(applied_versions(client, db), default=0)


def _now():
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).replace(tzinfo=None)
