#!/usr/bin/env python3
"""Collector throughput and latency against a bare Flask app under the same gunicorn settings.

Starts, on free loopback ports:

- the real collector, exactly as ``clicktrail collector --bind 127.0.0.1:PORT --workers N`` runs it
  (production gunicorn options, N = cores by default), pointed at Redis DB 3;
- ``bench/bare_app.py``: a Flask app answering 204 to everything, under the same options.

- nginx in front of that collector, configured as ``clicktrail up`` configures it (clicktrail/proxy.py:
  whole bodies buffered, then passed on a keep-alive upstream connection); the collector runs with
  ``CLICKTRAIL_TRUST_PROXY_HEADERS=true`` as it does behind ``up``. Skipped with ``--no-proxy``, or when
  the measured tree has no clicktrail/proxy.py.

Registers a pixel (domain ``bench.example``) and an Events API token in Redis DB 3, builds request
bodies with current timestamps, checks that one sample of each is accepted in full, then drives each
scenario with wrk (same threads, connections and duration; a warm-up first) and prints a Markdown
table: requests/s, events/s, p50/p99 latency, non-2xx and socket errors, CPU the server processes
spent per request (through nginx: nginx's and the collector's), the ratio collector/bare for 1-event
bodies (target: at least 0.7), and the ratio through nginx/direct.

The stream ``ct:events`` of DB 3 is deleted before every scenario (no sink runs during the bench)
and the collector runs with a very high ``CLICKTRAIL_STREAM_MAX_LEN``, so the memory guard never
answers 503. The pixel, the token and the stream are removed at the end.

    python bench/collector_bench.py                       # 15 s per scenario, 32 connections
    python bench/collector_bench.py --rounds 3 --json /tmp/collector.json   # medians of 3 rounds
    python bench/collector_bench.py --code /tmp/ct-abc1234   # an exported commit instead of this checkout
    python bench/collector_bench.py --cpu-breakdown          # in-process CPU per request, by part

Results and their reading: docs/performance.md.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import orjson
import redis

from benchlib import CODE, ROOT, code_state, cpu_seconds  # noqa: E402  (puts the measured tree on sys.path)
from clicktrail import keys  # noqa: E402
from clicktrail.services import free_port  # noqa: E402
from pixel import registry  # noqa: E402

try:
    from clicktrail import proxy  # noqa: E402
except ImportError:  # a measured commit from before the front end
    proxy = None

DEFAULT_REDIS = "redis://127.0.0.1:6379/3"
PROXY_SUFFIX = ", through nginx"
ADVERTISER = "bench-adv"
DOMAIN = "bench.example"
ORIGIN = f"https://{DOMAIN}"
UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Mobile/15E148 musical_ly_34.1.0 JsSdk/2.0 NetType/WIFI Channel/App Store ByteLocale/en Region/US"
)
EVENTS = [
    "PageView",
    "PageView",
    "PageView",
    "ViewContent",
    "ViewContent",
    "AddToCart",
    "InitiateCheckout",
    "CompletePayment",
    "Search",
    "ClickButton",
]

# wrk loads this once per thread; done() prints one machine-readable line for the bench to read.
_LUA = """
wrk.method = "POST"
local f = assert(io.open({body_path}, "rb"))
wrk.body = f:read("*a")
f:close()
{headers}
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'CTBENCH {{"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


# -- request bodies ------------------------------------------------------------------------------


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _page(rng: random.Random, i: int) -> dict:
    path = rng.choice(
        [
            "/",
            "/products/sku-%d" % rng.randint(1, 5000),
            "/cart",
            "/checkout",
            "/search",
            "/collections/summer",
        ]
    )
    query = ""
    if rng.random() < 0.3:
        query = "?utm_source=tiktok&utm_medium=paid&utm_campaign=spring_%d&ttclid=E.C.P.%s" % (
            rng.randint(1, 40),
            _sha(str(i))[:40],
        )
    return {"url": f"{ORIGIN}{path}{query}", "referrer": f"{ORIGIN}/"}


def _properties(rng: random.Random, event: str) -> dict:
    if event in ("PageView", "ClickButton"):
        return {}
    if event == "Search":
        return {"query": rng.choice(["shoes", "red dress", "gift card", "sneakers 42"])}
    qty = rng.randint(1, 3)
    price = round(rng.uniform(5, 120), 2)
    props = {
        "value": round(qty * price, 2),
        "currency": rng.choice(["USD", "EUR", "GBP"]),
        "contents": [{"content_id": f"sku-{rng.randint(1, 5000)}", "quantity": qty, "price": price}],
        "content_type": "product",
    }
    if event == "CompletePayment":
        props["order_id"] = f"A-{rng.randint(1, 10**7)}"
    return props


def browser_body(n: int, now_ms: int, rng: random.Random) -> bytes:
    """A pixel batch as the SDK sends it (docs/wire-format.md), timestamps current."""
    events = []
    for i in range(n):
        name = rng.choice(EVENTS)
        event = {
            "event": name,
            "event_id": "%032x" % rng.getrandbits(128),
            "timestamp": now_ms - rng.randint(0, 3000),
            "page": _page(rng, i),
            "ttp": "%026x" % rng.getrandbits(104),
            "properties": _properties(rng, name),
        }
        if rng.random() < 0.3:
            event["user"] = {"email": _sha(f"user{i}@example.com"), "phone": _sha(f"+3361234{i:04d}")}
        events.append(event)
    return orjson.dumps({"sent_at": now_ms, "events": events})


def events_api_body(pixel_id: str, n: int, now_s: int, rng: random.Random) -> bytes:
    """A TikTok Events API 2.0 body (``event_source: web``), event_time current, in seconds."""
    data = []
    for i in range(n):
        name = rng.choice(EVENTS)
        data.append(
            {
                "event": name,
                "event_id": "%032x" % rng.getrandbits(128),
                "event_time": now_s - rng.randint(0, 60),
                "user": {
                    "email": _sha(f"buyer{i}@example.com"),
                    "phone": _sha(f"+1555{i:07d}"),
                    "external_id": _sha(f"crm-{i}"),
                    "ip": f"203.0.113.{i % 250 + 1}",
                    "user_agent": UA,
                    "ttclid": "E.C.P.%s" % _sha(str(i))[:40],
                    "ttp": "%026x" % rng.getrandbits(104),
                },
                "page": _page(rng, i),
                "properties": _properties(rng, name),
            }
        )
    return orjson.dumps({"event_source": "web", "event_source_id": pixel_id, "data": data})


# -- processes -----------------------------------------------------------------------------------


def clicktrail_cmd() -> list[str]:
    script = Path(sys.executable).parent / "clicktrail"
    return [str(script)] if script.exists() else [sys.executable, "-m", "clicktrail.cli"]


def wait_up(port: int, path: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with status {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", path)
            if conn.getresponse().status < 500:
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not answer within {timeout:.0f}s")


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM the gunicorn master we started (it stops its workers), SIGKILL its group if it lingers."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: only the processes we started
        proc.wait(5)


def tree_cpu_s(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process and its live children (gunicorn master and workers)."""
    return cpu_seconds(pid, "children")


def queued_events(r: redis.Redis) -> int:
    """Events in the stream: one entry per event, or one per request with its count in field ``n``.

    Every request of a scenario carries the same body, so one entry's count stands for all.
    """
    length = r.xlen(keys.EVENTS_STREAM)
    first = r.xrange(keys.EVENTS_STREAM, count=1)
    if not first:
        return 0
    return length * int(first[0][1].get(b"n", 1))


def redis_cpu_s(r: redis.Redis) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


# -- scenarios -----------------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    server: str  # "collector", "proxy" (nginx in front of the same collector) or "bare"
    path: str
    body: bytes
    headers: dict
    events: int  # per request
    runs: list = field(default_factory=list)

    def fields(self) -> tuple:
        return self.path, self.body, self.headers, self.events


def post(port: int, s: Scenario) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", s.path, body=s.body, headers=s.headers)
    resp = conn.getresponse()
    return resp.status, resp.read()


def check_sample(port: int, s: Scenario) -> None:
    """One request of the scenario must be accepted in full before it is measured."""
    status, body = post(port, s)
    if s.server == "bare":
        if status != 204:
            raise SystemExit(f"{s.name}: bare app answered {status}, expected 204")
        return
    if status != 200:
        raise SystemExit(f"{s.name}: collector answered {status}: {body[:500]!r}")
    reply = orjson.loads(body)
    accepted = reply["data"]["accepted"] if "data" in reply else reply["accepted"]
    rejected = reply["data"]["rejected"] if "data" in reply else reply["rejected"]
    if accepted != s.events or rejected:
        raise SystemExit(f"{s.name}: {accepted} of {s.events} events accepted, rejected: {rejected}")


def run_wrk(args, port: int, s: Scenario, lua: Path, seconds: int) -> tuple[dict, list[str]]:
    cmd = [
        args.wrk,
        f"-t{args.wrk_threads}",
        f"-c{args.connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(lua),
        f"http://127.0.0.1:{port}{s.path}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    for line in out.stdout.splitlines():
        if line.startswith("CTBENCH "):
            return json.loads(line[len("CTBENCH ") :]), cmd
    raise RuntimeError(f"wrk printed no result (status {out.returncode}): {out.stdout}\n{out.stderr}")


def write_lua(folder: Path, s: Scenario) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", s.name.lower()).strip("-")
    body_path = folder / f"{slug}.body"
    body_path.write_bytes(s.body)
    headers = "\n".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in s.headers.items())
    lua = folder / f"{slug}.lua"
    lua.write_text(_LUA.format(body_path=json.dumps(str(body_path)), headers=headers))
    return lua


def server_cpu_s(procs: dict, server: str) -> tuple[float, float]:
    """(user, system) CPU seconds of the processes serving a scenario: through nginx, nginx's and the collector's."""
    names = ["proxy", "collector"] if server == "proxy" else [server]
    times = [tree_cpu_s(procs[name].pid) for name in names]
    return sum(t[0] for t in times), sum(t[1] for t in times)


def measure(args, r: redis.Redis, procs: dict, ports: dict, s: Scenario, lua: Path) -> dict:
    port = ports[s.server]
    r.unlink(keys.EVENTS_STREAM)
    if args.warmup:
        run_wrk(args, port, s, lua, args.warmup)
    r.unlink(keys.EVENTS_STREAM)
    time.sleep(0.5)
    cpu0, rcpu0 = server_cpu_s(procs, s.server), redis_cpu_s(r)
    result, cmd = run_wrk(args, port, s, lua, args.duration)
    cpu1, rcpu1 = server_cpu_s(procs, s.server), redis_cpu_s(r)
    time.sleep(0.5)  # requests in flight when wrk stopped still land
    queued = queued_events(r)
    r.unlink(keys.EVENTS_STREAM)
    seconds = result["duration_us"] / 1e6
    n = result["requests"]
    run = {
        "requests": n,
        "seconds": round(seconds, 2),
        "rps": n / seconds,
        "events_per_s": n * s.events / seconds,
        "p50_ms": result["p50_us"] / 1000,
        "p90_ms": result["p90_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000,
        "max_ms": result["max_us"] / 1000,
        "non_2xx": result["status"],
        "socket_errors": result["connect"] + result["read"] + result["write"] + result["timeout"],
        "server_cpu_ms_per_req": 1000 * (sum(cpu1) - sum(cpu0)) / max(n, 1),
        "server_user_cpu_ms_per_req": 1000 * (cpu1[0] - cpu0[0]) / max(n, 1),
        "server_system_cpu_ms_per_req": 1000 * (cpu1[1] - cpu0[1]) / max(n, 1),
        "redis_cpu_ms_per_req": 1000 * (rcpu1 - rcpu0) / max(n, 1),
        "queued": queued if s.server != "bare" else None,
        "expected_min": n * s.events if s.server != "bare" else None,
        "wrk": " ".join(shlex.quote(c) for c in cmd),
    }
    flag = ""
    if s.server != "bare" and queued < n * s.events:
        flag = f"  LOST: {queued} queued < {n * s.events}"
    print(
        f"  {s.name:28} {run['rps']:8.0f} req/s  p50 {run['p50_ms']:6.2f} ms  p99 {run['p99_ms']:7.2f} ms  "
        f"non-2xx {run['non_2xx']}  socket errors {run['socket_errors']}{flag}",
        file=sys.stderr,
    )
    return run


def median_run(runs: list[dict]) -> dict:
    out = dict(runs[0])
    for key in (
        "rps",
        "events_per_s",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "server_cpu_ms_per_req",
        "server_user_cpu_ms_per_req",
        "server_system_cpu_ms_per_req",
        "redis_cpu_ms_per_req",
    ):
        out[key] = statistics.median(run[key] for run in runs)
    for key in ("non_2xx", "socket_errors", "requests"):
        out[key] = sum(run[key] for run in runs)
    out["lost"] = any(run["queued"] is not None and run["queued"] < run["expected_min"] for run in runs)
    return out


def proxy_ratios(scenarios: list[Scenario]) -> list[str]:
    """Lines comparing each scenario measured through nginx with the same one measured directly."""
    by_name = {s.name: s for s in scenarios}
    lines = []
    for s in scenarios:
        direct = by_name.get(s.name.removesuffix(PROXY_SUFFIX))
        if s.server != "proxy" or direct is None:
            continue
        rps = [p["rps"] / d["rps"] for p, d in zip(s.runs, direct.runs)]
        cpu = [p["server_cpu_ms_per_req"] - d["server_cpu_ms_per_req"] for p, d in zip(s.runs, direct.runs)]
        lines.append(
            f"Through nginx/direct, {direct.name}, requests/s: **{statistics.median(rps):.2f}**"
            + (f" (per round: {', '.join(f'{x:.2f}' for x in rps)})" if len(rps) > 1 else "")
            + f"; server CPU per request {statistics.median(cpu):+.2f} ms (nginx's share)"
        )
    return lines


def table(scenarios: list[Scenario], ratios: list[float], cpu_ratios: list[float], args) -> str:
    lines = [
        "| scenario | server | events/request | requests/s | events/s | p50 ms | p99 ms | non-2xx "
        "| socket errors | server CPU ms/request (user+sys) | Redis CPU ms/request | all events queued |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in scenarios:
        m = median_run(s.runs)
        queued = "n/a" if s.server == "bare" else ("NO" if m["lost"] else "yes")
        lines.append(
            f"| {s.name} | {s.server} | {s.events} | {m['rps']:,.0f} | {m['events_per_s']:,.0f} | "
            f"{m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {m['non_2xx']} | {m['socket_errors']} | "
            f"{m['server_cpu_ms_per_req']:.2f} ({m['server_user_cpu_ms_per_req']:.2f}+"
            f"{m['server_system_cpu_ms_per_req']:.2f}) | {m['redis_cpu_ms_per_req']:.3f} | {queued} |"
        )
    ratio = statistics.median(ratios)
    verdict = "met" if ratio >= 0.7 else "NOT met"
    lines.append("")
    lines.append(
        f"Ratio collector/bare, 1-event body, requests/s: **{ratio:.2f}** (target >= 0.70: {verdict})"
        + (f"; per round: {', '.join(f'{x:.2f}' for x in ratios)}" if len(ratios) > 1 else "")
    )
    lines.append(
        f"Ratio by server CPU per request (bare/collector, less sensitive to noise): "
        f"{statistics.median(cpu_ratios):.2f}"
    )
    lines.extend(proxy_ratios(scenarios))
    return "\n".join(lines)


def cpu_breakdown(args, r: redis.Redis, pixel_id: str, folder: Path) -> dict:
    """CPU per request in this process (Flask test client, no gunicorn, no wrk), for the bare app and the
    collector, then the collector with its Redis call and then its metric updates replaced by no-ops.

    An estimate of where the collector's extra CPU goes; process CPU time, best of 3 runs of 3000 requests.
    """
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder / "metrics")  # as `clicktrail collector` runs
    (folder / "metrics").mkdir(parents=True, exist_ok=True)
    import prometheus_client

    from collector import buffer
    from collector.app import create_app

    sys.path.insert(0, str(ROOT / "bench"))
    import bare_app

    app = create_app({"REDIS_URL": args.redis_url, "STREAM_MAX_LEN": 10**9})
    bare = bare_app.create_app()
    headers = {"Content-Type": "text/plain;charset=UTF-8", "Origin": ORIGIN}
    rng = random.Random(5)
    now_ms = int(time.time() * 1000)
    bodies = {1: browser_body(1, now_ms, rng), 20: browser_body(20, now_ms, rng)}
    results: dict[str, float] = {}

    def measure_cpu(label: str, flask_app, events: int, expect: int, n: int = 3000) -> None:
        client = flask_app.test_client()
        for _ in range(200):
            client.post(f"/e/{pixel_id}", data=bodies[events], headers=headers)
        best = float("inf")
        for _ in range(3):
            started = time.process_time()
            for _ in range(n):
                status = client.post(f"/e/{pixel_id}", data=bodies[events], headers=headers).status_code
            best = min(best, (time.process_time() - started) / n * 1e6)
            r.unlink(keys.EVENTS_STREAM)
        if status != expect:
            raise SystemExit(f"{label}: answered {status}, expected {expect}")
        results[label] = best

    measure_cpu("bare app, 1-event body", bare, 1, 204)
    measure_cpu("collector, 1 event", app, 1, 200)
    measure_cpu("collector, 20 events", app, 20, 200)
    real_append = buffer.EventBuffer.append
    answer = real_append(app.extensions["clicktrail"].buffer, pixel_id, [], host=DOMAIN)
    buffer.EventBuffer.append = lambda self, *a, **kw: answer
    no_ops = [(prometheus_client.Counter, "inc"), (prometheus_client.Histogram, "observe")]
    saved = [(cls, name, getattr(cls, name)) for cls, name in no_ops]
    try:
        measure_cpu("collector, 1 event, Redis call replaced by a no-op", app, 1, 200)
        for cls, name, _ in saved:
            setattr(cls, name, lambda self, *a, **kw: None)
        measure_cpu("collector, 1 event, Redis call and metric updates replaced by no-ops", app, 1, 200)
    finally:
        buffer.EventBuffer.append = real_append
        for cls, name, method in saved:
            setattr(cls, name, method)
    base = results["bare app, 1-event body"]
    print("| in-process (test client) | CPU us/request | ratio bare/this |\n|---|---:|---:|")
    for label, micros in results.items():
        print(f"| {label} | {micros:.0f} | {base / micros:.2f} |")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Collector vs bare Flask throughput under the same gunicorn settings."
    )
    parser.add_argument("--duration", type=int, default=15, help="seconds per measured scenario [15]")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up before each scenario [3]")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections [32]")
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk threads [2]")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="gunicorn workers [cores]")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker [4, as the CLI]")
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat every scenario; medians are reported [1]"
    )
    parser.add_argument("--redis-url", default=DEFAULT_REDIS, help=f"[{DEFAULT_REDIS}]")
    parser.add_argument("--wrk", default=shutil.which("wrk") or "wrk")
    parser.add_argument(
        "--code",
        metavar="DIR",
        help="run this source tree (an export of a commit) instead of the checkout this script is in",
    )
    parser.add_argument(
        "--cpu-breakdown",
        action="store_true",
        help="instead of the wrk runs: CPU per request in this process, bare vs collector, then the "
        "collector with its Redis call and metric updates replaced by no-ops",
    )
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    parser.add_argument("--no-proxy", action="store_true", help="skip the scenarios through nginx")
    args = parser.parse_args(argv)
    if args.cpu_breakdown:
        r = redis.Redis.from_url(args.redis_url)
        pixel_id = registry.create_pixel(r, ADVERTISER, [DOMAIN])
        folder = Path(tempfile.mkdtemp(prefix="ct-collector-cpu-"))
        try:
            results = cpu_breakdown(args, r, pixel_id, folder)
        finally:
            r.unlink(keys.EVENTS_STREAM)
            r.hdel(keys.PIXELS, pixel_id)
            r.hdel(keys.ADVERTISERS, ADVERTISER)
            if hasattr(keys, "ADVERTISER_DOMAINS"):
                r.hdel(keys.ADVERTISER_DOMAINS, ADVERTISER)
            shutil.rmtree(folder, ignore_errors=True)
        command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
        print(f"\nCode: {code_state()}. Command: `{command}`")
        if args.json:
            Path(args.json).write_text(
                json.dumps({"code": code_state(), "cpu_us_per_request": results}, indent=2)
            )
        return 0
    if not shutil.which(args.wrk):
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])

    r = redis.Redis.from_url(args.redis_url)
    pixel_id = registry.create_pixel(r, ADVERTISER, [DOMAIN])
    token = registry.create_token(r, ADVERTISER, ["events"])
    folder = Path(tempfile.mkdtemp(prefix="ct-collector-bench-"))
    env = dict(
        os.environ,
        CLICKTRAIL_REDIS_URL=args.redis_url,
        CLICKTRAIL_STREAM_MAX_LEN="1000000000",
        CLICKTRAIL_DATA_DIR=str(folder / "data"),
        # As behind `clicktrail up`'s nginx (the direct scenarios send no X-Forwarded-For).
        CLICKTRAIL_TRUST_PROXY_HEADERS="true",
    )
    # The servers import the code from CODE whatever is installed (an editable install may not know
    # packages added since, and PYTHONPATH precedes it).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(CODE), os.environ.get("PYTHONPATH", "")) if p)
    procs: dict[str, subprocess.Popen] = {}
    try:
        ports = {"collector": free_port(), "bare": free_port()}
        procs["collector"] = subprocess.Popen(
            [
                *clicktrail_cmd(),
                "collector",
                "--bind",
                f"127.0.0.1:{ports['collector']}",
                "--workers",
                str(args.workers),
                "--threads",
                str(args.threads),
            ],
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
        procs["bare"] = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "bench" / "bare_app.py"),
                "--bind",
                f"127.0.0.1:{ports['bare']}",
                "--workers",
                str(args.workers),
                "--threads",
                str(args.threads),
                "--data-dir",
                str(folder / "data"),
            ],
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
        wait_up(ports["collector"], "/healthz", procs["collector"])
        wait_up(ports["bare"], "/healthz", procs["bare"])
        if proxy is not None and not args.no_proxy:
            ports["proxy"] = free_port()
            nginx = proxy.prepare(folder / "data", proxy.collector_site(
                f"127.0.0.1:{ports['proxy']}", f"127.0.0.1:{ports['collector']}", proxy.DEFAULT_MAX_BODY))
            procs["proxy"] = subprocess.Popen(nginx.argv, start_new_session=True)
            wait_up(ports["proxy"], "/healthz", procs["proxy"])

        rng = random.Random(7)
        now_ms = int(time.time() * 1000)
        browser_headers = {"Content-Type": "text/plain;charset=UTF-8", "Origin": ORIGIN}
        api_headers = {"Content-Type": "application/json", "Access-Token": token}
        one = browser_body(1, now_ms, rng)
        scenarios = [
            Scenario("bare, 1-event browser body", "bare", f"/e/{pixel_id}", one, browser_headers, 1),
            Scenario("browser, 1 event", "collector", f"/e/{pixel_id}", one, browser_headers, 1),
            Scenario(
                "browser, 20 events",
                "collector",
                f"/e/{pixel_id}",
                browser_body(20, now_ms, rng),
                browser_headers,
                20,
            ),
            Scenario(
                "Events API, 100 events",
                "collector",
                "/open_api/v1.3/event/track/",
                events_api_body(pixel_id, 100, now_ms // 1000, rng),
                api_headers,
                100,
            ),
        ]
        if "proxy" in ports:  # the same requests through nginx, beside the direct ones
            scenarios.insert(2, Scenario(scenarios[1].name + PROXY_SUFFIX, "proxy", *scenarios[1].fields()))
            scenarios.append(Scenario(scenarios[-1].name + PROXY_SUFFIX, "proxy", *scenarios[-1].fields()))
        luas = {}
        for s in scenarios:
            check_sample(ports[s.server], s)
            luas[s.name] = write_lua(folder, s)
        r.unlink(keys.EVENTS_STREAM)
        print(
            f"collector :{ports['collector']} and bare :{ports['bare']} up, {args.workers} workers x "
            f"{args.threads} threads each{', nginx :' + str(ports['proxy']) if 'proxy' in ports else ''}; "
            f"samples accepted; measuring {args.duration}s per scenario",
            file=sys.stderr,
        )

        ratios, cpu_ratios = [], []
        for round_no in range(args.rounds):
            print(f"round {round_no + 1}/{args.rounds}", file=sys.stderr)
            # Alternate which of the pair goes first, so drift in the machine's load does not favour one.
            order = scenarios if round_no % 2 == 0 else [scenarios[1], scenarios[0], *scenarios[2:]]
            for s in order:
                s.runs.append(measure(args, r, procs, ports, s, luas[s.name]))
            bare, coll = scenarios[0].runs[-1], scenarios[1].runs[-1]
            ratios.append(coll["rps"] / bare["rps"])
            cpu_ratios.append(bare["server_cpu_ms_per_req"] / coll["server_cpu_ms_per_req"])

        report = table(scenarios, ratios, cpu_ratios, args)
        when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        print()
        print(
            f"Collector bench, {when}, {os.cpu_count()} cores; gunicorn {args.workers} workers x "
            f"{args.threads} threads (gthread, production options); wrk {args.wrk_threads} threads, "
            f"{args.connections} connections, {args.duration}s per scenario after {args.warmup}s warm-up, "
            f"{args.rounds} round(s); "
            f"code: {code_state()}."
        )
        print()
        print(report)
        print()
        print(f"Command: `{command}`")
        print(f"wrk, e.g.: `{scenarios[1].runs[-1]['wrk']}`")
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    {
                        "date": when,
                        "cores": os.cpu_count(),
                        "command": command,
                        "code": code_state(),
                        "workers": args.workers,
                        "threads": args.threads,
                        "connections": args.connections,
                        "wrk_threads": args.wrk_threads,
                        "duration_s": args.duration,
                        "warmup_s": args.warmup,
                        "rounds": args.rounds,
                        "ratio_1_event": statistics.median(ratios),
                        "ratios": ratios,
                        "cpu_ratio_1_event": statistics.median(cpu_ratios),
                        "scenarios": [
                            {
                                "name": s.name,
                                "server": s.server,
                                "events_per_request": s.events,
                                "body_bytes": len(s.body),
                                "median": median_run(s.runs),
                                "runs": s.runs,
                            }
                            for s in scenarios
                        ],
                    },
                    indent=2,
                )
            )
        failed = any(median_run(s.runs)["non_2xx"] or median_run(s.runs)["lost"] for s in scenarios)
        return 1 if failed else 0
    finally:
        for proc in procs.values():
            stop(proc)
        r.unlink(keys.EVENTS_STREAM)
        r.hdel(keys.PIXELS, pixel_id)
        r.hdel(keys.TOKENS, hashlib.sha256(token.encode()).hexdigest())
        r.hdel(keys.ADVERTISERS, ADVERTISER)
        if hasattr(keys, "ADVERTISER_DOMAINS"):  # versions that index an advertiser's site domains
            r.hdel(keys.ADVERTISER_DOMAINS, ADVERTISER)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
