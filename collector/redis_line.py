"""One thread's own connection to Redis for the collector's one call per request.

For a plain TCP or Unix address clicktrail opens the socket itself, from the settings redis-py
parsed out of the URL (address, AUTH, SELECT, client name), and reads the replies with hiredis.
The socket is in blocking mode with its timeout enforced by the kernel (SO_RCVTIMEO /
SO_SNDTIMEO): with a Python-level socket timeout every send and every receive first polls the
socket, two extra system calls per request that cost tens of microseconds each on a virtual
machine; here it is one send and usually one receive, and a Redis that does not answer in time
still fails the call at once. Owning the socket keeps this off redis-py's private attributes.

Anything else (TLS, a connection class or credentials set in code) goes through redis-py's public
calls on a dedicated connection: slower, but whatever redis-py supports keeps working.

Both kinds raise redis-py's exceptions, so the caller handles one family of errors.
"""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple

import hiredis
import redis
from redis.exceptions import NoScriptError

from clicktrail.lifecycle import pid


def bulk(value: bytes) -> bytes:
    """One argument in Redis's wire format (RESP)."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(bulk(a) for a in args)


class Address(NamedTuple):
    """Where and how to open the socket: the part of redis-py's connection settings a plain line uses."""

    host: str = "localhost"
    port: int = 6379
    path: str = ""  # a Unix socket, instead of host and port
    db: int = 0
    username: str = ""
    password: str = ""
    client_name: str = ""
    keepalive: bool = False
    connect_timeout: float | None = None
    timeout: float | None = None

    def handshake(self) -> list[bytes]:
        """The commands a new connection sends before its first call, as redis-py would."""
        commands = []
        if self.username or self.password:
            user = [self.username.encode()] if self.username else []
            commands.append(command(b"AUTH", *user, self.password.encode()))
        if self.client_name:
            commands.append(command(b"CLIENT", b"SETNAME", self.client_name.encode()))
        if self.db:
            commands.append(command(b"SELECT", str(self.db).encode()))
        return commands


# redis-py's connection classes a plain socket can stand in for, and its settings that keep
# it from doing so (they change how to connect or authenticate in ways only redis-py knows).
_PLAIN = (redis.Connection, redis.UnixDomainSocketConnection)
_NOT_PLAIN = ("credential_provider", "redis_connect_func")


def plain_address(client: redis.Redis) -> Address | None:
    """The address of ``client``'s connections, or None when a socket of our own cannot reach it."""
    pool = client.connection_pool
    settings = client.get_connection_kwargs()
    if pool.connection_class not in _PLAIN or any(settings.get(name) for name in _NOT_PLAIN):
        return None
    timeout = settings.get("socket_timeout")
    return Address(
        host=settings.get("host") or "localhost",
        port=int(settings.get("port") or 6379),
        path=(settings.get("path") or "") if pool.connection_class is redis.UnixDomainSocketConnection else "",
        db=int(settings.get("db") or 0),
        username=settings.get("username") or "",
        password=settings.get("password") or "",
        client_name=settings.get("client_name") or "",
        keepalive=bool(settings.get("socket_keepalive")),
        connect_timeout=settings.get("socket_connect_timeout") or timeout,
        timeout=timeout,
    )


def line_for(client: redis.Redis) -> "SocketLine | ConnectionLine":
    """A new line to ``client``'s Redis: a socket of our own where possible."""
    address = plain_address(client)
    if address is None:
        return ConnectionLine(client.connection_pool.make_connection())
    return SocketLine(address)


class SocketLine:
    """A socket clicktrail opens itself, with the kernel enforcing the timeout; replies read by hiredis."""

    def __init__(self, address: Address) -> None:
        self.address = address
        self.pid = pid()
        self.sock: socket.socket | None = None
        self.reader: hiredis.Reader | None = None

    @property
    def in_this_process(self) -> bool:
        """False for a line inherited across a fork: its socket belongs to the parent."""
        return self.pid == pid()

    def call(self, packed: bytes):
        """Send one packed command and return its reply; raise redis-py's errors on failure.

        Any failure but an error reply closes the socket, so the next call opens a fresh one.
        """
        return self._exchange(self.sock or self._open(), packed)

    def close(self) -> None:
        sock, self.sock, self.reader = self.sock, None, None
        if sock is not None:
            sock.close()

    def _exchange(self, sock: socket.socket, packed: bytes):
        try:
            sock.sendall(packed)
            reply = self._read(sock)
        except (BlockingIOError, socket.timeout) as exc:  # the kernel's timeout (EAGAIN), or connect's
            self.close()
            raise redis.TimeoutError("Redis did not answer in time") from exc
        except OSError as exc:
            self.close()
            raise redis.ConnectionError(f"Redis connection failed: {exc}") from exc
        except hiredis.ProtocolError as exc:  # not Redis, or a stream out of step: never reuse it
            self.close()
            raise redis.ConnectionError(f"Redis sent a malformed reply: {exc}") from exc
        if isinstance(reply, hiredis.ReplyError):
            message = str(reply)
            raise NoScriptError(message) if message.startswith("NOSCRIPT") else redis.ResponseError(message)
        return reply

    def _read(self, sock: socket.socket):
        reader = self.reader
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionResetError("Redis closed the connection")
            reader.feed(data)
            reply = reader.gets()
            if reply is not False:
                return reply

    def _open(self) -> socket.socket:
        sock = self._connect()
        self.sock, self.reader = sock, hiredis.Reader()
        for packed in self.address.handshake():
            try:
                self._exchange(sock, packed)
            except redis.ResponseError as exc:  # a wrong password, a database that does not exist
                self.close()
                raise redis.AuthenticationError(f"Redis refused the connection's setup: {exc}") from exc
        return sock

    def _connect(self) -> socket.socket:
        """A connected socket in blocking mode, its timeouts set in the kernel."""
        address = self.address
        try:
            if address.path:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.settimeout(address.connect_timeout)
                    sock.connect(address.path)
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection((address.host, address.port), timeout=address.connect_timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one small request, sent now
                if address.keepalive:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        except socket.timeout as exc:
            raise redis.TimeoutError(f"connecting to Redis timed out: {exc}") from exc
        except OSError as exc:
            raise redis.ConnectionError(f"cannot connect to Redis: {exc}") from exc
        sock.settimeout(None)
        if address.timeout:
            seconds = int(address.timeout)
            interval = struct.pack("ll", seconds, int((address.timeout - seconds) * 1_000_000))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, interval)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, interval)
        return sock


class ConnectionLine:
    """A dedicated redis-py connection, driven through its public send and read calls."""

    def __init__(self, connection: redis.Connection) -> None:
        self.connection = connection
        self.pid = pid()

    @property
    def in_this_process(self) -> bool:
        return self.pid == pid()

    def call(self, packed: bytes):
        """Send one packed command and return its reply; raise redis-py's errors on failure.

        redis-py connects on first use and drops the socket itself after a timeout or a
        connection error, so the next call reconnects.
        """
        self.connection.send_packed_command([packed], check_health=False)  # a list of chunks
        return self.connection.read_response()

    def close(self) -> None:
        self.connection.disconnect()
