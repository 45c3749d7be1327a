"""The front end of the collector and the API: nginx, buffering every request before gunicorn sees it.

gunicorn's ``gthread`` workers give a thread to a connection as soon as its headers arrive, and
that thread then waits for the body: a dozen clients sending a body a byte at a time hold every
thread, and real requests wait (issue 11). gunicorn's documentation recommends a buffering proxy
in front; nginx holds a slow client in its event loop for some kilobytes of memory, and
passes a request on only once the whole body is in (``proxy_request_buffering on``), so gunicorn
only ever sees complete requests.

``clicktrail up`` runs one nginx on the public ``--bind`` and ``--api-bind``, with the collector
and the API behind it on loopback ports (:func:`front_end`); each public address is a
:class:`Site`. docker-compose runs the official nginx image with ``deploy/nginx.conf``,
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

from clicktrail import config
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
# Idle upstream connections are closed before gunicorn's own keep-alive (5 s) closes them, so a
# request is never sent down a connection gunicorn is closing (a POST is not retried: 502).
UPSTREAM_IDLE_S = 4
# How long nginx waits for the app's answer before a 504. The collector answers in milliseconds
# or sheds load with 503; an API report has no server-side bound other than clickhouse-driver's
# socket timeout (300 s), so a slow report is not cut short by the front end.
COLLECTOR_READ_TIMEOUT_S = 30
API_READ_TIMEOUT_S = 300
COMPOSE_UPSTREAM = "collector:8080"
COMPOSE_LISTEN = "8080"
COMPOSE_API_UPSTREAM = "api:8081"
COMPOSE_API_LISTEN = "8081"
# CLICKTRAIL_MAX_BODY_BYTES's and CLICKTRAIL_RETRY_AFTER_S's defaults (docker-compose keeps them).
DEFAULT_MAX_BODY = 1_048_576
DEFAULT_RETRY_AFTER = 2

# nginx's own refusals, in the apps' error shape ({"error": {"code", "message"}}); the Events
# API wraps it TikTok-style as the collector does. %(max_body)s is the body limit, %(app)s the
# app behind the address.
_ERRORS = {
    400: ("bad_request", "the request is malformed, or its headers are too large"),
    413: ("payload_too_large", "body is larger than %(max_body)s bytes"),
    414: ("uri_too_long", "the request URI is too long"),
    500: ("proxy_error", "the front end failed; retry later"),
    502: ("unavailable", "the %(app)s is unavailable; retry later"),
    503: ("unavailable", "the %(app)s is unavailable; retry later"),
    504: ("unavailable", "the %(app)s did not answer in time; retry later"),
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
    # Slow clients cost nginx a connection slot each, never an app thread; these drop the ones
    # that stall (no byte of the headers, or of the body, for this long), with a reset that
    # frees the connection's memory at once.
    client_header_timeout %(timeout)ds;
    client_body_timeout %(timeout)ds;
    send_timeout 10s;
    keepalive_timeout 15s;
    reset_timedout_connection on;
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
%(sites)s}
"""

# One public address and the app behind it (the upstream and the messages are named after it).
_SITE = """
    map $status $ct_%(name)s_message {
%(message_map)s
        default "the request was refused";
    }

    upstream clicktrail_%(name)s {
%(upstream_zone)s        server %(upstream)s;
        keepalive 32;
        keepalive_timeout %(upstream_idle)ds;
    }

    server {
        listen %(listen)s backlog=4096;
        server_name _;
        # The %(app)s's own body limit, so an oversized body, chunked or not, is refused here
        # with 413 before any of it reaches the %(app)s.
        client_max_body_size %(max_body)d;
        # 494 (headers too large) is answered as 400.
        error_page 400 413 414 494 500 502 503 504 @ct_error;

        location / {
            proxy_pass http://clicktrail_%(name)s;
            # The whole body is read before the request goes on, so gunicorn never waits on a client.
            proxy_request_buffering on;
            proxy_buffering on;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            # Replaced, never appended to: %(forwarded_for_why)s
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header Forwarded "";
            proxy_connect_timeout 2s;
            proxy_send_timeout 30s;
            proxy_read_timeout %(read_timeout)ds;
        }

        location @ct_error {
            default_type application/json;
            add_header Retry-After $ct_retry_after always;
            # The status stays the refusal's; 200 here only sets the body.
%(events_api)s            return 200 '{"error":{"code":"$ct_error_code","message":"$ct_%(name)s_message"}}\\n';
        }
    }
"""

_EVENTS_API_ERROR = """\
            if ($request_uri ~ "^/open_api/") {
                return 200 '{"code":40002,"message":"$ct_%(name)s_message","request_id":"","data":{"error":{"code":"$ct_error_code","message":"$ct_%(name)s_message"}}}\\n';
            }
"""


@dataclass(frozen=True)
class Site:
    """One public address of the front end and the app behind it."""

    name: str  # "collector" or "api": names the upstream and the messages
    app: str  # the app as error messages name it
    listen: str  # nginx's listen (see listen_address)
    upstream: str  # HOST:PORT of the app's gunicorn
    max_body_bytes: int
    read_timeout_s: int
    forwarded_for_why: str  # the comment on X-Forwarded-For
    events_api: bool = False  # refusals under /open_api/ wrapped TikTok-style


def collector_site(listen: str, upstream: str, max_body_bytes: int) -> Site:
    if max_body_bytes <= 0:
        raise ServiceError(f"CLICKTRAIL_MAX_BODY_BYTES must be positive for the proxy; got {max_body_bytes}")
    return Site("collector", "collector", listen_address(listen), upstream, max_body_bytes,
                COLLECTOR_READ_TIMEOUT_S,
                "the collector (CLICKTRAIL_TRUST_PROXY_HEADERS=true behind\n"
                "            # this proxy) takes the first address, which must be the peer nginx saw.",
                events_api=True)


def api_site(listen: str, upstream: str) -> Site:
    # The API never reads the client's address (no route logs, limits or stores it), so it is not
    # told to trust X-Forwarded-For; nginx still replaces the header, as for the collector.
    return Site("api", "API", listen_address(listen), upstream, config.MAX_API_BODY_BYTES, API_READ_TIMEOUT_S,
                "the API reads no client address (it is not told to trust\n"
                "            # this header), and no forged one reaches it.")


def _render_site(site: Site, resolver: str | None) -> str:
    values = {"max_body": site.max_body_bytes, "app": site.app}
    messages = "\n".join(f'        {status} "{message % values}";' for status, (_, message) in _ERRORS.items())
    name = f"clicktrail_{site.name}"
    return _SITE % {
        "name": site.name,
        "app": site.app,
        "listen": site.listen,
        "upstream": site.upstream + (" resolve" if resolver else ""),
        "upstream_zone": f"        zone {name} 64k;\n" if resolver else "",
        "upstream_idle": UPSTREAM_IDLE_S,
        "max_body": site.max_body_bytes,
        "read_timeout": site.read_timeout_s,
        "message_map": messages,
        "forwarded_for_why": site.forwarded_for_why,
        "events_api": _EVENTS_API_ERROR % {"name": site.name} if site.events_api else "",
    }


def render(*, sites: list[Site], pid: str, temp: str, nofile: int, retry_after_s: int = DEFAULT_RETRY_AFTER,
           resolver: str | None = None, user: str | None = None,
           origin: str = "Written by clicktrail (clicktrail/proxy.py) at every start; do not edit.") -> str:
    """The nginx config: one ``server`` per site, passing complete requests to its upstream.

    With ``resolver`` (a DNS server), the upstreams' names are re-resolved while nginx runs (needs
    nginx 1.27.3 or later), so a re-created app container is found at its new address.
    """
    listens = [site.listen for site in sites]
    if len(set(listens)) != len(listens):
        raise ServiceError(f"the collector and the API need different addresses; got {', '.join(listens)}")
    codes = "\n".join(f"        {status} {code};" for status, (code, _) in _ERRORS.items())
    return _TEMPLATE % {
        "origin": origin,
        "user": f"user {user};\n" if user else "",
        "resolver": f"    resolver {resolver} valid=10s ipv6=off;\n" if resolver else "",
        "retry_after": retry_after_s,
        "body_buffer": BODY_BUFFER,
        "timeout": CLIENT_TIMEOUT_S,
        "pid": pid,
        "temp": temp,
        "nofile": nofile,
        "worker_connections": WORKER_CONNECTIONS,
        "code_map": codes,
        "sites": "".join(_render_site(site, resolver) for site in sites),
    }


def compose_config(max_body_bytes: int = DEFAULT_MAX_BODY) -> str:
    """``deploy/nginx.conf``: the official nginx image in docker-compose, Docker's DNS for the apps."""
    sites = [collector_site(COMPOSE_LISTEN, COMPOSE_UPSTREAM, max_body_bytes),
             api_site(COMPOSE_API_LISTEN, COMPOSE_API_UPSTREAM)]
    return render(sites=sites, pid="/tmp/nginx.pid", temp="/tmp/nginx", nofile=WANTED_NOFILE, resolver="127.0.0.11",
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


def prepare(data_dir: str | Path, *sites: Site, retry_after_s: int = DEFAULT_RETRY_AFTER) -> Nginx:
    """Write the config for one nginx serving ``sites``; return how to run it.

    Its folder is ``DATA_DIR/nginx-<first site's port>``, so two fronts on one data folder do not
    share a pid file.
    """
    prefix = (Path(data_dir) / f"nginx-{sites[0].listen.rpartition(':')[2]}").resolve()
    temp = prefix / "temp"
    temp.mkdir(parents=True, exist_ok=True)  # nginx makes (and, as root, hands to its workers) the rest
    conf = prefix / "nginx.conf"
    pid = prefix / "nginx.pid"
    conf.write_text(render(sites=list(sites), pid=str(pid), temp=str(temp), nofile=_nofile(),
                           retry_after_s=retry_after_s, user=_worker_user(temp)))
    # -e: start-up errors to stderr too, not to the packaged /var/log/nginx (before the config is read).
    argv = [nginx_binary(), "-p", str(prefix), "-c", str(conf), "-e", "stderr", "-g", "daemon off;"]
    return Nginx(prefix, conf, pid, argv)


@dataclass(frozen=True)
class FrontEnd:
    """How ``clicktrail up`` runs the collector and the API behind nginx."""

    nginx: Nginx
    collector_bind: str  # loopback HOST:PORT gunicorn listens on, reached only through nginx
    collector_env: dict[str, str]  # environment overrides for the collector behind the proxy
    api_bind: str  # the API's gunicorn, likewise


def front_end(settings: config.Settings, bind: str, api_bind: str) -> FrontEnd:
    """One nginx on the public ``bind`` and ``api_bind``, the collector and the API on free
    loopback ports behind it.

    The collector trusts X-Forwarded-For there: only local processes reach that port, and nginx
    replaces whatever a client sent with the address it saw. The API reads no client address.
    """
    collector_bind, api_upstream = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    nginx = prepare(settings.paths.data_dir, collector_site(bind, collector_bind, settings.limits.max_body_bytes),
                    api_site(api_bind, api_upstream), retry_after_s=settings.limits.retry_after_s)
    nginx.check()
    return FrontEnd(nginx, collector_bind, {"CLICKTRAIL_TRUST_PROXY_HEADERS": "true"}, api_upstream)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] not in ([], ["--compose"]):
        sys.exit("usage: python -m clicktrail.proxy [--compose] > deploy/nginx.conf")
    sys.stdout.write(compose_config())
