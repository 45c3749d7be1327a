"""Attribution benchmarks: throughput with 10M clicks stored, and freshness under a steady load.

    python bench/attribution_bench.py throughput [--clicks 10000000] [--conversions 200000]
    python bench/attribution_bench.py freshness [--rate 100] [--seconds 30]
    python bench/attribution_bench.py shared [--partitions 4] [--clicks 1000000] [--conversions 200000]

Uses its own ClickHouse database (ct_bench_attr) and Redis database (4); both are wiped first.
Throughput: clicks and conversions are generated inside ClickHouse (INSERT ... SELECT), the
attributor is told about the conversions as the sink would tell it (notices of up to 5,000
keys), and a real `clicktrail attributor` process is timed until every notice is processed.
Freshness: a real collector, sink and attributor; conversions are posted at a steady rate and
each one's delay from the collector accepting it to its attributed row being stored is measured.
Shared: as throughput, over one advertiser per partition (``CLICKTRAIL_ATTRIBUTION_PARTITIONS``),
timed with 1 and then 2 attributor processes side by side on the same data (what the attributors
wrote is emptied between the runs; pairs of runs alternate), with the attributors' own CPU time
from /proc.
"""

from __future__ import annotations

import argparse
import os
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


def fill_clicks(ch, n: int, now: int, adv: str = ADV) -> float:
    started = time.perf_counter()
    # A tenth of the clicks carry a hashed email (cross-device); ids clk-<n>; times over 27 days.
    ch.execute(f"""
        INSERT INTO {DB}.touchpoints (advertiser_id, kind, touch_id, touch_time, touch_ms, campaign_id, adgroup_id,
                                      ad_id, browser_id, email_sha256, phone_sha256, external_id_sha256, ip,
                                      user_agent, source, received_ms, counted)
        SELECT '{adv}', 'click', concat('clk-', toString(number)), toDateTime({now} - (number % 2332800)),
               ({now} - (number % 2332800)) * 1000,
               concat('cmp-', toString(number % 50)), concat('grp-', toString(number % 500)),
               concat('ad-', toString(number % 5000)), '',
               if(number % 10 = 0, lower(hex(SHA256(toString(number % 1000000)))), ''), '', '', '', '', 'import',
               {now} * 1000, 1
        FROM numbers({n})""")
    return time.perf_counter() - started


def fill_click_cache(r, n: int, now: int, adv: str = ADV) -> float:
    """The same clicks in the click cache, as the redirect and imports would have put them."""
    import hashlib

    from pixel import click_cache
    from pixel.touchpoints import Touch

    started = time.perf_counter()
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        email = hashlib.sha256(str(i % 1_000_000).encode()).hexdigest() if i % 10 == 0 else ""
        touch = Touch(adv, "click", f"clk-{i}", (now - i % 2332800) * 1000, f"cmp-{i % 50}", f"grp-{i % 500}",
                      f"ad-{i % 5000}", "", email, "", "")
        pipe.set(click_cache.key(adv, touch.touch_id), click_cache.value(touch),
                 ex=click_cache.ttl_s(touch.touch_ms, time.time()))
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()
    return time.perf_counter() - started


def fill_conversions(ch, pixel_id: str, n: int, clicks: int, adv: str = ADV) -> list[tuple]:
    """Conversions over the last 6 days; 70% carry a click id, 10% an email, the rest nothing."""
    now = int(time.time())
    ch.execute(f"""
        INSERT INTO {DB}.events (advertiser_id, pixel_id, event, event_id, event_time, event_ms, received_at,
                                 received_ms, source, click_id, email_sha256, browser_id, value, currency,
                                 dedup_version)
        SELECT '{adv}', '{pixel_id}', 'CompletePayment', concat('conv-', toString(number)),
               toDateTime({now} - (number % 518400)), ({now} - (number % 518400)) * 1000,
               toDateTime({now}), {now} * 1000, 'server',
               if(number % 10 < 7, concat('clk-', toString((number * 7919) % {clicks})), ''),
               if(number % 10 = 7, lower(hex(SHA256(toString(number % 1000000)))), ''),
               concat('b-', toString(number % 100000)), 10, 'USD', 18446744073709551615 - {now} * 1000
        FROM numbers({n})""")
    return ch.execute(f"SELECT pixel_id, event, event_id, event_ms FROM {DB}.events WHERE advertiser_id = %(a)s",
                      {"a": adv})


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


def _cpu_s(pid: int) -> float:
    """User and system CPU seconds a process has used so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _advertisers(partitions: int) -> list[str]:
    """One advertiser per partition: the first bench-<n> that falls in it."""
    from pixel import records

    return [next(f"bench-{n}" for n in range(10_000) if records.notice_partition(f"bench-{n}", partitions) == p)
            for p in range(partitions)]


def _shared_run(ch, r, env: dict, notices: dict[str, list[bytes]], processes: int, partitions: int, batch: int,
                clickhouse_pid: int = 0) -> dict:
    """Time ``processes`` attributors over the notices (advertiser -> encoded notices)."""
    from pixel import records

    for table in ("attribution_candidates", "credits", "conversion_stats", "feed_changes"):
        ch.execute(f"TRUNCATE TABLE {DB}.{table}")
    r.delete(keys.ATTRIBUTORS, *(k for n in range(partitions) for k in (
        keys.attribution_stream(n), keys.attributor_lease(n), keys.feed_watermark(n))))
    procs = [subprocess.Popen([sys.executable, "-m", "clicktrail.cli", "attributor", "--log-level", "WARNING"],
                              env=dict(env, CLICKTRAIL_ATTRIBUTOR_BATCH=str(batch),
                                       CLICKTRAIL_ATTRIBUTION_PARTITIONS=str(partitions)))
             for _ in range(processes)]
    names = {f"-{p.pid}" for p in procs}

    def shared() -> bool:  # every partition held, each process holding its share
        held = [(r.get(keys.attributor_lease(n)) or b"").decode() for n in range(partitions)]
        return all(sum(h.endswith(name) for h in held) == partitions // processes for name in names)

    while not shared():
        time.sleep(0.05)
    time.sleep(1.0)  # past their first (empty) reads
    cpu = sum(_cpu_s(p.pid) for p in procs)
    ch_cpu = _cpu_s(clickhouse_pid) if clickhouse_pid else 0.0
    started = time.perf_counter()
    pipe = r.pipeline(transaction=False)
    for adv, encoded in notices.items():
        for data in encoded:
            pipe.xadd(records.notice_stream(adv, partitions), {"a": adv, "k": "c", "d": data})
    pipe.execute()
    while any(r.xlen(keys.attribution_stream(n)) for n in range(partitions)):
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    cpu = sum(_cpu_s(p.pid) for p in procs) - cpu
    ch_cpu = _cpu_s(clickhouse_pid) - ch_cpu if clickhouse_pid else float("nan")
    for proc in procs:
        proc.terminate()
        proc.wait()
    attributed = ch.execute(f"SELECT uniqExact((advertiser_id, event_id)) FROM {DB}.credits")[0][0]
    doubled = ch.execute(f"SELECT count() FROM (SELECT advertiser_id, event_id, model, sum(sign) AS s "
                         f"FROM {DB}.credits GROUP BY advertiser_id, event_id, model HAVING s != 1)")[0][0]
    return {"processes": processes, "attributed": attributed, "doubled": doubled, "seconds": elapsed, "cpu_s": cpu,
            "ch_cpu_s": ch_cpu}


def shared(args) -> None:
    from pixel import registry as reg

    advertisers = _advertisers(args.partitions)
    ch, r, _, _, env = setup()
    now = int(time.time())
    notices: dict[str, list[bytes]] = {}
    per_clicks, per_conversions = args.clicks // len(advertisers), args.conversions // len(advertisers)
    print(f"filling {args.clicks:,} clicks and {args.conversions:,} conversions over {len(advertisers)} "
          f"advertisers, one per partition ...", flush=True)
    for adv in advertisers:
        pixel_id = reg.create_pixel(r, adv, ["bench.example"])
        fill_clicks(ch, per_clicks, now, adv)
        fill_click_cache(r, per_clicks, now, adv)
        keys_ = fill_conversions(ch, pixel_id, per_conversions, per_clicks, adv)
        notices[adv] = [orjson.dumps(keys_[start:start + 5000]) for start in range(0, len(keys_), 5000)]
    load = os.getloadavg()[0]
    # Alternated (1, 2, 1, 2, ...): the first run also warms ClickHouse's caches.
    runs = [_shared_run(ch, r, env, notices, k, args.partitions, args.batch, args.clickhouse_pid)
            for _ in range(args.rounds) for k in (1, 2)]
    print(f"\n{args.partitions} partitions, {args.clicks:,} clicks stored, click cache filled; "
          f"load average before: {load:.1f} on {os.cpu_count()} cores")
    print("| attributor processes | conversions attributed | not exactly once | seconds | conversions/s | "
          "attributors' CPU s | ClickHouse server CPU s | CPU us per conversion (attributors + ClickHouse) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        per = (run["cpu_s"] + run["ch_cpu_s"]) * 1e6 / max(run["attributed"], 1)
        print(f"| {run['processes']} | {run['attributed']:,} | {run['doubled']} | {run['seconds']:.1f} | "
              f"{run['attributed'] / run['seconds']:,.0f} | {run['cpu_s']:.1f} | {run['ch_cpu_s']:.1f} | "
              f"{run['cpu_s'] * 1e6 / max(run['attributed'], 1):,.0f} + "
              f"{run['ch_cpu_s'] * 1e6 / max(run['attributed'], 1):,.0f} = {per:,.0f} |")
    one, two = (sum(run["seconds"] for run in runs if run["processes"] == k) for k in (1, 2))
    print(f"speed-up with 2 (total seconds of the 1-process runs over the 2-process ones): {one / two:.2f}x")
    if not args.keep:
        r.flushdb()


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
    s = sub.add_parser("shared")
    s.add_argument("--partitions", type=int, default=4)
    s.add_argument("--clicks", type=int, default=1_000_000)
    s.add_argument("--conversions", type=int, default=200_000)
    s.add_argument("--batch", type=int, default=config.DEFAULTS["ATTRIBUTOR_BATCH"])
    s.add_argument("--rounds", type=int, default=2, help="pairs of runs (1 then 2 processes)")
    s.add_argument("--clickhouse-pid", type=int, default=0,
                   help="also count this ClickHouse server's CPU time (local server; shared: noisy)")
    s.add_argument("--keep", action="store_true", help="keep the Redis database afterwards")
    args = parser.parse_args()
    if args.what == "throughput" and args.reuse and args.no_cache:
        parser.error("--reuse keeps the previous run's click cache; --no-cache needs a fresh run")
    config.load()
    {"throughput": throughput, "freshness": freshness, "shared": shared}[args.what](args)


if __name__ == "__main__":
    main()
