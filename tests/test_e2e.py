"""End to end: a real gunicorn collector and a real sink process, Redis and ClickHouse."""

import http.client
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

from tests.conftest import now_ms, query_dicts
from tests.http import call


def wait_stored(ch, db, n, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = ch.execute(f"SELECT count() FROM {db}.events_unique")[0][0]
        if count >= n:
            return count
        time.sleep(0.1)
    return ch.execute(f"SELECT count() FROM {db}.events_unique")[0][0]


def test_each_endpoint_through_gunicorn_lands_in_clickhouse(spawn, tenant, ch, ch_database):
    base = spawn.collector(workers=2)
    spawn.sink()
    now = now_ms()
    browser = {"sent_at": now, "events": [{"event": "AddToCart", "event_id": "b-1", "timestamp": now,
                                           "page": {"url": "https://shop.example/p?ttclid=CLICK"}}]}
    reply = call("POST", f"{base}/e/{tenant.pixel_id}", browser,
                 {"Content-Type": "text/plain", "Origin": "https://shop.example"})
    assert reply.status == 200 and reply.json == {"accepted": 1, "rejected": []}
    reply = call("GET", f"{base}/e/{tenant.pixel_id}.gif?ev=PageView&eid=i-1&url=https%3A%2F%2Fshop.example%2F")
    assert reply.status == 200 and reply.headers["Content-Type"] == "image/gif"
    server = {"event_source": "web", "event_source_id": tenant.pixel_id,
              "data": [{"event": "CompletePayment", "event_time": now // 1000, "event_id": "s-1",
                        "properties": {"value": 12, "currency": "USD"}}]}
    reply = call("POST", f"{base}/open_api/v1.3/event/track/", server,
                 {"Content-Type": "application/json", "Access-Token": tenant.token})
    assert reply.status == 200 and reply.json["code"] == 0
    assert wait_stored(ch, ch_database, 3) == 3
    rows = query_dicts(ch, f"SELECT event, event_id, source, click_id, value FROM {ch_database}.events_unique "
                           "ORDER BY event_id")
    assert rows == [
        {"event": "AddToCart", "event_id": "b-1", "source": "browser", "click_id": "CLICK", "value": 0.0},
        {"event": "PageView", "event_id": "i-1", "source": "image", "click_id": "", "value": 0.0},
        {"event": "CompletePayment", "event_id": "s-1", "source": "server", "click_id": "", "value": 12.0},
    ]


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_add_up_across_gunicorn_workers(spawn, tenant, ch, ch_database):
    base = spawn.collector(workers=3)
    body = {"events": [{"event": "PageView", "event_id": "x", "page": {"url": "https://shop.example/"}}] * 2}

    def send(_):
        return call("POST", f"{base}/e/{tenant.pixel_id}", body, {"Origin": "https://shop.example"}).status

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(send, range(60)))
    assert statuses == [200] * 60
    assert call("POST", f"{base}/e/{tenant.pixel_id}", body, {"Origin": "https://evil.example"}).status == 403
    text = call("GET", f"{base}/metrics").body.decode()
    # Whichever worker answers the scrape, it reports the sum of all of them.
    assert _metric(text, 'clicktrail_events_accepted_total{source="browser"}') == 120
    assert _metric(text, 'clicktrail_events_rejected_total{reason="domain_not_allowed",source="browser"}') == 1
    assert _metric(text, "clicktrail_stream_length") == 60  # no sink yet: every request is backlog
    assert 'clicktrail_request_seconds_bucket{endpoint="browser.browser_events"' in text
    assert call("GET", f"{base}/readyz").json == {"status": "ok", "redis": "ok"}
    assert call("GET", f"{base}/healthz").status == 200


def _post_raw(base: str, path: str, body: bytes, headers: dict, chunked: bool) -> tuple[int, dict, bytes]:
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        if chunked:  # no Content-Length: the fast path leaves it to the Flask view
            conn.request("POST", path, body=iter([body[:10], body[10:]]), headers=headers, encode_chunked=True)
        else:
            conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        # The clock's part of an answer (Date, a cookie's Expires) differs when two requests straddle a second.
        headers = {k: re.sub(r"Expires=[^;]*; ", "", v) if k == "Set-Cookie" else v
                   for k, v in resp.getheaders() if k not in ("Date", "Content-Length")}
        return resp.status, headers, resp.read()
    finally:
        conn.close()


def test_fast_path_and_flask_view_answer_pixel_batches_alike(spawn, tenant, ch, ch_database):
    """Plain batches are answered in front of Flask, chunked ones by the Flask view: same answers."""
    base = spawn.collector(workers=1)
    now = now_ms()
    headers = {"Content-Type": "text/plain", "Origin": "https://shop.example", "Host": "t.shop.example"}
    path = f"/e/{tenant.pixel_id}"
    answers = []
    for chunked in (False, True):
        batch = {"sent_at": now, "events": [
            {"event": "ViewContent", "event_id": f"v-{chunked}", "timestamp": now, "ttp": "browser-7",
             "page": {"url": "https://shop.example/p"}},
            {"event": "ViewContent", "timestamp": 5},  # too old: rejected, named
        ]}
        answers.append(_post_raw(base, path, json.dumps(batch).encode(), headers, chunked))
        # Refusals go through the same code: a malformed body and an unknown pixel.
        answers.append(_post_raw(base, path, b"{not json", headers, chunked))
        answers.append(_post_raw(base, "/e/NO-SUCH-PIXEL", json.dumps(batch).encode(), headers, chunked))
    fast, flask = answers[:3], answers[3:]
    assert fast == flask
    status, reply_headers, body = fast[0]
    assert status == 200 and json.loads(body)["accepted"] == 1
    assert json.loads(body)["rejected"][0]["index"] == 1
    assert reply_headers["Access-Control-Allow-Origin"] == "https://shop.example"
    assert reply_headers["Set-Cookie"].startswith("_ttp=browser-7; Domain=shop.example;")
    assert [a[0] for a in fast[1:]] == [400, 404]
    assert json.loads(fast[1][2])["error"]["code"] == "malformed_json"
    text = call("GET", f"{base}/metrics").body.decode()
    assert _metric(text, 'clicktrail_requests_total{endpoint="browser.browser_events",status="200"}') == 2
    assert _metric(text, 'clicktrail_requests_total{endpoint="browser.browser_events",status="404"}') == 2
    assert _metric(text, 'clicktrail_events_accepted_total{source="browser"}') == 2
