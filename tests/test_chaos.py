"""Servers stopped under load: the collector keeps its promises and nothing accepted is lost.

These tests start their own Redis (AOF, as in production) and ClickHouse on their own ports and
data folders, so stopping them disturbs nothing else.
"""

import os
import signal
import time

import pytest

from clicktrail import clickhouse, redis_client, schema
from pixel import registry
from tests.http import call
from tests.servers import PrivateClickHouse, PrivateRedis

pytestmark = pytest.mark.chaos


@pytest.fixture
def own_redis():
    server = PrivateRedis()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def own_clickhouse():
    server = PrivateClickHouse()
    server.start()
    yield server
    server.cleanup()


def post_batch(base, pixel_id, prefix, n=10):
    body = {"events": [{"event": "PageView", "event_id": f"{prefix}-{i}", "page": {"url": "https://shop.example/"}}
                       for i in range(n)]}
    return call("POST", f"{base}/e/{pixel_id}", body, {"Origin": "https://shop.example"}, timeout=10)


def stored_ids(client, db):
    return {row[0] for row in client.execute(f"SELECT event_id FROM {db}.events_unique")}


def test_clickhouse_down_collector_keeps_accepting_and_nothing_is_lost(spawn, r, own_clickhouse, settings):
    db = "chaos"
    ch_url = clickhouse.with_database(own_clickhouse.base_url, db)
    schema.migrate(clickhouse.connect(own_clickhouse.base_url), db)
    pixel_id = registry.create_pixel(r, "adv-chaos", ["shop.example"])
    base = spawn.collector(CLICKHOUSE_URL=ch_url)
    spawn.sink(CLICKHOUSE_URL=ch_url, SINK_BACKOFF_CAP_S=1.0)

    assert post_batch(base, pixel_id, "before").status == 200
    own_clickhouse.stop()
    for round_ in range(5):
        reply = post_batch(base, pixel_id, f"during{round_}")
        assert reply.status == 200, reply.body
        time.sleep(0.2)
    assert call("GET", f"{base}/readyz").status == 200  # the collector does not depend on ClickHouse
    own_clickhouse.start()

    expected = {f"before-{i}" for i in range(10)} | {f"during{k}-{i}" for k in range(5) for i in range(10)}
    client = clickhouse.connect(ch_url)
    deadline = time.monotonic() + 60
    while stored_ids(client, db) != expected and time.monotonic() < deadline:
        time.sleep(0.3)
    assert stored_ids(client, db) == expected
    assert client.execute(f"SELECT count() FROM (SELECT 1 FROM {db}.events GROUP BY event_id)")[0][0] == 60
    assert r.xlen("ct:events") == 0


def test_redis_down_collector_answers_503_fast_and_keeps_what_it_accepted(spawn, own_redis, settings, ch,
                                                                        ch_database):
    own = redis_client.patient(own_redis.url)
    pixel_id = registry.create_pixel(own, "adv-chaos", ["shop.example"])
    base = spawn.collector(REDIS_URL=own_redis.url)
    assert post_batch(base, pixel_id, "kept").status == 200
    own.close()

    own_redis.stop()
    started = time.monotonic()
    reply = post_batch(base, pixel_id, "refused")
    elapsed = time.monotonic() - started
    assert reply.status == 503
    assert reply.headers["Retry-After"] == str(settings["RETRY_AFTER_S"])
    assert reply.json["error"]["code"] == "buffer_unavailable"
    # Liveness, not speed: a hung worker would hold the request until gunicorn's 30 s timeout.
    assert elapsed < 5
    assert call("GET", f"{base}/readyz").status == 503
    assert call("GET", f"{base}/healthz").status == 200

    own_redis.start()  # AOF: the accepted events survived the restart
    spawn.sink(REDIS_URL=own_redis.url)
    deadline = time.monotonic() + 30
    while len(stored_ids(ch, ch_database)) < 10 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stored_ids(ch, ch_database) == {f"kept-{i}" for i in range(10)}
    # And the collector recovered by itself, on every worker thread (each had a connection to the old Redis).
    assert [post_batch(base, pixel_id, f"again{i}").status for i in range(12)] == [200] * 12


def test_frozen_redis_gets_503_not_a_hung_worker(spawn, own_redis):
    own = redis_client.patient(own_redis.url)
    pixel_id = registry.create_pixel(own, "adv-chaos", ["shop.example"])
    base = spawn.collector(REDIS_URL=own_redis.url, workers=1)
    assert post_batch(base, pixel_id, "warm").status == 200
    pid = own_redis.server.pid()
    os.kill(pid, signal.SIGSTOP)  # Redis alive but answering nothing: the slow case
    replies, waits = [], []
    try:
        for i in range(3):
            started = time.monotonic()
            replies.append(post_batch(base, pixel_id, f"slow{i}").status)
            waits.append(time.monotonic() - started)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert replies == [503, 503, 503]
    # Bounded by the Redis timeout (100 ms here), not by gunicorn's 30 s worker timeout.
    assert max(waits) < 2.0, waits
    assert post_batch(base, pixel_id, "after").status == 200
    assert own.xlen("ct:events") >= 2  # "warm" and "after" (timed-out calls may have run once Redis woke)
