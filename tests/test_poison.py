"""Issue 11: hostile input never stops collection nor loses a valid event.

Real processes: a gunicorn collector and a sink, as deployed. Poison (wrong types in every field,
huge numbers, deep nesting, broken gzip, oversized chunked bodies...) is interleaved with valid
events; every answer is 2xx or 4xx, every valid event is stored exactly once, none is
dead-lettered, and the sink is still running at the end.
"""

from __future__ import annotations

import gzip
import http.client as http_client
import json
import subprocess
import sys
import time
from urllib.parse import urlsplit

import orjson

from tests import http
from tests.conftest import now_ms
from tests.servers import env_for

STREAM, GROUP, DEAD = "ct:events", "sink", "ct:events:dead"
ORIGIN = {"Origin": "https://shop.example"}


def deep(levels: int, as_list: bool = False):
    value: object = 1
    for _ in range(levels):
        value = [value] if as_list else {"x": value}
    return value


def event(event_id: str, **changes) -> dict:
    e = {"event": "Search", "event_id": event_id, "page": {"url": "https://shop.example/s?q=1"},
         "properties": {"query": "shoes", "value": 1.5, "currency": "EUR"}}
    e.update(changes)
    return e


#: Changes that make one browser event bad: every field a wrong type, out of range or too deep.
BAD_EVENTS = [
    {"properties": {"query": 1.5}}, {"properties": {"search_string": {"a": 1}}},
    {"properties": {"content_type": [1]}}, {"properties": {"content_ids": [{"a": 1}]}},
    {"properties": {"contents": [{"quantity": "x"}]}}, {"properties": {"contents": [{"price": 1e300}]}},
    {"properties": {"contents": [{"content_id": {"a": 1}}]}}, {"properties": {"contents": "many"}},
    {"properties": {"value": 1.7e308}}, {"properties": {"value": "NaN"}}, {"properties": {"value": [1]}},
    {"properties": {"currency": 5}}, {"properties": {"order_id": {"a": 1}}}, {"properties": deep(300)},
    {"properties": deep(500, as_list=True)}, {"custom": deep(400)}, {"properties": "text"},
    {"timestamp": 1e300}, {"timestamp": -1e300}, {"timestamp": "\u00b2"}, {"timestamp": True},
    {"event": 5.5}, {"event": {"a": 1}}, {"event": ""}, {"event_id": [1]}, {"page": "x"},
    {"page": {"url": 1.5}}, {"page": {"referrer": {"a": 1}}}, {"ttp": {"a": 1}}, {"ttclid": [1]},
    {"user": {"email": {"a": 1}}}, {"user": {"phone": [[1]]}}, {"user": {"ip": "999.1.1.1"}},
    {"user": {"first_name": {"a": 1}}}, {"user": {"user_agent": 5.5}}, {"user": "me"},
    {"limited_data_use": "yes"}, {"test_event_code": {"a": 1}},
]

BATCH_URL = "/e/{pixel}"
TRACK = "/open_api/v1.3/event/track/"


def chunked_post(base: str, path: str, body: bytes, headers: dict) -> int:
    """POST with Transfer-Encoding: chunked (no Content-Length), as a streaming client sends."""
    parts = urlsplit(base)
    conn = http_client.HTTPConnection(parts.hostname, parts.port, timeout=20)
    try:
        conn.request("POST", path, body=(body[i : i + 65536] for i in range(0, len(body), 65536)),
                     headers=headers, encode_chunked=True)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (ConnectionResetError, BrokenPipeError):
        return -1  # the connection was dropped: no answer at all
    finally:
        conn.close()


def whole_bodies(tenant) -> list[tuple[str, str, bytes, dict]]:
    """(method, path, body, headers) requests refused as a whole."""
    batch = BATCH_URL.format(pixel=tenant.pixel_id)
    valid_text = json.dumps({"events": [event("never-stored")]}).encode()
    token = {"Access-Token": tenant.token}
    now_s = now_ms() // 1000
    server = lambda **c: json.dumps({"event_source": "web", "event_source_id": tenant.pixel_id,  # noqa: E731
                                     "data": [{"event": "Lead", "event_time": now_s, "event_id": "never"}], **c})
    return [
        ("POST", batch, json.dumps({"sent_at": 1e20, "events": [event("never-1")]}).encode(), ORIGIN),
        ("POST", batch, json.dumps({"sent_at": -1, "events": [event("never-2")]}).encode(), ORIGIN),
        ("POST", batch, json.dumps({"sent_at": "soon", "events": [event("never-3")]}).encode(), ORIGIN),
        ("POST", batch, b"[" * 2000 + b"]" * 2000, ORIGIN),
        ("POST", batch, b'{"events": [1e999]}', ORIGIN),
        ("POST", batch, b'{"events": [18446744073709551616]}', ORIGIN),
        ("POST", batch, b"null", ORIGIN),
        ("POST", batch, b'{"events": "all"}', ORIGIN),
        ("POST", batch, json.dumps({"events": [event(f"never-many-{i}") for i in range(101)]}).encode(), ORIGIN),
        ("POST", batch, gzip.compress(valid_text)[:-9], {**ORIGIN, "Content-Encoding": "gzip"}),
        ("POST", batch, gzip.compress(valid_text) + b"junk", {**ORIGIN, "Content-Encoding": "gzip"}),
        ("POST", batch, b"\x1f\x8b garbage", ORIGIN),
        ("POST", batch, gzip.compress(b" " * 12_000_000), {**ORIGIN, "Content-Encoding": "gzip"}),
        ("POST", batch, b"\xff\xfe not utf-8", ORIGIN),
        ("POST", batch, json.dumps({"events": [event("never-4")]}).encode(), {"Origin": "https://evil.example"}),
        ("POST", TRACK, server(sent_at=1e308).encode(), token),
        ("POST", TRACK, server(sent_at="\u00b2").encode(), token),
        ("POST", TRACK, server(data=[{"event": "Lead", "event_time": -1e300}]).encode(), token),
        ("POST", TRACK, server(data=[{"event": "Lead", "event_time": "\u00b2"}]).encode(), token),
        ("POST", TRACK, server(data=[{"event": "Lead", "event_time": now_s, "user": {"email": 1.5}}]).encode(),
         token),
        ("POST", TRACK, server(data=[1, "x", None, deep(300)]).encode(), token),
        ("POST", TRACK, server(event_source_id=deep(300)).encode(), token),
        ("GET", batch, b"", ORIGIN),
        ("DELETE", TRACK, b"", token),
    ]


def gif_urls(tenant) -> list[str]:
    gif = f"/e/{tenant.pixel_id}.gif?url=https://shop.example/&"
    return [gif + q for q in ("ts=%C2%B2", "ts=99999999999999999999999", "value=1e999", "value=%D9%A1",
                              "currency=%C3%84%C3%96%C3%9C&value=1", "eid=" + "x" * 300, "ev=%00%01",
                              "ts=-5", "value=abc")]


def wait_drained(r, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if r.xlen(STREAM) == 0 and r.xpending(STREAM, GROUP)["pending"] == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"stream not drained: {r.xlen(STREAM)} entries left")


def stored_counts(ch, db, prefix: str) -> dict[str, int]:
    rows = ch.execute(f"SELECT event_id, count() FROM {db}.events WHERE startsWith(event_id, %(p)s) "
                      "GROUP BY event_id", {"p": prefix})
    return dict(rows)


def dead_event_ids(r) -> list[str]:
    found = []
    for _, fields in r.xrange(DEAD):
        try:
            records = orjson.loads(fields.get(b"d", b"[]"))
        except orjson.JSONDecodeError:
            continue
        found.extend(rec.get("event_id", "") for rec in records if isinstance(rec, dict))
    return found


def test_poison_requests_through_gunicorn_never_stop_collection(tenant, spawn, r, ch, ch_database):
    base = spawn.collector(workers=2)
    sink = spawn.sink()
    batch = BATCH_URL.format(pixel=tenant.pixel_id)
    valid: list[str] = []
    statuses: list[tuple[str, int]] = []

    def send_valid(n: int = 2) -> None:
        ids = [f"v-{len(valid) + i}" for i in range(n)]
        reply = http.call("POST", base + batch, {"events": [event(i) for i in ids]}, ORIGIN)
        assert (reply.status, reply.json) == (200, {"accepted": n, "rejected": []})
        valid.extend(ids)

    for number, changes in enumerate(BAD_EVENTS):  # a bad event between two valid ones in one batch
        send_valid()
        ids = [f"v-{len(valid)}", f"v-{len(valid) + 1}"]
        body = {"events": [event(ids[0]), {**event(f"bad-{number}"), **changes}, event(ids[1])]}
        reply = http.call("POST", base + batch, json.dumps(body).encode(), ORIGIN)
        assert reply.status == 200, (changes, reply.body)
        assert reply.json["accepted"] == 2 and [x["index"] for x in reply.json["rejected"]] == [1], changes
        valid.extend(ids)
    for method, path, body, headers in whole_bodies(tenant):
        send_valid()
        reply = http.call(method, base + path, body or None, headers)
        statuses.append((f"{method} {path} {body[:40]!r}", reply.status))
        assert reply.headers.get("Content-Type", "").startswith("application/json"), (path, body[:60])
    for url in gif_urls(tenant):
        send_valid(1)
        reply = http.call("GET", base + url)
        assert (reply.status, reply.headers["Content-Type"]) == (200, "image/gif"), url
    for path, headers in ((batch, ORIGIN), (TRACK, {"Access-Token": tenant.token})):
        send_valid(1)
        statuses.append((f"chunked {path}", chunked_post(base, path, b"{" + b" " * 1_100_000 + b"}", headers)))
    send_valid(3)

    assert [s for s in statuses if not 400 <= s[1] < 500] == []
    assert ("chunked " + batch, 413) in statuses and ("chunked " + TRACK, 413) in statuses
    wait_drained(r)
    assert sink.poll() is None  # the sink is alive
    assert stored_counts(ch, ch_database, "v-") == {i: 1 for i in valid}  # each valid event stored once
    assert stored_counts(ch, ch_database, "bad-") == {} and stored_counts(ch, ch_database, "never") == {}
    assert r.xlen(DEAD) == 0  # nothing accepted was unstorable, and no valid event was dead-lettered


def test_poison_entries_written_straight_onto_the_stream_are_dead_lettered_alone(client, tenant, spawn, r, ch,
                                                                                   ch_database):
    """As an older collector (or a hand-edited requeue) might have queued them."""
    valid: list[str] = []

    def queue_valid(n: int = 3) -> dict:
        ids = [f"v-{len(valid) + i}" for i in range(n)]
        resp = client.post(f"/e/{tenant.pixel_id}", data=json.dumps({"events": [event(i) for i in ids]}),
                           headers=ORIGIN)
        assert resp.json == {"accepted": n, "rejected": []}
        valid.extend(ids)
        return json.loads(r.xrevrange(STREAM, count=1)[0][1][b"d"])[0]

    template = queue_valid()
    bad_records = {
        "query-object": dict(template, properties={"query": {"a": 1}}),
        "url-list": dict(template, url=[1]),
        "event-ms-huge": dict(template, event_ms=1e30),
        "received-text": dict(template, received_ms="now"),
        "props-list": dict(template, properties=[1, 2]),
        "props-deep": dict(template, properties=deep(300)),
        "value-text": dict(template, properties={"value": "lots"}),
        "ua-object": dict(template, user_agent={"a": 1}),
        "email-number": dict(template, email=[5]),
        "no-event": {k: v for k, v in template.items() if k != "event"},
    }
    entries = 0
    for name, record in bad_records.items():
        good = [dict(template, event_id=f"v-{len(valid)}"), dict(template, event_id=f"v-{len(valid) + 1}")]
        valid.extend(e["event_id"] for e in good)
        mixed = [good[0], dict(record, event_id=f"bad-{name}"), good[1]]
        r.xadd(STREAM, {"a": tenant.advertiser, "n": 3, "d": orjson.dumps(mixed) if name != "props-deep"
                        else json.dumps(mixed).encode()})
        entries += 1
        queue_valid(2)
    for fields in ({"a": tenant.advertiser, "n": 1, "d": b"\xff not json"}, {"a": tenant.advertiser, "d": b"{}"},
                   {"n": 1, "d": b"[]"}, {"a": tenant.advertiser, "n": 1, "d": b"[5, null, \"x\"]"}):
        r.xadd(STREAM, fields)
        queue_valid(1)
    sink = spawn.sink()
    wait_drained(r)
    assert sink.poll() is None
    assert stored_counts(ch, ch_database, "v-") == {i: 1 for i in valid}
    assert stored_counts(ch, ch_database, "bad-") == {}
    letters = [fields for _, fields in r.xrange(DEAD)]
    assert not [i for i in dead_event_ids(r) if i.startswith("v-")]
    by_id = {}
    for fields in letters:
        records = json.loads(fields[b"d"]) if fields.get(b"d", b"").startswith(b"[") else None
        if records and isinstance(records[0], dict) and "event_id" in records[0]:
            by_id[records[0]["event_id"]] = (fields[b"index"], fields[b"reason"].decode())
    assert set(by_id) == {f"bad-{name}" for name in bad_records}
    assert all(index == b"1" for index, _ in by_id.values())
    assert by_id["bad-query-object"][1] == "cannot build row: RowError: properties.query must be a string, not dict"
    assert by_id["bad-event-ms-huge"][1].startswith("cannot build row: RowError: event_ms must be an integer")
    assert by_id["bad-no-event"][1] == "cannot build row: KeyError: 'event'"
    # The four malformed entries: three whole (undecodable, not a list, no advertiser), and the
    # three non-object records of the fourth, one letter each.
    whole = [f for f in letters if f[b"index"] == b"*"]
    assert len(whole) == 3 and all(f[b"reason"].startswith(b"cannot decode") for f in whole)
    assert len(letters) == len(bad_records) + 3 + 3


def test_requeue_recovers_the_storable_rows_of_an_old_whole_entry_letter(client, tenant, spawn, r, ch, ch_database,
                                                                         settings):
    """An older sink gave up on a whole entry (one poison row took its batch-mates with it):
    requeued, the current sink stores the valid rows once and dead-letters only the poison row."""
    resp = client.post(f"/e/{tenant.pixel_id}", data=json.dumps({"events": [event("old-0"), event("old-2")]}),
                       headers=ORIGIN)
    assert resp.json["accepted"] == 2
    (entry_id, fields), = r.xrange(STREAM)
    r.delete(STREAM)
    good = json.loads(fields[b"d"])
    poison = dict(good[0], event_id="old-1", properties={"query": {"nested": True}})
    # First, a letter with nothing to requeue (an entry deleted before it was claimed): passed over.
    empty_id = r.xadd(DEAD, {"id": "1-0", "index": "*", "reason": "not stored after 5 deliveries"})
    r.xadd(DEAD, {"id": entry_id, "index": "*", "reason": "not stored after 5 deliveries", "consumer": "old-sink",
                  "a": tenant.advertiser, "n": 3, "d": orjson.dumps([good[0], poison, good[1]])})
    run = subprocess.run([sys.executable, "-m", "clicktrail.cli", "dead-letters", "requeue", "--count", "1"],
                         env=env_for(settings), capture_output=True, text=True, timeout=60)
    assert run.stdout == "1\n" and [i for i, _ in r.xrange(DEAD)] == [empty_id]
    r.xdel(DEAD, empty_id)
    sink = spawn.sink()
    wait_drained(r)
    assert sink.poll() is None
    assert stored_counts(ch, ch_database, "old-") == {"old-0": 1, "old-2": 1}
    (_, letter), = r.xrange(DEAD)
    assert letter[b"index"] == b"1"
    assert letter[b"reason"] == b"cannot build row: RowError: properties.query must be a string, not dict"
    assert [e["event_id"] for e in json.loads(letter[b"d"])] == ["old-1"]


def test_an_entry_given_up_on_is_dead_lettered_one_event_a_letter(client, tenant, sink, r, ch, ch_database):
    resp = client.post(f"/e/{tenant.pixel_id}", data=json.dumps({"events": [event(f"e{i}") for i in range(3)]}),
                       headers=ORIGIN)
    assert resp.json["accepted"] == 3
    (entry_id, _), = r.xreadgroup(GROUP, "crash-1", {STREAM: ">"})[0][1]
    for name in ("crash-2", "crash-3", "crash-4", "crash-5"):  # each took it over, then died
        r.xclaim(STREAM, GROUP, name, 0, [entry_id])
    time.sleep(0.05)
    assert sink.reclaim(idle_ms=10) == []
    letters = [fields for _, fields in r.xrange(DEAD)]
    assert [(f[b"id"], f[b"index"], f[b"reason"]) for f in letters] == [
        (entry_id, str(i).encode(), b"not stored after 5 deliveries") for i in range(3)]
    assert [json.loads(f[b"d"])[0]["event_id"] for f in letters] == ["e0", "e1", "e2"]
    assert r.xlen(STREAM) == 0 and r.xpending(STREAM, GROUP)["pending"] == 0
