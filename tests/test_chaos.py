"""Servers stopped under load: the collector keeps its promises and nothing accepted is lost.

These tests start their own Redis (AOF, as in production) and ClickHouse on their own ports and
data folders, so stopping them disturbs nothing else.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from clicktrail import clickhouse, keys, redis_client, schema, services
from pixel import registry
from tests.http import call
from tests.servers import PrivateClickHouse, PrivateRedis, env_for

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
    spawn.sink(CLICKHOUSE_URL=ch_url, RETRY_BACKOFF_CAP_S=1.0)

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
    assert reply.headers["Retry-After"] == str(settings.limits.retry_after_s)
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


# -- under `clicktrail up`: the supervisor restarts what dies -----------------------------------------

def children_of(pid: int) -> dict[int, str]:
    """Live child processes of ``pid``: {pid: command line}."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        if int(ppid) == pid and state != "Z":
            found[int(entry)] = cmdline
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def role_pids(up_pid: int, role: str) -> set[int]:
    return {pid for pid, cmd in children_of(up_pid).items() if f"clicktrail.cli {role}" in cmd}


def proxy_pids(up_pid: int) -> set[int]:
    return {pid for pid, cmd in children_of(up_pid).items() if cmd.startswith("nginx") or "/nginx " in cmd}


def wait_for(what: str, check, seconds: float = 60.0, detail=None):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {seconds:.0f}s" + (f": {detail()}" if detail else ""))


class Load(threading.Thread):
    """Posts valid pixel batches until stopped (or a bound); remembers what was sent and what was accepted."""

    def __init__(self, base: str, pixel_id: str, max_batches: int = 20_000) -> None:
        super().__init__(daemon=True)
        self.base, self.pixel_id, self.max_batches = base, pixel_id, max_batches
        self.sent: set[str] = set()
        self.accepted: set[str] = set()
        self.failures = 0
        self.last: object = None
        self.halt = threading.Event()

    def run(self) -> None:
        for n in range(self.max_batches):
            if self.halt.is_set():
                return
            ids = [f"load{n}-{i}" for i in range(20)]
            self.sent.update(ids)
            try:
                reply = post_batch(self.base, self.pixel_id, f"load{n}", n=20)
            except OSError:  # the collector is being restarted: not accepted, so not owed
                reply = None
            self.last = reply.status if reply is not None else "no answer"
            if reply is not None and reply.status == 200:
                self.accepted.update(ids)
            else:
                self.failures += 1
                time.sleep(0.05)
            time.sleep(0.005)

    def describe(self) -> str:
        return (f"{len(self.sent)} sent, {len(self.accepted)} accepted, {self.failures} failures, "
                f"last answer {self.last!r}, running {self.is_alive()}")

    def accepted_more_than(self, count: int) -> bool:
        return len(self.accepted) > count


@pytest.fixture
def up(settings, r, ch, tmp_path):  # after r and ch, which empty the Redis db and the tables
    """`clicktrail up --no-services` on the test's Redis db and ClickHouse database, two sinks."""
    port, api_port = services.free_port(), services.free_port()
    log_path = tmp_path / "up.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clicktrail.cli", "up", "--no-services", "--bind", f"127.0.0.1:{port}",
             "--api-bind", f"127.0.0.1:{api_port}", "--sinks", "2"],
            # A second for Redis: this is about restarts; on a loaded machine 100 ms answers 503s.
            env=env_for(settings, DATA_DIR=str(tmp_path / "var"), REDIS_TIMEOUT_MS=1000),
            stdout=subprocess.PIPE, stderr=log, text=True)
    lines = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if not line or line.startswith("Press Ctrl-C"):
            break
    assert lines[-1].startswith("Press Ctrl-C"), "".join(lines) + log_path.read_text()
    proc.base = f"http://127.0.0.1:{port}"
    proc.api_base = f"http://127.0.0.1:{api_port}"
    proc.log_path = log_path
    yield proc
    if proc.poll() is None:  # the test failed before stopping it: end everything it started
        groups = list(children_of(proc.pid))
        proc.kill()
        for pgid in groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()


def test_up_restarts_killed_sinks_and_collectors_under_load_and_loses_nothing(up, r, ch, ch_database):
    pixel_id = registry.create_pixel(r, "adv-up", ["shop.example"])
    load = Load(up.base, pixel_id)
    load.start()
    try:
        wait_for("first accepted events", lambda: load.accepted_more_than(50))

        # A sink: SIGKILLed, restarted by up; its pending entries are reclaimed.
        sinks = role_pids(up.pid, "sink")
        assert len(sinks) == 2
        victim = min(sinks)
        os.kill(victim, signal.SIGKILL)
        wait_for("a new sink", lambda: len(role_pids(up.pid, "sink") - sinks) == 1)

        # A collector worker: gunicorn's master replaces it.
        (master,) = role_pids(up.pid, "collector")
        workers = set(children_of(master))
        assert workers
        os.kill(min(workers), signal.SIGKILL)
        wait_for("a new gunicorn worker", lambda: set(children_of(master)) - workers)
        seen = len(load.accepted)
        wait_for("requests after the worker died", lambda: load.accepted_more_than(seen + 50),
                 detail=lambda: f"{load.describe()}; up's log ends: {up.log_path.read_text()[-3000:]}")

        # The collector's master itself: up restarts the collector.
        os.kill(master, signal.SIGKILL)
        wait_for("a new collector", lambda: role_pids(up.pid, "collector") - {master})
        seen = len(load.accepted)
        wait_for("requests after the collector restarted", lambda: load.accepted_more_than(seen + 50), 90)

        # The front end: nginx's master SIGKILLed leaves its workers holding the port; up ends
        # them and starts a new nginx on the same address.
        (nginx,) = proxy_pids(up.pid)
        os.kill(nginx, signal.SIGKILL)
        wait_for("a new nginx", lambda: proxy_pids(up.pid) - {nginx})
        seen = len(load.accepted)
        wait_for("requests after nginx restarted", lambda: load.accepted_more_than(seen + 50), 90)
        assert call("GET", up.api_base + "/healthz").status == 200  # the API's address is back too
    finally:
        load.halt.set()
        load.join(timeout=30)

    def stored():
        return [row[0] for row in ch.execute(f"SELECT event_id FROM {ch_database}.events_unique "
                                             "WHERE advertiser_id = 'adv-up'")]

    wait_for("every accepted event stored", lambda: load.accepted <= set(stored()), 120)
    ids = stored()
    assert len(ids) == len(set(ids))  # once each
    assert load.accepted <= set(ids) <= load.sent
    assert r.xlen(keys.DEAD_LETTER_STREAM) == 0
    log = up.log_path.read_text()
    assert re.search(r"sink-[12] was killed by SIGKILL after [0-9.]+s; restarting in", log), log
    assert "collector was killed by SIGKILL" in log
    assert "proxy was killed by SIGKILL" in log

    # SIGTERM to up stops everything: every child and every gunicorn worker.
    everything = set(children_of(up.pid))
    everything |= {pid for child in list(everything) for pid in children_of(child)}
    up.send_signal(signal.SIGTERM)
    rest, _ = up.communicate(timeout=120)
    assert up.returncode == 0
    for name in ("proxy", "collector", "sink-1", "sink-2", "attributor", "api"):
        assert f"stopped {name}" in rest
    wait_for("every process gone", lambda: not any(map(alive, everything)), 10)


def test_a_sink_started_while_redis_is_down_waits_then_works(spawn, settings, ch, ch_database, tmp_path):
    own = PrivateRedis()  # not started yet
    log_path = tmp_path / "sink.log"
    try:
        with open(log_path, "w") as log:
            sink = subprocess.Popen([sys.executable, "-m", "clicktrail.cli", "sink"],
                                    env=env_for(settings, REDIS_URL=own.url), stderr=log, start_new_session=True)
        spawn.procs.append(sink)
        wait_for("the wait to be logged", lambda: "waiting for Redis" in log_path.read_text(), 30)
        time.sleep(1)
        assert sink.poll() is None  # waiting, not exited

        own.start()
        client = redis_client.patient(own.url)
        pixel_id = registry.create_pixel(client, "adv-late", ["shop.example"])
        base = spawn.collector(REDIS_URL=own.url)
        assert post_batch(base, pixel_id, "late").status == 200
        wait_for("the events stored", lambda: len(stored_ids(ch, ch_database)) == 10, 60)
        assert stored_ids(ch, ch_database) == {f"late-{i}" for i in range(10)}
        assert sink.poll() is None
    finally:
        own.cleanup()


def test_a_waiting_sink_stops_at_once_on_sigterm(spawn, settings):
    sink = spawn.sink(REDIS_URL=f"redis://127.0.0.1:{services.free_port()}/0")  # nothing listens there
    time.sleep(2)
    assert sink.poll() is None
    sink.send_signal(signal.SIGTERM)
    assert sink.wait(timeout=15) == 0


def test_up_waits_for_redis_and_then_starts(settings, tmp_path):
    own = PrivateRedis()
    log_path = tmp_path / "up.log"
    port, api_port = services.free_port(), services.free_port()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clicktrail.cli", "up", "--no-services", "--bind", f"127.0.0.1:{port}",
             "--api-bind", f"127.0.0.1:{api_port}"],
            env=env_for(settings, REDIS_URL=own.url, DATA_DIR=str(tmp_path / "var")),
            stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        wait_for("the wait to be logged", lambda: f"waiting for Redis at 127.0.0.1:{own.port}" in log_path.read_text())
        assert proc.poll() is None
        own.start()
        lines = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not (lines and lines[-1].startswith("Press Ctrl-C")):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        assert lines and lines[-1].startswith("Press Ctrl-C"), "".join(lines) + log_path.read_text()
        assert call("GET", f"http://127.0.0.1:{port}/readyz").status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            groups = list(children_of(proc.pid))
            proc.kill()
            for pgid in groups:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        own.cleanup()


def test_an_attributor_waits_out_a_redis_outage_in_place_and_leads_again(spawn, settings, tmp_path):
    own = PrivateRedis()
    own.start()
    log_path = tmp_path / "attributor.log"
    try:
        with open(log_path, "w") as log:
            worker = subprocess.Popen([sys.executable, "-m", "clicktrail.cli", "attributor"],
                                      env=env_for(settings, REDIS_URL=own.url), stderr=log, start_new_session=True)
        spawn.procs.append(worker)
        client = redis_client.patient(own.url)
        wait_for("the lease taken", lambda: client.get(keys.ATTRIBUTOR_LEASE), 30)

        own.stop()
        wait_for("the outage noticed", lambda: "Redis unavailable" in log_path.read_text(), 30)
        time.sleep(1)
        assert worker.poll() is None, log_path.read_text()  # waiting, not exited

        own.start()  # AOF: the group and the lease's expiry come back as they were
        client = redis_client.patient(own.url)
        client.delete(keys.ATTRIBUTOR_LEASE)
        wait_for("the lease taken again", lambda: client.get(keys.ATTRIBUTOR_LEASE), 60)
        assert worker.poll() is None
    finally:
        own.cleanup()
