"""Attribution benchmarks: throughput with 10M clicks stored, and freshness under a steady load.

    python bench/attribution_bench.py throughput [--clicks 10000000] [--conversions 200000]
    python bench/attribution_bench.py freshness [--rate 100] [--seconds 30]

Uses its own ClickHouse database (ct_bench_attr) and Redis database (4); both are wiped first.
Throughput: clicks and conversions are generated inside ClickHouse (INSERT ... SELECT), the
attributor is told about the conversions as the sink would tell it (notices of up to 5,000
keys), and a real `clicktrail attributor` process is timed until every notice is processed.
Freshness: a real collector, sink and attributor; conversions are posted at a steady rate and
each one's delay from the collector accepting it to its attributed row being stored is measured.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.benchlib import CH_BASE, bench_env, fresh_databases, redis_url  # noqa: E402
from clicktrail import clickhouse, config, keys, redis_client, schema, services  # noqa: E402
from pixel import registry  # noqa: E402

REDIS_URL = redis_url(4)
DB = "ct_bench_attr"
ADV = "bench"


def setup():
    ch, r, pixel_id, env = fresh_databases(DB, REDIS_URL, ADV)
    return ch, r, pixel_id, registry.create_token(r, ADV, ["events"]), env


def fill_clicks(ch, n: int, now: int) -> float:
    started = time.perf_counter()
    # A tenth of the clicks carry a hashed email (cross-device); ids clk-<n>; times over 27 days.
    ch.execute(f"""
        INSERT INTO {DB}.touchpoints
        SELECT '{ADV}', 'click', concat('clk-', toString(number)), toDateTime({now} - (number % 2332800)),
               ({now} - (number % 2332800)) * 1000,
               concat('cmp-', toString(number % 50)), concat('grp-', toString(number % 500)),
               concat('ad-', toString(number % 5000)), '',
               if(number % 10 = 0, lower(hex(SHA256(toString(number % 1000000)))), ''), '', '', '', '', 'import',
               {now} * 1000, 1
        FROM numbers({n})""")
    return time.perf_counter() - started


def fill_click_cache(r, n: int, now: int) -> float:
    """The same clicks in the click cache, as the redirect and imports would have put them."""
    import hashlib

    from pixel import click_cache
    from pixel.touchpoints import Touch

    started = time.perf_counter()
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        email = hashlib.sha256(str(i % 1_000_000).encode()).hexdigest() if i % 10 == 0 else ""
        touch = Touch(ADV, "click", f"clk-{i}", (now - i % 2332800) * 1000, f"cmp-{i % 50}", f"grp-{i % 500}",
                      f"ad-{i % 5000}", "", email, "", "")
        pipe.set(click_cache.key(ADV, touch.touch_id), click_cache.value(touch),
                 ex=click_cache.ttl_s(touch.touch_ms, time.time()))
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()
    return time.perf_counter() - started


def fill_conversions(ch, pixel_id: str, n: int, clicks: int) -> list[tuple]:
    """Conversions over the last 6 days; 70% carry a click id, 10% an email, the rest nothing."""
    now = int(time.time())
    ch.execute(f"""
        INSERT INTO {DB}.events (advertiser_id, pixel_id, event, event_id, event_time, event_ms, received_at,
                                 received_ms, source, click_id, email_sha256, browser_id, value, currency,
                                 dedup_version)
        SELECT '{ADV}', '{pixel_id}', 'CompletePayment', concat('conv-', toString(number)),
               toDateTime({now} - (number % 518400)), ({now} - (number % 518400)) * 1000,
               toDateTime({now}), {now} * 1000, 'server',
               if(number % 10 < 7, concat('clk-', toString((number * 7919) % {clicks})), ''),
               if(number % 10 = 7, lower(hex(SHA256(toString(number % 1000000)))), ''),
               concat('b-', toString(number % 100000)), 10, 'USD', 18446744073709551615 - {now} * 1000
        FROM numbers({n})""")
    return ch.execute(f"SELECT pixel_id, event, event_id, event_ms FROM {DB}.events")


def reuse(args):
    """The previous run's clicks and click cache, with everything the attributor wrote emptied."""
    base = clickhouse.connect(CH_BASE)
    r = redis_client.patient(REDIS_URL)
    stored = base.execute(f"SELECT count() FROM {DB}.touchpoints")[0][0] if base.execute(
        f"EXISTS TABLE {DB}.touchpoints")[0][0] else 0
    pixels = r.hkeys(keys.PIXELS)
    if stored != args.clicks or not pixels:
        return None
    schema.migrate(base, DB)  # a run of an older version left an older schema
    for table in ("events", "event_identities", "attribution_candidates", "credits", "conversion_stats",
                  "feed_changes"):
        base.execute(f"TRUNCATE TABLE {DB}.{table}")
    r.delete(keys.ATTRIBUTION_STREAM, keys.FEED_WATERMARK, keys.ATTRIBUTOR_LEASE)
    pixel_id = pixels[0].decode()
    env = bench_env(DB, REDIS_URL)
    return clickhouse.connect(clickhouse.with_database(CH_BASE, DB)), r, pixel_id, None, env


def throughput(args) -> None:
    reused = reuse(args) if args.reuse else None
    ch, r, pixel_id, _, env = reused or setup()
    now = int(time.time())
    if reused:
        print(f"reusing the {args.clicks:,} clicks (and click cache) of the previous run", flush=True)
    else:
        print(f"filling {args.clicks:,} clicks ...", flush=True)
        print(f"  {fill_clicks(ch, args.clicks, now):.1f}s")
        if not args.no_cache:
            print(f"  click cache: {fill_click_cache(r, args.clicks, now):.1f}s", flush=True)
    keys_ = fill_conversions(ch, pixel_id, args.conversions, args.clicks)
    # The attributor is started first and timed from when the notices arrive, as in production
    # (its start-up, about a second of imports and connections, is not attribution work).
    proc = subprocess.Popen([sys.executable, "-m", "clicktrail.cli", "attributor", "--log-level", "WARNING"],
                            env=dict(env, CLICKTRAIL_ATTRIBUTOR_BATCH=str(args.batch)))
    while not r.exists(keys.ATTRIBUTOR_LEASE):
        time.sleep(0.05)
    time.sleep(1.0)  # past its first (empty) read
    print(f"attributing {len(keys_):,} conversions against {args.clicks:,} clicks ...", flush=True)
    started = time.perf_counter()
    pipe = r.pipeline(transaction=False)
    for start in range(0, len(keys_), 5000):
        pipe.xadd(keys.ATTRIBUTION_STREAM, {"a": ADV, "k": "c", "d": orjson.dumps(keys_[start:start + 5000])})
    pipe.execute()
    while r.xlen(keys.ATTRIBUTION_STREAM):
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    proc.terminate()
    proc.wait()
    attributed = ch.execute(f"SELECT uniqExact(event_id) FROM {DB}.credits")[0][0]
    matched = ch.execute(f"SELECT uniqExact(event_id) FROM {DB}.credits WHERE touch_kind != ''")[0][0]
    print("\n| clicks stored | click cache | conversions | attributed (to a touchpoint) | seconds | conversions/s |")
    print("|---:|---|---:|---:|---:|---:|")
    print(f"| {args.clicks:,} | {'empty' if args.no_cache else 'filled'} | {len(keys_):,} | {attributed:,} "
          f"({matched:,}) | {elapsed:.1f} | {attributed / elapsed:,.0f} |")
    if not args.keep:
        r.flushdb()


def freshness(args) -> None:
    ch, r, pixel_id, token, env = setup()
    fill_clicks(ch, 10_000, int(time.time()))
    fill_click_cache(r, 10_000, int(time.time()))
    port = services.free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "clicktrail.cli", "collector", "--bind", f"127.0.0.1:{port}",
                               "--workers", "2"], env=env),
             subprocess.Popen([sys.executable, "-m", "clicktrail.cli", "sink", "--log-level", "WARNING"], env=env),
             subprocess.Popen([sys.executable, "-m", "clicktrail.cli", "attributor", "--log-level", "WARNING"],
                              env=env)]
    import urllib.request

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            break
        except OSError:
            time.sleep(0.2)
    per_request = 10
    sent = 0
    started = time.monotonic()
    try:
        while time.monotonic() - started < args.seconds:
            now = int(time.time())
            body = {"event_source": "web", "event_source_id": pixel_id, "data": [
                {"event": "CompletePayment", "event_id": f"f-{sent + i}", "event_time": now,
                 "user": {"ttclid": f"clk-{(sent + i) % 10_000}"}} for i in range(per_request)]}
            req = urllib.request.Request(f"http://127.0.0.1:{port}/open_api/v1.3/event/track/",
                                         data=orjson.dumps(body), method="POST",
                                         headers={"Access-Token": token, "Content-Type": "application/json"})
            urllib.request.urlopen(req, timeout=5).read()
            sent += per_request
            time.sleep(max(0.0, started + sent / args.rate - time.monotonic()))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if ch.execute(f"SELECT uniqExact(event_id) FROM {DB}.credits")[0][0] >= sent:
                break
            time.sleep(0.2)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
    (p50, p99, mx, n), = ch.execute(f"""
        SELECT quantileExact(0.5)(d), quantileExact(0.99)(d), max(d), count() FROM (
          SELECT a.first_ms - e.received_ms AS d FROM
            (SELECT event_id, min(attributed_ms) AS first_ms FROM {DB}.credits GROUP BY event_id) AS a
          ANY INNER JOIN (SELECT event_id, min(received_ms) AS received_ms FROM {DB}.events GROUP BY event_id) AS e
          USING event_id)""")
    print("\n| conversions/s | seconds | conversions | freshness p50 | p99 | max |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.rate} | {args.seconds} | {n:,} of {sent:,} | {p50} ms | {p99} ms | {mx} ms |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--clicks", type=int, default=10_000_000)
    t.add_argument("--conversions", type=int, default=200_000)
    t.add_argument("--batch", type=int, default=config.DEFAULTS["ATTRIBUTOR_BATCH"],
                   help="notices per tick (of 5,000 keys each)")
    t.add_argument("--no-cache", action="store_true", help="leave the click cache empty (ClickHouse lookups)")
    t.add_argument("--keep", action="store_true", help="keep the clicks and click cache for a later --reuse")
    t.add_argument("--reuse", action="store_true", help="reuse a --keep run's clicks when it stored as many")
    f = sub.add_parser("freshness")
    f.add_argument("--rate", type=int, default=100, help="conversions per second")
    f.add_argument("--seconds", type=int, default=30)
    args = parser.parse_args()
    if args.what == "throughput" and args.reuse and args.no_cache:
        parser.error("--reuse keeps the previous run's click cache; --no-cache needs a fresh run")
    config.load()
    (throughput if args.what == "throughput" else freshness)(args)


if __name__ == "__main__":
    main()
