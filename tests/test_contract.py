"""docs/openapi.yaml is the contract: schemathesis holds both apps to it, request by request.

A bounded property-based pass over every documented operation of the collector and of the API:
schema examples, schemathesis' coverage cases (boundaries, missing and wrong-typed values,
undocumented methods) and a fixed number of generated requests per operation, valid and invalid
(``mode: all``), derandomized so that every run sends the same requests. Each answer must not be
a 5xx, must have a documented status, content type, headers and body shape, must enforce the
declared authentication, and an undocumented method must get 405 with ``Allow``.

The apps run in-process through schemathesis' WSGI transport (werkzeug's client calling the
Flask app object, which includes the collector's fast path in front of Flask), against the real
Redis and ClickHouse of the conftest fixtures. In-process rather than through gunicorn: it is
what schemathesis supports natively for Flask apps, thousands of requests take seconds instead of
a socket round trip each, and an app error shows its traceback in the test; gunicorn adds only
HTTP parsing, which the end-to-end tests cover.

Generated values alone would almost never name the registered pixel, a valid token, a signed
click URL or a recent date, and every request would stop at the first lookup. So three in four
requests (chosen from a hash of the generated request, hence reproducible) get real values put
in where the handler looks them up first: the pixel id, the site's Origin, a token with every
scope, a real conversion's event id, dates of this week, fresh touch times. The fourth is sent
exactly as generated.
"""

from __future__ import annotations

import time
import zlib
from datetime import date, timedelta
from pathlib import Path

import pytest
import schemathesis
import yaml
from schemathesis.config import SchemathesisConfig

from clicktrail import clickhouse, config, keys, redis_client
from clicktrail.lifecycle import StopFlag
from pixel import erasure, registry
from pixel.click_urls import make_token
from pixel.snippet import SDK_VERSION
from reporting import rules, schedules
from sink.worker import Sink
from tests.attribution_world import HOUR, World
from tests.conftest import ARTIFACTS, CLICKHOUSE_BASE, DATA_TABLES, REDIS_URL, Tenant, where

SPEC_PATH = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"
SPEC = yaml.safe_load(SPEC_PATH.read_text())

#: Generated requests per operation in the fuzzing phase, on top of the examples and coverage cases.
EXAMPLES_PER_OPERATION = 100

CONFIG = {
    "generation": {
        "mode": "all",
        "max-examples": EXAMPLES_PER_OPERATION,
        "deterministic": True,  # the same requests on every run and every machine
        "database": "none",  # no replay of earlier failures from a local directory: CI sees what a laptop sees
    },
    "continue-on-failure": True,  # report every distinct failure of an operation, not just the first
    "phases": {"stateful": {"enabled": False}},
    "operations": [
        {
            # POST /e/<id>.gif is POST /e/{pixel_id} with the pixel id "<id>.gif" (and OPTIONS its
            # preflight): documented operations, not undeclared methods of the image path.
            "include-path": "/e/{pixel_id}.gif",
            "phases": {"coverage": {"unexpected-methods": ["PUT", "PATCH", "DELETE", "TRACE", "QUERY"]}},
        },
    ],
    "checks": {
        "enabled": False,
        "not_a_server_error": {"enabled": True},
        "status_code_conformance": {"enabled": True},
        "content_type_conformance": {"enabled": True},
        "response_schema_conformance": {"enabled": True},
        "response_headers_conformance": {"enabled": True},
        "ignored_auth": {"enabled": True},
        "unsupported_method": {"enabled": True},
    },
}


def served_by(path: str) -> list[str]:
    apps = SPEC["paths"][path].get("x-clicktrail-app", "collector")
    return apps if isinstance(apps, list) else [apps]


class LateApp:
    """A WSGI app whose target is set once the fixtures have built it: schemathesis sends every
    request of a schema, its auth probes included, to the schema's ``app``, and the schemas are
    loaded at import (pytest collects one test per operation) while the apps need the test run's
    ClickHouse database."""

    target = None

    def __call__(self, environ, start_response):
        return self.target(environ, start_response)


def _schema_of(app_name: str, app: LateApp):
    schema = schemathesis.openapi.from_path(SPEC_PATH, config=SchemathesisConfig.from_dict(CONFIG))
    schema.app = app
    return schema.exclude(lambda ctx: app_name not in served_by(ctx.operation.path))


COLLECTOR, API = LateApp(), LateApp()
collector_schema = _schema_of("collector", COLLECTOR)
api_schema = _schema_of("api", API)


DASHBOARD_FILES = ("app.js", "app.css", "favicon.svg")
#: Statuses answered per operation in this run, for the check that the pass reached the handlers.
ANSWERED: dict[str, set[int]] = {}


def _dicts(container: object, key: str) -> list[dict]:
    """The objects in ``container[key]`` when that is a list (generated bodies may be anything)."""
    items = container.get(key) if isinstance(container, dict) else None
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


HOOK = "https://receiver.example/hook"


class Contract:
    """The apps, a registered pixel, tokens and one attributed conversion; puts real values into cases."""

    def __init__(self, world: World, collector_app, r) -> None:
        tenant = world.tenant
        self.pixel_id = tenant.pixel_id
        self.origin = f"https://{tenant.domain}"
        self.events_token = tenant.token
        self.token = registry.create_token(r, tenant.advertiser, ["adserver", "optimizer", "reports", "privacy"])
        self.erasure_id = erasure.submit(r, tenant.advertiser, {"ttp": ["ttp-of-nobody"]}, "contract")
        self.r = r
        self.schedule = schedules.parse({"range": "yesterday", "at": "07:00", "webhook": {"url": HOOK}},
                                        tenant.advertiser, registry.advertiser_settings(r, tenant.advertiser), False)
        schedules.save(r, self.schedule)
        self.rule = rules.parse(r, {"metric": "conversions", "window": "24h", "condition": {"op": "<", "threshold": 1},
                                    "webhook": {"url": HOOK}}, tenant.advertiser, False)
        rules.save(r, self.rule)
        secret = collector_app.extensions["clicktrail"].settings.site.secret_key
        self.click_token = make_token(secret, tenant.advertiser, "cmp", "cmp-g", "cmp-ad",
                                      f"{self.origin}/landing?x=1#top")
        self.today = date.today()
        t = world.now - 3 * HOUR
        world.click("k-1", t, "cmp")
        world.impression("i-1", t - HOUR, "cmp")
        world.convert("conv-1", t + 600, value=12.5, ttclid="k-1")
        world.settle()
        self.event_id = "conv-1"

    def call(self, case) -> None:
        explicit = {}
        if zlib.crc32(repr((case.method, case.path_parameters, case.query, case.headers, case.body)).encode()) % 4:
            self._realise(case)
            if SPEC["paths"][case.operation.path][case.operation.method.lower()].get("security"):
                # Sent as explicit credentials, so the auth check knows them valid and probes without them.
                explicit["Authorization"] = f"Bearer {self.token}"
        response = case.call_and_validate(headers=explicit)
        if response.request.method == case.operation.method.upper():  # not the coverage phase's other methods
            ANSWERED.setdefault(case.operation.label, set()).add(response.status_code)

    def _realise(self, case) -> None:
        params = case.path_parameters or {}
        query = case.query or {}
        headers = dict(case.headers or {})
        body = case.body
        for name, value in (("pixel_id", self.pixel_id), ("event_id", self.event_id), ("token", self.click_token),
                            ("version", SDK_VERSION), ("request_id", self.erasure_id)):
            if name in params:
                params[name] = value
        if "schedule_id" in params:
            params["schedule_id"] = self.schedule["id"]
            schedules.save(self.r, self.schedule)  # again: a DELETE case may have removed it
        if "rule_id" in params:
            params["rule_id"] = self.rule["id"]
            rules.save(self.r, self.rule)  # again: a DELETE case may have removed it
        if case.operation.path == "/v1/rules" and isinstance(body, dict):
            body.update(webhook={"url": HOOK})
            body.pop("scope", None)  # a generated pixel id is never this advertiser's
        if case.operation.path == "/v1/schedules" and isinstance(body, dict):
            body.update(at="07:00", webhook={"url": HOOK})
            body.pop("report", None)
            body.pop("timezone", None)
        if "name" in params:
            params["name"] = DASHBOARD_FILES[zlib.crc32(repr(case.query).encode()) % len(DASHBOARD_FILES)]
        if case.operation.path.startswith("/e/"):
            headers["Origin"] = self.origin
            query.pop("url", None)
            for event in _dicts(body, "events"):
                if "timestamp" in event:
                    event["timestamp"] = time.time_ns() // 1_000_000
        if case.operation.path == "/open_api/v1.3/event/track/":
            headers["Access-Token"] = self.events_token
            if isinstance(body, dict):
                body.update(event_source="web", event_source_id=self.pixel_id)
            for event in _dicts(body, "data"):
                event["event_time"] = int(time.time())
        if case.operation.path == "/{api_version}/{pixel_id}/events":  # Meta's Conversions API
            params["api_version"] = "v23.0"
            query["access_token"] = self.events_token
            for event in _dicts(body, "data"):
                event["event_time"] = int(time.time())
        if case.operation.path.startswith("/open_api/v1.3/pixel/"):
            headers["Access-Token"] = self.events_token
            if isinstance(body, dict):
                body["pixel_code"] = self.pixel_id
            for event in [body] if case.operation.path.endswith("/track/") else _dicts(body, "batch"):
                if isinstance(event, dict):
                    event["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if "start" in query or "end" in query:
            query["start"] = (self.today - timedelta(days=7)).isoformat()
            query["end"] = self.today.isoformat()
        if "event" in query:
            query["event"] = "CompletePayment"
        self._fresh_rows(body)
        case.headers = headers
        if query:
            case.query = query

    def _fresh_rows(self, body: object) -> None:
        """Touch times of now, cost days of this week and present ids: rows the imports store, not refuse."""
        now = int(time.time())
        for name, field in (("clicks", "click_time"), ("impressions", "impression_time")):
            for row in _dicts(body, name):
                row[field] = now
        for i, row in enumerate(_dicts(body, "costs")):
            row["date"] = (self.today - timedelta(days=i % 7 + 1)).isoformat()
            for field in ("campaign_id", "adgroup_id", "ad_id"):
                if not isinstance(row.get(field), str) or not row[field].isprintable() or not row[field]:
                    row[field] = f"{field}-{i}"
            row["ad_id"] = f"{row['ad_id'][:100]}-{i}"  # one row per ad and day


@pytest.fixture(scope="module")
def contract(ch_database) -> Contract:
    """One world for every operation of the module (the conftest's fixtures are per test, and
    seeding a world per operation would cost more than the pass itself)."""
    from attribution.engine import Attributor
    from collector import create_app as create_collector
    from reporting.api import create_app as create_api

    s = config.load({"REDIS_URL": REDIS_URL, "CLICKHOUSE_URL": clickhouse.with_database(CLICKHOUSE_BASE, ch_database),
                     "DATA_DIR": str(ARTIFACTS / "var"), "SINK_BATCH_WAIT_MS": 200})
    r = redis_client.patient(s.redis.url)
    r.flushdb()
    ch = clickhouse.connect(s.clickhouse.url)
    for table in DATA_TABLES:
        ch.execute(f"TRUNCATE TABLE {ch_database}.{table}")
    # A generous Redis timeout: on a loaded machine the production 100 ms sheds requests with 503,
    # which is documented, but would keep the pass from reaching every handler.
    apps = {**where(s), "REDIS_TIMEOUT_MS": 2000}
    collector_app, api_app = create_collector(apps), create_api(apps)
    sink = Sink(s, r, clickhouse.connect(s.clickhouse.url), ch_database, StopFlag(), name="contract-sink")
    sink.ensure_group()
    attributor = Attributor(s, r, clickhouse.connect(s.clickhouse.url), ch_database, StopFlag(),
                            name="contract-attributor")
    attributor.ensure_group()

    def drain(limit: int = 50) -> None:
        for _ in range(limit):
            if not r.xlen(keys.EVENTS_STREAM):
                return
            sink.run_once()

    def settle(limit: int = 50) -> None:
        for _ in range(limit):
            if not attributor.tick(block_ms=10):
                return

    sink.drain, attributor.settle = drain, settle
    world = World(collector_app.test_client(), api_app.test_client(), Tenant(r, "adv-contract"), sink, attributor,
                  r, ch, ch_database)
    COLLECTOR.target, API.target = collector_app, api_app
    yield Contract(world, collector_app, r)
    r.flushdb()


@pytest.mark.timeout(600)  # a guard against a hang, not a speed claim
@collector_schema.parametrize()
def test_the_collector_answers_as_documented(case, contract):
    contract.call(case)


@pytest.mark.timeout(600)
@api_schema.parametrize()
def test_the_api_answers_as_documented(case, contract):
    contract.call(case)


def test_the_pass_reached_every_handler():
    """Guards the pass itself: with the real pixel, tokens and dates put in, every operation that ran
    answered at least one request with success (not only refusals), so its handler's own code ran."""
    assert ANSWERED, "run with the two tests above"
    without_success = {op: sorted(codes) for op, codes in ANSWERED.items() if not any(c < 400 for c in codes)}
    assert not without_success


# --- Answers while a server is down: 503 with Retry-After, in the documented shape --------------

def _outage_requests(pixel_id: str, today: date, erasure_id: str) -> dict[str, dict]:
    """One well-formed request per operation that needs Redis or ClickHouse (valid tokens are put in below)."""
    now = int(time.time())
    touch = {"campaign_id": "c", "adgroup_id": "g", "ad_id": "a"}
    week = {"start": (today - timedelta(days=7)).isoformat(), "end": today.isoformat()}
    return {
        "POST /e/{pixel_id}": {"path_parameters": {"pixel_id": pixel_id}, "headers": {"Origin": "https://shop.example"},
                               "body": {"events": [{"event": "PageView"}]}, "media_type": "text/plain"},
        "POST /open_api/v1.3/event/track/": {"body": {"event_source": "web", "event_source_id": pixel_id,
                                                      "data": [{"event": "Purchase", "event_time": now}]}},
        "POST /open_api/v1.3/pixel/track/": {"body": {"pixel_code": pixel_id, "event": "Purchase",
                                                      "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}},
        "POST /open_api/v1.3/pixel/batch/": {"body": {"pixel_code": pixel_id, "batch": [
            {"event": "Purchase", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]}},
        "GET /readyz": {},
        "POST /v1/clicks": {"body": {"clicks": [{"click_id": "k", "click_time": now, **touch}]}},
        "POST /v1/impressions": {"body": {"impressions": [{"impression_id": "i", "impression_time": now, **touch}]}},
        "POST /v1/costs": {"body": {"costs": [{"date": (today - timedelta(days=1)).isoformat(), "spend": 1.5,
                                               **touch}]}},
        "POST /v1/exchange-rates": {"body": {"rates": [{"date": today.isoformat(), "currency": "EUR", "rate": 1.1}]}},
        "GET /v1/exchange-rates": {},
        "GET /v1/conversions/{event_id}/attribution": {"path_parameters": {"event_id": "e"}},
        "GET /v1/optimizer/conversions": {"query": {"event": "CompletePayment"}},
        "GET /v1/reports": {"query": week},
        "GET /v1/conversions": {"query": week},
        "GET /v1/advertiser": {},
        "GET /v1/pixels/{pixel_id}/diagnostics": {"path_parameters": {"pixel_id": pixel_id}},
        "POST /v1/erasure": {"body": {"user": {"ttp": "ttp-1"}}},
        "GET /v1/erasure/{request_id}": {"path_parameters": {"request_id": erasure_id}},
        "GET /v1/schedules": {},
        "GET /v1/rules": {},
    }


#: Operations that do not read ClickHouse here: with only ClickHouse down they still answer. (The
#: feed answers an advertiser with nothing attributed yet from its Redis watermark alone.)
WITHOUT_CLICKHOUSE = {"POST /e/{pixel_id}", "POST /open_api/v1.3/event/track/", "GET /readyz", "GET /v1/advertiser",
                      "GET /v1/optimizer/conversions", "POST /open_api/v1.3/pixel/track/",
                      "POST /open_api/v1.3/pixel/batch/", "POST /v1/erasure",
                      "GET /v1/erasure/{request_id}", "GET /v1/schedules", "GET /v1/rules"}


@pytest.mark.parametrize("down", ["redis", "clickhouse"])
def test_a_server_down_is_answered_503_with_retry_after_as_documented(down, settings, r, tenant):
    from clicktrail import services
    from collector import create_app as create_collector
    from reporting.api import create_app as create_api
    from schemathesis.checks import (content_type_conformance, response_headers_conformance,
                                     response_schema_conformance, status_code_conformance)

    token = registry.create_token(r, tenant.advertiser, ["adserver", "optimizer", "reports", "privacy"])
    unreachable = {"redis": {"REDIS_URL": f"redis://127.0.0.1:{services.free_port()}/0"},
                   "clickhouse": {"CLICKHOUSE_URL": f"clickhouse://127.0.0.1:{services.free_port()}/default"}}[down]
    apps = {**where(settings), **unreachable}
    by_app = {"collector": create_collector(apps), "api": create_api(apps)}
    checks = [status_code_conformance, content_type_conformance, response_headers_conformance,
              response_schema_conformance]
    wrong = {}
    erasure_id = erasure.submit(r, tenant.advertiser, {"ttp": ["ttp-of-nobody"]}, "test")
    for label, request in _outage_requests(tenant.pixel_id, date.today(), erasure_id).items():
        method, path = label.split(" ", 1)
        operation = (collector_schema if "collector" in served_by(path) else api_schema)[path][method]
        auth = {"Authorization": f"Bearer {token}"} if "api" in served_by(path) else {"Access-Token": tenant.token}
        case = operation.Case(**{**request, "headers": {**request.get("headers", {}), **auth}})
        expected = (202 if label == "POST /v1/erasure" else 200) if down == "clickhouse" and label in WITHOUT_CLICKHOUSE else 503
        try:  # every operation is tried, so one run lists every wrong answer
            response = case.call_and_validate(app=by_app[served_by(path)[0]], checks=checks)
        except Exception as exc:  # a failed check, or the app's own exception (schemathesis re-raises it)
            wrong[label] = f"{type(exc).__name__}: {str(exc)[:300]}"
            continue
        if response.status_code != expected:
            wrong[label] = f"{response.status_code} {response.text[:200]}"
    assert not wrong
