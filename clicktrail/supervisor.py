"""``clicktrail up``: every part of the system in the foreground, supervised, until Ctrl-C.

Each part is a child process described by a :class:`Child` (name, command, health URL). A child
that dies, whatever its exit status (SIGKILL included), is logged and started again after a
capped exponential backoff; the others keep serving meanwhile. Only SIGINT or SIGTERM to ``up``
stops everything: the children in their listed order (the collector first, so nothing arrives
that the sinks will not store; then the sinks drain their batches), within ``STOP_BOUND_S``.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from clicktrail import clickhouse, config, proxy, redis_client, schema, services
from clicktrail.backoff import Backoff
from clicktrail.errors import ConfigError
from clicktrail.lifecycle import StopFlag, retry_until_stopped

log = logging.getLogger("clicktrail.up")

#: A child that ran this long before dying was healthy: its next restart starts the backoff over.
STABLE_S = 10.0
#: Restart delays: from half a second, doubling for each crash in a row, up to this.
RESTART_CAP_S = 30.0
#: From the first stop signal to the last child gone (then what is left is killed).
STOP_BOUND_S = 60.0
#: How long one child may take to stop before the next is asked (gunicorn's graceful timeout is 10 s).
CHILD_STOP_S = 30.0
POLL_S = 0.2


@dataclass
class Child:
    """One supervised process: ``clicktrail <args>`` unless ``argv`` names another program."""

    name: str
    args: list[str] = field(default_factory=list)
    argv: list[str] | None = None
    env: dict[str, str] | None = None  # added to up's own environment
    health_url: str | None = None  # answered 200 once it serves; "Ready" waits for it

    def command(self) -> list[str]:
        return self.argv or [sys.executable, "-m", "clicktrail.cli", *self.args]


class Running:
    """A child's current process and its restart bookkeeping."""

    def __init__(self, spec: Child) -> None:
        self.spec = spec
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.restart_at: float | None = None  # set while it waits out a backoff
        self.backoff = Backoff(base=0.5, cap=RESTART_CAP_S)

    def start(self) -> None:
        env = {**os.environ, **self.spec.env} if self.spec.env else None
        # Its own process group: the terminal's Ctrl-C reaches only us, so we stop the children in
        # order, and whatever a dead child leaves behind (gunicorn's workers) can be found and ended.
        self.proc = subprocess.Popen(self.spec.command(), env=env, start_new_session=True)
        self.started_at = time.monotonic()
        self.restart_at = None

    def start_or_schedule(self, now: float) -> bool:
        """Start it; if it cannot even be started (its program is missing...), try again later."""
        try:
            self.start()
            return True
        except OSError as exc:
            self.proc = None
            delay = self.backoff.next_delay()
            self.restart_at = now + delay
            log.error("%s could not be started (%s); retrying in %.1fs", self.spec.name, exc, delay)
            return False

    def check(self, now: float) -> None:
        """Notice a death and schedule the restart; start it again when its delay is over."""
        if self.restart_at is not None:
            if now >= self.restart_at:
                self._signal_group(signal.SIGKILL)  # leftovers that ignored the earlier SIGTERM
                if self.start_or_schedule(now):
                    log.info("%s restarted (pid %d)", self.spec.name, self.proc.pid)
            return
        if self.proc is None or self.proc.poll() is None:
            return
        ran = now - self.started_at
        if ran >= STABLE_S:
            self.backoff.reset()
        delay = self.backoff.next_delay()
        # A dead gunicorn master leaves its workers serving the old socket: ask them to finish.
        self._signal_group(signal.SIGTERM)
        self.restart_at = now + delay
        crashes = f", {self.backoff.failures} failures in a row" if self.backoff.failures > 1 else ""
        log.error("%s %s after %.1fs; restarting in %.1fs%s", self.spec.name, describe(self.proc.returncode),
                  ran, delay, crashes)

    def stop(self, deadline: float, forced: StopFlag) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self._signal_group(signal.SIGKILL)
            return
        self.proc.send_signal(signal.SIGTERM)
        until = min(deadline, time.monotonic() + CHILD_STOP_S)
        while self.proc.poll() is None and time.monotonic() < until and not forced.is_set:
            time.sleep(0.05)
        if self.proc.poll() is None:
            log.warning("%s did not stop in time; killing it", self.spec.name)
        self._signal_group(signal.SIGKILL)
        self.proc.wait()

    def _signal_group(self, signum: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass  # nothing of it is left


def describe(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


class Supervisor:
    """Keeps every child running until told to stop."""

    def __init__(self, children: list[Child]) -> None:
        self.children = [Running(spec) for spec in children]
        self.stop_flag = StopFlag()  # the first SIGINT/SIGTERM
        self.forced = StopFlag()  # a second one: kill what is left now

    def install_signals(self) -> None:
        def handle(signum, _frame):
            if self.stop_flag.is_set:
                self.forced.set()
            self.stop_flag.set()

        signal.signal(signal.SIGINT, handle)
        signal.signal(signal.SIGTERM, handle)

    def start_all(self) -> None:
        for child in self.children:
            child.start_or_schedule(time.monotonic())

    def wait_ready(self, seconds: float = 60.0) -> None:
        """Return once every child with a health URL answers it (restarting any that die meanwhile)."""
        # Last started, first asked: the front end (started first) is asked only once what it
        # fronts answers, or it would log every refused connection of the start-up to the terminal.
        waiting = [child.spec.health_url for child in reversed(self.children) if child.spec.health_url]
        deadline = time.monotonic() + seconds
        while waiting and time.monotonic() < deadline and not self.stop_flag.is_set:
            while waiting and _answers(waiting[0]):
                waiting.pop(0)
            if waiting and not self.stop_flag.wait(POLL_S):
                self._check_all()
        for url in waiting if not self.stop_flag.is_set else ():
            log.error("%s did not answer within %.0fs; going on, and restarting what dies", url, seconds)

    def watch(self) -> None:
        """Restart what dies, until a stop signal."""
        while not self.stop_flag.wait(POLL_S):
            self._check_all()

    def _check_all(self) -> None:
        now = time.monotonic()
        for child in self.children:
            child.check(now)

    def stop_all(self) -> None:
        deadline = time.monotonic() + STOP_BOUND_S
        for child in self.children:  # in order: the collector first, then the sinks drain their batches
            child.stop(deadline, self.forced)
            print(f"stopped {child.spec.name}", flush=True)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


def children(*, front: proxy.FrontEnd, bind: str, sinks: int, attributors: int = 1) -> list[Child]:
    """What ``up`` runs, in stop order; one line per part."""
    return [
        # nginx on the public --bind and --api-bind buffers every request; the collector and the
        # API listen behind it on loopback.
        Child("proxy", argv=front.nginx.argv, health_url=f"http://{bind}/healthz"),
        Child("collector", ["collector", "--bind", front.collector_bind], env=front.collector_env,
              health_url=f"http://{front.collector_bind}/healthz"),
        *(Child(f"sink-{i + 1}", ["sink"]) for i in range(sinks)),
        *(Child("attributor" if attributors == 1 else f"attributor-{i + 1}", ["attributor"])
          for i in range(attributors)),
        Child("scheduler", ["scheduler"]),
        # On one machine, reports and pollers must never slow collection: the API yields the CPU.
        Child("api", ["api", "--bind", front.api_bind, "--nice", "5"], health_url=f"http://{front.api_bind}/healthz"),
    ]


# -- before the children: servers, schema, secret ---------------------------------------------------

def _prepare(settings: config.Settings, start_services: bool, stop: StopFlag) -> bool:
    """Start or wait for Redis and ClickHouse, migrate; False if a stop signal came first."""
    data = Path(settings.paths.data_dir)
    if start_services:
        for name, url, ensure in (("redis", settings.redis.url, services.ensure_redis),
                                  ("clickhouse", settings.clickhouse.url, services.ensure_clickhouse)):
            if name == "redis" and redis_client.is_cluster_url(url):
                continue  # a Redis Cluster is started by scripts/cluster (or is someone else's)
            if (urlsplit(url).hostname or "") in services.LOOPBACK:
                server = ensure(url, data)
                how = "started, data in " + str(server.pid_file.parent) if server.started else "already running"
                print(f"{name:<11} {server.host}:{server.port} ({how})", flush=True)
    # Servers elsewhere (or --no-services) may be down or still starting: wait, do not crash.
    r = redis_client.patient(settings.redis.url)
    if retry_until_stopped(f"Redis at {_where(settings.redis.url)}", r.ping, stop) is None:
        return False
    url = settings.clickhouse.url
    client = clickhouse.connect(url, database="default")
    db = clickhouse.database_of(url)
    if retry_until_stopped(f"ClickHouse at {_where(url)}", lambda: schema.migrate(client, db), stop) is None:
        return False
    print(f"{'schema':<11} version {schema.current_version(client, db)}", flush=True)
    if not os.environ.get(config.ENV_PREFIX + "SECRET_KEY"):
        print(f"{'secret key':<11} {config.secret_path(settings.paths.data_dir).resolve()} (generated once, mode 0600; "
              f"set {config.ENV_PREFIX}SECRET_KEY to choose your own)", flush=True)
    return True


def _where(url: str) -> str:
    parts = urlsplit(url)
    if redis_client.is_cluster_url(url):
        return "the cluster of " + parts.netloc.rpartition("@")[2]
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def command_name() -> str:
    """How the user runs this CLI from here: `clicktrail` when that is on PATH, else its path.

    `scripts/up` runs `.venv/bin/clicktrail`, which is not on a newcomer's PATH; a hint that says
    plain `clicktrail` would fail for them as written.
    """
    own = os.path.abspath(sys.argv[0])
    found = shutil.which("clicktrail")
    if not own.endswith("clicktrail") or (found and os.path.samefile(found, own)):
        return "clicktrail"  # on PATH, or run some other way (python -m): the installed name
    relative = os.path.relpath(own)
    return own if relative.startswith("..") else relative  # a path with a slash runs as written


def check_attributors(settings: config.Settings, attributors: int) -> None:
    """Refuse more attributors than partitions: the extra ones could only stand by.

    ``up`` does not choose the count itself: every process must agree on it, and lowering it
    later means draining partitions first (docs/scaling.md), so it is the user's setting.
    """
    partitions = settings.attributor.partitions
    if attributors > partitions:
        raise ConfigError(
            f"--attributors {attributors} needs {config.ENV_PREFIX}ATTRIBUTION_PARTITIONS of at least {attributors} "
            f"(it is {partitions}): each partition has one attributor at a time. Set it for every process "
            f"(e.g. {config.ENV_PREFIX}ATTRIBUTION_PARTITIONS={max(16, attributors)}, room to add attributors "
            "later; changing it means a drain, see docs/scaling.md)")


def up(settings: config.Settings, *, bind: str, api_bind: str, sinks: int, start_services: bool,
       attributors: int = 1) -> None:
    check_attributors(settings, attributors)
    front = proxy.front_end(settings, bind, api_bind)
    supervisor = Supervisor(children(front=front, bind=bind, sinks=sinks, attributors=attributors))
    supervisor.install_signals()  # first, so a Ctrl-C while waiting for a server stops at once
    if not _prepare(settings, start_services, supervisor.stop_flag):
        sys.exit(0)
    supervisor.start_all()
    supervisor.wait_ready()
    cli = command_name()
    print(f"{'collector':<11} http://{bind} (public URL {settings.site.public_url})", flush=True)
    print(f"{'api':<11} http://{api_bind}", flush=True)
    print(f"{'dashboard':<11} http://{api_bind}/dashboard (sign in with a token: {cli} token create --advertiser ADV --scope reports)", flush=True)
    print(f"{'proxy':<11} nginx on {bind} in front of the collector at {front.collector_bind}, "
          f"and on {api_bind} in front of the API at {front.api_bind}", flush=True)
    print(f"{'sinks':<11} {sinks} reading the Redis stream into ClickHouse", flush=True)
    if attributors == 1:
        print(f"{'attributor':<11} attributing new conversions", flush=True)
    else:
        print(f"{'attributors':<11} {attributors} sharing {settings.attributor.partitions} partitions "
              f"(attributor-1 to attributor-{attributors})", flush=True)
    print(f"{'scheduler':<11} delivering scheduled reports, evaluating alert rules", flush=True)
    print(f"Ready. Register a pixel: {cli} pixel create --advertiser ADV --domain shop.example.com", flush=True)
    print("Press Ctrl-C to stop.", flush=True)
    supervisor.watch()
    supervisor.stop_all()
    sys.exit(0)
