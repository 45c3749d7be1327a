"""The collector's own Redis line (collector/redis_line.py) against real Redis servers.

The shared test Redis for replies and errors; a private Redis with a password, an ACL user and a
Unix socket for the connection settings a URL carries; small socket servers of the test's own for
a peer that closes, stalls or answers something that is not Redis.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from clicktrail import redis_client, services
from clicktrail.errors import BufferUnavailable
from collector.buffer import EventBuffer
from collector.redis_line import Address, ConnectionLine, SocketLine, command, line_for, plain_address
from pixel import registry
from tests.conftest import REDIS_URL

TIMEOUT_MS = 200


@pytest.fixture
def shared():
    client = redis_client.patient(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


def fast_line(url: str = REDIS_URL):
    return line_for(redis_client.fast(url, TIMEOUT_MS))


@pytest.fixture(params=["socket", "connection"])
def line(request, shared):
    """Both kinds of line to the shared test Redis: they must answer alike."""
    client = redis_client.fast(REDIS_URL, TIMEOUT_MS)
    made = line_for(client) if request.param == "socket" else ConnectionLine(client.connection_pool.make_connection())
    yield made
    made.close()


def test_a_plain_url_gets_a_socket_of_its_own_and_tls_goes_through_redis_py():
    assert isinstance(fast_line(), SocketLine)
    assert isinstance(fast_line("unix:///tmp/none.sock?db=2"), SocketLine)
    assert plain_address(redis_client.fast("unix:///tmp/none.sock?db=2", 100)).path == "/tmp/none.sock"
    assert isinstance(fast_line("rediss://127.0.0.1:6380/0"), ConnectionLine)


def test_the_address_carries_what_the_url_says():
    url = "redis://ann:s%40cret@10.0.0.5:6390/7?client_name=ct&socket_keepalive=true"
    assert plain_address(redis_client.fast(url, 250)) == Address(
        host="10.0.0.5", port=6390, path="", db=7, username="ann", password="s@cret", client_name="ct",
        keepalive=True, connect_timeout=0.25, timeout=0.25)
    assert fast_line(url).address.handshake() == [command(b"AUTH", b"ann", b"s@cret"),
                                                  command(b"CLIENT", b"SETNAME", b"ct"), command(b"SELECT", b"7")]
    assert fast_line("redis://127.0.0.1:6390").address.handshake() == []


def test_replies_of_every_shape_read_as_redis_py_reads_them(line, shared):
    shared.rpush("list", b"a", b"", b"\r\n\x00")
    assert line.call(command(b"SET", b"k", b"v")) == b"OK"
    assert line.call(command(b"GET", b"k")) == b"v"
    assert line.call(command(b"GET", b"missing")) is None
    assert line.call(command(b"INCRBY", b"n", b"-5")) == -5
    assert line.call(command(b"LRANGE", b"list", b"0", b"-1")) == [b"a", b"", b"\r\n\x00"]
    nested = b"return {1, 'two', {3, {'four'}}, {}}"
    assert line.call(command(b"EVAL", nested, b"0")) == [1, b"two", [3, [b"four"]], []]


def test_a_reply_larger_than_one_read_arrives_whole(line, shared):
    value = os.urandom(3 * 65536 + 17)
    shared.set("big", value)
    assert line.call(command(b"GET", b"big")) == value


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=8))
def test_any_bytes_round_trip(line, values):
    assert line.call(command(b"DEL", b"prop")) in (0, 1)
    assert line.call(command(b"RPUSH", b"prop", *values)) == len(values)
    assert line.call(command(b"LRANGE", b"prop", b"0", b"-1")) == values


def test_an_error_reply_raises_and_leaves_the_line_usable(line):
    with pytest.raises(redis.ResponseError, match="unknown command"):
        line.call(command(b"NOSUCHCOMMAND"))
    with pytest.raises(redis.exceptions.NoScriptError, match="No matching script"):
        line.call(command(b"EVALSHA", b"0" * 40, b"0"))
    assert line.call(command(b"SET", b"s", b"x")) == b"OK"
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        line.call(command(b"LPUSH", b"s", b"y"))
    assert line.call(command(b"PING")) == b"PONG"


def test_the_line_uses_the_database_of_the_url(shared):
    line = fast_line()
    key = f"line-db-{secrets.token_hex(4)}"
    assert line.call(command(b"SET", key.encode(), b"here")) == b"OK"
    assert shared.get(key) == b"here"  # the same database the URL names
    db = int(REDIS_URL.rsplit("/", 1)[1])
    assert f" db={db} ".encode() in line.call(command(b"CLIENT", b"INFO"))
    line.close()


def test_a_connection_killed_by_the_server_fails_once_and_the_next_call_reconnects(shared):
    name = f"ct-line-{secrets.token_hex(4)}"
    line = fast_line(f"{REDIS_URL}?client_name={name}")
    assert line.call(command(b"PING")) == b"PONG"
    client_id = line.call(command(b"CLIENT", b"ID"))
    assert shared.client_kill_filter(_id=client_id) == 1
    with pytest.raises(redis.ConnectionError):
        line.call(command(b"PING"))
    assert line.call(command(b"PING")) == b"PONG"
    assert line.call(command(b"CLIENT", b"ID")) != client_id
    assert any(c["name"] == name for c in shared.client_list())
    line.close()


def test_the_first_append_after_the_servers_side_closed_succeeds(shared):
    """What a user sees after a Redis restart: the stale socket is retried once, on a fresh one."""
    name = f"ct-buffer-{secrets.token_hex(4)}"
    client = redis_client.fast(f"{REDIS_URL}?client_name={name}", TIMEOUT_MS)
    pixel = registry.create_pixel(shared, "adv-line", ["shop.example"])
    buffer = EventBuffer(client, 10_000, 1)
    assert buffer.append(pixel, [{"event": "PageView"}], host="shop.example").advertiser_id == "adv-line"
    mine = [c["id"] for c in shared.client_list() if c["name"] == name]
    assert len(mine) == 1
    shared.client_kill_filter(_id=mine[0])
    assert buffer.append(pixel, [{"event": "Later"}], host="shop.example").site_domain == "shop.example"
    assert shared.xlen("ct:events") == 2


def test_a_script_flushed_from_redis_is_loaded_again_on_the_same_request(shared):
    pixel = registry.create_pixel(shared, "adv-line", ["shop.example"])
    buffer = EventBuffer(redis_client.fast(REDIS_URL, TIMEOUT_MS), 10_000, 1)
    buffer.append(pixel, [{"event": "PageView"}], host="shop.example")
    shared.script_flush()
    buffer.append(pixel, [{"event": "PageView"}], host="shop.example")
    assert shared.xlen("ct:events") == 2


def test_a_forked_child_opens_its_own_line_and_the_parents_keeps_working(shared):
    pixel = registry.create_pixel(shared, "adv-line", ["shop.example"])
    buffer = EventBuffer(redis_client.fast(REDIS_URL, TIMEOUT_MS), 10_000, 1)
    buffer.append(pixel, [{"event": "Parent"}], host="shop.example")
    child = os.fork()
    if child == 0:  # the child: any failure is its exit status
        code = 1
        try:
            code = 0 if buffer.append(pixel, [{"event": "Child"}], host="shop.example").advertiser_id else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    buffer.append(pixel, [{"event": "Parent again"}], host="shop.example")
    assert shared.xlen("ct:events") == 3


# -- a private Redis: a password, an ACL user, a Unix socket ------------------------------------------------

@pytest.fixture(scope="module")
def locked():
    folder = Path(tempfile.mkdtemp(prefix="ct-line-"))
    port, password = services.free_port(), secrets.token_hex(8)
    sock = folder / "redis.sock"
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--requirepass", password, "--unixsocket", str(sock),
                             "--dir", str(folder)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while not (services.is_listening("127.0.0.1", port) and sock.exists()):
            assert time.monotonic() < deadline and proc.poll() is None, "private Redis did not start"
            time.sleep(0.05)
        admin = redis.Redis(port=port, password=password)
        admin.acl_setuser("ann", enabled=True, passwords=["+ann-pw"], keys=["*"], commands=["+@all"])
        yield port, password, sock, admin
    finally:
        proc.kill()
        proc.wait()


def test_a_password_in_the_url_authenticates(locked):
    port, password, _, admin = locked
    line = fast_line(f"redis://:{password}@127.0.0.1:{port}/3")
    assert line.call(command(b"SET", b"pw", b"yes")) == b"OK"
    assert redis.Redis(port=port, password=password, db=3).get("pw") == b"yes"
    line.close()


def test_a_user_and_password_in_the_url_authenticate_as_that_user(locked):
    port, _, _, _ = locked
    line = fast_line(f"redis://ann:ann-pw@127.0.0.1:{port}/0")
    assert line.call(command(b"ACL", b"WHOAMI")) == b"ann"
    line.close()


def test_a_unix_socket_url_with_a_database(locked):
    port, password, sock, _ = locked
    line = fast_line(f"unix://:{password}@{sock}?db=5")
    assert line.call(command(b"SET", b"over-unix", b"1")) == b"OK"
    assert redis.Redis(port=port, password=password, db=5).get("over-unix") == b"1"
    line.close()


@pytest.mark.parametrize("url, error, message", [
    ("redis://:wrong@127.0.0.1:{port}/0", redis.AuthenticationError, "refused the connection's setup.*WRONGPASS"),
    ("redis://ann:wrong@127.0.0.1:{port}/0", redis.AuthenticationError, "refused the connection's setup.*WRONGPASS"),
    ("redis://:{password}@127.0.0.1:{port}/99", redis.AuthenticationError, "refused the connection's setup.*DB index"),
    ("redis://127.0.0.1:{port}/0", redis.ResponseError, "NOAUTH"),  # no password: the call itself is refused
])
def test_a_refused_setup_raises_and_the_collector_answers_503(locked, url, error, message):
    port, password, _, _ = locked
    client = redis_client.fast(url.format(port=port, password=password), TIMEOUT_MS)
    line = line_for(client)
    with pytest.raises(error, match=message):
        line.call(command(b"PING"))
    if error is redis.AuthenticationError:
        assert line.sock is None  # nothing half set up is kept
    with pytest.raises(BufferUnavailable):
        EventBuffer(client, 10_000, 1).append("pixel", [{"event": "PageView"}], host="shop.example")


# -- peers that are not a healthy Redis --------------------------------------------------------------------

class Peer:
    """A loopback server answering every connection with ``handle(conn)``, on a thread of its own."""

    def __init__(self, handle) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.handle = handle
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn) -> None:
        with conn:
            self.handle(conn)

    def close(self) -> None:
        self.listener.close()


def _closes_at_once(conn):
    pass


def _closes_mid_reply(conn):
    conn.recv(1024)
    conn.sendall(b"*2\r\n$5\r\nhel")


def _answers_http(conn):
    conn.recv(1024)
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")


def _never_answers(conn):
    conn.recv(1024)
    time.sleep(3)


@pytest.mark.parametrize("handle, error, message", [
    (_closes_at_once, redis.ConnectionError, "closed the connection|reset"),
    (_closes_mid_reply, redis.ConnectionError, "closed the connection|reset"),
    (_answers_http, redis.ConnectionError, "malformed reply"),
    (_never_answers, redis.TimeoutError, "did not answer in time"),
])
def test_a_peer_that_is_not_a_healthy_redis_fails_the_call_and_the_socket_is_dropped(handle, error, message):
    peer = Peer(handle)
    try:
        line = fast_line(f"redis://127.0.0.1:{peer.port}/0")
        started = time.monotonic()
        with pytest.raises(error, match=message):
            line.call(command(b"PING"))
        assert time.monotonic() - started < 2.5  # a guard against a hang: the timeout is 0.2 s
        assert line.sock is None
        with pytest.raises(error):  # the next call opens a new connection, never reuses the broken one
            line.call(command(b"PING"))
        assert peer.connections == 2
    finally:
        peer.close()


def test_nothing_listening_is_a_connection_error():
    port = services.free_port()
    with pytest.raises(redis.ConnectionError, match="cannot connect"):
        fast_line(f"redis://127.0.0.1:{port}/0").call(command(b"PING"))
