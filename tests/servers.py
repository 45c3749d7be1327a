"""Real processes for tests: gunicorn collectors, sinks, and private Redis and ClickHouse servers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


from clicktrail import services
from clicktrail.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent


def env_for(settings: Settings, **overrides) -> dict:
    """The environment that makes a child process load ``settings`` with ``overrides`` (by name)."""
    env = {**os.environ, **settings.environment()}
    for key, value in overrides.items():
        env[ENV_PREFIX + key] = str(value)
    return env


def wait_http(url: str, timeout: float = 20.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


class ProcessGroup:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str, failpoint: str = "", **overrides) -> subprocess.Popen:
        """``clicktrail ARGS`` in a process of its own; with ``failpoint``, armed (tests/failpoints.py)."""
        env = env_for(self.settings, **overrides)
        command = [sys.executable, "-m", "clicktrail.cli", *args]
        if failpoint:
            command[2:3] = ["tests.failpoints", failpoint]
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
        proc = subprocess.Popen(command, env=env, start_new_session=True)
        self.procs.append(proc)
        return proc

    def collector(self, workers: int = 2, **overrides) -> str:
        port = services.free_port()
        self.start("collector", "--bind", f"127.0.0.1:{port}", "--workers", str(workers), **overrides)
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/healthz")
        return base

    def sink(self, failpoint: str = "", **overrides) -> subprocess.Popen:
        return self.start("sink", "--log-level", "WARNING", failpoint=failpoint, **overrides)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


class PrivateRedis:
    """A Redis of the test's own, with AOF as in production, that the test may stop and restart."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="ct-redis-"))
        self.port = services.free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.server: services.Server | None = None

    def start(self) -> None:
        self.server = services.ensure_redis(self.url, self.folder, appendonly=True)

    def stop(self) -> None:
        if self.server:
            self.server.stop()
            deadline = time.monotonic() + 10
            while services.is_listening("127.0.0.1", self.port) and time.monotonic() < deadline:
                time.sleep(0.05)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


class PrivateClickHouse:
    """A ClickHouse of the test's own, on its own ports and data folder."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="ct-clickhouse-"))
        self.port = services.free_port()
        self.http_port = services.free_port()
        self.base_url = f"clickhouse://127.0.0.1:{self.port}/default"
        self.server: services.Server | None = None

    def start(self) -> None:
        self.server = services.ensure_clickhouse(self.base_url, self.folder, http_port=self.http_port)

    def stop(self) -> None:
        if self.server:
            self.server.stop(timeout=30)
            deadline = time.monotonic() + 30
            while services.is_listening("127.0.0.1", self.port) and time.monotonic() < deadline:
                time.sleep(0.1)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


class PrivateClickHouseCluster:
    """Two ClickHouse servers of the test's own, the two shards of cluster ``name`` (docs/scaling.md)."""

    def __init__(self, name: str = "ct_test", shards: int = 2, **layout) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="ct-chcluster-"))
        self.layout = services.ClusterLayout(name, tuple(services.free_port() for _ in range(shards)), **layout)
        self.base_url = f"clickhouse://127.0.0.1:{self.layout.ports[0]}/default"
        self.servers: list[services.Server] = []

    def start(self) -> None:
        self.servers = services.ensure_clickhouse_cluster(self.layout, self.folder, any_http_port=True)

    def cleanup(self) -> None:
        for server in self.servers:
            server.stop(timeout=30)
        shutil.rmtree(self.folder, ignore_errors=True)
