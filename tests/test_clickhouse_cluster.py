"""The same traffic into one ClickHouse server and into a two-shard cluster gives the same answers.

Two whole systems side by side: collector, sink, attributor and API on the shared test server
(single-server schema), and the same on a two-shard cluster of the test's own (Distributed tables,
clicktrail/cluster.py) with a Redis of its own. Identical clicks, impressions, browsing events and
conversions (a duplicate, a late click that restates a conversion) go to both; events counts,
credits per conversion and model, reports and optimizer-feed rows must be identical.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from attribution.engine import Attributor
from clicktrail import clickhouse, cluster, config, redis_client, schema
from clicktrail.errors import ClicktrailError
from clicktrail.lifecycle import StopFlag
from pixel import registry
from sink.worker import Sink
from tests import servers
from tests.attribution_world import DAY, HOUR, sha
from tests.conftest import ARTIFACTS

ADVERTISERS = [f"adv-{i}" for i in range(6)]
MODELS = ("last_click", "first_click", "linear", "position_based", "time_decay")


@pytest.fixture(scope="module")
def ch_cluster():
    own = servers.PrivateClickHouseCluster()
    own.start()
    yield own
    own.cleanup()


@pytest.fixture
def own_redis():
    own = servers.PrivateRedis()
    own.start()
    yield own
    own.cleanup()


class System:
    """Collector, sink, attributor and API of one deployment, in this process."""

    def __init__(self, redis_url: str, clickhouse_url: str) -> None:
        from collector import create_app
        from reporting.api import create_app as create_api

        self.settings = config.load({"REDIS_URL": redis_url, "CLICKHOUSE_URL": clickhouse_url,
                                     "DATA_DIR": str(ARTIFACTS / "var"), "SINK_BATCH_WAIT_MS": 200})
        where = {"REDIS_URL": redis_url, "CLICKHOUSE_URL": clickhouse_url, "DATA_DIR": self.settings.paths.data_dir}
        self.db = clickhouse.database_of(clickhouse_url)
        self.r = redis_client.patient(redis_url)
        self.ch = clickhouse.connect(clickhouse_url)
        self.collector = create_app(where).test_client()
        self.api = create_api(where).test_client()
        self.sink = Sink(self.settings, self.r, clickhouse.connect(clickhouse_url), self.db, StopFlag(), name="s")
        self.sink.ensure_group()
        self.attributor = Attributor(self.settings, self.r, clickhouse.connect(clickhouse_url), self.db, StopFlag(),
                                     name="a")
        self.attributor.ensure_group()
        self.pixels: dict[str, str] = {}
        self.tokens: dict[str, dict] = {}
        for adv in ADVERTISERS:
            self.pixels[adv] = registry.create_pixel(self.r, adv, ["shop.example"])
            token = registry.create_token(self.r, adv, ["events", "adserver", "reports", "optimizer"])
            self.tokens[adv] = {"Authorization": f"Bearer {token}", "Access-Token": token}

    def settle(self) -> None:
        deadline = time.monotonic() + 30
        while self.r.xlen("ct:events") and time.monotonic() < deadline:
            self.sink.run_once()
        for _ in range(50):
            if not self.attributor.tick(block_ms=10):
                return

    def touch(self, adv: str, kind: str, touch_id: str, at: int, campaign: str, user: dict | None = None) -> None:
        collection, id_field, time_field = {"click": ("clicks", "click_id", "click_time"),
                                            "impression": ("impressions", "impression_id", "impression_time")}[kind]
        row = {id_field: touch_id, time_field: at, "campaign_id": campaign, "adgroup_id": f"{campaign}-g",
               "ad_id": f"{campaign}-ad", **({"user": user} if user else {})}
        resp = self.api.post(f"/v1/{collection}", json={collection: [row]}, headers=self.tokens[adv])
        assert resp.status_code == 200 and resp.json["accepted"] == 1, resp.json

    def browse(self, adv: str, event_id: str, at: int, ttp: str, ttclid: str = "") -> None:
        body = {"sent_at": at * 1000, "events": [{"event": "PageView", "event_id": event_id, "timestamp": at * 1000,
                                                  "ttp": ttp, "ttclid": ttclid,
                                                  "page": {"url": "https://shop.example/landing"}}]}
        resp = self.collector.post(f"/e/{self.pixels[adv]}", json=body)
        assert resp.status_code == 200 and resp.json["accepted"] == 1, resp.json

    def convert(self, adv: str, event_id: str, at: int, value: float, **user) -> None:
        body = {"event_source": "web", "event_source_id": self.pixels[adv],
                "data": [{"event": "CompletePayment", "event_id": event_id, "event_time": at, "user": user,
                          "properties": {"value": value, "currency": "USD"}}]}
        resp = self.collector.post("/open_api/v1.3/event/track/", json=body, headers=self.tokens[adv])
        assert resp.status_code == 200 and resp.json["data"]["accepted"] == 1, resp.json

    # ---- what a user sees --------------------------------------------------------------------

    def event_counts(self) -> list[tuple]:
        return self.ch.execute(f"SELECT advertiser_id, event, count() FROM {self.db}.events_unique "
                               "GROUP BY advertiser_id, event ORDER BY advertiser_id, event")

    def credits(self) -> list[tuple]:
        return self.ch.execute(
            f"SELECT advertiser_id, event_id, model, touch_kind, touch_id, round(sum(credit * sign), 9) "
            f"FROM {self.db}.credits GROUP BY advertiser_id, event_id, model, touch_kind, touch_id "
            "HAVING sum(sign) > 0 ORDER BY advertiser_id, event_id, model, touch_kind, touch_id")

    def reports(self, start: str, end: str) -> dict:
        out = {}
        for adv in ADVERTISERS:
            for model in MODELS:
                resp = self.api.get("/v1/reports", query_string={"start": start, "end": end, "model": model,
                                                                 "level": "ad"}, headers=self.tokens[adv])
                assert resp.status_code == 200, resp.json
                out[(adv, model)] = self._anonymous(resp.json)
            # Other windows than the advertiser's: recomputed from each conversion's candidates of
            # its current revision (by revision and content hash), a join across the Distributed tables.
            resp = self.api.get("/v1/reports", query_string={"start": start, "end": end, "model": "linear",
                                                             "level": "ad", "click_window": "28"},
                                headers=self.tokens[adv])
            assert resp.status_code == 200, resp.json
            out[(adv, "linear, 28-day clicks")] = self._anonymous(resp.json)
        return out

    def feed(self) -> dict:
        out = {}
        for adv in ADVERTISERS:
            resp = self.api.get("/v1/optimizer/conversions", query_string={"event": "CompletePayment", "level": "ad",
                                                                           "bucket": "hour"}, headers=self.tokens[adv])
            assert resp.status_code == 200, resp.json
            # A row's revision is when the attributor wrote it: the two systems wrote at other moments.
            out[adv] = self._anonymous([{k: v for k, v in row.items() if k != "revision"}
                                        for row in resp.json["rows"]])
        return out

    def _anonymous(self, answer) -> object:
        """``answer`` with this system's pixel ids (random at registration) named by advertiser."""
        text = json.dumps(answer, sort_keys=True)
        for adv, pixel in self.pixels.items():
            text = text.replace(pixel, f"pixel-of-{adv}")
        return json.loads(text)


def traffic(system: System, now: int) -> None:
    """The same clicks, impressions, browsing and conversions for every advertiser, in two rounds."""
    for n, adv in enumerate(ADVERTISERS):
        t = now - 6 * HOUR - n * 600
        jane = {"email": sha(f"jane{n}@example.com")}
        system.touch(adv, "click", f"{adv}-k1", t - 2 * DAY, "A", jane)
        system.touch(adv, "click", f"{adv}-k2", t - DAY, "B", jane)
        system.touch(adv, "impression", f"{adv}-v1", t - HOUR, "C", {"external_id": sha(f"user-{n}")})
        system.touch(adv, "click", f"{adv}-k3", t - 30 * 60, "D")
        system.browse(adv, f"{adv}-p1", t - 29 * 60, ttp=f"browser-{n}", ttclid=f"{adv}-k3")
        system.convert(adv, f"{adv}-c1", t, 10.0 + n, email=f"jane{n}@example.com")
        system.convert(adv, f"{adv}-c2", t + 60, 5.0, external_id=f"user-{n}")
        system.convert(adv, f"{adv}-c3", t + 120, 7.5, ttp=f"browser-{n}")
        system.convert(adv, f"{adv}-c3", t + 120, 7.5, ttp=f"browser-{n}")  # a duplicate: counted once
        system.convert(adv, f"{adv}-c4", t + 180, 3.0)  # organic
    system.settle()
    for n, adv in enumerate(ADVERTISERS):
        t = now - 6 * HOUR - n * 600
        # Reported late: a click before c1 restates it (through the second of its emails: further
        # values are indexed from touchpoints' lists by a view on the shard); a new conversion on an old click.
        system.touch(adv, "click", f"{adv}-k4", t - HOUR, "E",
                     {"email": [sha(f"jane{n}.old@example.com"), sha(f"jane{n}@example.com")]})
        system.convert(adv, f"{adv}-c5", t + 240, 2.0 + n, ttclid=f"{adv}-k2")
    system.settle()


def test_a_two_shard_cluster_answers_exactly_as_one_server(ch_cluster, own_redis, settings, r, ch, ch_database):
    cluster_url = clickhouse.with_database(ch_cluster.base_url, "ct_cluster_e2e")
    cluster.migrate(cluster_url, "ct_cluster_e2e", ch_cluster.layout.name)
    single = System(settings.redis.url, settings.clickhouse.url)
    sharded = System(own_redis.url, cluster_url)
    now = int(time.time()) - 60
    for system in (single, sharded):
        traffic(system, now)

    counts = single.event_counts()
    assert sum(c for _, _, c in counts) == len(ADVERTISERS) * 6  # a page view and five conversions each
    assert sharded.event_counts() == counts
    credits = single.credits()
    assert {(adv, model) for adv, _, model, *_ in credits} == {(a, m) for a in ADVERTISERS for m in MODELS}
    # c1 went to the late click k4, tied by its second email only.
    assert {(a, f"{a}-c1", "last_click", "click", f"{a}-k4", 1.0) for a in ADVERTISERS} <= set(credits)
    assert sharded.credits() == credits
    day = time.strftime("%Y-%m-%d", time.gmtime(now - 4 * DAY)), time.strftime("%Y-%m-%d", time.gmtime(now))
    reports = single.reports(*day)
    assert any(row for answer in reports.values() for row in answer["rows"])
    assert all(reports[(adv, "linear, 28-day clicks")]["rows"] for adv in ADVERTISERS)
    assert sharded.reports(*day) == reports
    feed = single.feed()
    assert all(feed[adv] for adv in ADVERTISERS)
    assert sharded.feed() == feed

    # Each advertiser's rows live on one shard, and the advertisers are spread over both.
    homes: dict[str, set[int]] = {adv: set() for adv in ADVERTISERS}
    for shard, (node, db) in enumerate(cluster.local_clients(sharded.ch, sharded.db)):
        for table in ("events", "touchpoints", "credits", "conversion_stats", "feed_changes", "event_identities",
                      "touch_identities"):
            for (adv,) in node.execute(f"SELECT DISTINCT advertiser_id FROM {db}.{table}"):
                homes[adv].add(shard)
    assert all(len(shards) == 1 for shards in homes.values()), homes
    assert set().union(*homes.values()) == {0, 1}


def test_cluster_migration_is_idempotent_and_refuses_a_single_server_run(ch_cluster):
    url = clickhouse.with_database(ch_cluster.base_url, "ct_cluster_again")
    first = cluster.migrate(url, "ct_cluster_again", ch_cluster.layout.name)
    assert [m.version for m in first] == [m.version for m in schema.MIGRATIONS]
    assert cluster.migrate(url, "ct_cluster_again", ch_cluster.layout.name) == []
    client = clickhouse.connect(url, database="default")
    assert schema.current_version(client, "ct_cluster_again") == schema.MIGRATIONS[-1].version
    # A single-server run on the cluster's database does nothing while it is current...
    assert schema.migrate(client, "ct_cluster_again") == []
    # ...and names the command to run when a migration is missing.
    for node, db in cluster.local_clients(client, "ct_cluster_again"):
        node.execute(f"ALTER TABLE {db}.schema_migrations DELETE WHERE version = {schema.MIGRATIONS[-1].version}")
    deadline = time.monotonic() + 20  # a mutation is applied in the background
    while schema.current_version(client, "ct_cluster_again") == schema.MIGRATIONS[-1].version:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    with pytest.raises(ClicktrailError, match="migrate --cluster"):
        schema.migrate(client, "ct_cluster_again")


def test_an_unknown_cluster_is_named(ch_cluster):
    url = clickhouse.with_database(ch_cluster.base_url, "ct_cluster_none")
    with pytest.raises(ClicktrailError, match="no cluster 'nope'.*remote_servers"):
        cluster.migrate(url, "ct_cluster_none", "nope")


def test_with_zookeeper_a_migration_table_becomes_replicated():
    """Where the node has a ZooKeeper, each MergeTree table gets its replica path and the {replica}
    macro before its own engine arguments (the DDL as text; run on a real ZooKeeper in
    tests/test_clickhouse_replicas.py)."""
    statements = schema.MIGRATIONS[0].statements("ct_local", server_features_of_1816())
    created = cluster._replicated(statements[0])
    assert "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/ct_local/events', '{replica}', " \
           "dedup_version)" in created
    assert created.replace("ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/ct_local/events', "
                           "'{replica}', dedup_version)", "ReplacingMergeTree(dedup_version)") == statements[0]
    stats = next(s for m in schema.MIGRATIONS for s in m.statements("ct_local", server_features_of_1816())
                 if "ct_local.feed_changes (" in s and s.startswith("CREATE TABLE"))
    assert "ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/ct_local/feed_changes', '{replica}')" \
        in cluster._replicated(stats)
    view = "CREATE VIEW IF NOT EXISTS ct_local.v AS SELECT 1"
    assert cluster._replicated(view) == view


def server_features_of_1816():
    from clicktrail.clickhouse import Features

    return Features((18, 16, 1))


def test_the_cli_creates_the_schema_on_every_node(ch_cluster):
    url = clickhouse.with_database(ch_cluster.base_url, "ct_cluster_cli")
    env = {**os.environ, "CLICKTRAIL_CLICKHOUSE_URL": url,
           "PYTHONPATH": str(servers.ROOT)}
    done = subprocess.run([sys.executable, "-m", "clicktrail.cli", "migrate", "--cluster", ch_cluster.layout.name],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{schema.MIGRATIONS[-1].version}\n"
    assert f"applied 1: {schema.MIGRATIONS[0].name}" in done.stderr
    for port in ch_cluster.layout.ports:
        node = clickhouse.connect(f"clickhouse://127.0.0.1:{port}/default")
        engines = dict(node.execute("SELECT name, engine FROM system.tables WHERE database = 'ct_cluster_cli'"))
        local = dict(node.execute("SELECT name, engine FROM system.tables WHERE database = 'ct_cluster_cli_local'"))
        assert engines["events"] == engines["credits"] == engines["events_unique"] == "Distributed"
        assert local["events"] == "ReplacingMergeTree" and local["credits_mv"] == "MaterializedView"
    wrong = subprocess.run([sys.executable, "-m", "clicktrail.cli", "migrate", "--cluster", "nope"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and "no cluster 'nope'" in wrong.stderr


def test_a_node_without_the_cluster_settings_is_refused_by_name():
    """A cluster whose servers' profile lacks the two settings: the migration names them, creates nothing."""
    bare = servers.PrivateClickHouseCluster("ct_bare", shards=1, settings=())
    bare.start()
    try:
        url = clickhouse.with_database(bare.base_url, "ct_bare_db")
        with pytest.raises(ClicktrailError, match="must set insert_distributed_sync=1, "
                                                  "distributed_product_mode=local in its default profile"):
            cluster.migrate(url, "ct_bare_db", "ct_bare")
        client = clickhouse.connect(bare.base_url)
        assert client.execute("SELECT count() FROM system.databases WHERE name LIKE 'ct_bare_db%'") == [(0,)]
    finally:
        bare.cleanup()
