"""Replicated tables on a real ZooKeeper: one shard of two ClickHouse replicas (docs/scaling.md, "Replicas").

A ZooKeeper and two ClickHouse 18.16 servers of the test's own; ``clicktrail migrate --cluster``
makes every table ReplicatedMergeTree. Events go through real collector and sink processes whose
ClickHouse URL names replica A and fails over to B (``alt_hosts``). Replica A is SIGKILLed while
the sink keeps inserting: reports keep answering from B; A started again catches up, and both
replicas then hold every event exactly once. A sink killed between its insert and its
acknowledgement has its batch inserted again by the next sink: folded, not doubled; and two
different inserts whose materialized-view rows happen to be equal both count (no block dedup).
"""

from __future__ import annotations

import time

import pytest

from clicktrail import clickhouse, cluster, config, redis_client
from pixel import registry
from tests import servers
from tests.conftest import ARTIFACTS

DB = "ct_replicas"


@pytest.fixture(scope="module")
def replicas():
    own = servers.PrivateClickHouseCluster("ct_repl", shards=1, replicas=2)
    own.start()
    cluster.migrate(clickhouse.with_database(own.base_url, DB), DB, own.layout.name)
    yield own
    own.cleanup()


@pytest.fixture(scope="module")
def redis_of_our_own():
    own = servers.PrivateRedis()
    own.start()
    yield own
    own.cleanup()


@pytest.fixture
def system(replicas, redis_of_our_own):
    a, b = replicas.layout.ports
    url = f"clickhouse://127.0.0.1:{a}/{DB}?alt_hosts=127.0.0.1:{b}"
    settings = config.load({"REDIS_URL": redis_of_our_own.url, "CLICKHOUSE_URL": url,
                            "DATA_DIR": str(ARTIFACTS / "var"), "SINK_BATCH_WAIT_MS": 100, "CLAIM_IDLE_MS": 500})
    procs = servers.ProcessGroup(settings)
    yield settings, procs
    procs.stop_all()


def replica(port: int):
    return clickhouse.connect(f"clickhouse://127.0.0.1:{port}/{DB}_local")


def unique_events(port: int, advertiser: str) -> tuple[int, int]:
    """Rows and distinct event ids of ``advertiser`` that replica ``port`` holds, as reports count them."""
    return tuple(replica(port).execute(
        f"SELECT count(), uniqExact(event_id) FROM {DB}_local.events_unique WHERE advertiser_id = %(a)s",
        {"a": advertiser})[0])


def wait_until(check, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"{what} within {seconds}s"
        time.sleep(0.2)


def send_events(collector, pixel: str, prefix: str, count: int) -> list[str]:
    import requests

    ids = [f"{prefix}-{n}" for n in range(count)]
    now = int(time.time() * 1000)
    for start in range(0, count, 10):
        events = [{"event": "PageView", "event_id": event_id, "timestamp": now, "ttp": f"browser-{event_id}",
                   "page": {"url": "https://shop.example/"}} for event_id in ids[start:start + 10]]
        resp = requests.post(f"{collector}/e/{pixel}", json={"sent_at": now, "events": events}, timeout=10)
        assert resp.status_code == 200 and resp.json()["accepted"] == len(events), resp.text
    return ids


def test_every_table_is_replicated_with_its_own_arguments(replicas):
    for port in replicas.layout.ports:
        engines = dict(replica(port).execute(
            "SELECT name, engine_full FROM system.tables WHERE database = %(d)s", {"d": f"{DB}_local"}))
        stored = {name: full for name, full in engines.items() if "MergeTree" in full and name != "schema_migrations"}
        assert stored and all(full.startswith("Replicated") for full in stored.values()), stored
        assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/ct_replicas_local/events', '{replica}', " \
               "dedup_version)" in engines["events"]
        assert "ReplicatedCollapsingMergeTree('/clickhouse/tables/{shard}/ct_replicas_local/credits', " \
               "'{replica}', sign)" in engines["credits"]
        assert "ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/ct_replicas_local/conversion_stats', " \
               "'{replica}', (conversions, conversion_value))" in engines["conversion_stats"]
        # Each node keeps its own record of the migrations it ran.
        assert engines["schema_migrations"].startswith("MergeTree")
        # Every replicated table sees both replicas alive.
        assert replica(port).execute("SELECT table FROM system.replicas WHERE database = %(d)s "
                                     "AND total_replicas = 2 AND active_replicas = 2 ORDER BY table",
                                     {"d": f"{DB}_local"}) == [(name,) for name in sorted(stored)]


def test_a_replica_killed_mid_stream_loses_nothing_and_catches_up(replicas, system):
    settings, procs = system
    a, b = replicas.layout.ports
    r = redis_client.patient(settings.redis.url)
    pixel = registry.create_pixel(r, "adv-kill", ["shop.example"])
    token = registry.create_token(r, "adv-kill", ["reports"])
    collector = procs.collector(workers=1)
    procs.sink()

    sent = send_events(collector, pixel, "before", 100)
    wait_until(lambda: unique_events(a, "adv-kill") == unique_events(b, "adv-kill") == (100, 100),
               "the first 100 events on both replicas")

    replicas.kill_node(a)
    sent += send_events(collector, pixel, "during", 100)
    wait_until(lambda: unique_events(b, "adv-kill") == (200, 200), "replica B storing while A is down")
    # Reports keep answering: the API's URL names A first and fails over to B.
    from reporting.api import create_app

    api = create_app({"REDIS_URL": settings.redis.url, "CLICKHOUSE_URL": settings.clickhouse.url,
                      "DATA_DIR": settings.paths.data_dir}).test_client()
    day = time.strftime("%Y-%m-%d", time.gmtime())
    resp = api.get("/v1/reports", query_string={"start": day, "end": day, "model": "last_click"},
                   headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.json
    seen = clickhouse.connect(settings.clickhouse.url)
    assert seen.execute(f"SELECT count() FROM {DB}.events_unique WHERE advertiser_id = 'adv-kill'") == [(200,)]

    replicas.start_node(a)
    sent += send_events(collector, pixel, "after", 50)
    wait_until(lambda: unique_events(a, "adv-kill") == unique_events(b, "adv-kill") == (250, 250),
               "replica A caught up")
    for port in (a, b):
        stored = {e for (e,) in replica(port).execute(
            f"SELECT event_id FROM {DB}_local.events_unique WHERE advertiser_id = 'adv-kill'")}
        assert stored == set(sent)


def test_a_sinks_retried_batch_is_folded_and_equal_view_rows_both_count(replicas, system):
    settings, procs = system
    a, b = replicas.layout.ports
    r = redis_client.patient(settings.redis.url)
    pixel = registry.create_pixel(r, "adv-retry", ["shop.example"])
    token = registry.create_token(r, "adv-retry", ["adserver"])
    collector = procs.collector(workers=1)

    # The sink stores a batch and dies before acknowledging it; the next one inserts it again.
    sent = send_events(collector, pixel, "retry", 30)
    doomed = procs.sink(failpoint="sink_after_insert")
    doomed.wait(timeout=60)
    assert doomed.returncode == -9
    procs.sink()
    wait_until(lambda: unique_events(a, "adv-retry") == unique_events(b, "adv-retry") == (30, 30),
               "the retried batch on both replicas, once")
    assert {e for (e,) in replica(b).execute(
        f"SELECT event_id FROM {DB}_local.events_unique WHERE advertiser_id = 'adv-retry'")} == set(sent)

    # Two clicks on one ad in one minute, stored by two inserts: their touch_stats rows are
    # byte-equal, and must both count on both replicas, as on one server (insert_deduplicate=0:
    # servers that dedup the views' blocks would keep only the first).
    from reporting.api import create_app

    api = create_app({"REDIS_URL": settings.redis.url, "CLICKHOUSE_URL": settings.clickhouse.url,
                      "DATA_DIR": settings.paths.data_dir}).test_client()
    minute = int(time.time()) // 60 * 60
    for n in (1, 2):
        row = {"click_id": f"click-{n}", "click_time": minute + n, "campaign_id": "C", "adgroup_id": "G",
               "ad_id": "AD"}
        resp = api.post("/v1/clicks", json={"clicks": [row]}, headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 200 and resp.json["accepted"] == 1, resp.json
        wait_until(lambda: replica(b).execute(
            f"SELECT count() FROM {DB}_local.touchpoints WHERE advertiser_id = 'adv-retry'")[0][0] == n,
            f"click {n} stored")
    for port in (a, b):
        wait_until(lambda: replica(port).execute(
            f"SELECT sum(touches) FROM {DB}_local.touch_stats WHERE advertiser_id = 'adv-retry'") == [(2,)],
            f"both clicks in touch_stats on {port}")
