#!/usr/bin/env python3
"""Sink throughput: Redis Stream -> ClickHouse, with K sink processes.

Builds N realistic events exactly as the collector builds them (``pixel.events.parse_events`` with a
``pixel.events.Context`` per simulated request: 80 % pixel batches, 20 % Events API rows; varied
URLs, ~200 user agents, IPv4 and IPv6 addresses, event names, some with UTM parameters and ttclid),
then for each K in --sinks:

1. deletes the stream ``ct:events`` (and its consumer group) in Redis DB 3 and truncates
   ``ct_bench.events``;
2. queues the N events with pipelined XADD in the entry format ``collector/buffer.py`` writes (learnt
   by queueing one probe request through the real ``EventBuffer``): one entry per event with fields
   ``a`` (advertiser id) and ``d`` (orjson record), or one entry per request with ``a``, ``n`` (event
   count) and ``d`` (orjson array of records);
3. starts K ``clicktrail sink`` processes (CLICKTRAIL_REDIS_URL / CLICKTRAIL_CLICKHOUSE_URL pointed at
   DB 3 / ct_bench) and times them from their start until XLEN is 0 and XPENDING is 0;
4. stops them (SIGTERM) and checks ``SELECT count() FROM ct_bench.events_unique`` equals N and that
   nothing went to the dead-letter stream.

Prints a Markdown table (K, events, seconds, events/s), with CPU seconds spent by the sinks, Redis and
ClickHouse during the run. Target: 100,000 events/s.

``--code DIR`` runs another source tree (e.g. ``git archive HEAD | tar -x -C DIR``) to compare
versions; ``--profile`` runs ``Sink.run_once`` in this process instead and prints where the time goes.

Needs the schema: ``CLICKTRAIL_CLICKHOUSE_URL=clickhouse://127.0.0.1:19000/ct_bench clicktrail migrate``.

    python bench/sink_bench.py                          # 1,000,000 events, K = 1 then 2
    python bench/sink_bench.py --events 200000 --sinks 1 --batch-size 50000
    python bench/sink_bench.py --events 200000 --profile    # where one sink's time goes

Results and their reading: docs/performance.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import orjson
import redis

from benchlib import CODE, ROOT, code_state, cpu_seconds  # noqa: E402  (puts the measured tree on sys.path)
from clicktrail import clickhouse, keys  # noqa: E402
from pixel.events import Context, parse_events  # noqa: E402

#: What the sinks read and write in Redis, deleted before and after each run (the attribution stream
#: exists in versions where the sink tells the attributor what it stored).
SINK_KEYS = [
    k for k in (keys.EVENTS_STREAM, keys.DEAD_LETTER_STREAM, getattr(keys, "ATTRIBUTION_STREAM", None)) if k
]
DEFAULT_REDIS = "redis://127.0.0.1:6379/3"
DEFAULT_CLICKHOUSE = "clickhouse://127.0.0.1:19000/ct_bench"
TARGET = 100_000

# -- realistic inputs ----------------------------------------------------------------------------


_WEBKIT = "AppleWebKit/537.36 (KHTML, like Gecko)"
_IOS_WEBKIT = "AppleWebKit/605.1.15 (KHTML, like Gecko)"


def user_agents(count: int = 200, seed: int = 11) -> list[str]:
    """About ``count`` distinct, realistic user agents, mostly phones and TikTok's in-app browser."""
    rng = random.Random(seed)
    chrome = [f"{v}.0.0.0" for v in range(116, 126)]
    ios = ["16_6", "16_7_8", "17_0_3", "17_1_2", "17_2_1", "17_3_1", "17_4", "17_4_1", "17_5_1", "18_0"]
    android = [
        ("10", "K"),
        ("11", "SM-A125F"),
        ("12", "SM-A525F"),
        ("13", "SM-A536B"),
        ("13", "Pixel 7"),
        ("14", "SM-S918B"),
        ("14", "Pixel 8 Pro"),
        ("13", "M2101K6G"),
        ("12", "CPH2205"),
        ("14", "22101316G"),
    ]
    apps = ["32.5.0", "33.1.3", "33.8.4", "34.1.2", "34.5.0"]
    nets = ["WIFI", "4G", "5G"]
    locales = [
        ("en", "US"),
        ("en", "GB"),
        ("de", "DE"),
        ("fr", "FR"),
        ("es", "ES"),
        ("pt", "BR"),
        ("id", "ID"),
    ]
    ua: list[str] = []
    for v in chrome:
        ua.append(f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) {_WEBKIT} Chrome/{v} Safari/537.36")
        ua.append(f"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) {_WEBKIT} Chrome/{v} Safari/537.36")
        ua.append(f"Mozilla/5.0 (Linux; Android 10; K) {_WEBKIT} Chrome/{v} Mobile Safari/537.36")
        ua.append(
            f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) {_WEBKIT} Chrome/{v} "
            f"Safari/537.36 Edg/{v.split('.')[0]}.0.{rng.randint(1000, 2999)}.{rng.randint(10, 99)}"
        )
    for v in range(118, 127):
        ua.append(f"Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0")
        ua.append(f"Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:{v}.0) Gecko/20100101 Firefox/{v}.0")
    for os_ in ios:
        short = os_.split("_")[0] + "." + os_.split("_")[1]
        ua.append(
            f"Mozilla/5.0 (iPhone; CPU iPhone OS {os_} like Mac OS X) {_IOS_WEBKIT} "
            f"Version/{short} Mobile/15E148 Safari/604.1"
        )
        ua.append(
            f"Mozilla/5.0 (iPad; CPU OS {os_} like Mac OS X) {_IOS_WEBKIT} "
            f"Version/{short} Mobile/15E148 Safari/604.1"
        )
        ua.append(
            f"Mozilla/5.0 (iPhone; CPU iPhone OS {os_} like Mac OS X) {_IOS_WEBKIT} "
            f"Mobile/15E148 Instagram 3{rng.randint(10, 40)}.0.0.{rng.randint(10, 40)}."
            f"{rng.randint(100, 120)} "
            f"(iPhone14,5; iOS {os_}; en_US; en; scale=3.00; 1170x2532; {rng.randint(10**8, 10**9)})"
        )
        for _ in range(6):
            lang, region = rng.choice(locales)
            ua.append(
                f"Mozilla/5.0 (iPhone; CPU iPhone OS {os_} like Mac OS X) {_IOS_WEBKIT} "
                f"Mobile/15E148 musical_ly_{rng.choice(apps)} JsSdk/2.0 NetType/{rng.choice(nets)} "
                f"Channel/App Store ByteLocale/{lang} Region/{region} isDarkMode/{rng.randint(0, 1)} "
                f"WKWebView/1 RevealType/Dialog BytedanceWebview/d8a21c6"
            )
    for av, model in android:
        cv = f"{rng.randint(116, 125)}.0.{rng.randint(5000, 6400)}.{rng.randint(40, 200)}"
        build = rng.choice(["TP1A.220624.014", "UP1A.231005.007", "SP1A.210812.016", "RKQ1.201217.002"])
        ua.append(
            f"Mozilla/5.0 (Linux; Android {av}; SAMSUNG {model}) {_WEBKIT} "
            f"SamsungBrowser/{rng.randint(20, 25)}.0 Chrome/{cv.split('.')[0]}.0.0.0 Mobile Safari/537.36"
        )
        ua.append(
            f"Mozilla/5.0 (Linux; Android {av}; {model} Build/{build}; wv) {_WEBKIT} "
            f"Version/4.0 Chrome/{cv} Mobile Safari/537.36 [FB_IAB/FB4A;FBAV/44{rng.randint(0, 9)}.0.0."
            f"{rng.randint(10, 40)}.{rng.randint(10, 120)};]"
        )
        for _ in range(7):
            lang, region = rng.choice(locales)
            app = rng.choice(apps)
            ua.append(
                f"Mozilla/5.0 (Linux; Android {av}; {model} Build/{build}; wv) {_WEBKIT} "
                f"Version/4.0 Chrome/{cv} Mobile Safari/537.36 trill_{app.replace('.', '')}0 JsSdk/1.0 "
                f"NetType/{rng.choice(nets)} Channel/googleplay AppName/trill app_version/{app} "
                f"ByteLocale/{lang} ByteFullLocale/{lang}-{region} Region/{region} BytedanceWebview/d8a21c6"
            )
    ua += [
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        f"Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) {_WEBKIT} "
        "Chrome/124.0.6367.91 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
        "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
        f"Mozilla/5.0 (X11; Linux x86_64) {_WEBKIT} HeadlessChrome/124.0.0.0 Safari/537.36",
        f"Mozilla/5.0 (X11; Linux x86_64) {_WEBKIT} Chrome/124.0.0.0 Safari/537.36",
        "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    ]
    distinct = list(dict.fromkeys(ua))
    rng.shuffle(distinct)
    return distinct[:count]


_EVENTS = (
    ["PageView"] * 50
    + ["ViewContent"] * 20
    + ["AddToCart"] * 9
    + ["InitiateCheckout"] * 5
    + ["CompletePayment"] * 5
    + ["Search"] * 5
    + ["ClickButton"] * 4
    + ["Lead", "SubmitForm"]
)
_PATHS = [
    "/",
    "/products/{sku}",
    "/products/{sku}",
    "/products/{sku}",
    "/collections/{col}",
    "/cart",
    "/checkout",
    "/checkout/thank-you",
    "/search",
    "/blog/{col}-guide",
    "/pages/about",
]
_COLLECTIONS = ["summer", "sale", "new-in", "shoes", "dresses", "gifts", "outdoor", "kitchen"]
_SEARCHES = ["red dress", "running shoes", "gift card", "linen shirt", "sneakers 42", "phone case"]


class Population:
    """Advertisers, pixels, sites and visitors that the generated events come from."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.uas = user_agents()
        # 6 advertisers with 1-3 pixels each, one shop domain per advertiser.
        self.pixels: list[tuple[str, str, str]] = []  # (advertiser, pixel, host)
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
        for a in range(6):
            host = f"shop{a}.example" if a % 2 else f"www.store{a}.example"
            for _ in range(rng.randint(1, 3)):
                pixel = "C" + "".join(rng.choice(alphabet) for _ in range(19))
                self.pixels.append((f"adv-{a}", pixel, host))

    def ip(self) -> str:
        rng = self.rng
        if rng.random() < 0.12:
            return "2a02:%x:%x:%x::%x" % (
                rng.randint(0x1000, 0xFFFF),
                rng.randint(0, 0xFFFF),
                rng.randint(0, 0xFFFF),
                rng.randint(1, 0xFFFF),
            )
        return "%d.%d.%d.%d" % (
            rng.choice([31, 46, 78, 88, 92, 109, 176, 185, 212, 217]),
            rng.randint(0, 255),
            rng.randint(0, 255),
            rng.randint(1, 254),
        )

    def page(self, host: str) -> tuple[str, str]:
        rng = self.rng
        path = rng.choice(_PATHS).format(sku=f"sku-{rng.randint(1, 20000)}", col=rng.choice(_COLLECTIONS))
        params = []
        if rng.random() < 0.25:
            params += [
                f"utm_source={rng.choice(['tiktok', 'tiktok', 'google', 'newsletter'])}",
                f"utm_medium={rng.choice(['paid', 'cpc', 'email', 'social'])}",
                f"utm_campaign=campaign_{rng.randint(1, 60)}",
            ]
            if rng.random() < 0.4:
                params.append(f"utm_content=ad_{rng.randint(1, 500)}")
        if rng.random() < 0.10:
            params.append("ttclid=E.C.P." + "%040x" % rng.getrandbits(160))
        if rng.random() < 0.15:
            params.append(f"variant={rng.randint(10**9, 10**10)}")
        url = f"https://{host}{path}" + ("?" + "&".join(params) if params else "")
        referrer = rng.choice(
            [
                "",
                f"https://{host}/",
                f"https://{host}/collections/{rng.choice(_COLLECTIONS)}",
                "https://www.tiktok.com/",
                "https://www.google.com/",
            ]
        )
        return url, referrer

    def properties(self, event: str) -> dict:
        rng = self.rng
        if event in ("PageView", "ClickButton", "Lead", "SubmitForm"):
            return {}
        if event == "Search":
            return {"query": rng.choice(_SEARCHES)}
        contents = []
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            contents.append(
                {
                    "content_id": f"sku-{rng.randint(1, 20000)}",
                    "quantity": rng.randint(1, 3),
                    "price": round(rng.uniform(4, 150), 2),
                }
            )
        props = {
            "value": round(sum(c["quantity"] * c["price"] for c in contents), 2),
            "currency": rng.choice(["USD", "EUR", "GBP", "BRL"]),
            "contents": contents,
            "content_type": "product",
        }
        if event == "CompletePayment":
            props["order_id"] = f"A-{rng.randint(1, 10**8)}"
        return props


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def build_requests(n: int, seed: int = 1) -> list[tuple[bytes, list[dict]]]:
    """Simulated requests holding ``n`` events in all: (advertiser id, records built by ``parse_events``)."""
    out: list[tuple[bytes, list[dict]]] = []
    for advertiser, raws, ctx in raw_requests(n, seed):
        records, rejections = parse_events(raws, ctx)
        if rejections:
            raise RuntimeError(f"generated events were rejected: {rejections[:3]}")
        out.append((advertiser.encode(), records))
    return out


def raw_requests(n: int, seed: int = 1) -> list[tuple[str, list[dict], Context]]:
    """Simulated requests holding ``n`` events in all, as sent: (advertiser id, raw events, context)."""
    rng = random.Random(seed)
    pop = Population(rng)
    now_ms = int(time.time() * 1000)
    out: list[tuple[str, list[dict], Context]] = []
    serial = 0
    while serial < n:
        advertiser, pixel, host = rng.choice(pop.pixels)
        received = now_ms - rng.randint(0, 600_000)
        batch = min(n - serial, rng.choice([1, 1, 1, 2, 3, 5, 10, 20]))
        raws = []
        server = rng.random() < 0.2
        for _ in range(batch):
            serial += 1
            event = rng.choice(_EVENTS)
            url, referrer = pop.page(host)
            # Unique per event: the bench checks that every one of them is stored once.
            event_id = "%08x%024x" % (serial, rng.getrandbits(96))
            late = rng.randint(0, 5000) if rng.random() < 0.97 else rng.randint(0, 3 * 86_400_000)
            raw: dict = {
                "event": event,
                "event_id": event_id,
                "page": {"url": url, "referrer": referrer},
                "properties": pop.properties(event),
            }
            user: dict = {}
            if rng.random() < 0.25:
                user["email"] = _sha(f"visitor{rng.randint(1, 10**6)}@example.com")
            if rng.random() < 0.1:
                user["phone"] = _sha(f"+44{rng.randint(10**9, 10**10)}")
            if server:
                raw["event_time"] = (received - late) // 1000
                user.update(ip=pop.ip(), user_agent=rng.choice(pop.uas), external_id=_sha(str(serial)))
                if rng.random() < 0.3:
                    user["ttclid"] = "E.C.P." + "%040x" % rng.getrandbits(160)
            else:
                raw["timestamp"] = received - late
                raw["ttp"] = "%026x" % rng.getrandbits(104)
                if rng.random() < 0.08:
                    raw["ttclid"] = "E.C.P." + "%040x" % rng.getrandbits(160)
            if user:
                raw["user"] = user
            if rng.random() < 0.03:
                raw["test_event_code"] = "TEST%05d" % rng.randint(0, 99999)
            raws.append(raw)
        if server:
            ctx = Context(
                pixel_id=pixel,
                source="server",
                received_ms=received,
                skew_ms=0,
                ip="",
                user_agent="",
                max_age_ms=7 * 86_400_000,
                max_future_ms=86_400_000,
            )
        else:
            ctx = Context(
                pixel_id=pixel,
                source="browser",
                received_ms=received,
                skew_ms=rng.randint(-2000, 2000),
                ip=pop.ip(),
                user_agent=rng.choice(pop.uas),
                max_age_ms=7 * 86_400_000,
                max_future_ms=86_400_000,
            )
        out.append((advertiser, raws, ctx))
    return out


# -- the stream's entry format, learnt from the collector's own code -------------------------------


def stream_format(r: redis.Redis) -> str:
    """Queue one request through ``collector.buffer.EventBuffer`` and look at the entry it wrote.

    "event": one entry per event, fields ``a`` and ``d`` (one record). "request": one entry per
    request, fields ``a``, ``n`` and ``d`` (a JSON array of records). The bench then writes the same.
    """
    from collector.buffer import EventBuffer
    from pixel import registry

    pixel = registry.create_pixel(r, "bench-probe", ["bench.example"])
    try:
        r.unlink(keys.EVENTS_STREAM)
        EventBuffer(r, 10**9, 2).append(pixel, [{"event": "PageView", "n": 1}, {"event": "PageView", "n": 2}])
        entries = r.xrange(keys.EVENTS_STREAM)
    finally:
        r.unlink(keys.EVENTS_STREAM)
        r.hdel(keys.PIXELS, pixel)
        r.hdel(keys.ADVERTISERS, "bench-probe")
        if hasattr(keys, "ADVERTISER_DOMAINS"):  # versions that index an advertiser's site domains
            r.hdel(keys.ADVERTISER_DOMAINS, "bench-probe")
    if len(entries) == 2 and set(entries[0][1]) == {b"a", b"d"}:
        return "event"
    if len(entries) == 1 and set(entries[0][1]) == {b"a", b"n", b"d"}:
        return "request"
    raise RuntimeError(f"unknown stream entry format written by collector/buffer.py: {entries!r}")


def encode(requests: list[tuple[bytes, list[dict]]], fmt: str) -> list[dict]:
    """The stream entries' fields, as collector/buffer.py writes them."""
    if fmt == "event":
        return [{b"a": adv, b"d": orjson.dumps(rec)} for adv, records in requests for rec in records]
    return [
        {b"a": adv, b"n": str(len(records)).encode(), b"d": orjson.dumps(records)}
        for adv, records in requests
    ]


# -- Redis, ClickHouse, processes ----------------------------------------------------------------


def queue(r: redis.Redis, entries: list[dict], chunk: int = 10_000) -> float:
    started = time.perf_counter()
    for start in range(0, len(entries), chunk):
        pipe = r.pipeline(transaction=False)
        for fields in entries[start : start + chunk]:
            pipe.xadd(keys.EVENTS_STREAM, fields)
        pipe.execute()
    return time.perf_counter() - started


def clicktrail_cmd() -> list[str]:
    script = Path(sys.executable).parent / "clicktrail"
    return [str(script)] if script.exists() else [sys.executable, "-m", "clicktrail.cli"]


def cpu_s(pid: int | None, children: bool = True) -> float:
    """User+system CPU seconds of ``pid`` and, if asked, its direct children."""
    return 0.0 if pid is None else sum(cpu_seconds(pid, "children" if children else "self"))


def listener_pid(port: int) -> int | None:
    """The pid listening on a loopback TCP port (to read ClickHouse's CPU time), if it can be seen."""
    try:
        out = subprocess.run(
            ["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"pid=(\d+)", out)
    return int(found.group(1)) if found else None


def redis_cpu_s(r: redis.Redis) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def pending(r: redis.Redis) -> int | None:
    try:
        return int(r.xpending(keys.EVENTS_STREAM, keys.SINK_GROUP)["pending"])
    except redis.ResponseError:  # NOGROUP: no sink has created the group yet
        return None


def stop_all(procs: list[subprocess.Popen], timeout: float = 60.0) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: only the process we started
            proc.wait(5)


def run_once(
    args,
    r: redis.Redis,
    ch,
    database: str,
    entries: list[dict],
    n: int,
    k: int,
    env: dict,
    ch_pid: int | None,
) -> dict:
    m = len(entries)
    r.unlink(*SINK_KEYS)
    ch.execute(f"TRUNCATE TABLE {database}.events")
    queue_s = queue(r, entries)
    if r.xlen(keys.EVENTS_STREAM) != m:
        raise RuntimeError(f"queued {r.xlen(keys.EVENTS_STREAM)} entries, expected {m}")
    mem = r.info("memory")["used_memory"]
    print(
        f"K={k}: queued {n:,} events in {m:,} entries in {queue_s:.1f}s ({n / queue_s:,.0f} events/s, "
        f"Redis {mem / 2**20:,.0f} MiB)",
        file=sys.stderr,
    )
    time.sleep(1)
    procs: list[subprocess.Popen] = []
    cpu_redis0, cpu_ch0 = redis_cpu_s(r), cpu_s(ch_pid, children=False)
    started = time.monotonic()
    try:
        for _ in range(k):
            procs.append(
                subprocess.Popen(
                    [*clicktrail_cmd(), "sink", "--log-level", "WARNING"],
                    env=env,
                    cwd=ROOT,
                    start_new_session=True,
                )
            )
        first_progress = None
        last_print = started
        sink_cpu = {p.pid: 0.0 for p in procs}
        while True:
            length, waiting = r.xlen(keys.EVENTS_STREAM), pending(r)
            now = time.monotonic()
            for p in procs:
                sink_cpu[p.pid] = max(sink_cpu[p.pid], cpu_s(p.pid, children=False))
            if first_progress is None and (length < m or (waiting or 0) > 0):
                first_progress = now
            if length == 0 and waiting == 0:
                break
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a sink exited early with status {[p.returncode for p in procs]}")
            if now - started > args.timeout:
                raise RuntimeError(
                    f"not drained after {args.timeout}s: {length} in stream, {waiting} pending"
                )
            if now - last_print >= 5:
                last_print = now
                print(
                    f"  {now - started:5.1f}s: {m - length:,} entries settled, {length:,} left, "
                    f"{waiting} pending",
                    file=sys.stderr,
                )
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        steady = time.monotonic() - (first_progress or started)
    finally:
        cpu_redis1, cpu_ch1 = redis_cpu_s(r), cpu_s(ch_pid, children=False)
        stop_all(procs)
    stored = ch.execute(f"SELECT count() FROM {database}.events")[0][0]
    unique = ch.execute(f"SELECT count() FROM {database}.events_unique")[0][0]
    dead = r.xlen(keys.DEAD_LETTER_STREAM)
    result = {
        "sinks": k,
        "events": n,
        "entries": m,
        "seconds": round(elapsed, 2),
        "events_per_s": n / elapsed,
        "seconds_from_first_read": round(steady, 2),
        "events_per_s_from_first_read": n / steady,
        "rows_inserted": stored,
        "events_unique": unique,
        "dead_letters": dead,
        "ok": unique == n and dead == 0,
        "sink_cpu_s": round(sum(sink_cpu.values()), 1),
        "redis_cpu_s": round(cpu_redis1 - cpu_redis0, 1),
        "clickhouse_cpu_s": round(cpu_ch1 - cpu_ch0, 1) if ch_pid else None,
        "queue_seconds": round(queue_s, 1),
    }
    print(
        f"K={k}: {n:,} events in {elapsed:.1f}s = {n / elapsed:,.0f} events/s; events_unique {unique:,}, "
        f"rows {stored:,}, dead letters {dead}; CPU s: sinks {result['sink_cpu_s']}, Redis "
        f"{result['redis_cpu_s']}, ClickHouse {result['clickhouse_cpu_s']}",
        file=sys.stderr,
    )
    return result


def _drain(r: redis.Redis, sink) -> None:
    while r.xlen(keys.EVENTS_STREAM) or pending(r):
        sink.run_once()


def profile(args, r: redis.Redis, ch, database: str, entries: list[dict], n: int) -> dict:
    """Run ``sink.worker.Sink.run_once`` in this process over a pre-filled stream: phases, then cProfile."""
    import cProfile
    import gc
    import io
    import pstats
    from collections import defaultdict

    from clicktrail import config, redis_client
    from clicktrail.lifecycle import StopFlag
    from sink import worker

    overrides = {"REDIS_URL": args.redis_url, "CLICKHOUSE_URL": args.clickhouse_url}
    if args.batch_size:
        overrides["SINK_BATCH_SIZE"] = args.batch_size
    settings = config.load(overrides)
    # This process holds every entry; keep them out of the garbage collector's way, so that it sees
    # about what a sink process sees.
    gc.collect()
    gc.freeze()

    def fresh_sink():
        r.unlink(*SINK_KEYS)
        ch.execute(f"TRUNCATE TABLE {database}.events")
        queue(r, entries)
        sink = worker.Sink(
            settings,
            redis_client.patient(args.redis_url),
            clickhouse.connect(args.clickhouse_url),
            database,
            StopFlag(),
            name="bench-profile",
        )
        sink.ensure_group()
        return sink

    # 1. Wall time per phase, with light wrappers (about 0.3 us per row for the row wrapper).
    phases: dict[str, float] = defaultdict(float)

    def timed(name, fn):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                phases[name] += time.perf_counter() - t

        return wrapper

    sink = fresh_sink()
    sink._read_batch = timed("read: XREADGROUP + reply parsing", sink._read_batch)
    for method in ("rows", "row"):  # per entry (one request) or per event, depending on the sink's version
        if hasattr(sink.builder, method):
            setattr(
                sink.builder,
                method,
                timed(
                    f"rows: orjson.loads + enrichment (RowBuilder.{method})", getattr(sink.builder, method)
                ),
            )
            break
    original_columns = worker.columns
    worker.columns = timed("transpose rows to columns", worker.columns)
    sink.ch.execute = timed("ClickHouse insert: driver serialisation + server", sink.ch.execute)
    sink._settle = timed("settle: XACK + XDEL (and what else _settle sends)", sink._settle)
    started = time.perf_counter()
    try:
        _drain(r, sink)
    finally:
        worker.columns = original_columns
    wall = time.perf_counter() - started
    phases["other (loop, reclaim, checks)"] = wall - sum(phases.values())
    print(
        f"\nSink.run_once in one process, {n:,} events: {wall:.1f}s = {n / wall:,.0f} events/s "
        f"(batch size {settings.sink.batch_size})\n",
        file=sys.stderr,
    )
    print("| phase | seconds | us/event | share |\n|---|---:|---:|---:|", file=sys.stderr)
    for name, secs in sorted(phases.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {secs:.2f} | {secs / n * 1e6:.1f} | {secs / wall:.0%} |", file=sys.stderr)

    # 2. cProfile (slows Python code about 2x; read it for proportions, not speed).
    sink = fresh_sink()
    prof = cProfile.Profile()
    prof.enable()
    _drain(r, sink)
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(25)
    print(out.getvalue(), file=sys.stderr)
    r.unlink(*SINK_KEYS)
    experiments = _experiments(args, ch, database, sink, entries, n, settings.sink.batch_size)
    return {
        "events": n,
        "seconds": wall,
        "events_per_s": n / wall,
        "phases_us_per_event": {k: v / n * 1e6 for k, v in phases.items()},
        "experiments": experiments,
    }


def _experiments(args, ch, database: str, sink, entries: list[dict], n: int, batch_events: int) -> dict:
    """Two measurements outside the loop, on the same entries: the cost of the garbage collector while
    rows are built, and the ceiling of one process's inserts (rows built beforehand)."""
    import gc

    from sink import worker

    builder = sink.builder

    def build(batch: list[dict]) -> list[tuple]:
        rows: list[tuple] = []
        for i, fields in enumerate(batch):
            entry_id = b"1700000000000-%d" % i
            if hasattr(builder, "rows"):  # one entry per request
                rows.extend(builder.rows(entry_id, fields)[0])
            else:  # one entry per event
                rows.append(builder.row(entry_id, fields))
        return rows

    per_entry = n / len(entries)
    step = max(1, int(batch_events / per_entry))
    batches = [entries[i : i + step] for i in range(0, len(entries), step)]

    def rows_and_columns() -> float:
        started = time.process_time()
        for batch in batches:
            worker.columns(build(batch))
        return (time.process_time() - started) / n * 1e6

    gc_on = [rows_and_columns()]
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        gc_off = rows_and_columns()
    finally:
        gc.enable()
        gc.unfreeze()
    gc_on.append(rows_and_columns())
    on = sum(gc_on) / len(gc_on)

    prepared = [worker.columns(build(batch)) for batch in batches]
    host_port = args.clickhouse_url.split("://", 1)[1].split("/", 1)[0]
    ch_pid = listener_pid(int(host_port.rsplit(":", 1)[1])) if ":" in host_port else None
    ch.execute(f"TRUNCATE TABLE {database}.events")
    cpu0, ch0, wall0 = time.process_time(), cpu_s(ch_pid, children=False), time.perf_counter()
    for columns in prepared:
        ch.execute(sink.insert_sql, columns, columnar=True)
    wall = time.perf_counter() - wall0
    client_us = (time.process_time() - cpu0) / n * 1e6
    ch_us = (cpu_s(ch_pid, children=False) - ch0) / n * 1e6 if ch_pid else None
    ch.execute(f"TRUNCATE TABLE {database}.events")
    print(
        f"Rows + columns, batches of ~{batch_events:,} events: {on:.1f} us CPU/event with the garbage "
        f"collector as it is, {gc_off:.1f} us with gc.freeze() + gc.disable() ({1 - gc_off / on:.0%} less).\n"
        f"Insert alone (columns built beforehand, one connection): {client_us:.1f} us client CPU/event, "
        f"{ch_us if ch_us is None else round(ch_us, 1)} us ClickHouse CPU/event, {n / wall:,.0f} events/s.",
        file=sys.stderr,
    )
    return {
        "rows_columns_us_gc_on": on,
        "rows_columns_us_gc_off": gc_off,
        "insert_only_client_us": client_us,
        "insert_only_clickhouse_us": ch_us,
        "insert_only_events_per_s": n / wall,
    }


def table(results: list[dict]) -> str:
    lines = [
        "| K sinks | events | seconds | events/s | events/s after first read | events_unique = N | "
        "CPU s: sinks / Redis / ClickHouse |",
        "|---:|---:|---:|---:|---:|---|---|",
    ]
    for res in results:
        ok = "yes" if res["ok"] else f"NO ({res['events_unique']:,}, {res['dead_letters']} dead)"
        lines.append(
            f"| {res['sinks']} | {res['events']:,} | {res['seconds']:.1f} | {res['events_per_s']:,.0f} | "
            f"{res['events_per_s_from_first_read']:,.0f} | {ok} | {res['sink_cpu_s']} / "
            f"{res['redis_cpu_s']} / {res['clickhouse_cpu_s']} |"
        )
    best = max(res["events_per_s"] for res in results)
    lines.append("")
    lines.append(
        f"Target {TARGET:,} events/s: {'met' if best >= TARGET else 'NOT met'} "
        f"(best {best:,.0f} events/s, {best / TARGET:.0%} of the target)."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Sink throughput: Redis Stream -> ClickHouse with K sinks.")
    parser.add_argument("--events", type=int, default=1_000_000, help="events queued per run [1000000]")
    parser.add_argument("--sinks", default="1,2", help="comma-separated sink counts to try [1,2]")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="CLICKTRAIL_SINK_BATCH_SIZE [the default]"
    )
    parser.add_argument("--redis-url", default=DEFAULT_REDIS, help=f"[{DEFAULT_REDIS}]")
    parser.add_argument("--clickhouse-url", default=DEFAULT_CLICKHOUSE, help=f"[{DEFAULT_CLICKHOUSE}]")
    parser.add_argument(
        "--timeout", type=float, default=900, help="give up on a run after this many seconds [900]"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--code",
        metavar="DIR",
        help="run this source tree (an export of a commit) instead of the checkout this script is in",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of timing sink processes, run "
        "Sink.run_once in this process over the pre-filled stream: time per phase, then cProfile",
    )
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    args = parser.parse_args(argv)
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    sink_counts = [int(k) for k in args.sinks.split(",") if k.strip()]

    r = redis.Redis.from_url(args.redis_url)
    database = clickhouse.database_of(args.clickhouse_url)
    ch = clickhouse.connect(args.clickhouse_url)
    ch.execute(f"SELECT count() FROM {database}.events")  # fails early when the schema is missing
    ch_host_port = args.clickhouse_url.split("://", 1)[1].split("/", 1)[0]
    ch_pid = listener_pid(int(ch_host_port.rsplit(":", 1)[1])) if ":" in ch_host_port else None

    t0 = time.perf_counter()
    requests = build_requests(args.events, args.seed)
    fmt = stream_format(r)
    entries = encode(requests, fmt)
    n = sum(len(records) for _, records in requests)
    n_requests = len(requests)
    del requests  # only the encoded entries are needed from here on
    avg = sum(len(fields[b"d"]) for fields in entries) / n
    print(
        f"built {n:,} records with parse_events in {time.perf_counter() - t0:.1f}s: "
        f"{n_requests:,} requests, "
        f"stream format: one entry per {fmt} ({len(entries):,} entries, {avg:.0f} bytes of JSON per event)",
        file=sys.stderr,
    )

    import sink as sink_package

    sink_code = Path(sink_package.__file__).resolve().parent.parent
    print(f"sink code: {sink_code}", file=sys.stderr)
    if args.profile:
        try:
            result = profile(args, r, ch, database, entries, n)
        finally:
            r.unlink(*SINK_KEYS)
        if args.json:
            Path(args.json).write_text(
                json.dumps({"command": command, "code": code_state(), **result}, indent=2)
            )
        return 0

    folder = Path(tempfile.mkdtemp(prefix="ct-sink-bench-"))
    env = dict(
        os.environ,
        CLICKTRAIL_REDIS_URL=args.redis_url,
        CLICKTRAIL_CLICKHOUSE_URL=args.clickhouse_url,
        CLICKTRAIL_DATA_DIR=str(folder),
    )
    if args.batch_size:
        env["CLICKTRAIL_SINK_BATCH_SIZE"] = str(args.batch_size)
    # The sinks import the code from CODE whatever is installed (an editable install may not know
    # packages added since, and PYTHONPATH precedes it).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(CODE), os.environ.get("PYTHONPATH", "")) if p)
    results = []
    try:
        for k in sink_counts:
            results.append(run_once(args, r, ch, database, entries, n, k, env, ch_pid))
    finally:
        r.unlink(*SINK_KEYS)
        shutil.rmtree(folder, ignore_errors=True)

    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    batch = args.batch_size or "default (20000)"
    print()
    print(
        f"Sink bench, {when}, {os.cpu_count()} cores (shared with Redis and ClickHouse); {n:,} events "
        f"({avg:.0f} bytes of JSON each) in {len(entries):,} stream entries (one per {fmt}), "
        f"SINK_BATCH_SIZE {batch}; code: {code_state()}."
    )
    print()
    print(table(results))
    print()
    print(f"Command: `{command}`")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "date": when,
                    "cores": os.cpu_count(),
                    "command": command,
                    "code": code_state(),
                    "stream_format": fmt,
                    "batch_size": args.batch_size,
                    "average_record_bytes": avg,
                    "results": results,
                },
                indent=2,
            )
        )
    return 0 if all(res["ok"] for res in results) else 1


if __name__ == "__main__":
    sys.exit(main())
