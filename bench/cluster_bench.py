#!/usr/bin/env python3
"""CPU per request of the collector, and per event of the sink, single-node beside cluster mode.

Same run, side by side, on servers of the bench's own (free ports, a temporary folder):

- ``single``: one redis-server (AOF on, as ``clicktrail up`` runs it), one stream (shard 0 of 1:
  ``ct:events``), one ClickHouse server;
- ``cluster``: a Redis Cluster of 3 masters (``clicktrail/redis_cluster.py``; ``--replicas`` per master,
  0 by default so both sides do the same writes), the events over ``--shards`` shards (4), the
  same one ClickHouse server;
- ``cluster+ch``: the same Redis Cluster, and a ClickHouse cluster of two shards on this machine
  (``clicktrail migrate --cluster``; the sink inserts through the Distributed tables). Left out with
  ``--no-clickhouse-cluster``.

For each: the real collector (``clicktrail collector``, gunicorn, 2 workers) takes ``--requests``
pixel requests of ``--events`` events (1) from ``--clients`` keep-alive connections; then one ``clicktrail sink`` drains
them into a new database. Printed: CPU seconds (user+system) of the collector's
processes per request, of the Redis servers per request (all nodes summed, cluster-bus chatter
included) and of the one holding the registry, of the sink per event (its start-up included), of
Redis while the sink drains, per event, and of the ClickHouse servers (all of them) while it drains,
per event, less what they spent per second while idle just before (the servers are the bench's
own, so that is their work: inserts, every view, the merges that happen meanwhile).

The load generator runs on the same machine, so requests/s here say little; CPU per request is the
figure to read (docs/scaling.md).

    python bench/cluster_bench.py                  # 5000 requests per side
    python bench/cluster_bench.py --requests 20000 --replicas 1 --json /tmp/cluster.json
    BENCH_CLICKHOUSE_URL=... python bench/cluster_bench.py --no-clickhouse-cluster   # as before: a shared server
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

from benchlib import CODE, code_state, cpu_seconds  # noqa: E402  (puts the measured tree on sys.path)
from clicktrail import clickhouse, redis_cluster, services  # noqa: E402

#: The ClickHouse cluster's name in its servers' remote_servers.
CH_CLUSTER = "ct_bench"


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
            folder: Path, ch_base: str, ch_servers: list[services.Server], ch_cluster: str = "") -> dict:
    """One side of the comparison; ``registry_pid`` is the Redis holding the registry (on a cluster,
    the master of the ``{ct}`` slot, which every request's check goes to); ``ch_servers`` the
    ClickHouse servers (of ``ch_cluster`` if given) whose CPU is counted."""
    db = f"ct_bench_{name.replace('+', '_')}_{secrets.token_hex(3)}"
    env = {**os.environ, "CLICKTRAIL_REDIS_URL": url, "CLICKTRAIL_STREAM_SHARDS": str(shards),
           "CLICKTRAIL_CLICKHOUSE_URL": clickhouse.with_database(ch_base, db),
           "CLICKTRAIL_DATA_DIR": str(folder / "var"), "CLICKTRAIL_REDIS_TIMEOUT_MS": "2000",
           "CLICKTRAIL_STREAM_MAX_LEN": "100000000", "PYTHONPATH": str(CODE)}
    run_cli(env, "migrate", *(["--cluster", ch_cluster] if ch_cluster else []))
    pixel_id = run_cli(env, "pixel", "create", "--advertiser", "bench-cluster", "--domain", "bench.example")
    port = services.free_port()
    collector = subprocess.Popen([sys.executable, "-m", "clicktrail.cli", "collector", "--bind",
                                  f"127.0.0.1:{port}", "--workers", "2"], env=env, cwd=CODE,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
    ch = clickhouse.connect(ch_base, database="default")
    try:
        _wait_http(port)
        load(port, pixel_id, min(500, args.requests), args.clients, args.events)  # warm-up
        collector_before, redis_before = cpu([collector.pid], "tree"), cpu(redis_pids)
        registry_before = cpu([registry_pid])
        accepted, seconds = load(port, pixel_id, args.requests, args.clients, args.events)
        collector_cpu, redis_cpu = cpu([collector.pid], "tree") - collector_before, cpu(redis_pids) - redis_before
        registry_cpu = cpu([registry_pid]) - registry_before
        queued = inspect()
        # The ClickHouse servers' own background work (merges, system logs) while idle, as a rate
        # to take out of what they spend while the sink drains.
        ch_idle_before, idle_started = cpu([s.pid() for s in ch_servers]), time.perf_counter()
        time.sleep(3)
        ch_idle_rate = (cpu([s.pid() for s in ch_servers]) - ch_idle_before) / (time.perf_counter() - idle_started)
        sink = subprocess.Popen([sys.executable, "-m", "clicktrail.cli", "sink", "--log-level", "WARNING"], env=env,
                                cwd=CODE, start_new_session=True)
        redis_before, ch_before = cpu(redis_pids), cpu([s.pid() for s in ch_servers])
        started = time.perf_counter()
        while inspect() and time.perf_counter() - started < 600:
            time.sleep(0.05)
        drain_s = time.perf_counter() - started
        sink_cpu, redis_sink_cpu = cpu([sink.pid], "tree"), cpu(redis_pids) - redis_before
        ch_cpu = max(0.0, cpu([s.pid() for s in ch_servers]) - ch_before - ch_idle_rate * drain_s)
        sink.terminate()
        sink.wait(30)
        stored = ch.execute(f"SELECT count() FROM {db}.events")[0][0]
    finally:
        collector.terminate()
        collector.wait(30)
        if not ch_cluster:  # a cluster's servers are the bench's own, and go
            ch.execute(f"DROP DATABASE IF EXISTS {db}")
    return {"mode": name, "shards": shards, "requests": args.requests, "accepted": accepted, "queued": queued,
            "stored": stored, "requests_per_s": round(accepted / seconds),
            "collector_us_per_request": round(collector_cpu / accepted * 1e6, 1),
            "redis_us_per_request": round(redis_cpu / accepted * 1e6, 1),
            "registry_node_us_per_request": round(registry_cpu / accepted * 1e6, 1),
            "sink_us_per_event": round(sink_cpu / max(stored, 1) * 1e6, 1),
            "redis_us_per_event_sinking": round(redis_sink_cpu / max(stored, 1) * 1e6, 1),
            "clickhouse_us_per_event_sinking": round(ch_cpu / max(stored, 1) * 1e6, 1) if ch_servers else "",
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
    parser.add_argument("--no-clickhouse-cluster", action="store_true",
                        help="leave out the ClickHouse cluster; use the server at BENCH_CLICKHOUSE_URL for both")
    parser.add_argument("--json", help="write the results here too")
    parser.add_argument("--code", help="the source tree to run (an exported commit); default: this checkout")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ct-cluster-bench-"))
    results = []
    stop: list = []
    try:
        if args.no_clickhouse_cluster:
            from benchlib import CH_BASE

            ch_single, ch_single_servers = CH_BASE, []
        else:
            # ClickHouse servers of the bench's own, so that their CPU is this run's work.
            server = services.ensure_clickhouse(f"clickhouse://127.0.0.1:{services.free_port()}/default",
                                                folder / "ch-single", http_port=services.free_port())
            stop.append(server)
            ch_single, ch_single_servers = f"clickhouse://127.0.0.1:{server.port}/default", [server]
        single = services.ensure_redis(f"redis://127.0.0.1:{services.free_port()}/0", folder)
        plain = redis.Redis(port=single.port)
        try:
            results.append(measure("single", f"redis://127.0.0.1:{single.port}/0", 1, [single.pid()], single.pid(),
                                   lambda: plain.xlen("ct:events"), args, folder, ch_single, ch_single_servers))
        finally:
            single.stop()
        cluster = redis_cluster.up(folder / "cluster", masters=3, replicas=args.replicas)
        client = RedisCluster(host="127.0.0.1", port=cluster.ports[0])
        streams = [f"ct:{{events:{n}}}" for n in range(args.shards)]
        try:
            registry = client.get_node_from_key("{ct}:pixels").port
            redis_pids = [cluster.server(port).pid() for port in cluster.ports]
            registry_pid = cluster.server(registry).pid()
            queued = lambda: sum(client.xlen(s) for s in streams)  # noqa: E731
            results.append(measure("cluster", cluster.url, args.shards, redis_pids, registry_pid, queued,
                                   args, folder, ch_single, ch_single_servers))
            if not args.no_clickhouse_cluster:
                layout = services.ClusterLayout(CH_CLUSTER, (services.free_port(), services.free_port()))
                shards = services.ensure_clickhouse_cluster(layout, folder / "ch-cluster", any_http_port=True)
                stop.extend(shards)
                results.append(measure("cluster+ch", cluster.url, args.shards, redis_pids, registry_pid, queued,
                                       args, folder, f"clickhouse://127.0.0.1:{layout.ports[0]}/default", shards,
                                       CH_CLUSTER))
        finally:
            cluster.stop()
    finally:
        for server in stop:
            server.stop(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)
    print(f"code: {code_state()}; {args.requests} requests of {args.events} events, {args.clients} clients, "
          f"cluster: 3 masters x {args.replicas} replicas, {args.shards} shards; "
          f"ClickHouse: {'shared server' if args.no_clickhouse_cluster else 'own server / own 2-shard cluster'}\n")
    columns = list(results[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in results:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
