"""Report latency with 10M events and 1M clicks stored.

    python bench/report_bench.py [--events 10000000] [--clicks 1000000] [--requests 40] [--database NAME]

Uses its own ClickHouse database (ct_bench_report, or --database) and Redis database (5); both
are wiped first. Clicks and events are generated inside ClickHouse (INSERT ... SELECT); one event
in 20 is a CompletePayment carrying the click id of a click up to 3 days before it, one in four of
those in EUR (the rest in the advertiser's USD). A real `clicktrail attributor` attributes them
all (so credits, sums and candidates are what production would hold), spend for 30 days x every
ad is posted through POST /v1/costs and a EUR rate for each of the 30 days through POST
/v1/exchange-rates (where the code has it), and a real `clicktrail api` (gunicorn, 2 workers)
answers the reports, timed from the client over HTTP.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlencode

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.benchlib import code_state, fresh_databases, redis_url  # noqa: E402
from clicktrail import keys, services  # noqa: E402
from pixel import registry  # noqa: E402

REDIS_URL = redis_url(5)
DB = "ct_bench_report"
ADV = "bench"
DAYS = 30
ADS, ADGROUPS, CAMPAIGNS = 5000, 500, 50


def setup():
    return fresh_databases(DB, REDIS_URL, ADV)


def _click_time(number: str, now: int) -> str:
    return f"({now} - 60 - ({number} * 2591) % {DAYS * 86400})"


def fill(ch, pixel_id: str, events: int, clicks: int, now: int) -> None:
    ct = _click_time("number", now)
    ch.execute(f"""
        INSERT INTO {DB}.touchpoints (advertiser_id, kind, touch_id, touch_time, touch_ms, campaign_id, adgroup_id,
                                      ad_id, source, received_ms, counted)
        SELECT '{ADV}', 'click', concat('clk-', toString(number)), toDateTime({ct}), {ct} * 1000,
               concat('cmp-', toString(number % {CAMPAIGNS})), concat('grp-', toString(number % {ADGROUPS})),
               concat('ad-', toString(number % {ADS})), 'import', {now} * 1000, 1
        FROM numbers({clicks})""")
    k = f"((intDiv(number, 20) * 7919) % {clicks})"
    conv_t = f"least({_click_time(k, now)} + number % 259200, {now} - 1)"
    page_t = f"({now} - (number * 7753) % {DAYS * 86400})"
    ch.execute(f"""
        INSERT INTO {DB}.events (advertiser_id, pixel_id, event, event_id, event_time, event_ms, received_at,
                                 received_ms, source, click_id, browser_id, value, currency, device_type, ua_os,
                                 ua_browser, dedup_version)
        SELECT '{ADV}', '{pixel_id}', if(number % 20 = 0, 'CompletePayment', 'PageView'),
               concat('e-', toString(number)),
               toDateTime(if(number % 20 = 0, {conv_t}, {page_t})), if(number % 20 = 0, {conv_t}, {page_t}) * 1000,
               toDateTime({now}), {now} * 1000, 'browser',
               if(number % 20 = 0, concat('clk-', toString({k})), ''), concat('b-', toString(number % 2000000)),
               if(number % 20 = 0, 10 + number % 90, 0), if(number % 80 = 0, 'EUR', 'USD'),
               if(number % 3 = 0, 'mobile', 'pc'), 'Android',
               'Chrome', 18446744073709551615 - {now} * 1000
        FROM numbers({events})""")


def attribute(ch, r, env) -> float:
    conversions = ch.execute(f"SELECT pixel_id, event, event_id, event_ms FROM {DB}.events "
                             "WHERE event = 'CompletePayment'")
    pipe = r.pipeline(transaction=False)
    for start in range(0, len(conversions), 5000):
        pipe.xadd(keys.ATTRIBUTION_STREAM, {"a": ADV, "k": "c", "d": orjson.dumps(conversions[start:start + 5000])})
    pipe.execute()
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "clicktrail.cli", "attributor", "--log-level", "WARNING"], env=env)
    while r.xlen(keys.ATTRIBUTION_STREAM):
        time.sleep(0.2)
    proc.terminate()
    proc.wait()
    return time.perf_counter() - started


class Api:
    def __init__(self, env: dict) -> None:
        self.port = services.free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "clicktrail.cli", "api", "--bind",
                                      f"127.0.0.1:{self.port}", "--workers", "2"], env=env)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                self.conn().request("GET", "/healthz")
                return
            except OSError:
                time.sleep(0.2)
        raise SystemExit("the api did not start")

    def conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def post_costs(api: Api, token: str, now: int) -> float:
    today = datetime.fromtimestamp(now, timezone.utc).date()
    rows = [{"date": (today - timedelta(days=d)).isoformat(), "campaign_id": f"cmp-{a % CAMPAIGNS}",
             "adgroup_id": f"grp-{a % ADGROUPS}", "ad_id": f"ad-{a}", "spend": round(1 + (a * d) % 50 / 10, 2)}
            for d in range(DAYS) for a in range(ADS)]
    conn = api.conn()
    started = time.perf_counter()
    for start in range(0, len(rows), 10_000):
        conn.request("POST", "/v1/costs", body=json.dumps({"costs": rows[start:start + 10_000]}),
                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise SystemExit(f"costs refused: {body[:300]!r}")
    return time.perf_counter() - started


def post_rates(api: Api, token: str, now: int) -> str:
    today = datetime.fromtimestamp(now, timezone.utc).date()
    rates = [{"date": (today - timedelta(days=d)).isoformat(), "currency": "EUR", "rate": 1.05 + d / 1000}
             for d in range(DAYS)]
    conn = api.conn()
    conn.request("POST", "/v1/exchange-rates", body=json.dumps({"rates": rates}),
                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    body = resp.read()
    if resp.status == 404:
        return "no exchange rates in this code: EUR values summed as they are"
    if resp.status != 200:
        raise SystemExit(f"rates refused: {body[:300]!r}")
    return f"{len(rates)} EUR rates posted"


def time_report(api: Api, token: str, params: dict, n: int) -> tuple[list[float], int]:
    conn = api.conn()
    path = "/v1/reports?" + urlencode(params)
    timings, rows = [], 0
    for i in range(n + 3):  # three warm-up requests
        started = time.perf_counter()
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        body = resp.read()
        elapsed = (time.perf_counter() - started) * 1000
        if resp.status != 200:
            raise SystemExit(f"report refused: {body[:300]!r}")
        if i >= 3:
            timings.append(elapsed)
        rows = len(orjson.loads(body)["rows"])
    return timings, rows


def main() -> None:
    global DB
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--clicks", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--database", default=DB, help="the ClickHouse database to (re)create")
    args = parser.parse_args()
    DB = args.database
    ch, r, pixel_id, env = setup()
    now = int(time.time())
    started = time.perf_counter()
    print(f"filling {args.events:,} events and {args.clicks:,} clicks ...", flush=True)
    fill(ch, pixel_id, args.events, args.clicks, now)
    print(f"  {time.perf_counter() - started:.0f}s; attributing ...", flush=True)
    print(f"  {attribute(ch, r, env):.0f}s", flush=True)
    token = registry.create_token(r, ADV, ["reports", "adserver"])
    api = Api(env)
    try:
        print(f"  costs posted in {post_costs(api, token, now):.1f}s; {post_rates(api, token, now)}", flush=True)
        stored = {t: ch.execute(f"SELECT count() FROM {DB}.{t}")[0][0]
                  for t in ("events", "touchpoints", "credits", "conversion_stats", "touch_stats", "costs")}
        print("rows stored:", stored)
        today = datetime.fromtimestamp(now, timezone.utc).date()
        month = {"start": (today - timedelta(days=DAYS - 1)).isoformat(), "end": today.isoformat()}
        week = {"start": (today - timedelta(days=6)).isoformat(), "end": today.isoformat()}
        cases = [
            ("campaign x day, 30 days, all metrics", {**month, "dimensions": "campaign_id,stat_time_day",
                                                     "page_size": 1000}),
            ("campaign x day, 30 days, Europe/Berlin", {**month, "dimensions": "campaign_id,stat_time_day",
                                                       "timezone": "Europe/Berlin", "page_size": 1000}),
            ("ad x day, 30 days, page of 1000", {**month, "dimensions": "ad_id,stat_time_day", "page_size": 1000}),
            ("campaign x hour, 7 days", {**week, "dimensions": "campaign_id,stat_time_hour", "page_size": 1000}),
            ("campaign, 30 days, linear model", {**month, "dimensions": "campaign_id", "model": "linear"}),
            ("campaign, 7 days, 1-day click window (recomputed)", {**week, "dimensions": "campaign_id",
                                                                 "click_window": 1, "metrics": "conversions"}),
        ]
        print(f"\ncode: {code_state()}\n")
        print("| report | rows | p50 ms | p95 ms | max ms |")
        print("|---|---:|---:|---:|---:|")
        for name, params in cases:
            n = args.requests if "recomputed" not in name else max(5, args.requests // 8)
            timings, rows = time_report(api, token, params, n)
            q = statistics.quantiles(timings, n=20)
            print(f"| {name} | {rows} | {statistics.median(timings):.0f} | {q[18]:.0f} | {max(timings):.0f} |",
                  flush=True)
    finally:
        api.stop()
        r.flushdb()


if __name__ == "__main__":
    main()
