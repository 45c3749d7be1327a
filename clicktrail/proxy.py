"""The collector's front end: nginx, buffering every request before gunicorn sees it.

gunicorn's ``gthread`` workers give a thread to a connection as soon as its headers arrive, and
that thread then waits for the body: a dozen clients sending a body a byte at a time hold every
thread, and real requests wait (issue 11). gunicorn's documentation recommends a buffering proxy
in front; nginx holds a slow client in its event loop for some kilobytes of memory, and
passes a request on only once the whole body is in (``proxy_request_buffering on``), so gunicorn
only ever sees complete requests.

``clicktrail up`` runs nginx on the public ``--bind`` with the collector behind it on a loopback
port (:func:`front_end`); docker-compose runs the official nginx image with ``deploy/nginx.conf``,
which is :func:`compose_config` written out (``python -m clicktrail.proxy > deploy/nginx.conf``;
a test keeps the two equal). Nothing in ``/etc/nginx`` is read or changed: the config, pid file
and temporary folders live under ``DATA_DIR``.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import resource
import shutil
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from clicktrail.errors import ServiceError
from clicktrail.services import free_port

log = logging.getLogger("clicktrail.proxy")

# Each slow client is one connection and each proxied request two (client + upstream), per worker.
WORKER_CONNECTIONS = 8192
# Descriptors wanted per worker: both sides of every connection, plus temporary body files and logs.
WANTED_NOFILE = 2 * WORKER_CONNECTIONS + 1024
# A client silent this long while sending its headers or body is dropped: nginx closes the
# connection (its log says 408; nginx 1.22 sends no answer then).
CLIENT_TIMEOUT_S = 5
# Bodies up to this stay in memory; larger ones (Events API batches) go to a temporary file.
BODY_BUFFER = "64k"
UPSTREAM = "clicktrail_collector"
# Idle upstream connections are closed before gunicorn's own keep-alive (5 s) closes them, so a
# request is never sent down a connection gunicorn is closing (a POST is not retried: 502).
UPSTREAM_IDLE_S = 4
COMPOSE_UPSTREAM = "collector:8080"
COMPOSE_LISTEN = "8080"
# CLICKTRAIL_MAX_BODY_BYTES's and CLICKTRAIL_RETRY_AFTER_S's defaults (docker-compose keeps them).
DEFAULT_MAX_BODY = 1_048_576
DEFAULT_RETRY_AFTER = 2

# nginx's own refusals, in the collector's error shape ({"error": {"code", "message"}}); the
# Events API wraps it TikTok-style as the collector does. %(max_body)s is the body limit.
_ERRORS = {
    400: ("bad_request", "the request is malformed, or its headers are too large"),
    413: ("payload_too_large", "body is larger than %(max_body)s bytes"),
    414: ("uri_too_long", "the request URI is too long"),
    500: ("proxy_error", "the front end failed; retry later"),
    502: ("unavailable", "the collector is unavailable; retry later"),
    503: ("unavailable", "the collector is unavailable; retry later"),
    504: ("unavailable", "the collector did not answer in time; retry later"),
}

_TEMPLATE = """\
# %(origin)s
%(user)sworker_processes auto;
worker_rlimit_nofile %(nofile)d;
pid %(pid)s;
error_log stderr error;

events {
    worker_connections %(worker_connections)d;
    multi_accept on;
}

http {
    server_tokens off;
    access_log off;
    default_type application/octet-stream;
%(resolver)s
    # Slow clients cost nginx a connection slot each, never a collector thread; these drop the
    # ones that stall (no byte of the headers, or of the body, for this long), with a reset that
    # frees the connection's memory at once.
    client_header_timeout %(timeout)ds;
    client_body_timeout %(timeout)ds;
    send_timeout 10s;
    keepalive_timeout 15s;
    reset_timedout_connection on;
    # The collector's body limit (CLICKTRAIL_MAX_BODY_BYTES), so an oversized body, chunked or
    # not, is refused here with 413 before any of it reaches the collector.
    client_max_body_size %(max_body)d;
    client_body_buffer_size %(body_buffer)s;
    client_body_temp_path %(temp)s/body;
    proxy_temp_path %(temp)s/proxy;
    fastcgi_temp_path %(temp)s/fastcgi;
    uwsgi_temp_path %(temp)s/uwsgi;
    scgi_temp_path %(temp)s/scgi;

    map $status $ct_error_code {
%(code_map)s
        default http_error;
    }
    map $status $ct_retry_after {
        502 %(retry_after)d;
        503 %(retry_after)d;
        504 %(retry_after)d;
        default "";
    }
    map $status $ct_error_message {
%(message_map)s
        default "the request was refused";
    }

    upstream %(upstream_name)s {
%(upstream_zone)s        server %(upstream)s;
        keepalive 32;
        keepalive_timeout %(upstream_idle)ds;
    }

    server {
        listen %(listen)s backlog=4096;
        server_name _;
        # 494 (headers too large) is answered as 400.
        error_page 400 413 414 494 500 502 503 504 @ct_error;

        location / {
            proxy_pass http://%(upstream_name)s;
            # The whole body is read before the request goes on, so gunicorn never waits on a client.
            proxy_request_buffering on;
            proxy_buffering on;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            # Replaced, never appended to: the collector (CLICKTRAIL_TRUST_PROXY_HEADERS=true behind
            # this proxy) takes the first address, which must be the peer nginx saw.
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header Forwarded "";
            proxy_connect_timeout 2s;
            proxy_send_timeout 30s;
            proxy_read_timeout 30s;
        }

        location @ct_error {
            default_type application/json;
            add_header Retry-After $ct_retry_after always;
            # The status stays the refusal's; 200 here only sets the body.
            if ($request_uri ~ "^/open_api/") {
                return 200 '{"code":40002,"message":"$ct_error_message","request_id":"","data":{"error":{"code":"$ct_error_code","message":"$ct_error_message"}}}\\n';
            }
            return 200 '{"error":{"code":"$ct_error_code","message":"$ct_error_message"}}\\n';
        }
    }
}
"""


def render(*, listen: str, upstream: str, max_body_bytes: int, pid: str, temp: str, nofile: int,
           retry_after_s: int = DEFAULT_RETRY_AFTER, resolver: str | None = None, user: str | None = None,
           origin: str = "Written by clicktrail (clicktrail/proxy.py) at every start; do not edit.") -> str:
    """The nginx config: listen on ``listen``, pass complete requests to ``upstream`` (HOST:PORT).

    With ``resolver`` (a DNS server), the upstream's name is re-resolved while nginx runs (needs
    nginx 1.27.3 or later), so a re-created collector container is found at its new address.
    """
    if max_body_bytes <= 0:
        raise ServiceError(f"CLICKTRAIL_MAX_BODY_BYTES must be positive for the proxy; got {max_body_bytes}")
    codes = "\n".join(f"        {status} {code};" for status, (code, _) in _ERRORS.items())
    messages = "\n".join(f'        {status} "{message % {"max_body": max_body_bytes}}";'
                         for status, (_, message) in _ERRORS.items())
    return _TEMPLATE % {
        "origin": origin,
        "user": f"user {user};\n" if user else "",
        "listen": listen,
        "upstream": upstream + (" resolve" if resolver else ""),
        "upstream_name": UPSTREAM,
        "upstream_zone": f"        zone {UPSTREAM} 64k;\n" if resolver else "",
        "resolver": f"    resolver {resolver} valid=10s ipv6=off;\n" if resolver else "",
        "upstream_idle": UPSTREAM_IDLE_S,
        "max_body": max_body_bytes,
        "retry_after": retry_after_s,
        "body_buffer": BODY_BUFFER,
        "timeout": CLIENT_TIMEOUT_S,
        "pid": pid,
        "temp": temp,
        "nofile": nofile,
        "worker_connections": WORKER_CONNECTIONS,
        "code_map": codes,
        "message_map": messages,
    }


def compose_config(max_body_bytes: int = DEFAULT_MAX_BODY) -> str:
    """``deploy/nginx.conf``: the official nginx image in docker-compose, Docker's DNS for the collector."""
    return render(listen=COMPOSE_LISTEN, upstream=COMPOSE_UPSTREAM, max_body_bytes=max_body_bytes,
                  pid="/tmp/nginx.pid", temp="/tmp/nginx", nofile=WANTED_NOFILE, resolver="127.0.0.11",
                  origin="Written by `python -m clicktrail.proxy > deploy/nginx.conf`: change clicktrail/proxy.py, "
                         "not this file.")


def nginx_binary() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and Path(candidate).exists():
            return candidate
    raise ServiceError("nginx is not installed; install Debian's nginx package (scripts/bootstrap does it)")


def _nofile() -> int:
    """Descriptors to ask for: as many as wanted, within the hard limit unless nginx may raise it."""
    if os.geteuid() == 0:
        return WANTED_NOFILE
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return WANTED_NOFILE if hard == resource.RLIM_INFINITY else min(WANTED_NOFILE, hard)


def listen_address(bind: str) -> str:
    """nginx's ``listen`` for a gunicorn-style HOST:PORT (``:8080`` and ``8080`` mean every address)."""
    host, sep, port = bind.rpartition(":")
    if not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise ServiceError(f"--bind must be HOST:PORT with a port from 1 to 65535; got {bind!r}")
    return f"{host}:{port}" if sep and host else port


def _worker_user(temp: Path) -> str | None:
    """Who nginx's workers run as when started by root: nobody (nginx's default) where nobody can
    reach the temporary folder (request bodies over the memory buffer are written there), else
    root, rather than failing every large body because the data folder is private."""
    if os.geteuid() != 0:
        return None  # the workers stay the user who started nginx
    for folder in [temp, *temp.parents]:
        if not folder.stat().st_mode & stat.S_IXOTH:
            log.warning("nginx workers run as root: %s is not reachable by nobody", folder)
            return "root root"
    nobody = pwd.getpwnam("nobody")
    return f"nobody {grp.getgrgid(nobody.pw_gid).gr_name}"


@dataclass(frozen=True)
class Nginx:
    """One nginx instance's files under the data folder, and the command that runs it."""

    prefix: Path
    conf: Path
    pid: Path
    argv: list[str] = field(default_factory=list)

    def check(self) -> None:
        """Fail now, with nginx's own words, on a config it refuses (rather than as a dying child)."""
        test = subprocess.run([*self.argv, "-t", "-q"], capture_output=True, text=True, timeout=30)
        if test.returncode != 0:
            raise ServiceError(f"nginx refused {self.conf}: {test.stderr.strip()}")


def prepare(data_dir: str | Path, listen: str, upstream: str, max_body_bytes: int,
            retry_after_s: int = DEFAULT_RETRY_AFTER) -> Nginx:
    """Write the config for nginx on ``listen`` in front of ``upstream``; return how to run it.

    Its folder is ``DATA_DIR/nginx-<port>``, so two fronts on one data folder do not share a pid file.
    """
    address = listen_address(listen)
    prefix = (Path(data_dir) / f"nginx-{address.rpartition(':')[2]}").resolve()
    temp = prefix / "temp"
    temp.mkdir(parents=True, exist_ok=True)  # nginx makes (and, as root, hands to its workers) the rest
    conf = prefix / "nginx.conf"
    pid = prefix / "nginx.pid"
    conf.write_text(render(listen=address, upstream=upstream, max_body_bytes=max_body_bytes, pid=str(pid),
                           temp=str(temp), nofile=_nofile(), retry_after_s=retry_after_s, user=_worker_user(temp)))
    # -e: start-up errors to stderr too, not to the packaged /var/log/nginx (before the config is read).
    argv = [nginx_binary(), "-p", str(prefix), "-c", str(conf), "-e", "stderr", "-g", "daemon off;"]
    return Nginx(prefix, conf, pid, argv)


@dataclass(frozen=True)
class FrontEnd:
    """How ``clicktrail up`` runs the collector behind nginx."""

    nginx: Nginx
    collector_bind: str  # loopback HOST:PORT gunicorn listens on, reached only through nginx
    collector_env: dict[str, str]  # environment overrides for the collector behind the proxy


def front_end(settings: dict, bind: str) -> FrontEnd:
    """nginx on the public ``bind``, the collector on a free loopback port behind it.

    The collector trusts X-Forwarded-For there: only local processes reach that port, and nginx
    replaces whatever a client sent with the address it saw.
    """
    collector_bind = f"127.0.0.1:{free_port()}"
    nginx = prepare(settings["DATA_DIR"], bind, collector_bind, settings["MAX_BODY_BYTES"], settings["RETRY_AFTER_S"])
    nginx.check()
    return FrontEnd(nginx, collector_bind, {"CLICKTRAIL_TRUST_PROXY_HEADERS": "true"})


if __name__ == "__main__":
    import sys

    if sys.argv[1:] not in ([], ["--compose"]):
        sys.exit("usage: python -m clicktrail.proxy [--compose] > deploy/nginx.conf")
    sys.stdout.write(compose_config())
