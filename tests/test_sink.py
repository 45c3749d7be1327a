"""The sink: dead letters, reclaiming, crash safety, graceful stop."""

import json
import signal
import time

import orjson

from clicktrail import cluster
from tests.conftest import query_dicts

STREAM, GROUP, DEAD = "ct:events", "sink", "ct:events:dead"


def queue(client, tenant, n, prefix="e"):
    body = {"events": [{"event": "PageView", "event_id": f"{prefix}{i}", "page": {"url": "https://shop.example/"}}
                       for i in range(n)]}
    assert client.post(f"/e/{tenant.pixel_id}", data=json.dumps(body)).json["accepted"] == n


def wait_for_group(r, seconds: float = 30.0) -> None:
    """Return once a sink has made its consumer group on the stream."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if r.exists(STREAM) and any(g["name"] in (GROUP, GROUP.encode()) for g in r.xinfo_groups(STREAM)):
            return
        time.sleep(0.05)
    raise AssertionError(f"no sink made the group {GROUP!r} within {seconds:.0f}s")


def unique_ids(ch, db):
    return sorted(r["event_id"] for r in query_dicts(ch, f"SELECT event_id FROM {db}.events_unique"))


def raw_count(ch, db):
    return ch.execute(f"SELECT count() FROM {db}.events")[0][0]


def test_undecodable_entry_goes_to_dead_letters_and_the_rest_is_stored(client, tenant, sink, r, ch, ch_database):
    queue(client, tenant, 3, "before")
    poison_id = r.xadd(STREAM, {"a": tenant.advertiser, "n": 1, "d": b"\xff not json"})
    queue(client, tenant, 3, "after")
    sink.drain()
    assert unique_ids(ch, ch_database) == [f"after{i}" for i in range(3)] + [f"before{i}" for i in range(3)]
    (dead_id, dead), = r.xrange(DEAD)
    assert dead[b"id"] == poison_id and dead[b"index"] == b"*"
    assert dead[b"reason"].startswith(b"cannot decode")
    assert dead[b"d"] == b"\xff not json"
    assert r.xlen(STREAM) == 0 and r.xpending(STREAM, GROUP)["pending"] == 0


def test_row_that_cannot_be_stored_is_isolated_and_dead_lettered(client, tenant, sink, r, ch, ch_database):
    queue(client, tenant, 5, "ok")
    records = orjson.loads(r.xrange(STREAM, count=1)[0][1][b"d"])
    bad = dict(records[0], event_id="bad", received_ms=-5)  # decodes, but no UInt64 column can hold it
    mixed = [dict(records[1], event_id="good-neighbour"), bad]
    bad_id = r.xadd(STREAM, {"a": tenant.advertiser, "n": 2, "d": orjson.dumps(mixed)})
    queue(client, tenant, 5, "more")
    sink.drain()
    stored = unique_ids(ch, ch_database)
    assert len(stored) == 11 and "good-neighbour" in stored and "bad" not in stored
    (_, dead), = r.xrange(DEAD)
    assert dead[b"id"] == bad_id and dead[b"index"] == b"1"
    assert dead[b"reason"].startswith(b"cannot build row: RowError: received_ms must be an integer from 0")
    assert orjson.loads(dead[b"d"]) == [bad]
    assert r.xlen(STREAM) == 0 and r.xpending(STREAM, GROUP)["pending"] == 0


def test_a_block_the_driver_cannot_write_is_bisected_to_the_row(client, tenant, sink, r, ch, ch_database):
    """Rows that got past the row builder (an older one) but not the driver: the float in a String
    column of issue 11 made clickhouse-driver raise AttributeError, which stopped the sink."""
    queue(client, tenant, 4, "ok")
    (entry_id, fields), = r.xrange(STREAM)
    rows, _, failures = sink.builder.rows(entry_id, fields)
    assert failures == [] and len(rows) == 4
    query_at = sink.insert_sql.split("(")[1].split(")")[0].split(", ").index("search_query")
    poison = tuple(1.5 if i == query_at else v for i, v in enumerate(rows[1]))
    stored, refused = sink._insert(sink.insert_sql, [rows[0], poison, rows[2], rows[3]], ["a", "b", "c", "d"])
    assert sorted(stored) == ["a", "c", "d"]
    (refused_id, reason), = refused
    assert refused_id == "b" and reason.startswith("cannot be written: AttributeError")
    assert unique_ids(ch, ch_database) == ["ok0", "ok2", "ok3"]


def test_entries_of_a_dead_consumer_are_reclaimed_and_stored(client, tenant, sink, r, ch, ch_database):
    queue(client, tenant, 4)
    r.xreadgroup(GROUP, "crashed-consumer", {STREAM: ">"}, count=10)  # read, then "died"
    assert sink.run_once() == 0  # nothing new to read, and the pending entries are not idle long enough yet
    assert raw_count(ch, ch_database) == 0
    time.sleep(0.05)
    reclaimed = sink.reclaim(idle_ms=10)
    sink.store(reclaimed)
    assert unique_ids(ch, ch_database) == [f"e{i}" for i in range(4)]
    assert r.xpending(STREAM, GROUP)["pending"] == 0


def test_entry_delivered_too_often_is_dead_lettered(client, tenant, sink, r, ch, ch_database):
    queue(client, tenant, 1)
    (entry_id, _), = r.xreadgroup(GROUP, "crash-1", {STREAM: ">"})[0][1]
    for name in ("crash-2", "crash-3", "crash-4", "crash-5"):  # each consumer took it over, then died
        r.xclaim(STREAM, GROUP, name, 0, [entry_id])
    time.sleep(0.05)
    assert sink.reclaim(idle_ms=10) == []
    (_, dead), = r.xrange(DEAD)
    assert dead[b"id"] == entry_id and dead[b"reason"] == b"not stored after 5 deliveries"
    assert raw_count(ch, ch_database) == 0


def test_sink_killed_between_insert_and_ack_counts_once(client, tenant, spawn, r, ch, ch_database):
    for batch in range(5):
        queue(client, tenant, 10, f"b{batch}-")
    crashing = spawn.sink(failpoint="sink_after_insert")
    assert crashing.wait(timeout=30) == -signal.SIGKILL
    assert raw_count(ch, ch_database) == 50  # inserted...
    assert r.xpending(STREAM, GROUP)["pending"] == 5  # ...but never acknowledged (one entry per request)
    healthy = spawn.sink()
    deadline = time.monotonic() + 30
    while r.xlen(STREAM) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert r.xlen(STREAM) == 0
    assert raw_count(ch, ch_database) == 100  # stored twice before any merge...
    assert unique_ids(ch, ch_database) == sorted(f"b{b}-{i}" for b in range(5) for i in range(10))  # once
    for node, db in cluster.local_clients(ch, ch_database):  # a Distributed table takes no OPTIMIZE
        node.execute(f"OPTIMIZE TABLE {db}.events FINAL")
    assert raw_count(ch, ch_database) == 50  # and merges fold the copies away
    healthy.send_signal(signal.SIGTERM)
    assert healthy.wait(timeout=10) == 0


def test_sigterm_finishes_the_current_batch(client, tenant, spawn, r, ch, ch_database):
    worker = spawn.sink(SINK_BATCH_WAIT_MS=3000, SINK_BATCH_SIZE=100000)
    wait_for_group(r)  # the sink is up (a fixed sleep was too short on a loaded machine)
    queue(client, tenant, 30)
    deadline = time.monotonic() + 15
    while r.xpending(STREAM, GROUP)["pending"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    worker.send_signal(signal.SIGTERM)  # mid-batch: read, not yet stored
    assert worker.wait(timeout=15) == 0
    assert unique_ids(ch, ch_database) == sorted(f"e{i}" for i in range(30))
    assert r.xpending(STREAM, GROUP)["pending"] == 0


def test_events_queued_before_any_sink_existed_are_stored(client, tenant, r, ch, ch_database, settings):
    from clicktrail import clickhouse
    from clicktrail.lifecycle import StopFlag
    from sink.worker import Sink

    queue(client, tenant, 3)  # no consumer group yet
    worker = Sink(settings, r, clickhouse.connect(settings.clickhouse.url), ch_database, StopFlag(), name="late")
    worker.ensure_group()
    worker.run_once()
    assert unique_ids(ch, ch_database) == ["e0", "e1", "e2"]


def test_consumers_long_gone_are_forgotten(client, tenant, sink, r, monkeypatch):
    import sink.worker as worker_module

    queue(client, tenant, 1)
    r.xreadgroup(GROUP, "gone-sink", {STREAM: ">"}, count=1)
    sink.reclaim(idle_ms=0)  # takes over gone-sink's entry; gone-sink now holds nothing
    r.xgroup_createconsumer(STREAM, GROUP, "idle-sink")
    monkeypatch.setattr(worker_module, "DEAD_CONSUMER_IDLE_MS", -1)
    sink.reclaim(idle_ms=60_000)
    names = {c["name"].decode() if isinstance(c["name"], bytes) else c["name"] for c in r.xinfo_consumers(STREAM, GROUP)}
    assert names == {"test-sink"}  # holds the reclaimed entry


def test_a_second_signal_exits_even_mid_batch_and_nothing_is_acknowledged(client, tenant, spawn, r):
    from clicktrail import services

    queue(client, tenant, 5)
    r.xgroup_create(STREAM, GROUP, id="0")
    nowhere = f"clickhouse://127.0.0.1:{services.free_port()}/nothing"  # inserts fail: the batch never finishes
    worker = spawn.sink(CLICKHOUSE_URL=nowhere, RETRY_BACKOFF_CAP_S=0.5)
    deadline = time.monotonic() + 30  # a guard against a hang: a loaded machine starts the sink slowly
    while r.xpending(STREAM, GROUP)["pending"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    assert worker.poll() is None  # still trying to store the batch it holds
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=10) == 1
    assert r.xpending(STREAM, GROUP)["pending"] == 1 and r.xlen(STREAM) == 1  # left for another sink


def test_dead_letters_can_be_listed_and_requeued_once_fixed(client, tenant, sink, r, ch, ch_database, settings):
    import json as json_module
    import subprocess
    import sys

    from tests.servers import env_for

    queue(client, tenant, 2, "good")
    records = orjson.loads(r.xrange(STREAM, count=1)[0][1][b"d"])
    bad = dict(records[0], event_id="fixable", received_ms=-5)
    r.xadd(STREAM, {"a": tenant.advertiser, "n": 1, "d": orjson.dumps([bad])})
    sink.drain()
    run = lambda *args: subprocess.run([sys.executable, "-m", "clicktrail.cli", "dead-letters", *args],  # noqa: E731
                                       env=env_for(settings), capture_output=True, text=True, timeout=60)
    listed = [json_module.loads(line) for line in run("list").stdout.splitlines()]
    assert [(x["index"], x["events"], x["advertiser_id"]) for x in listed] == [("0", 1, tenant.advertiser)]
    assert listed[0]["reason"].startswith("cannot build row: RowError: received_ms")
    # The cause is fixed (here: the letter is corrected in place), then it is requeued.
    (letter_id, fields), = r.xrange(DEAD)
    r.xdel(DEAD, letter_id)
    r.xadd(DEAD, {**fields, b"d": orjson.dumps([dict(bad, received_ms=records[0]["received_ms"])])})
    assert run("requeue").stdout == "1\n"
    assert r.xlen(DEAD) == 0
    sink.drain()
    assert "fixable" in unique_ids(ch, ch_database)


def test_a_stream_deleted_under_a_blocked_sink_is_made_again_and_the_sink_reads_on(client, tenant, spawn, r, ch,
                                                                                     ch_database):
    worker = spawn.sink()
    queue(client, tenant, 2, "first")
    deadline = time.monotonic() + 30
    while len(unique_ids(ch, ch_database)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    # The sink now waits in XREADGROUP ... BLOCK on the stream; deleting the key wakes it with
    # "UNBLOCKED the stream key no longer exists" (an operator's DEL or FLUSHDB).
    for _ in range(5):
        r.delete(STREAM)
        time.sleep(0.2)
    queue(client, tenant, 3, "second")
    deadline = time.monotonic() + 30
    while len(unique_ids(ch, ch_database)) < 5 and time.monotonic() < deadline and worker.poll() is None:
        time.sleep(0.1)
    assert worker.poll() is None, "the sink exited"
    assert unique_ids(ch, ch_database) == ["first0", "first1", "second0", "second1", "second2"]


def test_reclaiming_after_the_stream_was_deleted_makes_the_group_again(client, tenant, sink, r, ch, ch_database):
    r.delete(STREAM)  # XINFO CONSUMERS and XPENDING then fail with "no such key" / NOGROUP
    assert sink.reclaim(0) == []
    assert [g["name"] for g in r.xinfo_groups(STREAM)] in ([GROUP], [GROUP.encode()])
    queue(client, tenant, 2, "after")
    sink.drain()
    assert unique_ids(ch, ch_database) == ["after0", "after1"]
