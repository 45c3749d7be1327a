"""Fixtures: real Redis and ClickHouse, a throwaway ClickHouse database, real gunicorn processes.

Shared servers: the Redis at CLICKTRAIL_TEST_REDIS_URL (default DB 15 of 127.0.0.1:6379, flushed
before every test) and the ClickHouse at CLICKTRAIL_TEST_CLICKHOUSE_URL (default 127.0.0.1:9000)
in a database of its own, dropped at the end. Either is started locally when none listens.
Tests that stop a server start their own (see tests/servers.py).
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import pytest

from clicktrail import clickhouse, cluster, config, redis_client, schema, services
from clicktrail.lifecycle import StopFlag
from pixel import registry
from sink.worker import Sink
from tests import servers

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("CLICKTRAIL_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
CLICKHOUSE_BASE = os.environ.get("CLICKTRAIL_TEST_CLICKHOUSE_URL", "clickhouse://127.0.0.1:9000/default")
#: A cluster of the servers' remote_servers configuration: the suite then runs on Distributed
#: tables (CLICKTRAIL_TEST_CLICKHOUSE_URL names one of its nodes; see docs/scaling.md).
CLICKHOUSE_CLUSTER = os.environ.get("CLICKTRAIL_TEST_CLICKHOUSE_CLUSTER", "")
ARTIFACTS = ROOT / "test-artifacts"
DATA_TABLES = ("events", "touchpoints", "credits", "attribution_candidates", "event_identities",
               "touch_identities", "conversion_stats", "feed_changes", "touch_stats", "bot_touch_stats", "costs",
               "exchange_rates")


@pytest.fixture(scope="session")
def ch_database():
    """A ClickHouse database for this test run, migrated, dropped at the end."""
    data = ROOT / "var"
    services.ensure_redis(REDIS_URL, data)
    services.ensure_clickhouse(CLICKHOUSE_BASE, data)
    name = f"ct_test_{secrets.token_hex(4)}"
    client = clickhouse.connect(CLICKHOUSE_BASE, database="default")
    if CLICKHOUSE_CLUSTER:
        cluster.migrate(clickhouse.with_database(CLICKHOUSE_BASE, name), name, CLICKHOUSE_CLUSTER)
    else:
        schema.migrate(client, name)
    locals_ = cluster.local_clients(client, name)
    yield name
    for node, local in locals_:
        node.execute(f"DROP DATABASE IF EXISTS {local}")
        if local != name:
            node.execute(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture
def settings(ch_database) -> config.Settings:
    """Settings every in-process component and spawned process of a test shares."""
    return config.load(
        {
            "REDIS_URL": REDIS_URL,
            "CLICKHOUSE_URL": clickhouse.with_database(CLICKHOUSE_BASE, ch_database),
            "DATA_DIR": str(ARTIFACTS / "var"),
            "SINK_BATCH_WAIT_MS": 200,
            "CLAIM_IDLE_MS": 1000,
            "ATTRIBUTOR_LEASE_S": 2,
        }
    )


def where(settings: config.Settings) -> dict:
    """The overrides that point an app at the test's Redis, ClickHouse database and data folder."""
    return {"REDIS_URL": settings.redis.url, "CLICKHOUSE_URL": settings.clickhouse.url,
            "DATA_DIR": settings.paths.data_dir}


@pytest.fixture
def r(settings):
    client = redis_client.patient(settings.redis.url)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def ch(settings, ch_database):
    client = clickhouse.connect(settings.clickhouse.url)
    for node, local in cluster.local_clients(client, ch_database):
        for table in DATA_TABLES:
            node.execute(f"TRUNCATE TABLE {local}.{table}")
    return client


@pytest.fixture
def app(settings, r):
    from collector import create_app

    return create_app(where(settings))


@pytest.fixture
def client(app):
    return app.test_client()


class Tenant:
    """An advertiser with a pixel on shop.example and an events token."""

    def __init__(self, r, advertiser: str, domain: str = "shop.example") -> None:
        self.advertiser = advertiser
        self.domain = domain
        self.pixel_id = registry.create_pixel(r, advertiser, [domain])
        self.token = registry.create_token(r, advertiser, ["events"])


@pytest.fixture
def tenant(r) -> Tenant:
    return Tenant(r, "adv-1")


@pytest.fixture
def sink(settings, r, ch, ch_database):
    """An in-process sink; ``drain()`` stores everything queued so far."""
    worker = Sink(settings, r, clickhouse.connect(settings.clickhouse.url), ch_database, StopFlag(),
                  name="test-sink")
    worker.ensure_group()

    def drain(timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while r.xlen("ct:events") and time.monotonic() < deadline:
            worker.run_once()

    worker.drain = drain
    return worker


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def query_dicts(ch, sql: str, params: dict | None = None) -> list[dict]:
    rows, cols = ch.execute(sql, params or {}, with_column_types=True)
    names = [c[0] for c in cols]
    return [dict(zip(names, row)) for row in rows]


@pytest.fixture
def spawn(settings):
    """Start clicktrail commands as real processes; all are stopped at the end of the test."""
    procs = servers.ProcessGroup(settings)
    yield procs
    procs.stop_all()


@pytest.fixture
def api_client(settings, r):
    from reporting.api import create_app as create_api

    app = create_api(where(settings))
    return app.test_client()


@pytest.fixture
def attributor(settings, r, ch, ch_database):
    """An in-process attributor; ``settle()`` runs ticks until nothing is left to do."""
    from attribution.engine import Attributor

    worker = Attributor(settings, r, clickhouse.connect(settings.clickhouse.url), ch_database, StopFlag(),
                        name="test-attributor")
    worker.ensure_group()

    def settle(limit: int = 50) -> None:
        for _ in range(limit):
            if not worker.tick(block_ms=10):
                return

    worker.settle = settle
    return worker


@pytest.fixture(scope="module")
def playwright():
    """Playwright's driver, for the browser tests (it never downloads a browser: see tests/browser.py)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright):
    """Debian's Chromium, headless, shared by a module's tests."""
    from tests.browser import launch

    b = launch(playwright)
    yield b
    b.close()
