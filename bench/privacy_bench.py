"""What erasure and retention cost on a table of 10M events.

    python bench/privacy_bench.py [--events 10000000] [--clicks 1000000] [--days 150]

Uses its own ClickHouse database (ct_bench_privacy) and Redis database (10); both are wiped first.
Rows are generated inside ClickHouse (INSERT ... SELECT FROM numbers()) into a database migrated
with clicktrail.schema.migrate: events over ``--days`` days for advertiser ``bench`` (one in 20 a
CompletePayment with a click id, each with a credit and a candidate row as the attributor writes
them), 10% more for advertiser ``other`` in the last 60 days only, and clicks. The identity tables
fill through their materialized views, as in production.

Then, timed end to end:
1. one erasure request (a person with 10 events by email and the events of their 10 browsers)
   through attribution.erasure.Eraser, from submit to the audit record saying done;
2. ``bench`` set to keep 30 days, and a retention run (Retention.apply), then the wait until
   ClickHouse has finished the mutations: months only ``bench`` has rows in are dropped whole,
   the rest mutated;
3. the next day's run (one more day out): the daily cost in steady state.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.benchlib import code_state, fresh_databases, redis_url  # noqa: E402

REDIS_URL = redis_url(10)
DB = "ct_bench_privacy"
ADV, OTHER = "bench", "other"
PERSON = hashlib.sha256(b"jane@example.com").hexdigest()
TABLES = ("events", "event_identities", "touchpoints", "touch_identities", "attribution_candidates", "credits")


def fill(ch, pixel_id: str, adv: str, events: int, clicks: int, days: int, now: int, offset: int) -> None:
    span = days * 86_400
    ct = f"({now} - 60 - (number * 2591) % {span})"
    ch.execute(f"""
        INSERT INTO {DB}.touchpoints
        SELECT '{adv}', 'click', concat('clk-', toString(number + {offset})), toDateTime({ct}), {ct} * 1000,
               concat('cmp-', toString(number % 50)), concat('grp-', toString(number % 500)),
               concat('ad-', toString(number % 5000)), concat('b-', toString((number + {offset}) % 2000000)),
               '', '', '', '', '', 'import', {now} * 1000, 1
        FROM numbers({clicks})""")
    t = f"({now} - 30 - (number * 7753) % {span})"
    person = f"number % 1000000 = 7 AND {offset} = 0"
    ch.execute(f"""
        INSERT INTO {DB}.events (advertiser_id, pixel_id, event, event_id, event_time, event_ms, received_at,
                                 received_ms, source, click_id, browser_id, email_sha256, value, currency,
                                 device_type, dedup_version)
        SELECT '{adv}', '{pixel_id}', if(number % 20 = 0, 'CompletePayment', 'PageView'),
               concat('e-', toString(number + {offset})), toDateTime({t}), {t} * 1000, toDateTime({now}),
               {now} * 1000, 'browser',
               if(number % 20 = 0, concat('clk-', toString((number * 7919) % {clicks} + {offset})), ''),
               concat('b-', toString((number + {offset}) % 2000000)), if({person}, '{PERSON}', ''),
               if(number % 20 = 0, 10 + number % 90, 0), 'USD', if(number % 3 = 0, 'mobile', 'pc'),
               18446744073709551615 - {now} * 1000
        FROM numbers({events})""")


def credit(ch) -> None:
    """A credit and a candidate per conversion, as the attributor writes them (last click, by click id)."""
    head = ("advertiser_id, pixel_id, event, event_id, conversion_time, conversion_ms, value, currency, revision, "
            "content_hash, attributed_ms, touch_kind, touch_id, touch_time, touch_ms, campaign_id, adgroup_id, "
            "ad_id, matched_by")
    select = ("SELECT advertiser_id, pixel_id, event, event_id, event_time, event_ms, value, currency, 1, 1, "
              "event_ms, 'click', click_id, event_time, event_ms, 'cmp', 'grp', 'ad', 'click_id'")
    where = f"FROM {DB}.events WHERE event = 'CompletePayment'"
    ch.execute(f"INSERT INTO {DB}.attribution_candidates ({head}) {select} {where}")
    ch.execute(f"INSERT INTO {DB}.credit_input ({head}, click_window_days, view_window_days, sign, model_names, "
               f"model_credits) {select}, 7, 1, 1, ['last_click'], [1.0] {where}")


def counts(ch) -> dict[str, int]:
    return {t: ch.execute(f"SELECT count() FROM {DB}.{t}")[0][0] for t in TABLES}


def erase(ch, r) -> None:
    from attribution.erasure import Eraser
    from clicktrail import keys
    from pixel import erasure

    def stamp(advertiser_id: str) -> int:
        return time.time_ns() // 1_000_000

    eraser = Eraser(r, ch, DB, stamp, lambda advertiser_id, ms: r.set(keys.FEED_WATERMARK, ms))
    started = time.perf_counter()
    request_id = erasure.submit(r, ADV, {"email": [PERSON]}, "bench")
    steps = 0
    while erasure.audit(r, ADV, request_id)["status"] != erasure.DONE:
        eraser.step()
        steps += 1
        time.sleep(0.2)
    took = time.perf_counter() - started
    record = erasure.audit(r, ADV, request_id)
    print(f"erasure: {took:.1f} s end to end ({steps} steps of the eraser), rows removed: {record['rows']}")


def retain(ch, r, settings, now: float) -> None:
    from attribution.retention import Retention
    from pixel import registry

    registry.update_settings(r, ADV, retention_days=30)
    job = Retention(settings, r, ch, DB)
    for label, at in (("first run", now), ("next day's run", now + 86_400)):
        started = time.perf_counter()
        done = job.apply(at)
        issued = time.perf_counter() - started
        job.wait(3600)
        took = time.perf_counter() - started
        dropped = sum(t["dropped_rows"] for t in done["tables"].values())
        deleted = sum(t["deleted_rows"] for t in done["tables"].values())
        print(f"retention, {label}: {issued:.1f} s to decide, drop and issue; {took:.1f} s until the mutations "
              f"finished; {dropped:,} rows dropped with partitions, {deleted:,} deleted by mutations")
        for table, result in done["tables"].items():
            print(f"  {table}: partitions dropped {result['dropped_partitions']}, "
                  f"{result['dropped_rows']:,} rows by drop, {result['deleted_rows']:,} by mutation")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--clicks", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=150)
    parser.add_argument("--code", help="source tree to measure (see bench/benchlib.py)")
    args = parser.parse_args()

    from clicktrail import clickhouse, config
    from pixel import registry

    ch, r, pixel_id, _ = fresh_databases(DB, REDIS_URL, ADV)
    registry.ensure_advertiser(r, OTHER)
    settings = config.load({"REDIS_URL": REDIS_URL, "DATA_DIR": str(ROOT / "var"),
                            "CLICKHOUSE_URL": clickhouse.with_database("clickhouse://127.0.0.1:9000/default", DB)})
    print(f"code: {code_state()}")
    now = int(time.time())
    started = time.perf_counter()
    fill(ch, pixel_id, ADV, args.events, args.clicks, args.days, now, 0)
    fill(ch, pixel_id, OTHER, args.events // 10, args.clicks // 10, 60, now, 10**9)
    credit(ch)
    print(f"filled in {time.perf_counter() - started:.0f} s: {counts(ch)}")
    erase(ch, r)
    retain(ch, r, settings, now)
    print(f"left: {counts(ch)}")


if __name__ == "__main__":
    main()
