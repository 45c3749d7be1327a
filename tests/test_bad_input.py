"""Every bad input gets its documented 4xx, names the field, and stores nothing."""

import gzip
import json
import time

import pytest

from pixel import registry

NOW = int(time.time())


def server_body(pixel_id, **changes):
    body = {"event_source": "web", "event_source_id": pixel_id,
            "data": [{"event": "Lead", "event_time": NOW, "event_id": "x1"}]}
    body.update(changes)
    return json.dumps(body).encode()


def browser_body(**changes):
    body = {"events": [{"event": "PageView", "event_id": "b1", "page": {"url": "https://shop.example/"}}]}
    body.update(changes)
    return json.dumps(body).encode()


BOMB = gzip.compress(b"{" + b" " * 20_000_000 + b"}")

# (name, endpoint kind, body factory, headers factory, status, error code, field)
CASES = [
    ("malformed JSON", "browser", lambda t: b"{not json", {}, 400, "malformed_json", "body"),
    ("empty body", "browser", lambda t: b"", {}, 400, "empty_body", "body"),
    ("events missing", "browser", lambda t: b'{"sent_at": 1}', {}, 400, "invalid_field", "events"),
    ("events not a list", "browser", lambda t: browser_body(events={"a": 1}), {}, 400, "invalid_field", "events"),
    ("too many events", "browser", lambda t: browser_body(events=[{"event": "PageView"}] * 101), {}, 400,
     "too_many_events", "events"),
    ("sent_at in seconds", "browser", lambda t: browser_body(sent_at=NOW), {}, 400, "invalid_field", "sent_at"),
    ("body over 1 MB", "browser", lambda t: b"{" + b" " * 1_100_000 + b"}", {}, 413, "payload_too_large", None),
    ("gzip bomb", "browser", lambda t: BOMB, {"Content-Encoding": "gzip"}, 413, "inflated_too_large", "body"),
    ("broken gzip", "browser", lambda t: b"\x1f\x8bnot gzip at all", {"Content-Encoding": "gzip"}, 400,
     "bad_gzip", "body"),
    ("unsupported encoding", "browser", lambda t: browser_body(), {"Content-Encoding": "br"}, 400, "bad_request",
     "Content-Encoding"),
    ("unknown pixel", "browser-unknown", lambda t: browser_body(), {}, 404, "unknown_pixel", "pixel_id"),
    ("domain not registered", "browser", lambda t: browser_body(), {"Origin": "https://evil.example"}, 403,
     "domain_not_allowed", "origin"),
    ("look-alike domain", "browser", lambda t: browser_body(), {"Origin": "https://notshop.example"}, 403,
     "domain_not_allowed", "origin"),
    ("no site at all", "browser", lambda t: browser_body(events=[{"event": "PageView"}]), {}, 403,
     "unknown_origin", "origin"),
    ("missing token", "server-notoken", lambda t: server_body(t.pixel_id), {}, 401, "missing_token",
     "Access-Token"),
    ("bad token", "server", lambda t: server_body(t.pixel_id), {"Access-Token": "ctk_nope"}, 401, "bad_token",
     "Access-Token"),
    ("token of another advertiser", "server", lambda t: server_body(t.pixel_id), "other-token", 403,
     "token_advertiser", "Access-Token"),
    ("token without events scope", "server", lambda t: server_body(t.pixel_id), "reports-token", 403,
     "token_scope", "Access-Token"),
    ("unknown pixel (server)", "server", lambda t: server_body("CNOSUCHPIXEL"), {}, 404, "unknown_pixel",
     "pixel_id"),
    ("bad event_source", "server", lambda t: server_body(t.pixel_id, event_source="tv"), {}, 400, "invalid_field",
     "event_source"),
    ("missing event_source_id", "server", lambda t: server_body(None), {}, 400, "invalid_field",
     "event_source_id"),
    ("data empty", "server", lambda t: server_body(t.pixel_id, data=[]), {}, 400, "invalid_field", "data"),
    ("over 1000 events", "server", lambda t: server_body(t.pixel_id, data=[{"event": "Lead"}] * 1001), {}, 400,
     "too_many_events", "data"),
    ("malformed JSON (server)", "server", lambda t: b"[1,", {}, 400, "malformed_json", "body"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_clearly_and_nothing_is_stored(case, client, tenant, r):
    name, kind, make_body, headers, status, code, field = case
    if headers == "other-token":
        headers = {"Access-Token": registry.create_token(r, "adv-2", ["events"])}
    elif headers == "reports-token":
        headers = {"Access-Token": registry.create_token(r, tenant.advertiser, ["reports"])}
    headers = dict(headers)
    if kind.startswith("server"):
        if kind == "server":
            headers.setdefault("Access-Token", tenant.token)
        resp = client.post("/open_api/v1.3/event/track/", data=make_body(tenant), headers=headers)
        assert resp.status_code == status
        assert resp.json["code"] == (40001 if status in (401, 403) else 40002)
        error = resp.json["data"]["error"]
    else:
        pixel_id = "CNOSUCHPIXEL" if kind == "browser-unknown" else tenant.pixel_id
        resp = client.post(f"/e/{pixel_id}", data=make_body(tenant), headers=headers)
        assert resp.status_code == status
        error = resp.json["error"]
    assert error["code"] == code
    assert error.get("field") == field
    assert error["message"]
    assert r.xlen("ct:events") == 0


def test_every_event_rejected_is_a_400_with_each_reason(client, tenant, r):
    body = {"events": [{"event": "PageView", "timestamp": "yesterday", "page": {"url": "https://shop.example/"}},
                       {"event": "Lead", "properties": {"currency": "euro"}, "page": {"url": "https://shop.example/"}}]}
    resp = client.post(f"/e/{tenant.pixel_id}", data=json.dumps(body))
    assert resp.status_code == 400
    assert resp.json == {"accepted": 0, "rejected": [
        {"index": 0, "field": "timestamp", "rule": "must be unix time in milliseconds"},
        {"index": 1, "field": "properties.currency", "rule": "must be a 3-letter ISO 4217 code"},
    ]}
    assert r.xlen("ct:events") == 0
    # Rejections are counted per pixel and reason, for diagnostics.
    counts = {k.decode(): int(v) for k, v in r.hgetall("ct:stats:rejected").items()}
    assert counts == {f"{tenant.pixel_id}:timestamp must be unix time in milliseconds": 1,
                      f"{tenant.pixel_id}:properties.currency must be a 3-letter ISO 4217 code": 1}


def test_preflight_is_allowed_only_for_registered_sites(client, tenant):
    ok = client.options(f"/e/{tenant.pixel_id}", headers={"Origin": "https://www.shop.example",
                                                         "Access-Control-Request-Method": "POST"})
    assert ok.status_code == 204
    assert ok.headers["Access-Control-Allow-Origin"] == "https://www.shop.example"
    refused = client.options(f"/e/{tenant.pixel_id}", headers={"Origin": "https://evil.example"})
    assert refused.status_code == 403
    assert "Access-Control-Allow-Origin" not in refused.headers


def test_stream_over_its_guard_sheds_load_with_503(settings, r, tenant):
    from collector import create_app

    app = create_app({"REDIS_URL": settings["REDIS_URL"], "STREAM_MAX_LEN": 3})
    c = app.test_client()
    body = {"events": [{"event": "PageView", "event_id": f"e{i}", "page": {"url": "https://shop.example/"}}
                       for i in range(2)]}
    for _ in range(3):
        assert c.post(f"/e/{tenant.pixel_id}", data=json.dumps(body)).status_code == 200
    resp = c.post(f"/e/{tenant.pixel_id}", data=json.dumps(body))
    assert resp.status_code == 503
    assert resp.headers["Retry-After"] == str(settings["RETRY_AFTER_S"])
    assert resp.json["error"]["code"] == "overloaded"
    assert r.xlen("ct:events") == 3  # what was accepted is still there; nothing was trimmed
