#!/usr/bin/env python3
"""What CLICKTRAIL_REDIS_WAIT_REPLICAS costs the collector: appends with and without WAIT, side by side.

Starts a Redis master and one replica of its own (free loopback ports, AOF off, own folders),
registers a pixel, and times the collector's append path (collector/buffer.py EventBuffer.append,
a 1-event and a 20-event request, through its own socket line as a gunicorn worker does) in
alternating rounds: WAIT off, then ``WAIT 1 <timeout>``. Prints, per round and way, requests/s of
one thread, wall µs per request (the latency a client adds) and the collector's CPU µs per request.
Both servers are stopped and their folders removed at the end.

    python bench/redis_wait_bench.py                 # 3 rounds of 3,000 requests per way and size
    python bench/redis_wait_bench.py --requests 10000 --rounds 5

Results and their reading: docs/scaling.md ("Failover").
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchlib import code_state  # noqa: E402  (puts the measured tree on sys.path)
from clicktrail import redis_client, services  # noqa: E402
from collector.buffer import EventBuffer  # noqa: E402
from pixel import registry  # noqa: E402


def start_pair(folder: Path) -> tuple[services.Server, services.Server, str]:
    master = services.ensure_redis(f"redis://127.0.0.1:{services.free_port()}/0", folder, appendonly=False)
    replica = services.ensure_redis(f"redis://127.0.0.1:{services.free_port()}/0", folder, appendonly=False)
    r = redis_client.patient(f"redis://127.0.0.1:{replica.port}/0")
    r.replicaof("127.0.0.1", master.port)
    deadline = time.monotonic() + 30
    while r.info("replication").get("master_link_status") != "up":
        if time.monotonic() > deadline:
            raise SystemExit("the replica did not connect")
        time.sleep(0.1)
    return master, replica, f"redis://127.0.0.1:{master.port}/0"


def run(buffer: EventBuffer, pixel: str, size: int, requests: int) -> tuple[float, float]:
    """(wall µs, CPU µs) per request of ``requests`` appends of ``size`` events."""
    records = [{"event": "PageView", "event_id": f"e{i}", "ttp": "browser", "url": "https://bench.example/"}
               for i in range(size)]
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(requests):
        buffer.append(pixel, [dict(r) for r in records], host="bench.example")
    return ((time.perf_counter() - wall) / requests * 1e6, (time.process_time() - cpu) / requests * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout-ms", type=int, default=50)
    parser.add_argument("--code", help="an exported source tree to measure instead of this checkout")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ct-wait-bench-"))
    servers = []
    try:
        master, replica, url = start_pair(folder)
        servers = [master, replica]
        r = redis_client.patient(url)
        pixel = registry.create_pixel(r, "adv-bench", ["bench.example"])
        client = redis_client.fast(url, 1000)
        ways = {"off": EventBuffer(client, 10**9, 1),
                "WAIT 1": EventBuffer(client, 10**9, 1, wait_replicas=1, wait_timeout_ms=args.timeout_ms)}
        results: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for way, buffer in ways.items():
            run(buffer, pixel, 1, 300)  # warm up: scripts loaded, lines open
        print(f"code: {code_state()}; {args.requests} requests per way and size, {args.rounds} rounds, one thread")
        print("| round | way | events/request | requests/s | wall µs/request | collector CPU µs/request |")
        print("|---:|---|---:|---:|---:|---:|")
        for n in range(1, args.rounds + 1):
            for size in (1, 20):
                for way, buffer in ways.items():
                    wall, cpu = run(buffer, pixel, size, args.requests)
                    results.setdefault((way, size), []).append((wall, cpu))
                    print(f"| {n} | {way} | {size} | {1e6 / wall:,.0f} | {wall:.0f} | {cpu:.0f} |", flush=True)
                r.delete("ct:events")
        print("\nmedians:")
        for (way, size), rows in results.items():
            print(f"  {way:<6} {size:>2} events: wall {statistics.median(w for w, _ in rows):.0f} µs, "
                  f"CPU {statistics.median(c for _, c in rows):.0f} µs per request")
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
