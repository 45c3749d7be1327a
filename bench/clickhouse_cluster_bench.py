#!/usr/bin/env python3
"""Inserting events: one ClickHouse server beside a two-shard cluster, in one run.

Starts its own ClickHouse 18.16 servers in a temporary folder (one single server, and two
servers as the two shards of a cluster, clicktrail/services.py), migrates them (the cluster
with ``clicktrail.cluster.migrate``), then inserts the same N event rows, in blocks of
--batch rows as the sink does (columnar, one advertiser out of --advertisers per row), three ways:

- ``single``: ``INSERT INTO db.events`` on the single server;
- ``distributed``: ``INSERT INTO db.events`` on the cluster's first node, the Distributed table,
  which splits each block by ``cityHash64(advertiser_id)`` and, with ``insert_distributed_sync``,
  answers once both shards hold their rows;
- ``direct``: the client splits each block by shard itself (the shard of each advertiser asked
  from ClickHouse once) and inserts each part into the owning node's ``db_local.events``.

For each: wall seconds, events/s, CPU seconds of the inserting process and of the ClickHouse
servers (all of them) per 1,000 events, and a check that ``count()`` through ``db.events`` is N
(materialized views included: ``event_identities`` is counted too).

    python bench/clickhouse_cluster_bench.py                 # 400,000 events, blocks of 20,000
    python bench/clickhouse_cluster_bench.py --events 100000 --batch 5000

Results and their reading: docs/scaling.md ("ClickHouse cluster").
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from benchlib import cpu_seconds  # noqa: E402  (puts the measured tree on sys.path)
from clicktrail import clickhouse, cluster, schema, services  # noqa: E402
from clicktrail.inserts import columns  # noqa: E402

DB = "ct_bench"


def rows(n: int, advertisers: int, seed: int = 7) -> list[tuple]:
    """N event rows of realistic shape: every column of the events table, one of ``advertisers``."""
    rng = random.Random(seed)
    now = int(time.time())
    out = []
    for i in range(n):
        values = {}
        for name, kind in schema.EVENT_COLUMNS:
            if kind.startswith("DateTime"):
                values[name] = datetime.fromtimestamp(now - rng.randrange(86_400 * 20), timezone.utc).replace(tzinfo=None)
            elif kind.startswith(("UInt", "Int")):
                values[name] = rng.randrange(2) if kind == "UInt8" else now * 1000 + rng.randrange(10**6)
            elif kind == "Float64":
                values[name] = round(rng.random() * 100, 2)
            elif kind.startswith("Array"):
                values[name] = [f"sku-{rng.randrange(500)}"]
            else:
                values[name] = f"{name}-{rng.randrange(50)}"
        values.update(advertiser_id=f"adv-{rng.randrange(advertisers)}", pixel_id=f"px-{rng.randrange(3)}",
                      event=rng.choice(["PageView", "ViewContent", "AddToCart", "CompletePayment"]),
                      event_id=f"e-{i}", browser_id=f"b-{rng.randrange(n // 4 + 1)}",
                      click_id=f"c-{i}" if rng.random() < 0.1 else "",
                      email_sha256=f"{rng.getrandbits(128):032x}" if rng.random() < 0.2 else "",
                      url=f"https://shop-{rng.randrange(20)}.example/p/{rng.randrange(10_000)}?utm_source=tiktok")
        out.append(tuple(values[name] for name in schema.EVENT_COLUMN_NAMES))
    return out


def server_cpu(servers: list[services.Server]) -> float:
    return sum(sum(cpu_seconds(s.pid(), "self")) for s in servers if s.pid())


def timed(label: str, insert, batches: list[list[tuple]], servers: list[services.Server], count) -> dict:
    cpu0, srv0, t0 = time.process_time(), server_cpu(servers), time.perf_counter()
    for batch in batches:
        insert(batch)
    seconds = time.perf_counter() - t0
    client_cpu, server = time.process_time() - cpu0, server_cpu(servers) - srv0
    n = sum(len(b) for b in batches)
    stored, identities = count()
    if stored != n:
        raise SystemExit(f"{label}: {stored} events stored, {n} inserted")
    return {"way": label, "events": n, "seconds": seconds, "rate": n / seconds,
            "client_us": client_cpu / n * 1e6, "server_us": server / n * 1e6, "identities": identities}


def shard_of(client, advertisers: list[str], shards: int) -> dict[str, int]:
    """Which shard (0-based) the Distributed table sends each advertiser to (equal weights)."""
    found = client.execute("SELECT a, modulo(cityHash64(a), %(n)s) FROM (SELECT arrayJoin(%(a)s) AS a)",
                           {"a": advertisers, "n": shards})
    return {a: int(s) for a, s in found}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--advertisers", type=int, default=50)
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="ct-chcluster-bench-"))
    single_port = services.free_port()
    layout = services.ClusterLayout("bench", (services.free_port(), services.free_port()))
    started: list[services.Server] = []
    try:
        single = services.ensure_clickhouse(f"clickhouse://127.0.0.1:{single_port}/default", folder / "single",
                                            http_port=services.free_port())
        nodes = services.ensure_clickhouse_cluster(layout, folder, any_http_port=True)
        started = [single, *nodes]
        single_url = f"clickhouse://127.0.0.1:{single_port}/{DB}"
        first_url = f"clickhouse://127.0.0.1:{layout.ports[0]}/{DB}"
        schema.migrate(clickhouse.connect(single_url, database="default"), DB)
        cluster.migrate(first_url, DB, layout.name)

        data = rows(args.events, args.advertisers)
        batches = [data[i:i + args.batch] for i in range(0, len(data), args.batch)]
        sql = f"INSERT INTO {{db}}.events ({', '.join(schema.EVENT_COLUMN_NAMES)}) VALUES"
        one, first = clickhouse.connect(single_url), clickhouse.connect(first_url)
        locals_ = cluster.local_clients(first, DB)

        def count(client):
            return lambda: (client.execute(f"SELECT count() FROM {DB}.events")[0][0],
                            client.execute(f"SELECT count() FROM {DB}.event_identities")[0][0])

        def truncate():
            for node, db in locals_:
                for table in ("events", "event_identities"):
                    node.execute(f"TRUNCATE TABLE {db}.{table}")

        results = [timed("single", lambda b: one.execute(sql.format(db=DB), columns(b), columnar=True),
                         batches, [single], count(one))]
        results.append(timed("distributed", lambda b: first.execute(sql.format(db=DB), columns(b), columnar=True),
                             batches, nodes, count(first)))
        truncate()
        owner = shard_of(first, sorted({row[0] for row in data}), len(nodes))

        def direct(batch):
            parts: list[list[tuple]] = [[] for _ in nodes]
            for row in batch:
                parts[owner[row[0]]].append(row)
            for (node, db), part in zip(locals_, parts):
                if part:
                    node.execute(sql.format(db=db), columns(part), columnar=True)

        results.append(timed("direct", direct, batches, nodes, count(first)))
        print(f"{args.events:,} events in blocks of {args.batch:,}, {args.advertisers} advertisers; "
              "CPU in µs per event\n")
        print("| way | events/s | client CPU | ClickHouse CPU (all servers) | identities rows |")
        print("|---|---:|---:|---:|---:|")
        for r in results:
            print(f"| {r['way']} | {r['rate']:,.0f} | {r['client_us']:.1f} | {r['server_us']:.1f} | "
                  f"{r['identities']:,} |")
        return 0
    finally:
        for server in started:
            server.stop(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
