"""Cluster mode: a real Redis Cluster (3 masters, 1 replica each, clicktrail/redis_cluster.py) under
real gunicorn collectors and sink processes, with the events split over 4 shards.

The cluster is started once for the module (a few seconds) in a folder of its own and stopped at
the end; each test empties it first. Everything that talks to it runs in a process of its own
(`clicktrail` with CLICKTRAIL_REDIS_URL=redis+cluster://...): a cluster client switches its
process to the cluster's key names (clicktrail/keys.py), which this pytest process must not take.
The test reads the cluster through a plain redis-py RedisCluster and names the keys as a user
inspecting it would see them.
"""

from __future__ import annotations

import http.client
import os
import signal
import shutil
import subprocess
import sys
import threading
import time

import orjson
import pytest
from redis.cluster import RedisCluster

from clicktrail import config, redis_client, redis_cluster
from clicktrail.errors import ConfigError
from tests.browser import PERSON_USER_AGENT
from tests.http import call
from tests.servers import env_for
from tests.test_chaos import wait_for

pytestmark = pytest.mark.cluster

SHARDS = 4
STREAMS = [f"ct:{{events:{n}}}" for n in range(SHARDS)]
DEAD_LETTERS = "{ct}:events:dead"
# A person's browser: urllib's own user agent is a bot's, whose conversions are credited to nothing.
ORIGIN = {"Origin": "https://shop.example", "User-Agent": PERSON_USER_AGENT}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("redis-cluster")
    started = redis_cluster.up(folder, masters=3, replicas=1)
    yield started
    started.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def cr(cluster):
    """A plain client of the cluster, emptied before the test."""
    client = RedisCluster(host="127.0.0.1", port=cluster.ports[0])
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    yield client
    client.close()


@pytest.fixture
def on_cluster(settings, cluster, cr):
    """Overrides that point a `clicktrail` process at the cluster, 4 shards."""
    return {"REDIS_URL": cluster.url, "STREAM_SHARDS": SHARDS, "REDIS_TIMEOUT_MS": 1000}


def cli(settings, *args: str, **overrides) -> str:
    done = subprocess.run([sys.executable, "-m", "clicktrail.cli", *args], env=env_for(settings, **overrides),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def batch(prefix: str, n: int, browser: str) -> dict:
    return {"events": [{"event": "PageView" if i % 3 else "Purchase", "event_id": f"{prefix}-{i}", "ttp": browser,
                        "page": {"url": "https://shop.example/p"}} for i in range(n)]}


def send(base: str, pixel_id: str, batches: int, prefix: str = "ev") -> set[str]:
    """Post ``batches`` batches of 5 events from 40 browsers; every one must be accepted."""
    accepted = set()
    for b in range(batches):
        body = batch(f"{prefix}{b}", 5, f"browser-{b % 40}")
        reply = call("POST", f"{base}/e/{pixel_id}", body, ORIGIN)
        assert reply.status == 200, reply.body
        accepted.update(e["event_id"] for e in body["events"])
    return accepted


def stored(ch, db: str, advertiser: str) -> tuple[int, int]:
    """(rows in events, distinct events in events_unique) of an advertiser."""
    rows = ch.execute(f"SELECT count() FROM {db}.events WHERE advertiser_id = %(a)s", {"a": advertiser})[0][0]
    unique = ch.execute(f"SELECT count() FROM {db}.events_unique WHERE advertiser_id = %(a)s",
                        {"a": advertiser})[0][0]
    return rows, unique


def by_event(ch, db: str, advertiser: str) -> dict:
    return dict(ch.execute(f"SELECT event, count() FROM {db}.events WHERE advertiser_id = %(a)s GROUP BY event",
                           {"a": advertiser}))


def test_four_shards_on_a_cluster_store_each_event_once_as_a_single_redis_does(
        spawn, settings, on_cluster, cr, r, ch, ch_database):
    cluster_pixel = cli(settings, "pixel", "create", "--advertiser", "adv-cluster", "--domain", "shop.example",
                        **on_cluster)
    base = spawn.collector(**on_cluster)
    accepted = send(base, cluster_pixel, 80)

    # The entries are spread over the shards, each a stream with its own hash tag.
    lengths = [cr.xlen(stream) for stream in STREAMS]
    assert sum(lengths) == 80 and sum(1 for n in lengths if n) >= 3, lengths
    # Two sinks, each reading half the shards, store them all.
    spawn.start("sink", "--log-level", "WARNING", "--shards", "0,1", **on_cluster)
    spawn.start("sink", "--log-level", "WARNING", "--shards", "2,3", **on_cluster)
    wait_for("the cluster's events stored", lambda: stored(ch, ch_database, "adv-cluster")[1] == len(accepted))
    wait_for("the shards drained", lambda: all(cr.xlen(stream) == 0 for stream in STREAMS))
    assert stored(ch, ch_database, "adv-cluster") == (400, 400)
    # The sinks told the attributor, through the notice stream in the {ct} slot.
    notices = cr.xrange("{ct}:attribution")
    assert sum(len(orjson.loads(fields[b"d"])) for _, fields in notices
               if fields[b"a"] == b"adv-cluster" and fields[b"k"] == b"c") == 400

    # The same events through a single Redis, one shard: the same counts.
    single_pixel = cli(settings, "pixel", "create", "--advertiser", "adv-single", "--domain", "shop.example")
    single = spawn.collector()
    send(single, single_pixel, 80)
    spawn.sink()
    wait_for("the single Redis's events stored", lambda: stored(ch, ch_database, "adv-single")[1] == 400)
    assert stored(ch, ch_database, "adv-single") == (400, 400)
    assert by_event(ch, ch_database, "adv-single") == by_event(ch, ch_database, "adv-cluster")
    assert r.xlen("ct:events") == 0  # the single Redis's one stream keeps its name


def test_refusals_on_a_cluster_are_the_single_redis_ones(spawn, settings, on_cluster, cr):
    pixel_id = cli(settings, "pixel", "create", "--advertiser", "adv-refused", "--domain", "shop.example",
                   **on_cluster)
    base = spawn.collector(**on_cluster)
    unknown = call("POST", f"{base}/e/NOSUCHPIXEL", batch("x", 1, "b"), ORIGIN)
    assert unknown.status == 404 and unknown.json["error"]["code"] == "unknown_pixel"
    foreign = call("POST", f"{base}/e/{pixel_id}", batch("x", 1, "b"), {"Origin": "https://evil.example"})
    assert foreign.status == 403 and foreign.json["error"]["code"] == "domain_not_allowed"
    # Nothing refused reached a shard; the refusal was counted for the pixel's diagnostics.
    assert sum(cr.xlen(stream) for stream in STREAMS) == 0
    assert any(name.startswith(pixel_id.encode()) for name in cr.hkeys("{ct}:stats:rejected"))


def test_a_click_on_a_cluster_is_queued_and_cached(spawn, settings, on_cluster, cr, ch, ch_database):
    cli(settings, "pixel", "create", "--advertiser", "adv-click", "--domain", "shop.example", **on_cluster)
    base = spawn.collector(**on_cluster)
    url = cli(settings, "click-url", "--advertiser", "adv-click", "--campaign", "c1", "--adgroup", "g1", "--ad", "a1",
              "--landing", "https://shop.example/landing", **on_cluster)
    path = "/" + url.split("://", 1)[1].split("/", 1)[1]
    connection = http.client.HTTPConnection(base.split("://")[1], timeout=10)
    connection.request("GET", path)
    reply = connection.getresponse()
    assert reply.status == 302  # not followed: the landing page is on the advertiser's site
    click_id = reply.getheader("Location").split("ttclid=")[1].split("&")[0]
    connection.close()
    assert cr.get(f"ct:click:adv-click:{click_id}") is not None
    spawn.sink(**on_cluster)
    clicks = f"SELECT count() FROM {ch_database}.touchpoints WHERE touch_id = %(t)s"
    wait_for("the click stored", lambda: ch.execute(clicks, {"t": click_id})[0][0] == 1)


def test_dead_letters_on_a_cluster_are_kept_listed_and_requeued(spawn, settings, on_cluster, cr):
    cr.xadd(STREAMS[2], {"a": "adv-poison", "n": "1", "d": "this is not JSON"})
    spawn.sink(**on_cluster)
    wait_for("the poison entry dead-lettered", lambda: cr.xlen(DEAD_LETTERS) == 1)
    assert cr.xlen(STREAMS[2]) == 0
    listed = cli(settings, "dead-letters", "list", **on_cluster)
    assert "adv-poison" in listed and "cannot decode" in listed
    assert cli(settings, "dead-letters", "requeue", **on_cluster) == "1"
    # Back on a shard, read again, and dead-lettered again (it is still not JSON): nothing lost.
    wait_for("the letter back", lambda: cr.xlen(DEAD_LETTERS) == 1 and sum(cr.xlen(s) for s in STREAMS) == 0)


class Load(threading.Thread):
    """Posts batches until stopped; remembers what the collector acknowledged (answered 200)."""

    def __init__(self, base: str, pixel_id: str) -> None:
        super().__init__(daemon=True)
        self.base, self.pixel_id = base, pixel_id
        self.accepted: set[str] = set()
        self.refused = 0
        self.halt = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.halt.is_set():
            n += 1
            body = batch(f"load{n}", 5, f"browser-{n % 40}")
            try:
                reply = call("POST", f"{self.base}/e/{self.pixel_id}", body, ORIGIN)
            except OSError:
                reply = None
            if reply is not None and reply.status == 200:
                self.accepted.update(e["event_id"] for e in body["events"])
            else:
                self.refused += 1
                time.sleep(0.05)

    def stop(self) -> None:
        self.halt.set()
        self.join(30)


def stored_ids(ch, db: str, advertiser: str) -> set[str]:
    return {row[0] for row in ch.execute(f"SELECT event_id FROM {db}.events_unique WHERE advertiser_id = %(a)s",
                                         {"a": advertiser})}


def test_a_sink_killed_mid_batch_on_a_cluster_loses_and_doubles_nothing(spawn, settings, on_cluster, cr, ch,
                                                                       ch_database):
    pixel_id = cli(settings, "pixel", "create", "--advertiser", "adv-kill", "--domain", "shop.example", **on_cluster)
    load = Load(spawn.collector(**on_cluster), pixel_id)
    load.start()
    wait_for("some events accepted", lambda: len(load.accepted) >= 200)
    # This sink stores its first batch, then dies before acknowledging it (tests/failpoints.py).
    doomed = spawn.sink(failpoint="sink_after_insert", **on_cluster)
    assert doomed.wait(60) == -9
    spawn.sink(**on_cluster)
    wait_for("more events accepted", lambda: len(load.accepted) >= 600)
    load.stop()
    wait_for("every accepted event stored", lambda: stored_ids(ch, ch_database, "adv-kill") == load.accepted)
    # The dead sink's batch, stored but never acknowledged, is reclaimed and settled by the other...
    wait_for("nothing left pending", lambda: sum(cr.xpending(s, "sink")["pending"] for s in STREAMS) == 0)
    assert sum(cr.xlen(stream) for stream in STREAMS) == 0
    # ...which stored it again: one row per event once folded (a merge may already have folded them).
    rows, unique = stored(ch, ch_database, "adv-kill")
    assert unique == len(load.accepted) and rows >= unique


def master_of(cr: RedisCluster, key: str) -> int:
    return cr.get_node_from_key(key).port


def test_a_master_stopped_fails_over_to_its_replica_and_no_acknowledged_event_is_lost(
        spawn, settings, on_cluster, cluster, cr, ch, ch_database):
    pixel_id = cli(settings, "pixel", "create", "--advertiser", "adv-failover", "--domain", "shop.example",
                   **on_cluster)
    load = Load(spawn.collector(**on_cluster), pixel_id)
    load.start()
    wait_for("some events accepted", lambda: len(load.accepted) >= 200)
    # Stop the master of a shard (SIGTERM, as an operator or systemd would); its replica takes over.
    port = master_of(cr, STREAMS[1])
    cluster.server(port).stop()
    try:
        before = len(load.accepted)
        promoted = wait_for("a replica promoted", lambda: _promoted(cluster, port, STREAMS[1]))
        wait_for("events accepted after the failover", lambda: len(load.accepted) >= before + 300)
        load.stop()
        assert promoted != port
        spawn.sink(**on_cluster)
        wait_for("every acknowledged event stored",
                 lambda: stored_ids(ch, ch_database, "adv-failover") == load.accepted)
    finally:
        load.stop()
        cluster.start_node(port)  # it comes back as a replica of the promoted one


def _promoted(cluster, stopped: int, key: str) -> int | None:
    """The port of the node now master of ``key``'s slot, once it is not the stopped one."""
    for port in cluster.ports:
        if port == stopped:
            continue
        try:
            client = RedisCluster(host="127.0.0.1", port=port, socket_timeout=1)
            try:
                info = client.cluster_info(target_nodes=client.get_node("127.0.0.1", port))
                if info.get("cluster_state") != "ok":
                    return None
                node = client.get_node_from_key(key)
                return node.port if node.port != stopped else None
            finally:
                client.close()
        except Exception:
            continue
    return None


def test_a_single_redis_moving_to_three_shards_keeps_its_backlog_in_ct_events(spawn, settings, r, ch, ch_database):
    """The upgrade path: events queued with one shard wait in ct:events, which stays shard 0."""
    pixel_id = cli(settings, "pixel", "create", "--advertiser", "adv-grow", "--domain", "shop.example")
    one = spawn.collector()
    before = send(one, pixel_id, 10, prefix="before")
    assert r.xlen("ct:events") == 10
    three = spawn.collector(STREAM_SHARDS=3)
    after = send(three, pixel_id, 60, prefix="after")
    lengths = [r.xlen(stream) for stream in ("ct:events", "ct:{events:1}", "ct:{events:2}")]
    assert sum(lengths) == 70 and all(n > 0 for n in lengths[1:]), lengths
    spawn.sink(STREAM_SHARDS=3)
    wait_for("the backlog and the new events stored",
             lambda: stored_ids(ch, ch_database, "adv-grow") == before | after)
    assert stored(ch, ch_database, "adv-grow") == (350, 350)


def click_through(base: str, settings, advertiser: str, campaign: str, **overrides) -> str:
    """Follow a signed click URL of the advertiser on the collector; return the click id it made."""
    url = cli(settings, "click-url", "--advertiser", advertiser, "--campaign", campaign, "--adgroup", "g1",
              "--ad", "a1", "--landing", "https://shop.example/landing", **overrides)
    connection = http.client.HTTPConnection(base.split("://")[1], timeout=10)
    connection.request("GET", "/" + url.split("://", 1)[1].split("/", 1)[1],
                       headers={"User-Agent": PERSON_USER_AGENT})  # a click without one is a bot's
    reply = connection.getresponse()
    assert reply.status == 302
    connection.close()
    return reply.getheader("Location").split("ttclid=")[1].split("&")[0]


def attribute(spawn, settings, ch, db: str, advertiser: str, **overrides) -> list[tuple]:
    """Clicks, then purchases carrying their click ids, through a collector, sinks and an attributor
    on the Redis ``overrides`` name; return the credits per conversion and model."""
    pixel_id = cli(settings, "pixel", "create", "--advertiser", advertiser, "--domain", "shop.example", **overrides)
    base = spawn.collector(**overrides)
    clicks = [click_through(base, settings, advertiser, f"camp{n % 3}", **overrides) for n in range(6)]
    for n, click_id in enumerate(clicks):
        body = {"events": [{"event": "Purchase", "event_id": f"order-{n}-{k}", "ttp": f"buyer-{n}", "ttclid": click_id,
                            "properties": {"value": 10 + n, "currency": "USD"},
                            "page": {"url": "https://shop.example/thanks"}} for k in range(2)]}
        assert call("POST", f"{base}/e/{pixel_id}", body, ORIGIN).status == 200
    spawn.sink(**overrides)
    spawn.start("attributor", "--log-level", "WARNING", **overrides)
    query = f"""SELECT event_id, model, matched_by, campaign_id, round(sum(credit * sign), 6) FROM {db}.credits
                WHERE advertiser_id = %(a)s GROUP BY event_id, model, matched_by, campaign_id
                HAVING sum(sign) > 0 ORDER BY event_id, model"""

    def attributed():
        rows = ch.execute(query, {"a": advertiser})
        return rows if len({row[0] for row in rows}) == 12 else None

    return wait_for(f"the conversions of {advertiser} attributed", attributed)


def test_the_attributor_on_a_cluster_credits_as_on_a_single_redis(spawn, settings, on_cluster, cr, r, ch,
                                                                  ch_database):
    on_cluster_credits = attribute(spawn, settings, ch, ch_database, "adv-attr-cluster", **on_cluster)
    single_credits = attribute(spawn, settings, ch, ch_database, "adv-attr-single")
    assert on_cluster_credits == single_credits
    assert {row[2] for row in single_credits} == {"click_id"}
    # The notices were read and acknowledged in the {ct} slot, and the feed's watermark kept there.
    wait_for("the notices consumed", lambda: cr.xlen("{ct}:attribution") == 0)
    assert int(cr.get("{ct}:feed:watermark")) > 0


# -- settings, without a cluster ----------------------------------------------------------------

def test_a_cluster_url_names_its_nodes_and_credentials():
    assert redis_client.cluster_address("redis+cluster://app:p%40ss@10.0.0.1:7000,[::1]:7001,redis-3/") == (
        [("10.0.0.1", 7000), ("::1", 7001), ("redis-3", 6379)], "app", "p@ss", False)
    assert redis_client.cluster_address("rediss+cluster://10.0.0.1:7000")[3] is True
    assert redis_client.is_cluster_url("redis+cluster://h:1/") and not redis_client.is_cluster_url("redis://h:1/0")


@pytest.mark.parametrize("url, message", [
    ("redis+cluster://h:7000/3", "only database 0"),
    ("redis+cluster:///", "names no node"),
    ("redis+cluster://h:port/", "'h:port' in the Redis Cluster URL is not host:port"),
    ("redis+cluster://:secret@h:70000/", "'h:70000' in the Redis Cluster URL is not host:port"),
])
def test_a_bad_cluster_url_is_refused_clearly_and_never_echoes_a_password(url, message):
    with pytest.raises(ConfigError) as refused:
        redis_client.cluster_address(url)
    assert message in str(refused.value) and "secret" not in str(refused.value)


def test_the_shard_count_is_checked_and_sinks_take_only_existing_shards(settings):
    with pytest.raises(ConfigError, match="CLICKTRAIL_STREAM_SHARDS must be between 1 and 1024"):
        config.load({"STREAM_SHARDS": 0})
    done = subprocess.run([sys.executable, "-m", "clicktrail.cli", "sink", "--shards", "0,4"],
                          env=env_for(settings, STREAM_SHARDS=4), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "shard numbers go from 0 to 3 (CLICKTRAIL_STREAM_SHARDS=4)" in done.stderr


def test_with_wait_a_master_killed_after_a_burst_loses_no_acknowledged_event(
        spawn, settings, on_cluster, cluster, cr, ch, ch_database):
    """CLICKTRAIL_REDIS_WAIT_REPLICAS=1: a 200 means the shard's replica holds the events, so a
    master SIGKILLed (no time to hand anything over) loses none of them in the failover."""
    waiting = {**on_cluster, "REDIS_WAIT_REPLICAS": 1, "REDIS_WAIT_TIMEOUT_MS": 500}
    pixel_id = cli(settings, "pixel", "create", "--advertiser", "adv-wait", "--domain", "shop.example", **waiting)
    load = Load(spawn.collector(**waiting), pixel_id)
    load.start()
    wait_for("a burst accepted", lambda: len(load.accepted) >= 300)
    port = master_of(cr, STREAMS[1])
    os.kill(cluster.server(port).pid(), signal.SIGKILL)
    try:
        before = len(load.accepted)
        promoted = wait_for("a replica promoted", lambda: _promoted(cluster, port, STREAMS[1]))
        wait_for("events accepted after the failover", lambda: len(load.accepted) >= before + 300)
        load.stop()
        assert promoted != port
        spawn.sink(**waiting)
        # Stored may hold more: events written whose WAIT timed out in the crash were answered
        # 503 (the client retries them), never acknowledged.
        wait_for("every acknowledged event stored",
                 lambda: load.accepted <= stored_ids(ch, ch_database, "adv-wait"))
        assert load.refused > 0  # the crash was felt: some requests were refused, none lost
    finally:
        load.stop()
        cluster.start_node(port)

