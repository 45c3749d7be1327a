"""The schema on a ClickHouse cluster: local tables on every node, Distributed tables over them.

Layout (docs/scaling.md, "ClickHouse cluster"): for the database ``{db}`` the code is pointed at,
every node holds a database ``{db}_local`` made by the same numbered migrations as a single
server (the same tables, materialized views and views, so each view runs on the node where its
rows land), and in ``{db}`` one Distributed table per table or view of ``{db}_local``, with the
same name and columns. The code queries and inserts ``{db}.events`` etc. exactly as on one
server. Every table is sharded by ``cityHash64(advertiser_id)``: an advertiser's rows, and so
every query the attributor and reports make (always for one advertiser), stay on one shard.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from clickhouse_driver import Client

from clicktrail import schema
from clicktrail.clickhouse import connect
from clicktrail.errors import ConfigError

#: Appended to the database name for the node-local tables.
LOCAL_SUFFIX = "_local"
#: The sharding key of every table with an advertiser; the others (erasure_steps) go anywhere.
ADVERTISER_KEY = "cityHash64(advertiser_id)"
#: What every node's default profile must set (docs/scaling.md, "ClickHouse cluster"): an
#: insert returns once each shard has its rows (not when they are queued on the node that took
#: them), and a subquery over a Distributed table inside a distributed query reads the shard's
#: own local table, which is right because every table is sharded by advertiser.
REQUIRED_SETTINGS = {"insert_distributed_sync": "1", "distributed_product_mode": "local"}
#: What every node must also set where the tables are replicated (docs/scaling.md, "Replicas"):
#: no dropping of an inserted block because an earlier one had the same bytes, as a single server
#: never drops one. The tables inserted into directly are Replacing ones, so a sink's retried batch
#: folds anyway; dedup would only cost a ZooKeeper write per block, and on servers that also dedup
#: the views' blocks (deduplicate_blocks_in_dependent_materialized_views) it would drop one of
#: two equal rows of a view's table (two clicks on one ad in one minute, stored apart).
REPLICATED_SETTINGS = {"insert_deduplicate": "0"}
#: Where replicated tables keep their coordination state in ZooKeeper; {shard} and {replica}
#: are the node's macros.
REPLICA_PATH = "/clickhouse/tables/{{shard}}/{db}/{table}"
_ENGINE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+)\.(\w+) \((?:.|\n)*\) ENGINE = (\w*MergeTree)(?:\(((?:[^()]|\([^()]*\))*)\))?")


def local_database(db: str) -> str:
    return db + LOCAL_SUFFIX


@dataclass(frozen=True)
class Node:
    """One server of the cluster, as the ``remote_servers`` configuration names it."""

    shard: int
    host: str
    port: int

    def url(self, like: str) -> str:
        """``like`` (a clickhouse:// URL, for its user, password and options) pointed at this node."""
        parts = urlsplit(like)
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@" if credentials else ""
        # Other nodes to fail over to (alt_hosts) would send this node's statements elsewhere.
        query = "&".join(p for p in parts.query.split("&") if p and not p.startswith("alt_hosts="))
        return urlunsplit((parts.scheme, f"{netloc}{self.host}:{self.port}", parts.path, query, ""))


def nodes(client: Client, cluster: str) -> list[Node]:
    rows = client.execute("SELECT shard_num, host_name, port FROM system.clusters WHERE cluster = %(c)s "
                          "ORDER BY shard_num, replica_num", {"c": cluster})
    if not rows:
        raise ConfigError(f"ClickHouse knows no cluster {cluster!r}: define it in the servers' remote_servers "
                          "configuration (see docs/scaling.md)")
    return [Node(shard, host, port) for shard, host, port in rows]


def migrate(url: str, db: str, cluster: str) -> list[schema.Migration]:
    """Create or upgrade ``db`` on every node of ``cluster``; return the migrations applied now."""
    found = nodes(connect(url, database="default"), cluster)
    clients = [connect(node.url(url), database="default") for node in found]
    replicated = [_has_zookeeper(client) for client in clients]
    for node, client, zookeeper in zip(found, clients, replicated):
        _check_settings(client, node, {**REQUIRED_SETTINGS, **(REPLICATED_SETTINGS if zookeeper else {})})
    applied: dict[int, schema.Migration] = {}
    # One migration at a time on every node: a replica created after another replica's ALTERs
    # would find the table in ZooKeeper too different from its CREATE and refuse it. The ALTERs
    # of a replicated table reach the other replicas through ZooKeeper, which is why a migration
    # skips a column that is already there.
    for migration in schema.MIGRATIONS:
        for client, zookeeper in zip(clients, replicated):
            done = schema.migrate(client, local_database(db), rewrite=_replicated if zookeeper else None,
                                  until=migration.version)
            applied.update((m.version, m) for m in done)
    for client in clients:
        create_distributed(client, db, cluster)
    return [applied[v] for v in sorted(applied)]


def _check_settings(client: Client, node: Node, required: dict[str, str]) -> None:
    names = tuple(required)
    current = dict(client.execute("SELECT name, value FROM system.settings WHERE name IN %(n)s", {"n": names}))
    wrong = {name: want for name, want in required.items() if current.get(name) != want}
    if wrong:
        raise ConfigError(f"ClickHouse at {node.host}:{node.port} must set "
                          + ", ".join(f"{k}={v}" for k, v in wrong.items())
                          + " in its default profile for a cluster (see docs/scaling.md)")


def _has_zookeeper(client: Client) -> bool:
    try:
        client.execute("SELECT count() FROM system.zookeeper WHERE path = '/'")
        return True
    except Exception:  # 18.16 answers "ZooKeeper is not configured" as a server exception
        return False


def _replicated(statement: str) -> str:
    """A migration's MergeTree table made replicated: the engine's replica path, then its own arguments."""
    match = _ENGINE.match(statement)
    if match is None:
        return statement
    db, table, engine, args = match.groups()
    own = f"'{REPLICA_PATH.format(db=db, table=table)}', '{{replica}}'"
    replaced = f"ENGINE = Replicated{engine}({own}{', ' + args if args else ''})"
    return statement[:match.start(3) - len("ENGINE = ")] + replaced + statement[match.end():]


def create_distributed(client: Client, db: str, cluster: str) -> None:
    """In ``db``, a Distributed table over each table and view of the local database; one whose
    local columns changed (a migration added one) is made again (it holds nothing: inserts are
    synchronous). ``db.schema_migrations`` is a view of this node's own record."""
    local = local_database(db)
    client.execute(f"CREATE DATABASE IF NOT EXISTS {db}")
    tables = client.execute("SELECT name, engine FROM system.tables WHERE database = %(d)s "
                            "AND engine != 'MaterializedView' AND name != 'schema_migrations' ORDER BY name",
                            {"d": local})
    for name, _engine in tables:
        want = _columns(client, local, name)
        have = _columns(client, db, name)
        if have == want:
            continue
        if have:
            client.execute(f"DROP TABLE {db}.{name}")
        key = ADVERTISER_KEY if "advertiser_id" in dict(want) else "rand()"
        client.execute(f"CREATE TABLE {db}.{name} AS {local}.{name} "
                       f"ENGINE = Distributed({cluster}, {local}, {name}, {key})")
    client.execute(f"CREATE VIEW IF NOT EXISTS {db}.schema_migrations AS SELECT * FROM {local}.schema_migrations")


def _columns(client: Client, db: str, table: str) -> list[tuple[str, str]]:
    # 18.16's system.columns has no position; DESCRIBE lists the columns in order.
    if not client.execute("EXISTS TABLE {}.{}".format(db, table))[0][0]:
        return []
    return [(row[0], row[1]) for row in client.execute(f"DESCRIBE TABLE {db}.{table}")]


def local_clients(client: Client, db: str) -> list[tuple[Client, str]]:
    """For a cluster database: a client for each node and the local database name, for what a
    Distributed table cannot do (mutations, dropping partitions, truncating); else ``client`` and ``db``."""
    if not schema.is_cluster_database(client, db):
        return [(client, db)]
    (engine,), = client.execute("SELECT engine_full FROM system.tables WHERE database = %(d)s AND name = 'events'",
                                {"d": db})
    cluster = re.match(r"Distributed\((\w+)", engine).group(1)
    # Only the node address changes: the caller's own client carries user and settings.
    base = f"clickhouse://{client.connection.user}:{client.connection.password}@x/{db}"
    return [(connect(node.url(base), database=local_database(db)), local_database(db))
            for node in nodes(client, cluster)]
