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
     "event_source_id"),
    ("bad event_source", "server", lambda t: server_body(t.pixel_id, event_source="tv"), {}, 400, "invalid_field",
     "event_source"),
    ("missing event_source_id", "server", lambda t: server_body(None), {}, 400, "invalid_field",
     "event_source_id"),
    ("data empty", "server", lambda t: server_body(t.pixel_id, data=[]), {}, 400, "invalid_field", "data"),
    ("over 1000 events", "server", lambda t: server_body(t.pixel_id, data=[{"event": "Lead"}] * 1001), {}, 400,
     "too_many_events", "data"),
    ("malformed JSON (server)", "server", lambda t: b"[1,", {}, 400, "malformed_json", "body"),
    # Issue 11: each of these was a 500.
    ("sent_at past 64 bits", "browser", lambda t: browser_body(sent_at=1e20), {}, 400, "invalid_field", "sent_at"),
    ("sent_at after 2100", "browser", lambda t: browser_body(sent_at=5_000_000_000_000), {}, 400, "invalid_field",
     "sent_at"),
    ("sent_at 1e308 (server)", "server", lambda t: server_body(t.pixel_id, sent_at=1e308), {}, 400,
     "invalid_field", "sent_at"),
    ("body nested 2000 levels", "browser", lambda t: b"[" * 2000 + b"]" * 2000, {}, 400, "malformed_json", "body"),
    ("truncated gzip", "browser", lambda t: gzip.compress(browser_body())[:-12], {"Content-Encoding": "gzip"}, 400,
     "bad_gzip", "body"),
    ("bytes after the gzip stream", "browser", lambda t: gzip.compress(browser_body()) + b"trailing",
     {"Content-Encoding": "gzip"}, 400, "bad_gzip", "body"),
    ("gzip members past the limit", "browser", lambda t: gzip.compress(b" ") * 17 + gzip.compress(browser_body()),
     {"Content-Encoding": "gzip"}, 400, "bad_gzip", "body"),
    ("second gzip member past the inflated limit", "browser",
     lambda t: gzip.compress(browser_body()) + gzip.compress(b" " * 11_000_000), {"Content-Encoding": "gzip"}, 413,
     "inflated_too_large", "body"),
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

    app = create_app({"REDIS_URL": settings.redis.url, "STREAM_MAX_LEN": 3})
    c = app.test_client()
    body = {"events": [{"event": "PageView", "event_id": f"e{i}", "page": {"url": "https://shop.example/"}}
                       for i in range(2)]}
    for _ in range(3):
        assert c.post(f"/e/{tenant.pixel_id}", data=json.dumps(body)).status_code == 200
    resp = c.post(f"/e/{tenant.pixel_id}", data=json.dumps(body))
    assert resp.status_code == 503
    assert resp.headers["Retry-After"] == str(settings.limits.retry_after_s)
    assert resp.json["error"]["code"] == "overloaded"
    assert r.xlen("ct:events") == 3  # what was accepted is still there; nothing was trimmed


def deep(levels: int, leaf=1):
    value = leaf
    for _ in range(levels):
        value = {"x": value}
    return value


def valid_event(**changes):
    event = {"event": "Search", "event_id": "ok", "page": {"url": "https://shop.example/"}}
    event.update(changes)
    return event


# (name, a field's bad value, the field refused, its rule): each was accepted or a 500 before issue 11.
EVENT_CASES = [
    ("query a number", {"properties": {"query": 1.5}}, "properties.query", "must be a string"),
    ("search_string a list", {"properties": {"search_string": ["a"]}}, "properties.search_string",
     "must be a string"),
    ("content_type an object", {"properties": {"content_type": {"a": 1}}}, "properties.content_type",
     "must be a string"),
    ("content_ids not a list", {"properties": {"content_ids": "sku-1"}}, "properties.content_ids",
     "must be a list of strings"),
    ("content_ids holding objects", {"properties": {"content_ids": [{"id": 1}]}}, "properties.content_ids",
     "must be a string"),
    ("contents holding numbers", {"properties": {"contents": [1, 2]}}, "properties.contents",
     "must be a list of objects"),
    ("content quantity a word", {"properties": {"contents": [{"quantity": "two"}]}},
     "properties.contents.quantity", "must be a number"),
    ("content price beyond money", {"properties": {"contents": [{"price": 1e300}]}}, "properties.contents.price",
     "must be from -1000000000000 to 1000000000000"),
    ("content_name an object", {"properties": {"contents": [{"content_name": {"a": 1}}]}},
     "properties.contents.content_name", "must be a string"),
    ("value beyond money", {"properties": {"value": 1.7e308}}, "properties.value",
     "must be from -1000000000000 to 1000000000000"),
    ("value in unicode digits", {"properties": {"value": "\u0661\u0662"}}, "properties.value", "must be a number"),
    ("currency in non-ASCII letters", {"properties": {"currency": "\u00c4\u00d6\u00dc"}}, "properties.currency",
     "must be a 3-letter ISO 4217 code"),
    ("properties nested 300 levels", {"properties": deep(300)}, "properties", "must not nest deeper than 16 levels"),
    ("properties nested 17 levels", {"properties": deep(17)}, "properties", "must not nest deeper than 16 levels"),
    ("a custom field nested 300 levels", {"anything": deep(300)}, "custom_fields",
     "must not nest deeper than 16 levels"),
    ("timestamp past 2100", {"timestamp": 1e300}, "timestamp", "must be unix time in milliseconds before 2100"),
    ("timestamp in unicode digits", {"timestamp": "\u00b2"}, "timestamp", "must be unix time in milliseconds"),
    ("user name an object", {"user": {"first_name": {"a": 1}}}, "user", "other user fields must be strings"),
    ("user email an object", {"user": {"email": {"a": 1}}}, "user.email", "must be a string"),
    ("user_agent a number", {"user": {"user_agent": 5.5}}, "user.user_agent", "must be a string"),
    ("event an object", {"event": {"a": 1}}, "event", "must be a string"),
    ("event_id a list", {"event_id": [1]}, "event_id", "must be a string"),
    ("page.url a number", {"page": {"url": 1.5}}, "page.url", "must be a string"),
]


@pytest.mark.parametrize("case", EVENT_CASES, ids=[c[0] for c in EVENT_CASES])
def test_a_bad_field_refuses_its_event_alone(case, client, tenant, r):
    name, changes, field, rule = case
    body = {"events": [valid_event(event_id="good-before"), valid_event(**changes), valid_event(event_id="good")]}
    resp = client.post(f"/e/{tenant.pixel_id}", data=json.dumps(body).encode(),
                       headers={"Origin": "https://shop.example"})
    assert resp.status_code == 200
    assert resp.json == {"accepted": 2, "rejected": [{"index": 1, "field": field, "rule": rule}]}
    (_, fields), = r.xrange("ct:events")
    assert [e["event_id"] for e in json.loads(fields[b"d"])] == ["good-before", "good"]


def test_properties_nested_16_levels_are_kept(client, tenant, r):
    body = {"events": [valid_event(properties=deep(16), extra_field=deep(16))]}
    resp = client.post(f"/e/{tenant.pixel_id}", data=json.dumps(body).encode())
    assert resp.json == {"accepted": 1, "rejected": []}
    (record,) = json.loads(r.xrange("ct:events")[0][1][b"d"])
    assert record["properties"] == deep(16) and record["extra"] == {"extra_field": deep(16)}


def test_events_api_rows_are_checked_as_strictly(client, tenant, r):
    rows = [{"event": "Lead", "event_time": NOW, "event_id": "ok"},
            {"event": "Lead", "event_time": -1e300, "event_id": "neg"},
            {"event": "Lead", "event_time": "\u00b2", "event_id": "sup"},
            {"event": "Lead", "event_time": NOW, "event_id": "q", "properties": {"query": {"a": 1}}},
            "not an object"]
    resp = client.post("/open_api/v1.3/event/track/", data=server_body(tenant.pixel_id, data=rows),
                       headers={"Access-Token": tenant.token})
    assert resp.status_code == 200
    assert resp.json["data"] == {"accepted": 1, "rejected": [
        {"index": 1, "field": "event_time", "rule": "must be unix time in seconds"},
        {"index": 2, "field": "event_time", "rule": "must be unix time in seconds"},
        {"index": 3, "field": "properties.query", "rule": "must be a string"},
        {"index": 4, "field": "", "rule": "event must be an object"},
    ]}


def test_every_gzip_member_is_read(client, tenant, r):
    events = [valid_event(event_id=f"m{i}") for i in range(3)]
    text = json.dumps({"events": events}).encode()
    body = gzip.compress(text[:20]) + gzip.compress(text[20:60]) + gzip.compress(text[60:])
    resp = client.post(f"/e/{tenant.pixel_id}", data=body, headers={"Content-Encoding": "gzip"})
    assert resp.json == {"accepted": 3, "rejected": []}
    assert [e["event_id"] for e in json.loads(r.xrange("ct:events")[0][1][b"d"])] == ["m0", "m1", "m2"]


def test_image_pixel_answers_a_gif_for_unicode_digits_and_counts_the_refusal(client, tenant, r):
    from collector.browser import GIF

    resp = client.get(f"/e/{tenant.pixel_id}.gif?ts=%C2%B2&ev=PageView&url=https://shop.example/")
    assert resp.status_code == 200 and resp.mimetype == "image/gif" and resp.data == GIF
    assert r.xlen("ct:events") == 0
    counts = {k.decode(): int(v) for k, v in r.hgetall("ct:stats:rejected").items()}
    assert counts == {f"{tenant.pixel_id}:timestamp must be unix time in milliseconds": 1}


def test_method_not_allowed_names_the_allowed_methods(client, tenant):
    resp = client.get(f"/e/{tenant.pixel_id}")
    assert resp.status_code == 405
    assert set(resp.headers["Allow"].replace(" ", "").split(",")) == {"POST", "OPTIONS"}
    assert resp.json["error"]["code"] == "method_not_allowed"
    api = client.get("/open_api/v1.3/event/track/")
    assert api.status_code == 405 and "POST" in api.headers["Allow"]


def test_preflight_answers_503_with_retry_after_while_redis_is_down(settings, tenant):
    from clicktrail import services
    from collector import create_app

    app = create_app({"REDIS_URL": f"redis://127.0.0.1:{services.free_port()}/0", "REDIS_TIMEOUT_MS": 200})
    resp = app.test_client().options(f"/e/{tenant.pixel_id}", headers={"Origin": "https://shop.example",
                                                                       "Access-Control-Request-Method": "POST"})
    assert resp.status_code == 503
    assert resp.headers["Retry-After"] == str(settings.limits.retry_after_s)
    assert resp.json["error"]["code"] == "buffer_unavailable"
