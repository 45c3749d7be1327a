"""End to end: a real gunicorn collector and a real sink process, Redis and ClickHouse."""

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
