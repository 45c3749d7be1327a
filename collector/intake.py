"""Reading a collector request: client IP, site host, clock skew (the body: clicktrail/http_body.py)."""

from __future__ import annotations

import math
import time
from typing import NamedTuple
from urllib.parse import urlsplit

from flask import Request

from clicktrail.errors import BadRequest

#: ``sent_at`` bounds, in unix milliseconds: 1973 (10**11, as ``timestamp``) to 2100-01-01.
MIN_SENT_MS = 10**11
MAX_SENT_MS = 4_102_444_800_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Incoming(NamedTuple):
    """What the collector reads of a request: built from Flask's request, or straight from the
    WSGI environ by the browser endpoint's fast path (collector/fast_path.py)."""

    body: bytes
    content_encoding: str
    origin: str
    referer: str
    user_agent: str
    remote_addr: str
    forwarded_for: str
    forwarded_proto: str
    host: str  # the Host header as sent (the collector's own host name, maybe with a port)
    secure: bool


def incoming(request: Request, body: bytes = b"") -> Incoming:
    return incoming_from_environ(request.environ, body)


def incoming_from_environ(environ: dict, body: bytes) -> Incoming:
    get = environ.get
    return Incoming(
        body,
        get("HTTP_CONTENT_ENCODING", ""),
        get("HTTP_ORIGIN", ""),
        get("HTTP_REFERER", ""),
        get("HTTP_USER_AGENT", ""),
        get("REMOTE_ADDR") or "",
        get("HTTP_X_FORWARDED_FOR", ""),
        get("HTTP_X_FORWARDED_PROTO", ""),
        get("HTTP_HOST") or get("SERVER_NAME", ""),
        get("wsgi.url_scheme") == "https",
    )


def client_ip(request: Request, trust_proxy: bool) -> str:
    return client_ip_of(request.remote_addr or "", request.headers.get("X-Forwarded-For", ""), trust_proxy)


def client_ip_of(remote_addr: str, forwarded_for: str, trust_proxy: bool) -> str:
    if trust_proxy:
        first = forwarded_for.split(",")[0].strip()
        if first:
            return first
    return remote_addr


def host_name(host_header: str) -> str:
    """The lower-case name in a Host header, without its port: "[::1]:80" -> "::1"."""
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")].lower()
    return host_header.partition(":")[0].rstrip(".").lower()


def host_of(url: str) -> str:
    """Return the lower-case host of a URL, or "" when there is none."""
    if not url:
        return ""
    try:
        return (urlsplit(url).hostname or "").rstrip(".")
    except ValueError:
        return ""


def skew_ms(sent_at: object, received_ms: int, unit: str = "milliseconds") -> int:
    """Return how far the client's clock runs ahead of ours, from its send timestamp (in ms by now)."""
    if sent_at is None:
        return 0
    if (isinstance(sent_at, bool) or not isinstance(sent_at, (int, float)) or not math.isfinite(sent_at)
            or not MIN_SENT_MS <= sent_at <= MAX_SENT_MS):
        raise BadRequest(f"sent_at must be unix time in {unit}, between 1973 and 2100", field="sent_at",
                         code="invalid_field")
    return int(sent_at) - received_ms
