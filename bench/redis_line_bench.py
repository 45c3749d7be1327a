#!/usr/bin/env python3
"""The collector's Redis call alone: client CPU per call of ``EventBuffer.append``, two trees side by side.

The whole-request bench (collector_bench.py) measures this call among Flask, gunicorn and wrk on
a shared machine; this one isolates it. Each measurement is a fresh process that imports one
tree (``--code`` style, through PYTHONPATH), registers a pixel, warms up, then appends a 1-event
pixel batch ``--calls`` times on one thread and reports process CPU (user + system) and wall time
per call. The trees alternate, round after round, so a busy neighbour disturbs both alike.

Lines measured:

- ``before``: the tree given with ``--compare`` (e.g. ``git archive main | tar -x -C /tmp/old``);
- ``socket``: this tree, its own socket with kernel timeouts (collector/redis_line.SocketLine);
- ``redis-py``: this tree forced onto redis-py's public send/read calls (ConnectionLine), the
  path TLS URLs take, to show what the plain line saves.

    python bench/redis_line_bench.py --compare /tmp/old --rounds 5 --calls 20000

Uses only the Redis database of ``--redis-url`` (BENCH_REDIS_URL, else DB 3): the stream and the
pixel it writes are deleted at the end of each measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from benchlib import redis_url  # noqa: E402


def measure(code: Path, line: str, url: str, calls: int) -> dict:
    """One measurement, in this (fresh) process, of the tree at ``code``."""
    sys.path.insert(0, str(code))
    from clicktrail import keys, redis_client
    from collector import buffer, redis_line
    from pixel import registry

    if line == "redis-py":  # take the path a TLS URL takes
        redis_line.plain_address = lambda client: None
    admin = redis_client.patient(url)
    pixel = registry.create_pixel(admin, "bench-line", ["bench.example"])
    events = [{"event": "PageView", "event_id": "e-1", "timestamp": int(time.time() * 1000),
               "page": {"url": "https://bench.example/p"}}]
    try:
        target = buffer.EventBuffer(redis_client.fast(url, 100), 10**9, 1)
        for _ in range(min(calls, 1000)):
            target.append(pixel, events, host="bench.example")
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(calls):
            target.append(pixel, events, host="bench.example")
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        return {"cpu_us": cpu / calls * 1e6, "wall_us": wall / calls * 1e6, "module": redis_line.__file__}
    finally:
        admin.unlink(keys.EVENTS_STREAM)
        admin.hdel(keys.PIXELS, pixel)


def run_one(code: Path, line: str, url: str, calls: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(code))
    out = subprocess.run([sys.executable, __file__, "--measure", str(code), "--line", line, "--redis-url", url,
                          "--calls", str(calls)], env=env, capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", metavar="DIR", help="the tree measured as 'before'")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20000, help="calls per measurement [20000]")
    parser.add_argument("--redis-url", default=redis_url(3))
    parser.add_argument("--json", metavar="OUT")
    parser.add_argument("--measure", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--line", default="socket", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(Path(args.measure), args.line, args.redis_url, args.calls)))
        return 0
    lines = [("socket", ROOT), ("redis-py", ROOT)]
    if args.compare:
        lines.insert(0, ("before", Path(args.compare).resolve()))
    results: dict[str, list[dict]] = {name: [] for name, _ in lines}
    for _ in range(args.rounds):
        for name, code in lines:
            results[name].append(run_one(code, "redis-py" if name == "redis-py" else "socket",
                                         args.redis_url, args.calls))
    print(f"Redis line, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
          f"{args.rounds} rounds of {args.calls} appends (1-event pixel batch); median (min-max) per call.\n")
    print("| line | client CPU us/call | wall us/call | CPU per round |\n|---|---:|---:|---|")
    for name, runs in results.items():
        cpu = [r["cpu_us"] for r in runs]
        wall = [r["wall_us"] for r in runs]
        print(f"| {name} | {statistics.median(cpu):.1f} ({min(cpu):.1f}-{max(cpu):.1f}) | "
              f"{statistics.median(wall):.1f} | {', '.join(f'{c:.1f}' for c in cpu)} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
