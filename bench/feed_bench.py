#!/usr/bin/env python3
"""Optimizer feed (GET /v1/optimizer/conversions): freshness, and ingestion under 100 pollers.

    python bench/feed_bench.py freshness [--rate 50] [--seconds 30]
    python bench/feed_bench.py pollers [--pollers 100] [--events 200000] [--rounds 3]

Uses its own ClickHouse database (ct_bench_feed) and Redis database (6); both are wiped first.
Real processes on free local ports, each in its own session: `clicktrail collector` (2 workers),
`clicktrail sink`, `clicktrail attributor` and `clicktrail api` (gunicorn, 2 workers).

Freshness: one click per ad is imported (POST /v1/clicks; distinct campaign, ad group and ad per
click, click times in the last hour) and attributed; then one conversion per ad is posted to the
Events API (one event per request, ``user.ttclid`` = that ad's click id) at a steady rate, while a
poller thread polls the feed every 100 ms with its cursor (event=CompletePayment, level=ad,
bucket=hour). Per conversion: from the collector's 200 to the first poll whose row for that ad
shows conversions >= 1. Target: p99 under 2 s.

Pollers: ingestion time (first post until ClickHouse's ``events`` holds every event posted) of
--events browser events (pixel batches of 20, ``POST /e/<pixel>``) plus conversions carrying
click ids (Events API, 10 per request, one request in 10), alternately without and with
--pollers concurrent feed pollers, each polling once per second with its own cursor over its own
keep-alive connection (one asyncio process, so the pollers do not take the load generator's
interpreter). Requirement: 100 pollers polling every second do not slow ingestion measurably.

``--code DIR`` (before the mode) runs another source tree, e.g. an export of a commit
(``git archive HEAD | tar -x -C DIR``), so that files others are editing do not enter a run.

Environment: BENCH_CLICKHOUSE_URL (default clickhouse://127.0.0.1:9000/default), BENCH_REDIS_URL
(default redis://127.0.0.1:6379/6). Run by hand, never by the tests. Results and their reading:
docs/performance.md ("Optimizer feed").
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.client
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlencode

import orjson

from benchlib import CH_BASE, CODE, code_state, cpu_seconds, redis_url  # noqa: E402  (puts the measured tree on sys.path)

REDIS_URL = redis_url(6)
#: `clicktrail api --nice N` (as `clicktrail up` runs it); 0 = the API at the same priority as ingestion.
API_NICE = int(os.environ.get("BENCH_API_NICE", "0"))
DB = "ct_bench_feed"
ADV = "bench-feed"
DOMAIN = "shop.bench-feed.example"
ORIGIN = f"https://{DOMAIN}"
UA = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
      "Mobile/15E148 musical_ly_34.1.0 JsSdk/2.0 NetType/WIFI Channel/App Store ByteLocale/en Region/US")
FEED_PATH = "/v1/optimizer/conversions"
FEED_PARAMS = {"event": "CompletePayment", "level": "ad", "bucket": "hour"}


# -- small helpers -------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]


class Http:
    """One keep-alive HTTP/1.1 connection (reconnects when the server closed it)."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.port, self.timeout = port, timeout
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    http.client.CannotSendRequest):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()


def listener_pid(port: int) -> int | None:
    """The pid listening on a loopback TCP port (to read ClickHouse's CPU time), if it can be seen."""
    try:
        out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"pid=(\d+)", out)
    return int(found.group(1)) if found else None


def redis_cpu_s(r) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def proc_tree_cpu_s(pid: int) -> float:
    """User+system CPU seconds of ``pid`` and every live descendant (gunicorn master and workers)."""
    return sum(cpu_seconds(pid, "tree"))


# -- the system under test -----------------------------------------------------------------------


class System:
    """Fresh database and Redis DB, a pixel, tokens, and the real processes."""

    def __init__(self, api_workers: int = 2, collector_workers: int = 2) -> None:
        from clicktrail import clickhouse, redis_client, schema
        from clicktrail.services import free_port
        from pixel import registry

        base = clickhouse.connect(CH_BASE)
        base.execute(f"DROP DATABASE IF EXISTS {DB}")
        schema.migrate(base, DB)
        self.ch = clickhouse.connect(clickhouse.with_database(CH_BASE, DB))
        self.r = redis_client.patient(REDIS_URL)
        self.r.flushdb()
        self.pixel_id = registry.create_pixel(self.r, ADV, [DOMAIN])
        self.events_token = registry.create_token(self.r, ADV, ["events"])
        self.adserver_token = registry.create_token(self.r, ADV, ["adserver"])
        self.optimizer_token = registry.create_token(self.r, ADV, ["optimizer"])
        self.folder = Path(tempfile.mkdtemp(prefix="ct-feed-bench-"))
        self.env = dict(os.environ, CLICKTRAIL_REDIS_URL=REDIS_URL,
                        CLICKTRAIL_CLICKHOUSE_URL=clickhouse.with_database(CH_BASE, DB),
                        CLICKTRAIL_DATA_DIR=str(self.folder),
                        PYTHONPATH=os.pathsep.join(p for p in (str(CODE), os.environ.get("PYTHONPATH", "")) if p))
        self.collector_port, self.api_port = free_port(), free_port()
        cli = [sys.executable, "-m", "clicktrail.cli"]
        self.procs: dict[str, subprocess.Popen] = {}
        try:
            self._start("collector", [*cli, "collector", "--bind", f"127.0.0.1:{self.collector_port}",
                                      "--workers", str(collector_workers)])
            nice = ["--nice", str(API_NICE)] if API_NICE else []
            self._start("api", [*cli, "api", "--bind", f"127.0.0.1:{self.api_port}", "--workers", str(api_workers),
                                *nice])
            self._start("sink", [*cli, "sink", "--log-level", "WARNING"])
            self._start("attributor", [*cli, "attributor", "--log-level", "WARNING"])
            self._wait_up(self.collector_port, "collector")
            self._wait_up(self.api_port, "api")
        except BaseException:
            self.stop()
            raise

    def _start(self, name: str, cmd: list[str]) -> None:
        # cwd is the measured tree: `python -m` puts the cwd ahead of PYTHONPATH.
        self.procs[name] = subprocess.Popen(cmd, env=self.env, cwd=CODE, start_new_session=True)

    def _wait_up(self, port: int, name: str) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited with status {self.procs[name].returncode}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{name} did not answer /healthz within 30 s")

    def check_alive(self) -> None:
        dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
        if dead:
            raise RuntimeError(f"processes exited: {dead}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what we started
                proc.wait(5)
        shutil.rmtree(self.folder, ignore_errors=True)

    def cleanup(self) -> None:
        self.r.flushdb()

    # -- inputs ----------------------------------------------------------------------------------

    def import_clicks(self, n: int, now: int, seed: int = 3) -> None:
        """One click per ad: click id clk-<i>, campaign cmp-<i>, ad group grp-<i>, ad ad-<i>."""
        rng = random.Random(seed)
        api = Http(self.api_port)
        headers = {"Authorization": f"Bearer {self.adserver_token}", "Content-Type": "application/json"}
        for start in range(0, n, 10_000):
            rows = [{"click_id": f"clk-{i}", "click_time": now - rng.randint(60, 3500), "campaign_id": f"cmp-{i}",
                     "adgroup_id": f"grp-{i}", "ad_id": f"ad-{i}"} for i in range(start, min(n, start + 10_000))]
            status, body = api.request("POST", "/v1/clicks", orjson.dumps({"clicks": rows}), headers)
            if status != 200 or orjson.loads(body)["accepted"] != len(rows):
                raise RuntimeError(f"click import failed: {status} {body[:300]!r}")
        api.close()

    def settle(self, timeout: float = 60.0) -> None:
        """Until the attributor has processed every notice and published its watermark."""
        from clicktrail import keys

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if (self.r.xlen(keys.EVENTS_STREAM) == 0 and self.r.xlen(keys.ATTRIBUTION_STREAM) == 0
                    and int(self.r.get(keys.FEED_WATERMARK) or 0) > 0):
                return
            time.sleep(0.1)
        raise RuntimeError("the sink and attributor did not settle")

    def watermark(self) -> int:
        from clicktrail import keys

        return int(self.r.get(keys.FEED_WATERMARK) or 0)

    def feed_headers(self) -> dict:
        return {"Authorization": f"Bearer {self.optimizer_token}"}


def feed_path(cursor: str | None) -> str:
    params = dict(FEED_PARAMS)
    if cursor is not None:
        params["cursor"] = cursor
    return f"{FEED_PATH}?{urlencode(params)}"


def header_line() -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    try:
        load = "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        load = ""
    return f"{when}, {os.cpu_count()} cores (shared), {load}; code: {code_state()}"


# -- freshness -----------------------------------------------------------------------------------


class FeedPoller(threading.Thread):
    """Polls the feed every ``interval`` s with its cursor; notes when each ad first shows a conversion."""

    def __init__(self, system: System, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.system, self.interval = system, interval
        self.http = Http(system.api_port)
        self.cursor: str | None = None
        self.seen_wall: dict[str, float] = {}  # ad id -> time.time() of the first poll showing it converted
        self.latencies_ms: list[float] = []
        self.rows_per_poll: list[int] = []
        self.errors: list[str] = []
        self.stop_flag = threading.Event()

    def poll_once(self) -> dict:
        started = time.perf_counter()
        status, body = self.http.request("GET", feed_path(self.cursor), headers=self.system.feed_headers())
        self.latencies_ms.append((time.perf_counter() - started) * 1000)
        if status != 200:
            self.errors.append(f"{status} {body[:200]!r}")
            return {}
        answer = orjson.loads(body)
        now = time.time()
        for row in answer["rows"]:
            if row["conversions"] >= 1 and row["ad_id"] not in self.seen_wall:
                self.seen_wall[row["ad_id"]] = now
        self.rows_per_poll.append(len(answer["rows"]))
        self.cursor = answer["next_cursor"]
        return answer

    def catch_up(self) -> None:
        """The first poll (no cursor) and its pages."""
        while self.poll_once().get("has_more"):
            pass

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stop_flag.is_set():
            try:
                answer = self.poll_once()
            except Exception as exc:  # noqa: BLE001  (counted and reported)
                self.errors.append(repr(exc))
                answer = {}
            if answer.get("has_more"):
                continue
            next_at = max(next_at + self.interval, time.monotonic())
            self.stop_flag.wait(max(0.0, next_at - time.monotonic()))


def freshness(args) -> None:
    n = args.rate * args.seconds
    print(f"freshness: {n:,} ads, {args.rate} conversions/s for {args.seconds} s; starting processes ...",
          file=sys.stderr, flush=True)
    system = System()
    try:
        now = int(time.time())
        system.import_clicks(n, now)
        system.settle()
        poller = FeedPoller(system, interval=args.interval)
        poller.catch_up()
        first_rows = sum(poller.rows_per_poll)
        if first_rows < n:
            raise RuntimeError(f"the first poll listed {first_rows} rows for {n} imported clicks")
        poller.latencies_ms.clear()
        poller.rows_per_poll.clear()
        print(f"imported {n:,} clicks; the first poll listed {first_rows:,} rows; posting conversions ...",
              file=sys.stderr, flush=True)
        poller.start()

        collector = Http(system.collector_port)
        headers = {"Access-Token": system.events_token, "Content-Type": "application/json"}
        accepted_wall: dict[str, float] = {}
        post_ms: list[float] = []
        started = time.monotonic()
        for i in range(n):
            body = {"event_source": "web", "event_source_id": system.pixel_id, "data": [
                {"event": "CompletePayment", "event_id": f"conv-{i}", "event_time": int(time.time()),
                 "user": {"ttclid": f"clk-{i}"}, "properties": {"value": 10, "currency": "USD"}}]}
            t0 = time.perf_counter()
            status, reply = collector.request("POST", "/open_api/v1.3/event/track/", orjson.dumps(body), headers)
            post_ms.append((time.perf_counter() - t0) * 1000)
            if status != 200 or orjson.loads(reply)["data"]["accepted"] != 1:
                raise RuntimeError(f"conversion {i} not accepted: {status} {reply[:300]!r}")
            accepted_wall[f"ad-{i}"] = time.time()
            time.sleep(max(0.0, started + (i + 1) / args.rate - time.monotonic()))
        posting_s = time.monotonic() - started
        deadline = time.monotonic() + 30
        while len(poller.seen_wall) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        poller.stop_flag.set()
        poller.join(10)
        system.check_alive()

        delays = [(poller.seen_wall[ad] - t) * 1000 for ad, t in accepted_wall.items() if ad in poller.seen_wall]
        # Where the delay goes: the collector's receipt -> the credit's write stamp (sink + attributor)
        # -> seen in the feed (watermark publication + polling).
        stored = system.ch.execute(f"""
            SELECT e.event_id, e.received_ms, a.first_ms FROM
              (SELECT event_id, min(attributed_ms) AS first_ms FROM {DB}.credits
               WHERE touch_kind != '' GROUP BY event_id) AS a
            ANY INNER JOIN (SELECT event_id, min(received_ms) AS received_ms FROM {DB}.events GROUP BY event_id) AS e
            USING event_id""")
        to_credit = []
        credit_to_seen = []
        for event_id, received_ms, first_ms in stored:
            ad = "ad-" + event_id.split("-", 1)[1]
            to_credit.append(first_ms - received_ms)
            if ad in poller.seen_wall:
                credit_to_seen.append(poller.seen_wall[ad] * 1000 - first_ms)
    finally:
        system.stop()
    system.cleanup()

    def q(values: list[float]) -> str:
        return " | ".join(f"{pct(values, p):,.0f} ms" for p in (50, 95, 99)) + f" | {max(values):,.0f} ms"

    print(f"\nFeed freshness, {header_line()}.")
    print(f"{n:,} conversions posted one per request at {args.rate}/s ({posting_s:.1f} s; post round trip "
          f"p50 {pct(post_ms, 50):.1f} ms, p99 {pct(post_ms, 99):.1f} ms); poller every "
          f"{args.interval * 1000:.0f} ms: {len(poller.latencies_ms):,} polls, latency p50 "
          f"{pct(poller.latencies_ms, 50):.1f} ms, p99 {pct(poller.latencies_ms, 99):.1f} ms, "
          f"max {max(poller.latencies_ms):.1f} ms; {sum(1 for x in poller.rows_per_poll if x)} polls returned rows "
          f"(mean {statistics.mean(poller.rows_per_poll):.1f} rows); errors: {len(poller.errors)}"
          + (f" (first: {poller.errors[0]})" if poller.errors else ""))
    print("\n| delay | p50 | p95 | p99 | max | n |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| 200 from the collector -> first poll showing conversions >= 1 | {q(delays)} | {len(delays):,} of {n:,} |")
    if to_credit:
        print(f"| collector received -> credit stamped (sink + attributor) | {q(to_credit)} | {len(to_credit):,} |")
    if credit_to_seen:
        print(f"| credit stamped -> seen in the feed (tick end, watermark, poll) | {q(credit_to_seen)} | "
              f"{len(credit_to_seen):,} |")
    p99 = pct(delays, 99)
    met = len(delays) == n and p99 < 2000
    print(f"\nTarget p99 under 2 s: {'met' if met else 'NOT met'} (p99 {p99:,.0f} ms, seen {len(delays):,} of {n:,}).")
    print(f"\nCommand: `{' '.join([sys.executable, *sys.argv])}`")


# -- pollers (a separate process) ----------------------------------------------------------------


async def _poller(i: int, n: int, port: int, token: str, t0: float, stop: asyncio.Event, out: list,
                  errors: list) -> None:
    reader = writer = None
    cursor: str | None = None
    next_at = t0 + i / n  # spread over the second
    while not stop.is_set():
        delay = next_at - time.monotonic()
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), delay)
                break
            except asyncio.TimeoutError:
                pass
        next_at = max(next_at + 1.0, time.monotonic())
        while True:  # one poll, and its further pages at once
            request = (f"GET {feed_path(cursor)} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                       f"Connection: keep-alive\r\n\r\n").encode()
            started = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                status = int(lines[0].split()[1])
                fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                body = await reader.readexactly(int(fields["content-length"]))
                if fields.get("connection", "").lower() == "close":
                    writer.close()
                    reader = writer = None
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, KeyError, ValueError) as exc:
                errors.append(f"poller {i}: {exc!r}")
                if writer is not None:
                    writer.close()
                reader = writer = None
                break
            latency = (time.perf_counter() - started) * 1000
            if status != 200:
                errors.append(f"poller {i}: {status} {body[:200]!r}")
                out.append((time.time(), latency, status, 0))
                break
            answer = orjson.loads(body)
            cursor = answer["next_cursor"]
            out.append((time.time(), latency, status, len(answer["rows"])))
            if not answer.get("has_more"):
                break
    if writer is not None:
        writer.close()


async def _pollers_main(args) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    out: list = []
    errors: list = []
    t0 = time.monotonic() + 0.2
    tasks = [asyncio.create_task(_poller(i, args.n, args.port, args.token, t0, stop, out, errors))
             for i in range(args.n)]
    ready_written = False
    while not stop.is_set():
        if not ready_written and len(out) >= args.n:
            print("ready", flush=True)
            ready_written = True
        try:
            await asyncio.wait_for(stop.wait(), 0.2)
        except asyncio.TimeoutError:
            pass
    await asyncio.gather(*tasks, return_exceptions=True)
    Path(args.out).write_bytes(orjson.dumps({"polls": out, "errors": errors[:50], "error_count": len(errors)}))


def pollers_process(args) -> None:
    asyncio.run(_pollers_main(args))


# -- ingestion with and without pollers ------------------------------------------------------------


EVENTS = ["PageView", "PageView", "PageView", "ViewContent", "ViewContent", "AddToCart", "InitiateCheckout",
          "CompletePayment", "Search", "ClickButton"]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def build_load(system: System, events: int, ads: int, rng: random.Random) -> list[tuple[str, bytes, dict, int]]:
    """Requests holding ``events`` events: browser batches of 20 and, one request in 10, 10 conversions
    with the click id of an imported click (so the feed keeps changing)."""
    browser_headers = {"Content-Type": "text/plain;charset=UTF-8", "Origin": ORIGIN, "User-Agent": UA}
    api_headers = {"Content-Type": "application/json", "Access-Token": system.events_token}
    out = []
    made = 0
    now_ms = int(time.time() * 1000)
    while made < events:
        if len(out) % 10 == 9:
            k = min(10, events - made)
            data = [{"event": "CompletePayment", "event_id": "c%031x" % rng.getrandbits(124),
                     "event_time": now_ms // 1000 - rng.randint(0, 30),
                     "user": {"ttclid": f"clk-{rng.randrange(ads)}", "ip": "203.0.113.7", "user_agent": UA},
                     "properties": {"value": round(rng.uniform(5, 100), 2), "currency": "USD"}} for _ in range(k)]
            out.append(("/open_api/v1.3/event/track/",
                        orjson.dumps({"event_source": "web", "event_source_id": system.pixel_id, "data": data}),
                        api_headers, k))
        else:
            k = min(20, events - made)
            batch = []
            for _ in range(k):
                name = rng.choice(EVENTS)
                event = {"event": name, "event_id": "%032x" % rng.getrandbits(128),
                         "timestamp": now_ms - rng.randint(0, 3000),
                         "page": {"url": f"{ORIGIN}/products/sku-{rng.randint(1, 5000)}", "referrer": f"{ORIGIN}/"},
                         "ttp": "%026x" % rng.getrandbits(104)}
                if name in ("AddToCart", "CompletePayment", "ViewContent"):
                    event["properties"] = {"value": round(rng.uniform(5, 100), 2), "currency": "USD"}
                if rng.random() < 0.3:
                    event["user"] = {"email": _sha(f"user{rng.randint(1, 10**6)}@example.com")}
                batch.append(event)
            out.append((f"/e/{system.pixel_id}", orjson.dumps({"sent_at": now_ms, "events": batch}),
                        browser_headers, k))
        made += k
    return out


def post_all(port: int, load: list, threads: int, retries: dict) -> tuple[float, list[str]]:
    """Post every request from ``threads`` keep-alive connections; return when the last was answered.

    A 503 (or a dropped connection) is retried after 200 ms, as clients do; ``retries`` counts them by reply.
    """
    errors: list[str] = []
    lock = threading.Lock()
    position = [0]

    def work() -> None:
        conn = Http(port)
        while True:
            with lock:
                i = position[0]
                position[0] += 1
            if i >= len(load):
                break
            path, body, headers, k = load[i]
            for attempt in range(20):  # as the SDK and Events API clients do: retry a 503 (re-posting is harmless)
                try:
                    status, reply = conn.request("POST", path, body, headers)
                except OSError as exc:
                    status, reply = 0, repr(exc).encode()
                if status not in (0, 503):
                    break
                with lock:
                    retries[reply[:120]] = retries.get(reply[:120], 0) + 1
                time.sleep(0.2)
            if status != 200:
                errors.append(f"{status} {reply[:200]!r}")
                continue
            parsed = orjson.loads(reply)
            got = parsed["data"]["accepted"] if "data" in parsed else parsed["accepted"]
            if got != k:
                errors.append(f"accepted {got} of {k}: {reply[:200]!r}")
        conn.close()

    started = time.monotonic()
    workers = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.monotonic() - started, errors


def stored_events(system: System) -> int:
    return system.ch.execute(f"SELECT count() FROM {DB}.events")[0][0]


def distinct_events(system: System) -> int:
    """Distinct events stored (a retried request whose first try was in fact queued is stored twice)."""
    return system.ch.execute(f"SELECT uniqExact(pixel_id, event, event_id) FROM {DB}.events")[0][0]


def ingest_run(args, system: System, with_pollers: bool, rng: random.Random, label: str) -> dict:
    load = build_load(system, args.events, args.ads, rng)
    n = sum(k for *_, k in load)
    system.settle()
    before = stored_events(system)
    before_distinct = distinct_events(system)
    poll_proc = None
    out_file = system.folder / f"pollers-{label}.json"
    if with_pollers:
        poll_proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "_pollers", "--n", str(args.pollers), "--port",
             str(system.api_port), "--token", system.optimizer_token, "--out", str(out_file)],
            stdout=subprocess.PIPE, text=True, start_new_session=True, env=system.env)
        line = poll_proc.stdout.readline().strip()  # after every poller's first poll
        if line != "ready":
            raise RuntimeError(f"the pollers did not start: {line!r}")
        time.sleep(args.warmup)  # let them settle into polling once per second
    pids = {name: p.pid for name, p in system.procs.items()}
    if poll_proc:
        pids["poller clients"] = poll_proc.pid
    ch_pid = listener_pid(int(CH_BASE.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1]))
    cpu0 = {name: proc_tree_cpu_s(pid) for name, pid in pids.items()}
    cpu0["clickhouse"] = proc_tree_cpu_s(ch_pid) if ch_pid else 0.0
    cpu0["redis"] = redis_cpu_s(system.r)
    wall0 = time.time()
    started = time.monotonic()
    posting: dict = {}
    retries: dict = {}

    def post() -> None:
        posting["seconds"], posting["errors"] = post_all(system.collector_port, load, args.threads, retries)

    poster = threading.Thread(target=post, daemon=True)
    poster.start()
    target = before + n
    deadline = started + args.timeout
    stored = before
    marks: list[tuple[float, int]] = []  # (monotonic, watermark) at each change of the feed's watermark
    while True:
        mark = system.watermark()
        if not marks or marks[-1][1] != mark:
            marks.append((time.monotonic(), mark))
        stored = stored_events(system)
        # count() is cheap; a retried request may have been stored twice, so confirm with distinct ids.
        if stored >= target and (stored == target or distinct_events(system) - before_distinct >= n):
            break
        if time.monotonic() > deadline:
            break
        system.check_alive()
        time.sleep(0.1)
    elapsed = time.monotonic() - started
    gaps = [b[0] - a[0] for a, b in zip(marks, marks[1:])] + [time.monotonic() - marks[-1][0]]
    wall1 = time.time()
    poster.join(60)
    cpu = {name: proc_tree_cpu_s(pid) - cpu0[name] for name, pid in pids.items()}
    cpu["clickhouse"] = proc_tree_cpu_s(ch_pid) - cpu0["clickhouse"] if ch_pid else None
    cpu["redis"] = redis_cpu_s(system.r) - cpu0["redis"]
    polls: list = []
    poll_errors, poll_error_count = [], 0
    if poll_proc:
        poll_proc.send_signal(signal.SIGTERM)
        try:
            poll_proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(poll_proc.pid, signal.SIGKILL)
            poll_proc.wait(5)
        result = orjson.loads(out_file.read_bytes())
        polls = [p for p in result["polls"] if wall0 <= p[0] <= wall1]
        poll_errors, poll_error_count = result["errors"], result["error_count"]
    lat = [p[1] for p in polls]
    lat_rows = [p[1] for p in polls if p[3]]  # polls that read ClickHouse (or a cached answer with rows)
    res = {
        "label": label, "pollers": args.pollers if with_pollers else 0, "events": n, "requests": len(load),
        "seconds": elapsed, "events_per_s": n / elapsed, "posting_seconds": posting.get("seconds"),
        "post_errors": len(posting.get("errors", [])), "post_error_sample": posting.get("errors", [])[:3],
        "stored": stored - before, "stored_distinct": distinct_events(system) - before_distinct,
        "complete": distinct_events(system) - before_distinct >= n, "retries": sum(retries.values()),
        "retry_replies": {k.decode("utf-8", "replace"): v for k, v in retries.items()},
        "watermark_updates": len(marks) - 1, "watermark_longest_gap_s": max(gaps),
        "polls": len(polls), "polls_per_s": len(polls) / (wall1 - wall0) if polls else 0.0,
        "poll_p50_ms": pct(lat, 50) if lat else None, "poll_p99_ms": pct(lat, 99) if lat else None,
        "poll_max_ms": max(lat) if lat else None,
        "polls_with_rows": len(lat_rows), "poll_non_200": sum(1 for p in polls if p[2] != 200),
        "rows_per_poll_with_rows": statistics.mean([p[3] for p in polls if p[3]]) if lat_rows else 0,
        "poll_with_rows_p50_ms": pct(lat_rows, 50) if lat_rows else None,
        "poll_with_rows_p99_ms": pct(lat_rows, 99) if lat_rows else None,
        "poll_without_rows_p99_ms": pct([p[1] for p in polls if not p[3]], 99) if len(lat_rows) < len(lat) else None,
        "poll_errors": poll_error_count, "poll_error_sample": poll_errors[:3],
        "cpu_s": {k: (round(v, 1) if v is not None else None) for k, v in cpu.items()},
    }
    extra = (f"; polls {res['polls']:,} ({res['polls_per_s']:.0f}/s), p50 {res['poll_p50_ms']:.1f} ms, "
             f"p99 {res['poll_p99_ms']:.1f} ms, errors {poll_error_count}; {len(lat_rows)} polls with rows "
             f"(mean {res['rows_per_poll_with_rows']:.0f} rows): p50 {res['poll_with_rows_p50_ms']:.0f} ms, "
             f"p99 {res['poll_with_rows_p99_ms']:.0f} ms; p99 of the others {res['poll_without_rows_p99_ms']:.0f} ms"
             ) if lat_rows else ""
    print(f"  {label}: {n:,} events in {elapsed:.1f} s = {n / elapsed:,.0f} events/s (posting "
          f"{res['posting_seconds']:.1f} s, {res['retries']} retried 503s, {res['post_errors']} errors, stored "
          f"{res['stored']:,}, distinct {res['stored_distinct']:,}; feed watermark moved {res['watermark_updates']} "
          f"times, longest gap {res['watermark_longest_gap_s']:.1f} s){extra}; "
          f"CPU s {res['cpu_s']}", file=sys.stderr, flush=True)
    return res


def cold_poll(system: System) -> dict:
    """A first poll (no cursor: the last 7 days) on an idle system, and its pages."""
    poller = FeedPoller(system)
    started = time.perf_counter()
    poller.catch_up()
    return {"seconds": time.perf_counter() - started, "pages": len(poller.latencies_ms),
            "rows": sum(poller.rows_per_poll), "errors": poller.errors}


def pollers(args) -> None:
    print(f"pollers: {args.rounds} rounds of {args.events:,} events without and with {args.pollers} pollers; "
          "starting processes ...", file=sys.stderr, flush=True)
    system = System()
    results: list[dict] = []
    rng = random.Random(17)
    try:
        system.import_clicks(args.ads, int(time.time()))
        system.settle()
        for rnd in range(1, args.rounds + 1):
            order = [False, True] if rnd % 2 else [True, False]  # ABBA: drift in the machine's load cancels
            for with_pollers in order:
                label = f"round {rnd}, {'with' if with_pollers else 'without'} pollers"
                results.append(ingest_run(args, system, with_pollers, rng, label))
        system.check_alive()
        feed_rows = system.ch.execute(f"SELECT count() FROM {DB}.feed_changes")[0][0]
        cold = cold_poll(system)
    finally:
        system.stop()
    system.cleanup()

    print(f"\nIngestion with and without {args.pollers} feed pollers, {header_line()}.")
    print(f"Per run: {results[0]['events']:,} events in {results[0]['requests']:,} requests (browser batches of 20, "
          f"one request in 10 an Events API batch of 10 conversions with click ids of {args.ads:,} ads), "
          f"{args.threads} posting connections; collector 2 workers, API 2 workers x 4 threads, 1 sink, "
          f"1 attributor. feed_changes rows at the end: {feed_rows:,}.\n")
    print(f"First poll (no cursor) on the idle system afterwards: {cold['rows']:,} rows in {cold['pages']} page(s), "
          f"{cold['seconds'] * 1000:,.0f} ms{'; errors ' + str(cold['errors'][:2]) if cold['errors'] else ''}.\n")
    print("| round | pollers | events/s | seconds (posting) | 503s retried | watermark moves (longest gap) | "
          "polls/s | poll p50 | poll p99 | poll max | polls with rows: p50 / p99 (mean rows) | poll errors | "
          "CPU s: collector / sink / attributor / API / poller clients / ClickHouse / Redis |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for res in results:
        c = res["cpu_s"]
        cpu = " / ".join(str(c.get(k, "-")) for k in ("collector", "sink", "attributor", "api", "poller clients",
                                                           "clickhouse", "redis"))
        if res["pollers"]:
            polls = (f"{res['polls_per_s']:.0f} | {res['poll_p50_ms']:.1f} ms | {res['poll_p99_ms']:.1f} ms | "
                     f"{res['poll_max_ms']:.0f} ms | {res['polls_with_rows']:,} of {res['polls']:,}: "
                     f"{res['poll_with_rows_p50_ms'] or 0:.0f} / {res['poll_with_rows_p99_ms'] or 0:.0f} ms "
                     f"({res['rows_per_poll_with_rows']:.0f}) | "
                     f"{res['poll_errors'] + res['poll_non_200']}")
        else:
            polls = "- | - | - | - | - | -"
        flag = "" if res["complete"] and not res["post_errors"] else " (INCOMPLETE)"
        print(f"| {res['label'].split(',')[0].split()[1]} | {res['pollers']} | {res['events_per_s']:,.0f}{flag} | "
              f"{res['seconds']:.1f} ({res['posting_seconds']:.1f}) | {res['retries']} | "
              f"{res['watermark_updates']} ({res['watermark_longest_gap_s']:.1f} s) | {polls} | {cpu} |")
    without = [r["events_per_s"] for r in results if not r["pollers"]]
    with_ = [r["events_per_s"] for r in results if r["pollers"]]
    ratios = [w / wo for w, wo in zip(with_, without)]
    lat = [r["poll_p99_ms"] for r in results if r["pollers"]]
    print(f"\nMedian events/s without pollers {statistics.median(without):,.0f}, with "
          f"{statistics.median(with_):,.0f}: ratio with/without {statistics.median(with_) / statistics.median(without):.2f} "
          f"(per round: {', '.join(f'{x:.2f}' for x in ratios)}). Pollers' p99 per run: "
          f"{', '.join(f'{x:.0f} ms' for x in lat)}.")
    errors = [r for r in results if r["post_errors"] or r["poll_errors"] or r["poll_non_200"] or not r["complete"]]
    for r in errors:
        print(f"  errors in {r['label']}: posts {r['post_error_sample']}, polls {r['poll_error_sample']}")
    for r in results:
        if r["retries"]:
            print(f"  503s retried in {r['label']}: {r['retry_replies']}")
    print(f"\nCommand: `{' '.join([sys.executable, *sys.argv])}`")
    if args.json:
        Path(args.json).write_text(json.dumps({"when": header_line(), "args": vars(args), "results": results},
                                              indent=2, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", metavar="DIR", help="run this source tree instead of the checkout")
    sub = parser.add_subparsers(dest="what", required=True)
    f = sub.add_parser("freshness")
    f.add_argument("--rate", type=int, default=50, help="conversions per second, one per request [50]")
    f.add_argument("--seconds", type=int, default=30)
    f.add_argument("--interval", type=float, default=0.1, help="poll interval in seconds [0.1]")
    p = sub.add_parser("pollers")
    p.add_argument("--pollers", type=int, default=100)
    p.add_argument("--events", type=int, default=200_000, help="events per run [200000]")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ads", type=int, default=1000, help="ads with an imported click [1000]")
    p.add_argument("--threads", type=int, default=6, help="posting connections [6]")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of polling before the load starts [3]")
    p.add_argument("--timeout", type=float, default=300.0, help="give up on a run after this many seconds")
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    h = sub.add_parser("_pollers")  # internal: the poller clients' own process
    h.add_argument("--n", type=int, required=True)
    h.add_argument("--port", type=int, required=True)
    h.add_argument("--token", required=True)
    h.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.what == "_pollers":
        pollers_process(args)
        return
    from clicktrail import config

    config.load()
    {"freshness": freshness, "pollers": pollers}[args.what](args)


if __name__ == "__main__":
    main()
