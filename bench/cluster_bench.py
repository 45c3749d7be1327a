#!/usr/bin/env python3
"""CPU per request of the collector, and per event of the sink, on a single Redis and on a Redis Cluster.

Same run, side by side, on servers of the bench's own (free ports, a temporary folder):

- ``single``: one redis-server (AOF on, as ``clicktrail up`` runs it), one stream (shard 0 of 1: ``ct:events``);
- ``cluster``: a Redis Cluster of 3 masters (``clicktrail/redis_cluster.py``; ``--replicas`` per master,
  0 by default so both sides do the same writes), the events over ``--shards`` shards (4).

For each: the real collector (``clicktrail collector``, gunicorn, 2 workers) takes ``--requests``
pixel requests of ``--events`` events (1) from ``--clients`` keep-alive connections; then one ``clicktrail sink`` drains
them into a throwaway ClickHouse database. Printed: CPU seconds (user+system) of the collector's
processes per request, of the Redis servers per request (all nodes summed, cluster-bus chatter
included) and of the one holding the registry, of the sink per event (its start-up included) and
of Redis while the sink drains, per event. ClickHouse's CPU is left out: its server is shared.

The load generator runs on the same machine, so requests/s here say little; CPU per request is the
figure to read (docs/scaling.md).

    python bench/cluster_bench.py                  # 5000 requests per side
    python bench/cluster_bench.py --requests 20000 --replicas 1 --json /tmp/cluster.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
import redis
from redis.cluster import RedisCluster

from benchlib import CH_BASE, CODE, code_state, cpu_seconds  # noqa: E402  (puts the measured tree on sys.path)
from clicktrail import clickhouse, redis_cluster, services  # noqa: E402

CLICKHOUSE = CH_BASE


def cpu(pids: list[int], scope: str = "self") -> float:
    return sum(sum(cpu_seconds(pid, scope)) for pid in pids)


def run_cli(env: dict, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "clicktrail.cli", *args], env=env, capture_output=True,
                          text=True, check=True, cwd=CODE)
    return done.stdout.strip()


def load(port: int, pixel_id: str, requests: int, clients: int, events: int) -> tuple[int, float]:
    """Post ``requests`` requests of ``events`` events over ``clients`` keep-alive connections;
    (accepted, seconds)."""
    accepted = [0] * clients
    per_client = requests // clients

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for i in range(per_client):
            body = orjson.dumps({"events": [{"event": "PageView", "event_id": f"c{n}-{i}-{e}", "ttp": f"b{n}-{i % 50}",
                                             "page": {"url": "https://bench.example/"}} for e in range(events)]})
            conn.request("POST", f"/e/{pixel_id}", body, {"Origin": "https://bench.example",
                                                          "Content-Type": "application/json"})
            reply = conn.getresponse()
            reply.read()
            accepted[n] += reply.status == 200
        conn.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(accepted), time.perf_counter() - started


def measure(name: str, url: str, shards: int, redis_pids: list[int], registry_pid: int, inspect, args,
            folder: Path) -> dict:
    """One side of the comparison; ``registry_pid`` is the Redis holding the registry (on a cluster,
    the master of the ``{ct}`` slot, which every request's check goes to)."""
    db = f"ct_bench_{name}_{secrets.token_hex(3)}"
    env = {**os.environ, "CLICKTRAIL_REDIS_URL": url, "CLICKTRAIL_STREAM_SHARDS": str(shards),
           "CLICKTRAIL_CLICKHOUSE_URL": clickhouse.with_database(CLICKHOUSE, db),
           "CLICKTRAIL_DATA_DIR": str(folder / "var"), "CLICKTRAIL_REDIS_TIMEOUT_MS": "2000",
           "CLICKTRAIL_STREAM_MAX_LEN": "100000000", "PYTHONPATH": str(CODE)}
    run_cli(env, "migrate")
    pixel_id = run_cli(env, "pixel", "create", "--advertiser", "bench-cluster", "--domain", "bench.example")
    port = services.free_port()
    collector = subprocess.Popen([sys.executable, "-m", "clicktrail.cli", "collector", "--bind",
                                  f"127.0.0.1:{port}", "--workers", "2"], env=env, cwd=CODE,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
    ch = clickhouse.connect(CLICKHOUSE, database="default")
    try:
        _wait_http(port)
        load(port, pixel_id, min(500, args.requests), args.clients, args.events)  # warm-up
        collector_before, redis_before = cpu([collector.pid], "tree"), cpu(redis_pids)
        registry_before = cpu([registry_pid])
        accepted, seconds = load(port, pixel_id, args.requests, args.clients, args.events)
        collector_cpu, redis_cpu = cpu([collector.pid], "tree") - collector_before, cpu(redis_pids) - redis_before
        registry_cpu = cpu([registry_pid]) - registry_before
        queued = inspect()
        sink = subprocess.Popen([sys.executable, "-m", "clicktrail.cli", "sink", "--log-level", "WARNING"], env=env,
                                cwd=CODE, start_new_session=True)
        redis_before = cpu(redis_pids)
        started = time.perf_counter()
        while inspect() and time.perf_counter() - started < 600:
            time.sleep(0.05)
        drain_s = time.perf_counter() - started
        sink_cpu, redis_sink_cpu = cpu([sink.pid], "tree"), cpu(redis_pids) - redis_before
        sink.terminate()
        sink.wait(30)
        stored = ch.execute(f"SELECT count() FROM {db}.events")[0][0]
    finally:
        collector.terminate()
        collector.wait(30)
        ch.execute(f"DROP DATABASE IF EXISTS {db}")
    return {"mode": name, "shards": shards, "requests": args.requests, "accepted": accepted, "queued": queued,
            "stored": stored, "requests_per_s": round(accepted / seconds),
            "collector_us_per_request": round(collector_cpu / accepted * 1e6, 1),
            "redis_us_per_request": round(redis_cpu / accepted * 1e6, 1),
            "registry_node_us_per_request": round(registry_cpu / accepted * 1e6, 1),
            "sink_us_per_event": round(sink_cpu / max(stored, 1) * 1e6, 1),
            "redis_us_per_event_sinking": round(redis_sink_cpu / max(stored, 1) * 1e6, 1),
            "drain_s": round(drain_s, 2)}


def _wait_http(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if services.is_listening("127.0.0.1", port):
            return
        time.sleep(0.1)
    raise RuntimeError("the collector did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--events", type=int, default=1, help="events per request")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--replicas", type=int, default=0, help="replicas per master of the cluster")
    parser.add_argument("--json", help="write the results here too")
    parser.add_argument("--code", help="the source tree to run (an exported commit); default: this checkout")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ct-cluster-bench-"))
    results = []
    try:
        single = services.ensure_redis(f"redis://127.0.0.1:{services.free_port()}/0", folder)
        plain = redis.Redis(port=single.port)
        try:
            results.append(measure("single", f"redis://127.0.0.1:{single.port}/0", 1, [single.pid()], single.pid(),
                                   lambda: plain.xlen("ct:events"), args, folder))
        finally:
            single.stop()
        cluster = redis_cluster.up(folder / "cluster", masters=3, replicas=args.replicas)
        client = RedisCluster(host="127.0.0.1", port=cluster.ports[0])
        streams = [f"ct:{{events:{n}}}" for n in range(args.shards)]
        try:
            registry = client.get_node_from_key("{ct}:pixels").port
            results.append(measure("cluster", cluster.url, args.shards,
                                   [cluster.server(port).pid() for port in cluster.ports],
                                   cluster.server(registry).pid(), lambda: sum(client.xlen(s) for s in streams),
                                   args, folder))
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"code: {code_state()}; {args.requests} requests of {args.events} events, {args.clients} clients, "
          f"cluster: 3 masters x {args.replicas} replicas, {args.shards} shards\n")
    columns = list(results[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in results:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
