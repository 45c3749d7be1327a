#!/usr/bin/env python3
"""What placing client IPs (country, region) costs the collector: with the lookup and without, in one run.

Three measurements, all process CPU time (which a busy machine disturbs less than wall time):

1. the lookup alone (``pixel/geo.py``), per address, over a mix of public IPv4 and IPv6 addresses
   and a few that no database places: the packaged data (``iptocc``) and a MaxMind DB file (a
   file of your own with ``--mmdb PATH``, else a small one written here; a real City file's tree
   is deeper, so its lookups cost more than this one's);
2. what the collector does to a pixel batch (1 and 20 events) before Redis: validate, place,
   encode; with no lookup (``off``), the packaged data and the MaxMind file, alternating;
3. the collector's hot request, a pixel batch (1 and 20 events), in process through Flask's test
   client, from a different public client IP each request, with ``CLICKTRAIL_GEOIP_DB=off``, with
   the packaged data, and with the MaxMind file, and a second collector without it as a control
   (the gap between the two without is the run's noise): they alternate round by round, each
   round starting with the next one, and each figure is the best round. Needs Redis (DB 3 by default; its stream is emptied after
   every round).

    python bench/geo_bench.py                       # 6 rounds of 3000 requests per case
    python bench/geo_bench.py --mmdb /var/lib/GeoIP/GeoLite2-City.mmdb

Results: docs/performance.md, "Placing client IPs".
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import redis

from benchlib import code_state, redis_url  # noqa: E402  (puts the measured tree on sys.path)
from clicktrail import keys  # noqa: E402
from collector_bench import ADVERTISER, DOMAIN, ORIGIN, browser_body  # noqa: E402
from pixel import geo, registry  # noqa: E402


def addresses(n: int, rng: random.Random) -> list[str]:
    """Public-looking addresses: 85 % IPv4, 15 % IPv6 in the RIRs' 2000::/3, a few unplaceable."""
    out = []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.85:
            first = rng.choice([n for n in range(1, 224) if n not in (10, 127)])
            out.append(f"{first}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}")
        elif roll < 0.98:
            out.append(f"2{rng.randrange(0x400, 0x1000):03x}:{rng.randrange(0x10000):x}:{rng.randrange(0x10000):x}::"
                       f"{rng.randrange(1, 0x10000):x}")
        else:
            out.append(rng.choice(["10.1.2.3", "192.168.0.7", "203.0.113.9", "::1", "fe80::1"]))
    return out


def small_mmdb(folder: Path, ips: list[str]) -> str:
    """A City-layout file placing a /16 (IPv4) or /32 (IPv6) around each address, as a stand-in."""
    from mmdb_writer import MMDBWriter
    from netaddr import IPNetwork, IPSet

    writer = MMDBWriter(ip_version=6, database_type="GeoIP2-City", ipv4_compatible=True)
    rng = random.Random(3)
    nets = {str(IPNetwork(f"{ip}/{16 if '.' in ip else 32}").cidr) for ip in ips if not ip.startswith(("10.", "192.168",
                                                                                                        "203.0.113",
                                                                                                        "::", "fe80"))}
    for net in sorted(nets):
        country = rng.choice(["US", "DE", "FR", "JP", "BR", "IN", "GB", "NL"])
        writer.insert_network(IPSet([net]), {"country": {"iso_code": country},
                                             "subdivisions": [{"iso_code": "AB", "names": {"en": "Region"}}]})
    path = folder / "bench-city.mmdb"
    writer.to_db_file(str(path))
    return str(path)


def rotations(names: list[str], rounds: int):
    """The cases to measure, round after round, each round starting with the next one, so that none
    is always measured first (or last) on a machine whose load drifts."""
    for round_no in range(rounds):
        start = round_no % len(names)
        yield from names[start:] + names[:start]


def lookup_cost(locators: dict, ips: list[str], rounds: int) -> dict[str, float]:
    out = {}
    for name, locate in locators.items():
        best = float("inf")
        for _ in range(rounds):
            started = time.process_time()
            for ip in ips:
                locate(ip)
            best = min(best, (time.process_time() - started) / len(ips) * 1e6)
        out[name] = best
    return out


def intake_cost(locators: dict, ips: list[str], events: int, n: int, rounds: int) -> dict[str, float]:
    """CPU µs per pixel batch of what the collector does before Redis: validate, place, encode.

    The part of a request the lookup adds to, without Flask, sockets or Redis around it: a
    measurement this short is far less disturbed by a busy machine than a whole request.
    """
    import orjson

    from pixel.events import Context, parse_events
    from pixel.records import encode_records

    raw = orjson.loads(browser_body(events, int(time.time() * 1000), random.Random(5)))["events"]
    now = int(time.time() * 1000)
    contexts = [Context(pixel_id="CBENCH", source="browser", received_ms=now, skew_ms=0, ip=ip, user_agent="UA",
                        max_age_ms=7 * 86_400_000, max_future_ms=86_400_000) for ip in ips[:1000]]
    best = {name: float("inf") for name in locators}
    for name in rotations(list(locators), rounds):
        locate = locators[name]
        started = time.process_time()
        for i in range(n):
            records, _ = parse_events(raw, contexts[i % len(contexts)])
            geo.place_records(locate, records)
            encode_records(records)
        best[name] = min(best[name], (time.process_time() - started) / n * 1e6)
    return best


def request_cost(apps: dict, r: redis.Redis, pixel_id: str, ips: list[str], events: int, n: int,
                 rounds: int) -> dict[str, float]:
    """CPU µs per pixel-batch request for each collector, alternating round by round; the best round."""
    body = browser_body(events, int(time.time() * 1000), random.Random(5))
    headers = {"Content-Type": "text/plain;charset=UTF-8", "Origin": ORIGIN}
    clients = {name: app.test_client() for name, app in apps.items()}
    best = {name: float("inf") for name in apps}
    for name, client in clients.items():  # warm-up: imports, first connections, caches
        for ip in ips[:200]:
            client.post(f"/e/{pixel_id}", data=body, headers=headers, environ_base={"REMOTE_ADDR": ip})
    r.unlink(keys.EVENTS_STREAM)
    for name in rotations(list(clients), rounds):
        client = clients[name]
        started = time.process_time()
        for i in range(n):
            status = client.post(f"/e/{pixel_id}", data=body, headers=headers,
                                 environ_base={"REMOTE_ADDR": ips[i % len(ips)]}).status_code
        best[name] = min(best[name], (time.process_time() - started) / n * 1e6)
        r.unlink(keys.EVENTS_STREAM)
        if status != 200:
            raise SystemExit(f"{name}: answered {status}")
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000, help="requests per case and round [3000]")
    parser.add_argument("--rounds", type=int, default=6, help="rounds, alternating the collectors [6]")
    parser.add_argument("--mmdb", help="a MaxMind DB file to measure (default: a small one written here)")
    parser.add_argument("--redis-url", default=redis_url(3))
    parser.add_argument("--code", help="an exported source tree to measure instead of this checkout")
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="ct-geo-bench-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder / "metrics")  # as `clicktrail collector` runs
    (folder / "metrics").mkdir()
    ips = addresses(20_000, random.Random(11))
    mmdb = args.mmdb or small_mmdb(folder, ips)
    r = redis.Redis.from_url(args.redis_url)
    pixel_id = registry.create_pixel(r, ADVERTISER, [DOMAIN])
    try:
        locators = {"packaged (iptocc)": geo.open_locator(""), "MaxMind file": geo.open_locator(mmdb)}
        placed = {name: sum(1 for ip in ips if locate(ip).country) / len(ips) for name, locate in locators.items()}
        lookups = lookup_cost(locators, ips, args.rounds)
        intake = {events: intake_cost({"off": geo.no_locator, **locators}, ips, events, args.requests, args.rounds)
                  for events in (1, 20)}
        from collector.app import create_app

        common = {"REDIS_URL": args.redis_url, "STREAM_MAX_LEN": 10**9, "DATA_DIR": str(folder / "data")}
        # Two identical collectors without the lookup: how far apart they land is this run's noise.
        apps = {"off": create_app({**common, "GEOIP_DB": "off"}),
                "packaged (iptocc)": create_app(common),
                "MaxMind file": create_app({**common, "GEOIP_DB": mmdb}),
                "off (control: a second collector)": create_app({**common, "GEOIP_DB": "off"})}
        per_request = {events: request_cost(apps, r, pixel_id, ips, events, args.requests, args.rounds)
                       for events in (1, 20)}
    finally:
        r.unlink(keys.EVENTS_STREAM)
        r.hdel(keys.PIXELS, pixel_id)
        r.hdel(keys.ADVERTISERS, ADVERTISER)
        r.hdel(keys.ADVERTISER_DOMAINS, ADVERTISER)
        shutil.rmtree(folder, ignore_errors=True)

    print("| lookup | CPU µs/address (best round) | addresses placed |\n|---|---:|---:|")
    for name, micros in lookups.items():
        print(f"| {name} | {micros:.2f} | {placed[name]:.0%} |")
    print("\n| validate, place and encode a pixel batch | 1 event: CPU µs | vs off | 20 events: CPU µs "
          "| vs off |\n|---|---:|---:|---:|---:|")
    for name in intake[1]:
        one, twenty = intake[1][name], intake[20][name]
        print(f"| GEOIP_DB {name} | {one:.1f} | {one - intake[1]['off']:+.1f} | {twenty:.1f} | "
              f"{twenty - intake[20]['off']:+.1f} |")
    print("\n| collector, in process | 1-event batch: CPU µs/request | vs off | 20-event batch: CPU µs/request "
          "| vs off |\n|---|---:|---:|---:|---:|")
    for name in apps:
        one, twenty = per_request[1][name], per_request[20][name]
        print(f"| GEOIP_DB {name} | {one:.0f} | {one / per_request[1]['off'] - 1:+.1%} | {twenty:.0f} | "
              f"{twenty / per_request[20]['off'] - 1:+.1%} |")
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    print(f"\nCode: {code_state()}. MaxMind file: {'given' if args.mmdb else 'written by the bench'}. "
          f"Command: `{command}`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
