"""``clicktrail up``: every part of the system in the foreground, until Ctrl-C."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from clicktrail import clickhouse, proxy, schema, services

log = logging.getLogger("clicktrail.up")


def _start(name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    # Children get their own process group, so the terminal's Ctrl-C reaches only us and we stop
    # them in order (front end and collector first, so nothing arrives that the sinks will not store).
    return subprocess.Popen([sys.executable, "-m", "clicktrail.cli", *args], start_new_session=True,
                            env={**os.environ, **env} if env else None)


def _prepare(settings: dict, start_services: bool) -> None:
    data = Path(settings["DATA_DIR"])
    if start_services:
        for server in (services.ensure_redis(settings["REDIS_URL"], data),
                       services.ensure_clickhouse(settings["CLICKHOUSE_URL"], data)):
            how = "started, data in " + str(server.pid_file.parent) if server.started else "already running"
            print(f"{server.name:<11} {server.host}:{server.port} ({how})", flush=True)
    url = settings["CLICKHOUSE_URL"]
    client = clickhouse.connect(url, database="default")
    schema.migrate(client, clickhouse.database_of(url))
    print(f"{'schema':<11} version {schema.current_version(client, clickhouse.database_of(url))}", flush=True)


def _wait_healthy(url: str, proc: subprocess.Popen, seconds: float = 30.0) -> None:
    """Return once the collector answers, so "Ready" is printed only when it is."""
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    log.error("the collector did not answer at %s", url)


def up(settings: dict, *, bind: str, api_bind: str, sinks: int, start_services: bool) -> None:
    _prepare(settings, start_services)
    # nginx on the public --bind buffers every request; the collector listens behind it on loopback.
    front = proxy.front_end(settings, bind)
    children: list[tuple[str, subprocess.Popen]] = [
        ("proxy", subprocess.Popen(front.nginx.argv, start_new_session=True)),
        ("collector", _start("collector", ["collector", "--bind", front.collector_bind], front.collector_env)),
    ]
    children += [(f"sink-{i + 1}", _start("sink", ["sink"])) for i in range(sinks)]
    children += [("attributor", _start("attributor", ["attributor"])),
                 # On one machine, reports and pollers must never slow collection: the API yields the CPU.
                 ("api", _start("api", ["api", "--bind", api_bind, "--nice", "5"]))]
    _wait_healthy(f"http://{bind}/healthz", children[0][1])  # through the proxy
    _wait_healthy(f"http://{api_bind}/healthz", children[-1][1])
    print(f"{'collector':<11} http://{bind} (public URL {settings['PUBLIC_URL']})", flush=True)
    print(f"{'proxy':<11} nginx on {bind} in front of the collector at {front.collector_bind}", flush=True)
    print(f"{'api':<11} http://{api_bind}", flush=True)
    print(f"{'sinks':<11} {sinks} reading the Redis stream into ClickHouse", flush=True)
    print(f"{'attributor':<11} attributing new conversions", flush=True)
    print("Ready. Register a pixel: clicktrail pixel create --advertiser ADV --domain shop.example.com", flush=True)
    print("Press Ctrl-C to stop.", flush=True)

    stopping = False

    def _stop(signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    exit_code = 0
    while not stopping:
        for name, proc in children:
            if proc.poll() is not None:
                log.error("%s exited with status %s; stopping everything", name, proc.returncode)
                stopping, exit_code = True, 1
        time.sleep(0.5)
    for name, proc in children:  # collector first, then the sinks drain their batches
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        print(f"stopped {name}", flush=True)
    sys.exit(exit_code)
