#!/usr/bin/env python3
"""Slow clients against the collector: gunicorn alone, then nginx in front (issue 11, point 3).

Starts the real collector as ``clicktrail collector --workers N --threads T`` runs it, and nginx in
front of it as ``clicktrail up`` configures it (clicktrail/proxy.py). For each target and each
number of slow clients: opens the slow clients (headers announcing ``Content-Length: 1000``, then
a byte of the body every 2 s, all from one thread; tests/slow_clients.py), waits one trickle, then
sends a probe every 0.1 s (``--every``) for ``--seconds`` (``GET /healthz`` and a valid 1-event pixel
batch, alternately, each on a new connection with a 2 s timeout) and prints a Markdown table:
probes answered 200 within 2 s, the others, and the latency of the answered ones.

    python bench/slow_clients_bench.py                     # 12 and 1,000 slow clients, 20 s of probes each
    python bench/slow_clients_bench.py --slow 12 --seconds 30

Results: docs/performance.md ("Slow clients").
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone

import redis

from benchlib import CODE, ROOT, code_state  # noqa: E402  (puts the measured tree on sys.path)
from clicktrail import keys, proxy  # noqa: E402
from clicktrail.services import free_port  # noqa: E402
from collector_bench import clicktrail_cmd, stop, wait_up  # noqa: E402
from pixel import registry  # noqa: E402
from tests.slow_clients import SlowBodies, probe, raise_open_files  # noqa: E402

DOMAIN = "bench.example"
ORIGIN = f"https://{DOMAIN}"
DEADLINE_S = 2.0


def probe_for(port: int, pixel_id: str, seconds: float, every: float) -> list:
    """A probe every ``every`` seconds (or right after the last, when it took longer) for ``seconds``:
    health checks and pixel batches, alternately."""
    results, i = [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(max(0.0, every - (results[-1].seconds if results else every)))
        if i % 2:
            now = int(time.time() * 1000)
            body = json.dumps({"sent_at": now, "events": [{"event": "PageView", "event_id": f"probe-{i}",
                                                           "timestamp": now, "page": {"url": ORIGIN + "/"}}]})
            results.append(probe("127.0.0.1", port, "POST", f"/e/{pixel_id}", body.encode(),
                                 {"Content-Type": "text/plain", "Origin": ORIGIN}, timeout=DEADLINE_S))
        else:
            results.append(probe("127.0.0.1", port, "GET", "/healthz", timeout=DEADLINE_S))
        i += 1
    return results


def run_one(target: str, port: int, pixel_id: str, slow_count: int, seconds: float, every: float) -> dict:
    slow = SlowBodies("127.0.0.1", port, f"/e/{pixel_id}", slow_count)
    try:
        slow.open()
        time.sleep(2.5)
        probes = probe_for(port, pixel_id, seconds, every)
        still_open = slow.open_count
    finally:
        slow.close()
    time.sleep(1)  # gunicorn's threads see the slow clients' end and come back
    answered = [p for p in probes if p.status == 200 and p.seconds < DEADLINE_S]
    row = {
        "target": target,
        "slow_clients": slow_count,
        "still_open_after": still_open,
        "probes": len(probes),
        "answered_in_time": len(answered),
        "late_or_failed": len(probes) - len(answered),
        "p50_ms": statistics.median(p.seconds for p in answered) * 1000 if answered else None,
        "max_ms": max(p.seconds for p in answered) * 1000 if answered else None,
        "errors": sorted({p.error.split(":")[0] or str(p.status) for p in probes if p not in answered}),
    }
    print(f"  {target:18} {slow_count:5} slow: {row['answered_in_time']}/{row['probes']} answered in time",
          file=sys.stderr)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Probes answered while slow clients trickle bodies.")
    parser.add_argument("--slow", type=int, action="append", help="slow clients (repeatable) [12 and 1000]")
    parser.add_argument("--seconds", type=float, default=20, help="seconds of probes per run [20]")
    parser.add_argument("--every", type=float, default=0.1, help="seconds between probes [0.1]")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="gunicorn workers [cores]")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker [4, as the CLI]")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/3")
    parser.add_argument("--code", metavar="DIR", help="run this source tree instead of this checkout")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args(argv)
    counts = args.slow or [12, 1000]
    raise_open_files(max(counts) + 500)
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    r = redis.Redis.from_url(args.redis_url)
    pixel_id = registry.create_pixel(r, "bench-slow", [DOMAIN])
    # Not under /tmp's private folders: nginx's workers (nobody, when root runs this) write bodies there.
    folder = ROOT / "var" / f"slow-clients-bench-{os.getpid()}"
    env = dict(os.environ, CLICKTRAIL_REDIS_URL=args.redis_url, CLICKTRAIL_DATA_DIR=str(folder),
               CLICKTRAIL_TRUST_PROXY_HEADERS="true", CLICKTRAIL_STREAM_MAX_LEN="1000000000",
               PYTHONPATH=os.pathsep.join(p for p in (str(CODE), os.environ.get("PYTHONPATH", "")) if p))
    procs: dict[str, subprocess.Popen] = {}
    rows = []
    try:
        ports = {"gunicorn directly": free_port(), "through nginx": free_port()}
        procs["collector"] = subprocess.Popen(
            [*clicktrail_cmd(), "collector", "--bind", f"127.0.0.1:{ports['gunicorn directly']}",
             "--workers", str(args.workers), "--threads", str(args.threads)],
            env=env, cwd=ROOT, start_new_session=True)
        wait_up(ports["gunicorn directly"], "/healthz", procs["collector"])
        nginx = proxy.prepare(folder, proxy.collector_site(f"127.0.0.1:{ports['through nginx']}",
                                                           f"127.0.0.1:{ports['gunicorn directly']}",
                                                           proxy.DEFAULT_MAX_BODY))
        procs["nginx"] = subprocess.Popen(nginx.argv, start_new_session=True)
        wait_up(ports["through nginx"], "/healthz", procs["nginx"])
        for count in counts:
            for target, port in ports.items():
                rows.append(run_one(target, port, pixel_id, count, args.seconds, args.every))
    finally:
        for proc in procs.values():
            stop(proc)
        r.unlink(keys.EVENTS_STREAM)
        r.hdel(keys.PIXELS, pixel_id)
        r.hdel(keys.ADVERTISERS, "bench-slow")
        if hasattr(keys, "ADVERTISER_DOMAINS"):
            r.hdel(keys.ADVERTISER_DOMAINS, "bench-slow")
        shutil.rmtree(folder, ignore_errors=True)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"\nSlow clients, {when}, {os.cpu_count()} cores; gunicorn {args.workers} workers x {args.threads} "
          f"threads; {args.seconds:.0f} s of probes per run, one every {args.every:g} s, each with a "
          f"{DEADLINE_S:.0f} s timeout; "
          f"code: {code_state()}.\n")
    print("| target | slow clients | probes | answered 200 within 2 s | late or failed | p50 ms | max ms "
          "| slow clients still open after |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        p50 = f"{row['p50_ms']:.1f}" if row["p50_ms"] is not None else "-"
        top = f"{row['max_ms']:.1f}" if row["max_ms"] is not None else "-"
        print(f"| {row['target']} | {row['slow_clients']:,} | {row['probes']} | {row['answered_in_time']} | "
              f"{row['late_or_failed']}{' (' + ', '.join(row['errors']) + ')' if row['errors'] else ''} | "
              f"{p50} | {top} | {row['still_open_after']:,} |")
    print(f"\nCommand: `{command}`")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"date": when, "code": code_state(), "command": command, "rows": rows}, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
