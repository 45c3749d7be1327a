#!/usr/bin/env python3
"""Delay-corrected estimates against a known answer: clicks and conversions whose delays follow a
known distribution, sent through the real system, then the feed's ``estimate=true`` compared with
the naive count at bucket ages 1 h, 6 h, 24 h and 3 days.

    python bench/delay_bench.py [--ads 12] [--clicks-per-hour 40] [--seed 1]

World: ``ads`` ads, each with ``clicks-per-hour`` clicks per hour spread over the last 6.9 days (the
Events API accepts events up to 7 days old, so every conversion that has happened by now can be
sent). Each click converts with probability ``CONVERSION_RATE``, once, at a delay drawn from a
mixture: 60 % exponential (mean 1 h), 40 % log-normal (median 24 h, sigma 1), as in the Criteo
delayed-feedback data (short and long converters). Conversions past the click window (7 days) are
never credited and are not part of the answer. Clicks are imported (``POST /v1/clicks`` on the API
app); the conversions that have happened by now are posted to the Events API (``user.ttclid`` =
their click), stored by the real sink and attributed by the real attributor (in process, the apps
through their WSGI test clients); the attributor's delay curves are refreshed once, and the feed is
read once (no cursor: every hour bucket of the last 7 days).

Answer: per (ad, hour bucket), the final count is every generated conversion within the window,
arrived or not. At bucket age A, the buckets whose clicks are A to A+3 h old are compared: weighted
absolute error per bucket ``sum |x - final| / sum final`` and the error of the total
``(sum x - sum final) / sum final``, of the naive count (``conversions``) and of
``expected_conversions``; and the share of buckets whose final count lies in
[``expected_low``, ``expected_high``].

Environment: BENCH_CLICKHOUSE_URL (default clickhouse://127.0.0.1:9000/default), BENCH_REDIS_URL
(default redis://127.0.0.1:6379/6); a throwaway ClickHouse database ct_bench_delays is created and
dropped, and the Redis database is wiped. Results: docs/performance.md ("Delay-corrected estimates").
"""

from __future__ import annotations

import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone

HOUR = 3_600
DAY = 86_400
CONVERSION_RATE = 0.3
WINDOW_S = 7 * DAY
#: Clicks this far back at most: their conversions are all younger than the Events API's 7 days.
SPAN_S = int(6.9 * DAY)
AGES_H = (1, 6, 24, 72)
EVENT = "CompletePayment"


def draw_delay(rng: random.Random) -> float:
    """Seconds from click to conversion: 60 % exponential (mean 1 h), 40 % log-normal (median 24 h)."""
    if rng.random() < 0.6:
        return rng.expovariate(1 / HOUR)
    return rng.lognormvariate(math.log(24 * HOUR), 1.0)


@dataclass
class Generated:
    now: int
    clicks: list[tuple[str, int, str]] = field(default_factory=list)  # click id, time, campaign
    conversions: list[tuple[str, int, str]] = field(default_factory=list)  # event id, time, click id
    final: dict[tuple[int, str], int] = field(default_factory=lambda: defaultdict(int))  # (hour, ad) -> count


def generate(now: int, ads: int, clicks_per_hour: int, seed: int) -> Generated:
    rng = random.Random(seed)
    g = Generated(now)
    hours = SPAN_S // HOUR
    for a in range(ads):
        campaign = f"D{a}"
        for h in range(hours):
            for k in range(clicks_per_hour):
                at = now - SPAN_S + h * HOUR + rng.randrange(HOUR)
                click_id = f"{campaign}-{h}-{k}"
                g.clicks.append((click_id, at, campaign))
                if rng.random() >= CONVERSION_RATE:
                    continue
                delay = draw_delay(rng)
                if delay > WINDOW_S:
                    continue  # never credited: not part of the final count
                g.final[(at // HOUR * HOUR, f"{campaign}-ad")] += 1
                if at + delay <= now - 1:
                    g.conversions.append((f"c-{click_id}", int(at + delay), click_id))
    return g


def send(g: Generated, api, collector, adserver_token: str, pixel_id: str, events_token: str, settle) -> None:
    """Clicks through the API app's import, conversions through the Events API; then sink and attributor."""
    auth = {"Authorization": f"Bearer {adserver_token}"}
    for i in range(0, len(g.clicks), 10_000):
        rows = [{"click_id": c, "click_time": at, "campaign_id": cmp, "adgroup_id": f"{cmp}-g",
                 "ad_id": f"{cmp}-ad"} for c, at, cmp in g.clicks[i:i + 10_000]]
        resp = api.post("/v1/clicks", json={"clicks": rows}, headers=auth)
        assert resp.status_code == 200 and resp.json["accepted"] == len(rows), resp.json
    settle()
    for i in range(0, len(g.conversions), 500):
        data = [{"event": EVENT, "event_id": e, "event_time": at, "user": {"ttclid": click},
                 "properties": {"value": 1.0, "currency": "USD"}} for e, at, click in g.conversions[i:i + 500]]
        body = {"event_source": "web", "event_source_id": pixel_id, "data": data}
        resp = collector.post("/open_api/v1.3/event/track/", json=body, headers={"Access-Token": events_token})
        assert resp.status_code == 200 and resp.json["data"]["accepted"] == len(data), resp.json
        settle()


def _bucket_s(row: dict) -> int:
    return int(datetime.strptime(row["bucket_start"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp())


def compare(g: Generated, rows: list[dict], now: float) -> dict[int, dict]:
    """Per bucket age (hours): naive and estimated weighted absolute errors, interval coverage, buckets."""
    by_key = {(_bucket_s(r), r["ad_id"]): r for r in rows if r["event"] == EVENT}
    out = {}
    for age_h in AGES_H:
        final_sum = naive_err = est_err = naive_sum = est_sum = 0.0
        covered = n = 0
        for (bucket, ad), final in g.final.items():
            youngest = now - (bucket + HOUR)  # the bucket's clicks are youngest..youngest+1h old
            if not age_h * HOUR <= youngest < (age_h + 3) * HOUR:
                continue
            row = by_key.get((bucket, ad), {"conversions": 0.0, "expected_conversions": 0.0,
                                            "expected_low": 0.0, "expected_high": 0.0})
            final_sum += final
            naive_sum += row["conversions"]
            est_sum += row["expected_conversions"]
            naive_err += abs(row["conversions"] - final)
            est_err += abs(row["expected_conversions"] - final)
            covered += row["expected_low"] <= final <= row["expected_high"]
            n += 1
        share = (lambda x: x / final_sum) if final_sum else (lambda x: 0.0)
        out[age_h] = {"buckets": n, "final": final_sum, "naive_error": share(naive_err),
                      "estimate_error": share(est_err), "naive_bias": share(naive_sum - final_sum),
                      "estimate_bias": share(est_sum - final_sum), "coverage": covered / n if n else 0.0}
    return out


def main() -> None:
    import argparse
    import os
    import sys
    import tempfile
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import redis as redis_lib

    from clicktrail import clickhouse, config, schema
    from clicktrail.lifecycle import StopFlag
    from collector import create_app as create_collector
    from attribution.engine import Attributor
    from pixel import registry
    from reporting.api import create_app as create_api
    from sink.worker import Sink

    p = argparse.ArgumentParser()
    p.add_argument("--ads", type=int, default=12)
    p.add_argument("--clicks-per-hour", type=int, default=40)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    base = os.environ.get("BENCH_CLICKHOUSE_URL", "clickhouse://127.0.0.1:9000/default").rsplit("/", 1)[0]
    ch_url, redis_url = f"{base}/ct_bench_delays", os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/6")
    r = redis_lib.Redis.from_url(redis_url)
    r.flushdb()
    admin = clickhouse.connect(f"{base}/default")
    admin.execute("DROP DATABASE IF EXISTS ct_bench_delays")
    where = {"REDIS_URL": redis_url, "CLICKHOUSE_URL": ch_url, "DATA_DIR": tempfile.mkdtemp()}
    settings = config.load(where)
    schema.migrate(admin, "ct_bench_delays")
    try:
        advertiser = "adv-delays"
        pixel = registry.create_pixel(r, advertiser, ["shop.example"])
        events_token = registry.create_token(r, advertiser, ["events"])
        adserver = registry.create_token(r, advertiser, ["adserver"])
        optimizer = registry.create_token(r, advertiser, ["optimizer"])
        api, collector = create_api(where).test_client(), create_collector(where).test_client()
        sink = Sink(settings, r, clickhouse.connect(ch_url), "ct_bench_delays", StopFlag(), name="bench-sink")
        sink.ensure_group()
        attributor = Attributor(settings, r, clickhouse.connect(ch_url), "ct_bench_delays", StopFlag(),
                                name="bench-attributor")
        attributor.ensure_group()

        def settle() -> None:
            while r.xlen("ct:events"):
                sink.run_once()
            while attributor.tick(block_ms=10):
                pass

        now = int(time.time()) - 60
        g = generate(now, args.ads, args.clicks_per_hour, args.seed)
        started = time.monotonic()
        send(g, api, collector, adserver, pixel, events_token, settle)
        sent_s = time.monotonic() - started
        started = time.monotonic()
        curves = attributor.delay_curves.refresh()
        refresh_s = time.monotonic() - started
        resp = api.get("/v1/optimizer/conversions", query_string={"event": EVENT, "estimate": "true"},
                       headers={"Authorization": f"Bearer {optimizer}"})
        assert resp.status_code == 200, resp.json
        print(f"{len(g.clicks)} clicks, {len(g.conversions)} conversions sent of {sum(g.final.values())} "
              f"in the window; sent and attributed in {sent_s:.0f} s; curves refreshed ({curves}) in "
              f"{refresh_s * 1000:.0f} ms")
        print("| bucket age | buckets | final | naive: error per bucket | estimate: error per bucket "
              "| naive: total | estimate: total | interval coverage |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for age_h, res in compare(g, resp.json["rows"], time.time()).items():
            print(f"| {age_h} h | {res['buckets']} | {res['final']:.0f} | {res['naive_error']:.1%} | "
                  f"{res['estimate_error']:.1%} | {res['naive_bias']:+.1%} | {res['estimate_bias']:+.1%} | "
                  f"{res['coverage']:.0%} |")
    finally:
        admin.execute("DROP DATABASE IF EXISTS ct_bench_delays")
        r.flushdb()


if __name__ == "__main__":
    main()
