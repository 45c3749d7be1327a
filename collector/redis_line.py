"""One thread's own connection to Redis for the collector's one call per request.

redis-py sets up the connection (address, TLS, AUTH, SELECT: whatever the URL says); the call
itself is written and read here. With a Python-level socket timeout, every send and every
receive first polls the socket: two extra system calls per request, and on a virtual machine
a system call costs tens of microseconds. So a plain TCP or Unix socket is put in blocking mode
with the timeout enforced by the kernel (SO_RCVTIMEO / SO_SNDTIMEO): one send and usually one
receive per request, and a Redis that does not answer in time still fails the call at once.
"""

from __future__ import annotations

import socket
import ssl
import struct

import hiredis
import redis
from redis.exceptions import NoScriptError

from clicktrail.lifecycle import pid

def bulk(value: bytes) -> bytes:
    """One argument in Redis's wire format (RESP)."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(bulk(a) for a in args)


class Line:
    """A redis-py connection whose hot call skips redis-py's per-call layers."""

    def __init__(self, connection) -> None:
        self.connection = connection
        self._pid = pid()
        self._sock: socket.socket | None = None
        self._reader: hiredis.Reader | None = None

    @property
    def in_this_process(self) -> bool:
        """False for a line inherited across a fork: its socket belongs to the parent."""
        return self._pid == pid()

    def call(self, packed: bytes):
        """Send one packed command and return its reply; raise redis-py's errors on failure."""
        sock = self._sock or self._open()
        try:
            sock.sendall(packed)
            while True:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionResetError("Redis closed the connection")
                self._reader.feed(data)
                reply = self._reader.gets()
                if reply is not False:
                    break
        except (BlockingIOError, socket.timeout) as exc:  # the kernel's timeout, or TLS's
            self.close()
            raise redis.TimeoutError("Redis did not answer in time") from exc
        except OSError as exc:
            self.close()
            raise redis.ConnectionError(f"Redis connection failed: {exc}") from exc
        if isinstance(reply, hiredis.ReplyError):
            message = str(reply)
            raise NoScriptError(message) if message.startswith("NOSCRIPT") else redis.ResponseError(message)
        return reply

    def close(self) -> None:
        self._sock = self._reader = None
        self.connection.disconnect()

    def _open(self) -> socket.socket:
        self.connection.connect()  # bounded by the connect timeout; raises redis-py's errors
        sock = self.connection._sock  # redis-py keeps the socket it set up here
        timeout = self.connection.socket_timeout
        if timeout and not isinstance(sock, ssl.SSLSocket):
            seconds = int(timeout)
            interval = struct.pack("ll", seconds, int((timeout - seconds) * 1_000_000))
            sock.settimeout(None)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, interval)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, interval)
        self._sock, self._reader = sock, hiredis.Reader()
        return sock
