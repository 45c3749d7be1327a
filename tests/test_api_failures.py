"""The API's answers when something fails: 503 with Retry-After while ClickHouse or Redis is down,
405 with Allow, and the JSON error shape for every error.

The 503 tests run ``clicktrail api`` under gunicorn against a Redis and a ClickHouse of their own
(tests/servers.py), which they stop and start.
"""

from __future__ import annotations

import json
import time

import pytest

from clicktrail import clickhouse, keys, redis_client, schema, services
from pixel import registry
from reporting.api import create_app
from tests import servers
from tests.http import call

DAYS = "start=2026-11-01&end=2026-11-02"


def read_endpoints(pixel_id: str) -> dict[str, str]:
    """Every read endpoint of the API that needs ClickHouse or Redis, by a short name."""
    return {
        "reports": f"/v1/reports?{DAYS}&dimensions=campaign_id",
        "reports by ad": f"/v1/reports?{DAYS}&dimensions=ad_id",
        "reports csv": f"/v1/reports?{DAYS}&format=csv",
        "reports, other windows": f"/v1/reports?{DAYS}&click_window=1",
        "conversions": f"/v1/conversions?{DAYS}",
        "explanation": "/v1/conversions/ev-1/attribution",
        "feed": "/v1/optimizer/conversions?event=CompletePayment",
        "diagnostics": f"/v1/pixels/{pixel_id}/diagnostics",
        "advertiser": "/v1/advertiser",
    }


def assert_unavailable(reply, what: str) -> None:
    assert reply.status == 503, (what, reply.status, reply.body[:300])
    assert int(reply.headers["Retry-After"]) > 0, what
    error = reply.json["error"]
    assert error["code"] in ("storage_unavailable", "unavailable") and "retry" in error["message"], (what, error)


@pytest.fixture
def stack(spawn):
    """A private Redis and ClickHouse (schema migrated), a tenant in them, and the API under gunicorn."""
    own_redis, own_clickhouse = servers.PrivateRedis(), servers.PrivateClickHouse()
    try:
        own_redis.start()
        own_clickhouse.start()
        db = "apidown"
        schema.migrate(clickhouse.connect(own_clickhouse.base_url), db)
        r = redis_client.patient(own_redis.url)
        pixel_id = registry.create_pixel(r, "adv-down", ["shop.example"])
        token = registry.create_token(r, "adv-down", ["reports", "optimizer", "adserver"])
        port = services.free_port()
        # One worker: the token it cached is then the one every request of the test meets.
        spawn.start("api", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "4",
                    REDIS_URL=own_redis.url, CLICKHOUSE_URL=clickhouse.with_database(own_clickhouse.base_url, db))
        base = f"http://127.0.0.1:{port}"
        servers.wait_http(base + "/healthz")
        yield {"base": base, "auth": {"Authorization": f"Bearer {token}"}, "pixel": pixel_id, "r": r,
               "redis": own_redis, "clickhouse": own_clickhouse}
    finally:
        spawn.stop_all()
        own_redis.cleanup()
        own_clickhouse.cleanup()


def _get_all(stack) -> dict[str, object]:
    return {name: call("GET", stack["base"] + path, headers=stack["auth"])
            for name, path in read_endpoints(stack["pixel"]).items()}


def _bump_watermark(r) -> None:
    # A new watermark: the feed cannot answer from its kept answers and must ask ClickHouse.
    r.set(keys.FEED_WATERMARK, time.time_ns() // 1_000_000)


@pytest.mark.chaos
def test_clickhouse_down_is_a_503_on_every_read_and_recovers(stack):
    _bump_watermark(stack["r"])
    up = _get_all(stack)
    assert {name: reply.status for name, reply in up.items()} == {
        **{name: 200 for name in up}, "explanation": 404}, {n: r.body[:200] for n, r in up.items()}

    stack["clickhouse"].stop()
    _bump_watermark(stack["r"])
    for name, reply in _get_all(stack).items():
        if name != "advertiser":  # it reads Redis only
            assert_unavailable(reply, name)
    costs = {"costs": [{"date": "2026-11-01", "campaign_id": "c", "adgroup_id": "g", "ad_id": "a", "spend": 1}]}
    assert_unavailable(call("POST", stack["base"] + "/v1/costs", costs, stack["auth"]), "costs")

    stack["clickhouse"].start()  # the same worker reconnects: no restart needed
    _bump_watermark(stack["r"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        again = _get_all(stack)
        if all(reply.status != 503 for reply in again.values()):
            break
        time.sleep(0.5)
    assert {name: reply.status for name, reply in again.items()} == {name: reply.status for name, reply in up.items()}


@pytest.mark.chaos
def test_redis_down_is_a_503_on_every_read(stack):
    up = _get_all(stack)  # the worker now holds the token for a few seconds: later reads get past it
    assert all(reply.status in (200, 404) for reply in up.values())
    stack["redis"].stop()
    for name, reply in _get_all(stack).items():
        if name == "explanation" and reply.status == 404:
            continue  # it needs Redis only for the token, which the worker may still hold: ClickHouse answers
        assert_unavailable(reply, name)
    clicks = {"clicks": [{"click_id": "k", "click_time": int(time.time()), "campaign_id": "c", "adgroup_id": "g",
                          "ad_id": "a"}]}
    assert_unavailable(call("POST", stack["base"] + "/v1/clicks", clicks, stack["auth"]), "clicks")


# ---- in-process: errors keep the JSON shape ----------------------------------------------------


@pytest.fixture
def auth(r):
    return {"Authorization": f"Bearer {registry.create_token(r, 'adv-1', ['reports', 'adserver', 'optimizer'])}"}


@pytest.mark.parametrize("method, path, allowed", [
    ("POST", "/v1/reports", {"GET", "HEAD", "OPTIONS"}),
    ("DELETE", "/v1/optimizer/conversions", {"GET", "HEAD", "OPTIONS"}),
    ("GET", "/v1/costs", {"POST", "OPTIONS"}),
    ("PUT", "/v1/clicks", {"POST", "OPTIONS"}),
    ("PATCH", "/healthz", {"GET", "HEAD", "OPTIONS"}),
])
def test_a_wrong_method_is_a_405_with_allow(api_client, auth, method, path, allowed):
    resp = api_client.open(path, method=method, headers=auth)
    assert resp.status_code == 405 and resp.mimetype == "application/json"
    assert {m.strip() for m in resp.headers["Allow"].split(",")} == allowed
    assert resp.json["error"]["code"] == "method_not_allowed"


def test_an_unknown_path_is_a_json_404(api_client):
    resp = api_client.get("/v1/nothing-here")
    assert resp.status_code == 404 and resp.json["error"]["code"] == "not_found"


def test_an_unexpected_failure_is_a_json_500(settings, r, auth):
    """A ClickHouse that refuses the statement (here: the database does not exist) is no outage
    to retry but a fault; the answer still has the error shape, never the server's HTML page."""
    app = create_app({"REDIS_URL": settings.redis.url, "DATA_DIR": settings.paths.data_dir,
                      "CLICKHOUSE_URL": clickhouse.with_database(settings.clickhouse.url, "ct_missing_db")})
    resp = app.test_client().get(f"/v1/reports?{DAYS}", headers=auth)
    assert resp.status_code == 500 and resp.mimetype == "application/json"
    assert resp.json == {"error": {"code": "internal_error", "message": "unexpected error; it was logged"}}


def test_the_json_encoder_writes_non_finite_numbers_as_null(api_client):
    dumps = api_client.application.json.dumps
    text = dumps({"a": float("inf"), "b": [float("nan"), 1.5, -float("inf")], "c": {"d": (float("nan"),)}})
    assert json.loads(text, parse_constant=lambda name: pytest.fail(name)) == {
        "a": None, "b": [None, 1.5, None], "c": {"d": [None]}}
    assert json.loads(dumps({"x": 1e308})) == {"x": 1e308}
