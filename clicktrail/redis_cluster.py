"""A Redis Cluster on one machine, from Debian's redis-server: to try cluster mode, and for the tests.

``scripts/cluster up`` starts ``masters`` masters (3 by default) and as many replicas per master
as asked, each a daemon on loopback with its own port and data folder under ``var/cluster/``
(AOF on, as ``clicktrail up`` runs Redis), joins them with ``redis-cli --cluster create`` and
prints the ``redis+cluster://`` URL to give ``CLICKTRAIL_REDIS_URL``. ``scripts/cluster down``
stops them. Production clusters are made the same way on several machines (docs/scaling.md).
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from clicktrail.errors import ServiceError
from clicktrail.services import Server, _binary, _wait, is_listening

#: A cluster node also listens on its port + 10000 (the cluster bus); both must be free.
BUS_OFFSET = 10_000
STATE_FILE = "cluster.json"


@dataclass
class LocalCluster:
    folder: Path
    ports: list[int]
    node_timeout_ms: int = 2000
    servers: list[Server] = field(default_factory=list)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports) + "/"

    def server(self, port: int) -> Server:
        folder = self.folder / str(port)
        return Server("redis", "127.0.0.1", port, folder / "redis.pid", started=True)

    def start_node(self, port: int) -> Server:
        """Start (or restart, with its data and cluster identity kept) the node on ``port``."""
        folder = self.folder / str(port)
        folder.mkdir(parents=True, exist_ok=True)
        server = self.server(port)
        subprocess.run(
            [_binary("redis-server", "redis-server"), "--port", str(port), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(self.node_timeout_ms),
             "--dir", str(folder.resolve()), "--appendonly", "yes", "--appendfsync", "everysec",
             "--save", "", "--daemonize", "yes", "--pidfile", str(server.pid_file.resolve()),
             "--logfile", str((folder / "redis.log").resolve())],
            check=True,
        )
        _wait(lambda: is_listening("127.0.0.1", port), f"Redis on port {port}", 15)
        return server

    def stop(self) -> None:
        """Stop every node; all at once, as a master shutting down waits for its replicas."""
        threads = [threading.Thread(target=self.server(port).stop) for port in self.ports]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def free_cluster_ports(count: int) -> list[int]:
    """Ports free both for a node and for its cluster bus (port + 10000)."""
    ports: list[int] = []
    rng = random.Random()
    while len(ports) < count:
        port = rng.randrange(20_000, 55_000)
        if port not in ports and _free(port) and _free(port + BUS_OFFSET):
            ports.append(port)
    return ports


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def up(folder: Path, *, masters: int = 3, replicas: int = 1, ports: list[int] | None = None,
       node_timeout_ms: int = 2000) -> LocalCluster:
    """Start the nodes, create the cluster and wait until every node says it is ok."""
    count = masters * (1 + replicas)
    cluster = LocalCluster(folder, ports or free_cluster_ports(count), node_timeout_ms)
    if len(cluster.ports) != count:
        raise ServiceError(f"{masters} masters with {replicas} replicas each need {count} ports")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        cluster.servers = [cluster.start_node(port) for port in cluster.ports]
        subprocess.run(
            [_binary("redis-cli", "redis-tools"), "--cluster", "create",
             *(f"127.0.0.1:{port}" for port in cluster.ports),
             "--cluster-replicas", str(replicas), "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL,
        )
        _wait(lambda: all(_cluster_ok(port, count) for port in cluster.ports), "the Redis Cluster", 30)
    except BaseException:
        cluster.stop()
        raise
    (folder / STATE_FILE).write_text(json.dumps({"ports": cluster.ports, "node_timeout_ms": node_timeout_ms}))
    return cluster


def load(folder: Path) -> LocalCluster:
    """The cluster ``up`` started in ``folder``."""
    try:
        state = json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ServiceError(f"no cluster started in {folder} ({exc})") from exc
    return LocalCluster(folder, state["ports"], state["node_timeout_ms"])


def down(folder: Path) -> None:
    load(folder).stop()
    (folder / STATE_FILE).unlink(missing_ok=True)


def _cluster_ok(port: int, nodes: int) -> bool:
    """The node sees the cluster ok, with every node known and every replica attached."""
    info = _cli(port, "cluster", "info")
    if "cluster_state:ok" not in info or f"cluster_known_nodes:{nodes}" not in info:
        return False
    lines = _cli(port, "cluster", "nodes").splitlines()
    return all("connected" in line for line in lines)


def _cli(port: int, *args: str) -> str:
    done = subprocess.run([_binary("redis-cli", "redis-tools"), "-p", str(port), *args],
                          capture_output=True, text=True)
    return done.stdout



def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="scripts/cluster", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("up", "down", "url"))
    parser.add_argument("--folder", default="var/cluster", help="data folders and state (default var/cluster)")
    parser.add_argument("--masters", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=1, help="replicas per master")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    if args.action == "up":
        print(up(folder, masters=args.masters, replicas=args.replicas).url)
    elif args.action == "url":
        print(load(folder).url)
    else:
        down(folder)


if __name__ == "__main__":
    main()
