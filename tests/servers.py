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
    """ClickHouse servers of the test's own, the nodes of cluster ``name`` (docs/scaling.md): ``shards``
    shards of ``replicas`` replicas; replicas come with a ZooKeeper of the test's own."""

    def __init__(self, name: str = "ct_test", shards: int = 2, replicas: int = 1, **layout) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="ct-chcluster-"))
        if replicas > 1:
            layout.setdefault("zookeeper", services.free_port())
        self.layout = services.ClusterLayout(name, tuple(services.free_port() for _ in range(shards * replicas)),
                                             replicas=replicas, **layout)
        self.base_url = f"clickhouse://127.0.0.1:{self.layout.ports[0]}/default"
        # Fixed per node, so a node started again is the same replica at the same addresses.
        self.aside = {port: (services.free_port(), services.free_port()) for port in self.layout.ports}
        self.servers: dict[int, services.Server] = {}
        self.zookeeper: services.Server | None = None

    def start(self) -> None:
        if self.layout.zookeeper is not None:
            self.zookeeper = services.ensure_zookeeper(self.layout.zookeeper, self.folder)
        for port in self.layout.ports:
            self.start_node(port)

    def start_node(self, port: int) -> None:
        http_port, interserver_port = self.aside[port]
        self.servers[port] = services.ensure_clickhouse(f"clickhouse://127.0.0.1:{port}/default", self.folder,
                                                        http_port=http_port, cluster=self.layout,
                                                        interserver_port=interserver_port)

    def kill_node(self, port: int) -> None:
        """SIGKILL the node on ``port``: no flush, no goodbye to ZooKeeper."""
        pid = self.servers[port].pid()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while services.is_listening("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def cleanup(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        # A replicated node can take half a minute to shut down cleanly; its data is thrown away.
        with ThreadPoolExecutor(len(self.servers) or 1) as pool:
            list(pool.map(lambda server: server.stop(timeout=0 if self.layout.zookeeper else 30),
                          self.servers.values()))
        if self.zookeeper is not None:
            self.zookeeper.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
