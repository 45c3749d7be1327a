"""Start local Redis and ClickHouse servers when none is listening where the settings point.

Used by ``clicktrail up`` and by the test suite. A server already listening is used as it is;
one we start keeps its data under the project's data folder, listens on loopback only, and
runs as a daemon so it outlives the command that started it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from clicktrail.cluster import REPLICATED_SETTINGS, REQUIRED_SETTINGS
from clicktrail.errors import ServiceError

LOOPBACK = {"127.0.0.1", "localhost", "::1", ""}


def is_listening(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host or "127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, what: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise ServiceError(f"{what} did not start within {seconds:.0f}s")


def _binary(name: str, package: str) -> str:
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if candidate and Path(candidate).exists():
            return candidate
    raise ServiceError(f"{name} is not installed; install Debian's {package} package (make up does it)")


def is_alive(pid: int) -> bool:
    """True while process ``pid`` runs. A zombie is dead: a daemon's parent is the machine's init,
    which (in a container especially) may reap it only later."""
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True  # no /proc (not Linux): the signal said it exists


@dataclass
class Server:
    """A server we started: where it listens and how to stop it."""

    name: str
    host: str
    port: int
    pid_file: Path
    started: bool

    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self, timeout: float = 15.0) -> None:
        import os
        import signal

        pid = self.pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not is_alive(pid):
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def ensure_redis(url: str, data_dir: Path, *, appendonly: bool = True) -> Server:
    """Use the Redis at ``url``, or start one there (AOF on, so the stream survives a restart)."""
    host, port = _host_port(url, 6379)
    folder = data_dir / f"redis-{port}"
    server = Server("redis", host, port, folder / "redis.pid", started=False)
    if is_listening(host, port):
        return server
    if host not in LOOPBACK:
        raise ServiceError(f"no Redis listening at {host}:{port}, and clicktrail only starts local ones")
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [_binary("redis-server", "redis-server"), "--port", str(port), "--bind", "127.0.0.1",
         "--dir", str(folder.resolve()), "--appendonly", "yes" if appendonly else "no",
         "--appendfsync", "everysec", "--save", "", "--daemonize", "yes",
         "--pidfile", str(server.pid_file.resolve()), "--logfile", str((folder / "redis.log").resolve())],
        check=True,
    )
    _wait(lambda: is_listening(host, port), f"Redis on port {port}", 15)
    server.started = True
    return server


_CLICKHOUSE_CONFIG = """<?xml version="1.0"?>
<yandex>
  <logger>
    <level>warning</level>
    <log>{folder}/log/server.log</log>
    <errorlog>{folder}/log/error.log</errorlog>
    <size>50M</size>
    <count>2</count>
  </logger>
  <listen_host>127.0.0.1</listen_host>
  <tcp_port>{tcp_port}</tcp_port>
  <http_port>{http_port}</http_port>
  <path>{folder}/data/</path>
  <tmp_path>{folder}/tmp/</tmp_path>
  <user_files_path>{folder}/user_files/</user_files_path>
  <format_schema_path>{folder}/format_schemas/</format_schema_path>
  <timezone>UTC</timezone>
  <mark_cache_size>268435456</mark_cache_size>
  <uncompressed_cache_size>268435456</uncompressed_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
  </users>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage>{profile}</default></profiles>
  <quotas><default></default></quotas>
{extra}</yandex>
"""


@dataclass(frozen=True)
class ClusterLayout:
    """A ClickHouse cluster on this machine: a name and each node's TCP port.

    The ports are taken ``replicas`` at a time, one shard each: ``(a, b, c, d)`` with two replicas
    is shard 1 on a and b, shard 2 on c and d. With ``zookeeper`` (the port of a ZooKeeper on
    this machine, see ensure_zookeeper) every node gets the ZooKeeper and its own ``{shard}`` and
    ``{replica}`` macros, so ``migrate --cluster`` makes the tables replicated.
    """

    name: str
    ports: tuple[int, ...]
    #: What every node's default profile sets: what clicktrail.cluster requires (tests leave it out).
    settings: tuple[tuple[str, str], ...] = tuple(REQUIRED_SETTINGS.items())
    replicas: int = 1
    zookeeper: int | None = None

    def __post_init__(self) -> None:
        if self.replicas < 1 or len(self.ports) % self.replicas:
            raise ServiceError(f"{len(self.ports)} ports cannot make shards of {self.replicas} replicas")
        if self.replicas > 1 and self.zookeeper is None:
            raise ServiceError("replicas need a ZooKeeper: without one every replica would be a table of its own")

    def shards(self) -> list[tuple[int, ...]]:
        return [self.ports[i:i + self.replicas] for i in range(0, len(self.ports), self.replicas)]

    def profile(self) -> str:
        settings = dict(self.settings)
        if self.zookeeper is not None and self.settings:
            settings.update(REPLICATED_SETTINGS)
        return "".join(f"<{name}>{value}</{name}>" for name, value in settings.items())

    def remote_servers(self) -> str:
        # With replicated tables a Distributed insert writes one replica and ZooKeeper copies it to
        # the others (internal_replication); without, it would write every replica itself.
        internal = "<internal_replication>true</internal_replication>" if self.zookeeper is not None else ""
        shards = "".join(
            f"<shard>{internal}"
            + "".join(f"<replica><host>127.0.0.1</host><port>{port}</port></replica>" for port in shard)
            + "</shard>" for shard in self.shards())
        return f"  <remote_servers><{self.name}>{shards}</{self.name}></remote_servers>\n"

    def node_config(self, port: int, interserver_port: int) -> str:
        """The cluster's part of the config of the node on ``port``."""
        extra = self.remote_servers()
        if self.zookeeper is None:
            return extra
        shard = next(n for n, ports in enumerate(self.shards(), 1) if port in ports)
        return extra + (
            f"  <zookeeper><node><host>127.0.0.1</host><port>{self.zookeeper}</port></node>"
            "<session_timeout_ms>10000</session_timeout_ms></zookeeper>\n"
            f"  <macros><shard>{shard}</shard><replica>127.0.0.1-{port}</replica></macros>\n"
            # Replicas fetch parts from each other over this port; each node needs its own.
            f"  <interserver_http_host>127.0.0.1</interserver_http_host>\n"
            f"  <interserver_http_port>{interserver_port}</interserver_http_port>\n")


def ensure_clickhouse(url: str, data_dir: Path, *, http_port: int | None = None,
                      cluster: ClusterLayout | None = None, interserver_port: int | None = None) -> Server:
    """Use the ClickHouse at ``url``, or start one there with the project's own config and data folder.

    With ``cluster``, the server started knows that cluster (``remote_servers``) and has the
    settings its Distributed tables need (see ClusterLayout).
    """
    host, port = _host_port(url, 9000)
    folder = (data_dir / f"clickhouse-{port}").resolve()
    server = Server("clickhouse", host, port, folder / "clickhouse.pid", started=False)
    if is_listening(host, port):
        return server
    if host not in LOOPBACK:
        raise ServiceError(f"no ClickHouse listening at {host}:{port}, and clicktrail only starts local ones")
    for sub in ("data", "tmp", "log", "user_files", "format_schemas"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    _forget_stale_pid(server)
    config = folder / "config.xml"
    profile, extra = "", ""
    if cluster:
        profile, extra = cluster.profile(), cluster.node_config(port, interserver_port or free_port())
    config.write_text(_CLICKHOUSE_CONFIG.format(folder=folder, tcp_port=port, http_port=http_port or free_port(),
                                                profile=profile, extra=extra))
    subprocess.run(
        [_binary("clickhouse-server", "clickhouse-server"), f"--config-file={config}", "--daemon",
         f"--pid-file={server.pid_file}"],
        check=True, cwd=folder, stdout=subprocess.DEVNULL,
    )
    _wait(lambda: _clickhouse_answers(host, port), f"ClickHouse on port {port}", 60)
    server.started = True
    return server


def _forget_stale_pid(server: Server) -> None:
    """Remove the pid file a killed server left (crash, SIGKILL, power): ClickHouse 18.16 refuses
    to start as a daemon while its pid file exists, whatever process it names."""
    pid = server.pid()
    if pid is not None and not is_alive(pid):
        server.pid_file.unlink(missing_ok=True)


def _clickhouse_answers(host: str, port: int) -> bool:
    if not is_listening(host, port):
        return False
    from clickhouse_driver import Client

    try:
        Client(host=host, port=port, connect_timeout=1).execute("SELECT 1")
        return True
    except Exception:
        return False


def ensure_clickhouse_cluster(layout: ClusterLayout, data_dir: Path, *, any_http_port: bool = False) -> list[Server]:
    """Start (or use) one ClickHouse per node of ``layout`` on this machine, each knowing the cluster,
    after the layout's ZooKeeper if it has one (last in the list returned).

    Each one's HTTP port is its TCP port + 1 and its interserver port (replicas) TCP port + 2,
    or any free ports with ``any_http_port``.
    """
    keeper = []
    if layout.zookeeper is not None:
        keeper = [ensure_zookeeper(layout.zookeeper, data_dir / layout.name)]
    return [ensure_clickhouse(f"clickhouse://127.0.0.1:{port}/default", data_dir / layout.name,
                              http_port=free_port() if any_http_port else port + 1, cluster=layout,
                              interserver_port=free_port() if any_http_port else port + 2)
            for port in layout.ports] + keeper


_ZOOKEEPER_CONFIG = """# Written by clicktrail (clicktrail/services.py); a standalone ZooKeeper for replicated tables.
tickTime=500
initLimit=10
syncLimit=5
dataDir={folder}/data
clientPort={port}
clientPortAddress=127.0.0.1
# The admin web server would take port 8080; the four-letter "ruok" is how we see it is up.
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,mntr
autopurge.snapRetainCount=3
autopurge.purgeInterval=1
"""
ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")


def ensure_zookeeper(port: int, data_dir: Path) -> Server:
    """Use the ZooKeeper on ``port``, or start a standalone one with our own config and data folder
    (Debian's ``zookeeper`` package: its jar, never its /etc/zookeeper service)."""
    folder = (data_dir / f"zookeeper-{port}").resolve()
    server = Server("zookeeper", "127.0.0.1", port, folder / "zookeeper.pid", started=False)
    if is_listening("127.0.0.1", port):
        return server
    if not ZOOKEEPER_JAR.exists():
        raise ServiceError("ZooKeeper is not installed; install Debian's zookeeper package (scripts/bootstrap --test)")
    (folder / "data").mkdir(parents=True, exist_ok=True)
    config = folder / "zoo.cfg"
    config.write_text(_ZOOKEEPER_CONFIG.format(folder=folder, port=port))
    with open(folder / "zookeeper.log", "ab") as log:
        # A session of its own, so it outlives the command that started it, like a daemon.
        proc = subprocess.Popen(
            [_binary("java", "default-jre-headless"), "-Xmx256m", "-XX:+UseSerialGC", "-Dorg.slf4j.simpleLogger.defaultLogLevel=info",
             f"-Dzookeeper.log.dir={folder}", "-cp", _zookeeper_classpath(),
             "org.apache.zookeeper.server.ZooKeeperServerMain", str(config)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=folder, start_new_session=True)
    server.pid_file.write_text(f"{proc.pid}\n")
    _wait(lambda: _zookeeper_answers(port), f"ZooKeeper on port {port}", 60)
    server.started = True
    return server


def _zookeeper_classpath() -> str:
    # Debian's jar has no logger bound: add a simple one (to stderr, so zookeeper.log) when present.
    simple = [Path("/usr/share/java/maven3-slf4j-provider.jar"), Path("/usr/share/java/maven-shared-utils.jar")]
    return ":".join([str(ZOOKEEPER_JAR), *(str(jar) for jar in simple if jar.exists())] if all(
        jar.exists() for jar in simple) else [str(ZOOKEEPER_JAR)])


def _zookeeper_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(b"ruok")
            return conn.recv(4) == b"imok"
    except OSError:
        return False
