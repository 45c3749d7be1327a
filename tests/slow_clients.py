"""Slow-body clients (the attack of issue 11) and timed probes, for the proxy test and its bench.

A slow client sends a request's headers announcing ``Content-Length: 1000``, then one byte of
the body every ``interval`` seconds: each is cheap for the attacker and, without a buffering
proxy, holds a gunicorn thread for as long as it trickles. All of them are driven by one thread.
"""

from __future__ import annotations

import http.client
import resource
import socket
import threading
import time
from dataclasses import dataclass


def raise_open_files(wanted: int) -> int:
    """Raise this process's soft limit on open files towards ``wanted`` (within the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class SlowBodies:
    def __init__(self, host: str, port: int, path: str, count: int, interval: float = 2.0) -> None:
        self.host, self.port, self.path = host, port, path
        self.count, self.interval = count, interval
        self.socks: list[socket.socket] = []
        self.dropped = 0  # connections the server closed or reset while they trickled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, name="slow-bodies", daemon=True)

    def open(self) -> None:
        head = (f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                "Content-Type: text/plain\r\nContent-Length: 1000\r\n\r\n{").encode()
        for _ in range(self.count):
            sock = socket.create_connection((self.host, self.port), timeout=10)
            sock.sendall(head)
            sock.setblocking(False)
            self.socks.append(sock)
        self._thread.start()

    def _trickle(self) -> None:
        while not self._stop.wait(self.interval):
            alive = []
            for sock in self.socks:
                try:
                    sock.send(b" ")  # JSON allows white space: a valid body, just very slow
                    alive.append(sock)
                except OSError:
                    self.dropped += 1
                    sock.close()
            self.socks = alive

    @property
    def open_count(self) -> int:
        return len(self.socks)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for sock in self.socks:
            sock.close()
        self.socks = []


@dataclass
class Probe:
    status: int | None  # None: no answer within the timeout
    seconds: float
    error: str = ""


def probe(host: str, port: int, method: str, path: str, body: bytes | None = None,
          headers: dict | None = None, timeout: float = 2.0, source: str | None = None) -> Probe:
    """One request on a fresh connection, timed from connect to the end of the answer."""
    started = time.monotonic()
    conn = http.client.HTTPConnection(host, port, timeout=timeout,
                                      source_address=(source, 0) if source else None)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        resp.read()
        return Probe(resp.status, time.monotonic() - started)
    except OSError as exc:
        return Probe(None, time.monotonic() - started, f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()
