"""docker-compose.cluster.yml agrees with the code: its settings load, its ClickHouse cluster is the
one `migrate --cluster` names, its Redis nodes are the ones the URL and the init service list, and
every long-running service has a healthcheck.

Docker cannot pull images on the test machines, so the file is checked here as data; `docker
compose -f docker-compose.cluster.yml config` checks it against Compose's own schema where Compose
is installed (docs/scaling.md, "docker-compose.cluster.yml").
"""

from __future__ import annotations

import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from clicktrail import cluster, config, redis_client

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.cluster.yml").read_text())
SERVICES = COMPOSE["services"]
CLUSTER_CONFIG = ROOT / "deploy" / "clickhouse-cluster"


def interpolated(value: str) -> str:
    """``value`` as Compose would make it with no variable set (``${X:?...}``: a value given)."""
    value = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "0123456789abcdef" * 4, value)


def clicktrail_services() -> dict[str, dict]:
    return {name: service for name, service in SERVICES.items() if service.get("command", [""])[0] == "clicktrail"}


def environment(service: dict) -> dict[str, str]:
    return {name: interpolated(str(value)) for name, value in service.get("environment", {}).items()}


def remote_servers() -> dict[str, list[tuple[str, int]]]:
    """Each cluster of remote_servers.xml: its shards' (host, port)."""
    root = ET.parse(CLUSTER_CONFIG / "remote_servers.xml").getroot()
    return {c.tag: [(r.findtext("host"), int(r.findtext("port"))) for s in c.findall("shard") for r in s.findall("replica")]
            for c in root.find("remote_servers")}


@pytest.mark.parametrize("name", sorted(clicktrail_services()))
def test_every_clicktrail_service_loads_its_settings(name):
    env = environment(SERVICES[name])
    assert all(key.startswith(config.ENV_PREFIX) for key in env), env
    # Every variable is a setting (an unknown name is refused by name), of the right type.
    settings = config.load({key.removeprefix(config.ENV_PREFIX): value for key, value in env.items()})
    nodes, *_ = redis_client.cluster_address(settings.redis.url)
    redis_nodes = sorted(name for name in SERVICES if re.fullmatch(r"redis-\d+", name))
    assert sorted(f"{host}" for host, port in nodes) == redis_nodes and {port for _, port in nodes} == {6379}
    assert settings.stream.shards >= 3 and settings.attributor.partitions > 1
    host = settings.clickhouse.url.split("@")[1].split(":")[0]
    assert host in SERVICES and SERVICES[host]["image"].startswith("clickhouse/clickhouse-server:")


def test_every_long_running_service_has_a_healthcheck_and_one_shot_services_are_waited_for():
    one_shot = {name for name, service in SERVICES.items() if service.get("restart") == "no"}
    assert one_shot == {"redis-init", "migrate"}
    for name, service in SERVICES.items():
        if name not in one_shot:
            assert service.get("restart") == "unless-stopped", name
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dependency, how in service.get("depends_on", {}).items():
            want = "service_completed_successfully" if dependency in one_shot else "service_healthy"
            assert how == {"condition": want}, (name, dependency)
    for name in clicktrail_services():
        if name != "migrate":
            assert "redis-init" in SERVICES[name]["depends_on"], name


def test_the_clickhouse_cluster_is_the_one_migrate_names_with_a_shard_per_server():
    command = SERVICES["migrate"]["command"]
    name = command[command.index("--cluster") + 1]
    clusters = remote_servers()
    assert list(clusters) == [name]
    servers = sorted(s for s, service in SERVICES.items()
                     if service.get("image", "").startswith("clickhouse/clickhouse-server:"))
    assert sorted(host for host, _ in clusters[name]) == servers and len(servers) == 2
    assert {port for _, port in clusters[name]} == {9000}
    for server in servers:
        mounts = SERVICES[server]["volumes"]
        assert "./deploy/clickhouse-cluster/remote_servers.xml:/etc/clickhouse-server/config.d/" \
               "remote_servers.xml:ro" in mounts
        assert any(m.startswith("./deploy/clickhouse-cluster/profile.xml:/etc/clickhouse-server/users.d/")
                   for m in mounts)
        assert SERVICES["migrate"]["depends_on"][server] == {"condition": "service_healthy"}


def test_every_server_profile_sets_what_the_distributed_tables_need():
    profile = ET.parse(CLUSTER_CONFIG / "profile.xml").getroot().find("profiles/default")
    assert {child.tag: child.text for child in profile} == cluster.REQUIRED_SETTINGS


def test_the_redis_cluster_is_three_masters_with_a_replica_each_with_aof():
    nodes = sorted(name for name in SERVICES if re.fullmatch(r"redis-\d+", name))
    init = SERVICES["redis-init"]["command"][-1]
    listed = re.search(r'nodes="([^"]+)"', init).group(1).split()
    assert listed == nodes
    replicas = int(re.search(r"--cluster-replicas (\d+)", init).group(1))
    assert replicas == 1 and len(nodes) == 3 * (1 + replicas)
    assert set(SERVICES["redis-init"]["depends_on"]) == set(nodes)
    for name in nodes:
        node = SERVICES[name]
        flags = shlex.split(node["command"][-1])
        options = dict(zip(flags[3::2], flags[4::2]))
        assert flags[:3] == ["exec", "docker-entrypoint.sh", "redis-server"]
        assert options["--cluster-enabled"] == "yes" and options["--appendonly"] == "yes"
        assert options["--save"] == "" and options["--maxmemory-policy"] == "noeviction"
        assert node["hostname"] == name and node["volumes"] == [f"{name}-data:/data"]
        assert f"{name}-data" in COMPOSE["volumes"]
