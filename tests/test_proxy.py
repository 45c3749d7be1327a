"""The nginx front end (issue 11, point 3): real nginx, a real gunicorn collector, Redis, ClickHouse.

Slow clients are held by nginx, which passes on only complete requests: 1,000 connections
trickling a body a byte every 2 s leave every other request answered within 2 s. What gunicorn
alone does under the same attack is measured by bench/slow_clients_bench.py (docs/performance.md).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest
import yaml
from hypothesis import given
from hypothesis import settings as settings_
from hypothesis import strategies as st

from clicktrail import config, proxy, services
from pixel import registry
from tests.conftest import ROOT, now_ms
from tests.http import call
from tests.servers import env_for, wait_http
from tests.slow_clients import SlowBodies, probe, raise_open_files

SLOW_CLIENTS = 1000
# A client on another loopback address than nginx's own upstream connections (127.0.0.1), and on
# another /24, so its anonymised address still tells the two apart.
CLIENT_IP = "127.5.6.7"
CLIENT_IP_STORED = "127.5.6.0"
ORIGIN = "https://shop.example"


@dataclass
class Front:
    port: int  # nginx, in front of the collector
    collector: str  # the collector's own base URL, behind it
    api_port: int  # nginx, in front of the API
    api: str  # the API's own base URL, behind it
    nginx: proxy.Nginx
    proc: subprocess.Popen

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"


def _stop(proc: subprocess.Popen) -> None:
    # nginx runs in a session of its own: its master and workers are the whole group.
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def front(spawn, settings, r):
    """One nginx, as `up` configures it: the collector on one address, the API on another."""
    collector = spawn.collector(workers=2, TRUST_PROXY_HEADERS="true")
    api_direct = services.free_port()
    spawn.start("api", "--bind", f"127.0.0.1:{api_direct}", "--workers", "2")
    port, api_port = services.free_port(), services.free_port()
    # Under the test's data folder: nginx's workers (nobody, when root runs the tests) must reach it.
    nginx = proxy.prepare(settings.paths.data_dir,
                          proxy.collector_site(f"127.0.0.1:{port}", collector.removeprefix("http://"),
                                               settings.limits.max_body_bytes),
                          proxy.api_site(f"127.0.0.1:{api_port}", f"127.0.0.1:{api_direct}"))
    proc = subprocess.Popen(nginx.argv, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{api_direct}/healthz")
        wait_http(f"http://127.0.0.1:{port}/healthz")
        wait_http(f"http://127.0.0.1:{api_port}/healthz")
        yield Front(port, collector, api_port, f"http://127.0.0.1:{api_direct}", nginx, proc)
    finally:
        _stop(proc)
        shutil.rmtree(nginx.prefix, ignore_errors=True)


def pixel_batch(event_id: str, ttp: str = "") -> bytes:
    now = now_ms()
    event = {"event": "PageView", "event_id": event_id, "timestamp": now, "page": {"url": ORIGIN + "/"}}
    if ttp:
        event["ttp"] = ttp
    return json.dumps({"sent_at": now, "events": [event]}).encode()


def stored(ch, db: str, n: int, timeout: float = 30.0) -> list[tuple]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = ch.execute(f"SELECT event_id, ip FROM {db}.events_unique ORDER BY event_id")
        if len(rows) >= n:
            return rows
        time.sleep(0.2)
    return ch.execute(f"SELECT event_id, ip FROM {db}.events_unique ORDER BY event_id")


def test_a_thousand_slow_bodies_leave_every_request_answered_in_time(front, tenant, r):
    assert raise_open_files(SLOW_CLIENTS + 500) >= SLOW_CLIENTS + 100, "raise the hard limit on open files"
    slow = SlowBodies("127.0.0.1", front.port, f"/e/{tenant.pixel_id}", SLOW_CLIENTS, interval=2.0)
    try:
        slow.open()
        time.sleep(2.5)  # every slow client has trickled at least once
        assert slow.open_count == SLOW_CLIENTS
        headers = {"Content-Type": "text/plain", "Origin": ORIGIN}
        probes = []
        for i in range(10):
            probes.append(("GET /healthz", probe("127.0.0.1", front.port, "GET", "/healthz")))
            probes.append(("POST batch", probe("127.0.0.1", front.port, "POST", f"/e/{tenant.pixel_id}",
                                               pixel_batch(f"p-{i}"), headers)))
            probes.append(("GET /s/ct.js", probe("127.0.0.1", front.port, "GET", "/s/ct.js")))
        # Still trickling after the probes: the attack was on all along.
        assert slow.open_count == SLOW_CLIENTS and slow.dropped == 0
    finally:
        slow.close()
    late = [(name, p) for name, p in probes if p.status != 200 or p.seconds >= 2.0]
    assert late == [], f"answered late or not at all while {SLOW_CLIENTS} slow bodies were open"
    assert r.xlen("ct:events") == 10  # every batch reached the stream (one entry per request)


def test_stalled_body_is_dropped_and_never_reaches_the_collector(front, tenant, r):
    sock = socket.create_connection(("127.0.0.1", front.port), timeout=proxy.CLIENT_TIMEOUT_S + 5)
    sock.sendall(f"POST /e/{tenant.pixel_id} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{{".encode())
    started = time.monotonic()
    try:
        answer = sock.recv(4096)
    except ConnectionResetError:
        answer = b""
    sock.close()
    # nginx drops a body silent for CLIENT_TIMEOUT_S (its log says 408; it sends no answer).
    assert answer == b""
    assert proxy.CLIENT_TIMEOUT_S - 0.5 < time.monotonic() - started < proxy.CLIENT_TIMEOUT_S + 4
    assert r.xlen("ct:events") == 0


def test_batch_through_the_proxy_is_stored_with_the_clients_address_not_a_forged_one(front, tenant, sink, ch,
                                                                                      ch_database):
    reply = probe("127.0.0.1", front.port, "POST", f"/e/{tenant.pixel_id}", pixel_batch("ip-1", ttp="a" * 26),
                  {"Content-Type": "text/plain", "Origin": ORIGIN, "Host": "t.shop.example",
                   "X-Forwarded-For": "203.0.113.9, 198.51.100.1", "X-Forwarded-Proto": "https"},
                  timeout=10, source=CLIENT_IP)
    assert reply.status == 200
    # Host passes through (the cookie is for the site's domain); the forged scheme does not (no Secure).
    conn = socket.create_connection(("127.0.0.1", front.port), source_address=(CLIENT_IP, 0))
    body = pixel_batch("ip-2", ttp="b" * 26)
    conn.sendall(f"POST /e/{tenant.pixel_id} HTTP/1.1\r\nHost: t.shop.example\r\nOrigin: {ORIGIN}\r\n"
                 f"Content-Type: text/plain\r\nX-Forwarded-Proto: https\r\nContent-Length: {len(body)}\r\n"
                 "Connection: close\r\n\r\n".encode() + body)
    raw = b""
    while chunk := conn.recv(65536):
        raw += chunk
    conn.close()
    head = raw.split(b"\r\n\r\n")[0].decode().lower()
    assert head.startswith("http/1.1 200")
    cookie = next(line for line in head.split("\r\n") if line.startswith("set-cookie: _ttp="))
    assert "domain=shop.example" in cookie and "secure" not in cookie
    sink.drain()
    assert stored(ch, ch_database, 2) == [("ip-1", CLIENT_IP_STORED), ("ip-2", CLIENT_IP_STORED)]


def test_proxy_refuses_oversized_bodies_in_json_and_passes_the_rest_unchanged(front, tenant, r, spawn):
    headers = {"Content-Type": "text/plain", "Origin": ORIGIN}
    big = b"{" + b" " * (proxy.DEFAULT_MAX_BODY + 10) + b"}"
    sized = probe("127.0.0.1", front.port, "POST", f"/e/{tenant.pixel_id}", big, headers, timeout=10)
    assert sized.status == 413
    chunked = _chunked("127.0.0.1", front.port, "/open_api/v1.3/event/track/", big, {"Access-Token": tenant.token})
    assert chunked[0] == 413
    assert chunked[1]["data"]["error"]["code"] == "payload_too_large"  # the Events API's own wrapping
    # A chunked body within the limit is buffered and passed on whole.
    status, reply, _ = _chunked("127.0.0.1", front.port, f"/e/{tenant.pixel_id}", pixel_batch("c-1"), headers)
    assert (status, reply) == (200, {"accepted": 1, "rejected": []})
    assert r.xlen("ct:events") == 1
    # The SDK is served byte for byte, cache headers included.
    direct = _get(front.collector + "/s/ct.js")
    proxied = _get(front.base + "/s/ct.js")
    assert proxied[0] == direct[0] == 200 and proxied[2] == direct[2]
    for name in ("Cache-Control", "ETag", "Content-Type", "Vary"):
        assert proxied[1][name] == direct[1][name]
    revalidated = probe("127.0.0.1", front.port, "GET", "/s/ct.js", headers={"If-None-Match": direct[1]["ETag"]})
    assert revalidated.status == 304
    # The collector gone: nginx's own answer, in the same shape, with Retry-After.
    spawn.stop_all()
    status, reply, headers = _chunked("127.0.0.1", front.port, f"/e/{tenant.pixel_id}", pixel_batch("d-1"), headers)
    assert status == 502 and reply["error"]["code"] == "unavailable" and headers["retry-after"] == "2"


def test_a_thousand_slow_bodies_against_the_api_leave_its_reads_answered_in_time(front, r):
    # The same attack on the API's address (imports from ad servers, the feed, the dashboard).
    assert raise_open_files(SLOW_CLIENTS + 500) >= SLOW_CLIENTS + 100, "raise the hard limit on open files"
    token = registry.create_token(r, "adv-api", ["reports"])
    slow = SlowBodies("127.0.0.1", front.api_port, "/v1/clicks", SLOW_CLIENTS, interval=2.0)
    try:
        slow.open()
        time.sleep(2.5)  # every slow client has trickled at least once
        assert slow.open_count == SLOW_CLIENTS
        probes = []
        for _ in range(10):
            probes.append(("GET /healthz", probe("127.0.0.1", front.api_port, "GET", "/healthz")))
            # 200 only with the token: an authenticated read, from Redis, through the API's gunicorn.
            probes.append(("GET /v1/advertiser", probe("127.0.0.1", front.api_port, "GET", "/v1/advertiser",
                                                       headers={"Authorization": f"Bearer {token}"})))
        assert slow.open_count == SLOW_CLIENTS and slow.dropped == 0
    finally:
        slow.close()
    late = [(name, p) for name, p in probes if p.status != 200 or p.seconds >= 2.0]
    assert late == [], f"answered late or not at all while {SLOW_CLIENTS} slow bodies were open"


def _head_only(port: int, path: str, length: int, headers: dict) -> tuple[int, dict]:
    """Send a request's headers announcing ``length`` bytes of body, none of it; the answer and its JSON."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{lines}"
                 f"Content-Length: {length}\r\nConnection: close\r\n\r\n".encode())
    # Read the answer, not until the close: nginx lingers a while for the body it refused.
    reply = http.client.HTTPResponse(sock)
    reply.begin()
    status, body = reply.status, reply.read()
    sock.close()
    return status, json.loads(body)


def test_api_body_over_its_limit_is_refused_by_nginx_in_the_apis_json(front, r):
    limit = config.MAX_API_BODY_BYTES
    auth = {"Authorization": "Bearer " + registry.create_token(r, "adv-api", ["adserver"])}
    expected = {"error": {"code": "payload_too_large", "message": f"body is larger than {limit} bytes"}}
    # The API's own refusal of an oversized body, for comparison.
    assert _head_only(int(front.api.rpartition(":")[2]), "/v1/clicks", limit + 1, auth) == (413, expected)
    # Through nginx: the same answer on the size alone, without a token (the API would say 401),
    # so nginx refused it before any of it reached the API.
    assert _head_only(front.api_port, "/v1/clicks", limit + 1, {}) == (413, expected)
    big = b'{"clicks": [' + b" " * limit + b"]}"
    status, reply, _ = _chunked("127.0.0.1", front.api_port, "/v1/clicks", big, auth)
    assert (status, reply) == (413, expected)
    # A body within the limit is passed on whole: the API's own answer (an empty list refused).
    near = b'{"clicks": [' + b" " * (limit - 100) + b"]}"
    direct = _chunked("127.0.0.1", int(front.api.rpartition(":")[2]), "/v1/clicks", near, auth)
    proxied = _chunked("127.0.0.1", front.api_port, "/v1/clicks", near, auth)
    assert proxied[:2] == direct[:2] and proxied[0] == 400 and proxied[1]["error"]["field"] == "clicks"


# Differ by hop and by server only; every other header passes through as the API sent it.
HOP_HEADERS = {"server", "date", "connection", "keep-alive"}


def test_dashboard_keeps_its_headers_through_the_proxy_and_an_api_down_is_a_json_502(front, spawn):
    from reporting import dashboard

    asset = f"/dashboard/app.js?v={dashboard.ASSETS['app.js'].version}"
    for path, headers in (("/dashboard", {}), ("/dashboard", {"Accept-Encoding": "gzip"}), (asset, {}),
                          ("/dashboard/app.css", {"Accept-Encoding": "gzip"})):
        direct = call("GET", front.api + path, headers=headers)
        proxied = call("GET", front.api_base + path, headers=headers)
        assert proxied.status == direct.status == 200 and proxied.body == direct.body, path
        seen = {k.lower(): v for k, v in proxied.headers.items() if k.lower() not in HOP_HEADERS}
        sent = {k.lower(): v for k, v in direct.headers.items() if k.lower() not in HOP_HEADERS}
        assert seen == sent, path
        assert seen["content-security-policy"] == dashboard.CSP
    assert call("GET", front.api_base + asset).headers["Cache-Control"] == dashboard.LONG_CACHE
    page_etag = call("GET", front.api_base + "/dashboard").headers["ETag"]
    assert probe("127.0.0.1", front.api_port, "GET", "/dashboard", headers={"If-None-Match": page_etag}).status == 304
    # The API gone: nginx's own answer, in the API's shape, with Retry-After.
    spawn.stop_all()
    gone = call("GET", front.api_base + "/v1/advertiser", headers={"Authorization": "Bearer x"})
    assert gone.status == 502 and gone.headers["Retry-After"] == "2"
    assert gone.json == {"error": {"code": "unavailable", "message": "the API is unavailable; retry later"}}


def _get(url: str) -> tuple[int, dict, bytes]:
    reply = call("GET", url)
    return reply.status, reply.headers, reply.body


def _chunked(host: str, port: int, path: str, body: bytes, headers: dict) -> tuple[int, dict, dict]:
    """POST ``body`` with Transfer-Encoding: chunked; return the status, the JSON answer and its headers."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    chunks = (body[i:i + 65536] for i in range(0, len(body), 65536))
    try:
        conn.request("POST", path, body=chunks, headers={**headers, "Transfer-Encoding": "chunked"},
                     encode_chunked=True)
        resp = conn.getresponse()
    except (BrokenPipeError, ConnectionResetError):
        # nginx may answer 413 and close before the client is done sending: read what it said.
        resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, json.loads(data), {k.lower(): v for k, v in resp.getheaders()}


def test_compose_config_is_the_one_clicktrail_renders():
    # deploy/nginx.conf is written by `python -m clicktrail.proxy > deploy/nginx.conf`; keep them equal.
    assert (ROOT / "deploy" / "nginx.conf").read_text() == proxy.compose_config()
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services_ = compose["services"]
    # Clients reach nginx only; the collector and the API are not published; the collector
    # trusts the proxy's headers, the API (which reads no client address) is not told to.
    assert services_["nginx"]["ports"] == ["8080:8080", "8081:8081"]
    assert "ports" not in services_["collector"] and "ports" not in services_["api"]
    assert services_["collector"]["environment"]["CLICKTRAIL_TRUST_PROXY_HEADERS"] == "true"
    assert services_["api"]["environment"]["CLICKTRAIL_TRUST_PROXY_HEADERS"] != "true"
    assert services_["api"]["command"][-1].endswith(":8081") and "server api:8081 resolve;" in proxy.compose_config()
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in services_["nginx"]["volumes"]


def test_config_refuses_a_bad_bind_clearly(settings):
    from clicktrail.errors import ServiceError

    with pytest.raises(ServiceError, match="HOST:PORT with a port from 1 to 65535"):
        proxy.collector_site("127.0.0.1:99999", "127.0.0.1:1", 1000)
    with pytest.raises(ServiceError, match="HOST:PORT"):
        proxy.api_site("127.0.0.1:８０", "127.0.0.1:1")
    # One address for both would leave one app unreachable (nginx gives it to the first server).
    with pytest.raises(ServiceError, match="different addresses; got 127.0.0.1:8080, 127.0.0.1:8080"):
        proxy.prepare(settings.paths.data_dir, proxy.collector_site("127.0.0.1:8080", "127.0.0.1:1", 1000),
                      proxy.api_site("127.0.0.1:8080", "127.0.0.1:2"))


def test_up_serves_through_nginx_with_the_clients_address(settings, r, ch, ch_database):
    port, api_port = services.free_port(), services.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "clicktrail.cli", "up", "--no-services",
                             "--bind", f"127.0.0.1:{port}", "--api-bind", f"127.0.0.1:{api_port}"],
                            env=env_for(settings), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if line.startswith("Press Ctrl-C") or not line:
                break
        printed = re.search(rf"proxy       nginx on 127.0.0.1:{port} in front of the collector at \S+, "
                            rf"and on 127.0.0.1:{api_port} in front of the API at 127.0.0.1:(\d+)\n", "".join(lines))
        assert printed, "".join(lines)
        # The API's address is nginx's; the API's gunicorn listens on the loopback port printed.
        token = registry.create_token(r, "acme", ["reports"])
        read = call("GET", f"http://127.0.0.1:{api_port}/v1/advertiser", headers={"Authorization": f"Bearer {token}"})
        assert read.status == 200 and read.json["advertiser_id"] == "acme" and read.headers["Server"] == "nginx"
        behind = call("GET", f"http://127.0.0.1:{printed.group(1)}/healthz")
        assert behind.status == 200 and behind.headers["Server"] == "gunicorn"
        assert _head_only(api_port, "/v1/clicks", config.MAX_API_BODY_BYTES + 1, {})[0] == 413
        pixel_id = _pixel(r)
        reply = probe("127.0.0.1", port, "POST", f"/e/{pixel_id}", pixel_batch("up-1"),
                      {"Content-Type": "text/plain", "Origin": ORIGIN, "X-Forwarded-For": "203.0.113.9"},
                      timeout=10, source=CLIENT_IP)
        assert reply.status == 200
        assert stored(ch, ch_database, 1) == [("up-1", CLIENT_IP_STORED)]
        assert probe("127.0.0.1", port, "GET", "/healthz").status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=90)
    assert "stopped proxy" in rest and "stopped collector" in rest
    assert not services.is_listening("127.0.0.1", port)  # nginx's workers went with it
    assert not services.is_listening("127.0.0.1", api_port)


def _pixel(r) -> str:
    return registry.create_pixel(r, "acme", ["shop.example"])


@settings_(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_listen_address_keeps_a_valid_port_or_refuses_the_bind(bind):
    from clicktrail.errors import ServiceError

    try:
        listen = proxy.listen_address(bind)
    except ServiceError as exc:
        assert "HOST:PORT" in str(exc)
        return
    port = listen.rpartition(":")[2]
    assert port.isascii() and port.isdigit() and 0 < int(port) < 65536
    assert bind.endswith(port)
    assert listen in (bind, port)  # the bind as given, or only its port (every address)


def test_compose_runs_the_newest_lts_and_checks_every_long_running_service():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services_ = compose["services"]
    assert services_["clickhouse"]["image"] == "clickhouse/clickhouse-server:26.8"  # LTS of 2026-08
    long_running = [name for name, spec in services_.items() if spec.get("restart") == "unless-stopped"]
    assert set(long_running) >= {"redis", "clickhouse", "nginx", "collector", "sink", "attributor", "api"}
    assert [name for name in long_running if "healthcheck" not in services_[name]] == []
    for worker in ("sink", "attributor"):  # their healthcheck reads the heartbeat their loop leaves
        assert services_[worker]["environment"]["CLICKTRAIL_HEARTBEAT_FILE"]
        assert services_[worker]["healthcheck"]["test"][:3] == ["CMD", "clicktrail", "alive"]
