"""CLICKTRAIL_REDIS_WAIT_REPLICAS on a single Redis with a replica: a 2xx means the replica holds the events.

A master and a replica of the test's own (tests/servers.py PrivateRedis, ``REPLICAOF``), and the
collector's app in this process pointed at the master. (On a Redis Cluster, with a master
SIGKILLed: tests/test_redis_cluster.py.)
"""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest

from clicktrail import redis_client
from pixel import registry
from tests.browser import PERSON_USER_AGENT
from tests.conftest import ARTIFACTS
from tests.servers import PrivateRedis

HEADERS = {"Origin": "https://shop.example", "User-Agent": PERSON_USER_AGENT}


@pytest.fixture
def pair():
    master, replica = PrivateRedis(), PrivateRedis()
    master.start()
    replica.start()
    # The first sync at once (Redis 7 waits 5 s for more replicas to share a diskless one).
    redis_client.patient(master.url).config_set("repl-diskless-sync-delay", 0)
    follower = redis_client.patient(replica.url)
    follower.replicaof("127.0.0.1", master.port)
    deadline = time.monotonic() + 30
    while follower.info("replication").get("master_link_status") != "up":
        assert time.monotonic() < deadline, "the replica did not connect"
        time.sleep(0.05)
    yield master, replica, follower
    for own in (replica, master):  # a replica can take 15 s to stop cleanly; the data is thrown away
        os.kill(own.server.pid(), signal.SIGKILL)
        shutil.rmtree(own.folder, ignore_errors=True)


def collector(master: PrivateRedis, settings, replicas: int, wait_ms: int = 300):
    from collector import create_app

    return create_app({"REDIS_URL": master.url, "CLICKHOUSE_URL": settings.clickhouse.url,
                       "DATA_DIR": str(ARTIFACTS / "var"), "REDIS_TIMEOUT_MS": wait_ms + 2000,
                       "REDIS_WAIT_REPLICAS": replicas, "REDIS_WAIT_TIMEOUT_MS": wait_ms}).test_client()


def page_views(*ids: str) -> dict:
    return {"events": [{"event": "PageView", "event_id": i, "ttp": "browser-1",
                        "page": {"url": "https://shop.example/"}} for i in ids]}


def test_an_acknowledged_request_is_on_the_replica_already(pair, settings):
    master, _, follower = pair
    pixel = registry.create_pixel(redis_client.patient(master.url), "adv-wait", ["shop.example"])
    # A generous wait: on a loaded 2-core machine a replica can take longer than 300 ms to confirm.
    app = collector(master, settings, replicas=1, wait_ms=5000)
    for n in range(1, 6):
        resp = app.post(f"/e/{pixel}", json=page_views(f"a{n}", f"b{n}"), headers=HEADERS)
        assert resp.status_code == 200 and resp.json["accepted"] == 2, resp.data
        # No waiting here: the 200 itself says the replica has the entry.
        assert follower.xlen("ct:events") == n


def test_without_the_replica_the_collector_answers_503_with_retry_after(pair, settings):
    master, _, follower = pair
    r = redis_client.patient(master.url)
    pixel = registry.create_pixel(r, "adv-wait", ["shop.example"])
    token = registry.create_token(r, "adv-wait", ["events"])
    follower.replicaof("no", "one")  # the replica leaves: the master has none
    waiting, plain = collector(master, settings, replicas=1), collector(master, settings, replicas=0)

    resp = waiting.post(f"/e/{pixel}", json=page_views("c1"), headers=HEADERS)
    assert resp.status_code == 503, resp.data
    assert resp.headers["Retry-After"] == str(settings.limits.retry_after_s)
    assert "replicas did not confirm the events in time (0 of 1)" in resp.get_data(as_text=True)
    api = {"event_source": "web", "event_source_id": pixel,
           "data": [{"event": "CompletePayment", "event_id": "o1", "event_time": int(time.time()),
                     "user": {"external_id": "u1"}, "properties": {"value": 1.0, "currency": "USD"}}]}
    resp = waiting.post("/open_api/v1.3/event/track/", json=api, headers={"Access-Token": token})
    assert resp.status_code == 503 and resp.headers["Retry-After"], resp.data
    # The entries are in the master all the same: a client's retry makes copies, which the sink folds.
    assert r.xlen("ct:events") == 2
    # Without the setting, the same master acknowledges at once.
    assert plain.post(f"/e/{pixel}", json=page_views("c2"), headers=HEADERS).status_code == 200
