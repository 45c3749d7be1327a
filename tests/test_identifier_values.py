"""Every value of a multi-valued identifier (``email``, ``phone``, ``external_id`` sent as lists by the
Events API 2.0 and 1.0, Meta's ``em``/``ph``/``external_id`` and the pixel) is hashed, stored and
used for matching: a conversion sent with emails [a, b] is attributed to a click identified by b.

Real collector (Meta's own SDK against gunicorn, the rest through the in-process app), real sink,
real attributor, real ClickHouse.
"""

from __future__ import annotations

import hashlib
import json
import time

import orjson
from facebook_business.adobjects.serverside.action_source import ActionSource
from facebook_business.adobjects.serverside.event import Event
from facebook_business.adobjects.serverside.event_request import EventRequest
from facebook_business.adobjects.serverside.user_data import UserData
from facebook_business.api import FacebookAdsApi
from facebook_business.session import FacebookSession
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pixel import registry
from pixel.events import MAX_IDENTIFIER_VALUES, Context, Rejection, parse_event
from pixel.records import entry_fields
from sink.rows import RowBuilder
from tests.attribution_world import World
from tests.conftest import now_ms, query_dicts

TRACK = "/open_api/v1.3/event/track/"
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def stored(ch, db) -> dict[str, dict]:
    return {row["event_id"]: row for row in query_dicts(ch, f"SELECT * FROM {db}.events_unique")}


def identities(ch, db, event_id: str) -> set[tuple[str, str]]:
    rows = ch.execute(f"SELECT DISTINCT identity_kind, identity FROM {db}.event_identities "
                      "WHERE event_id = %(e)s AND identity_kind IN ('email', 'phone', 'external_id')", {"e": event_id})
    return {tuple(row) for row in rows}


def post(client, tenant, rows):
    body = {"event_source": "web", "event_source_id": tenant.pixel_id, "data": rows}
    return client.post(TRACK, json=body, headers={"Access-Token": tenant.token})


def test_events_api_lists_are_hashed_deduplicated_and_stored_whole(client, tenant, sink, ch, ch_database):
    hashed_b = sha("b@example.com")
    row = {"event": "CompletePayment", "event_id": "multi-1", "event_time": int(time.time()) - 30,
           # Raw and hashed values mixed, a repeat (the same address, other case), empties skipped.
           "user": {"email": ["A@Example.com", hashed_b.upper(), " a@example.com", "", None],
                    "phone": ["+1 (650) 555-1212", 442071234567],
                    "external_id": ["crm-1"],
                    "sha256_email": [sha("c@example.com")]}}
    single = {"event": "CompletePayment", "event_id": "single-1", "event_time": int(time.time()) - 30,
              "user": {"email": "solo@example.com"}}
    resp = post(client, tenant, [row, single])
    assert resp.status_code == 200 and resp.json["data"] == {"accepted": 2, "rejected": []}, resp.json
    sink.drain()
    rows = stored(ch, ch_database)
    emails = [sha("a@example.com"), hashed_b, sha("c@example.com")]
    phones = [sha("+16505551212"), sha("+442071234567")]
    got = rows["multi-1"]
    # The single columns keep the first value, as before; the lists hold every value, in order.
    assert (got["email_sha256"], got["phone_sha256"], got["external_id_sha256"]) == (emails[0], phones[0],
                                                                                   sha("crm-1"))
    assert (got["emails_sha256"], got["phones_sha256"], got["external_ids_sha256"]) == (emails, phones,
                                                                                     [sha("crm-1")])
    assert (rows["single-1"]["email_sha256"], rows["single-1"]["emails_sha256"]) == (
        sha("solo@example.com"), [sha("solo@example.com")])
    # Every value is an identity the attributor looks conversions up by.
    assert identities(ch, ch_database, "multi-1") == (
        {("email", e) for e in emails} | {("phone", p) for p in phones} | {("external_id", sha("crm-1"))})
    assert identities(ch, ch_database, "single-1") == {("email", sha("solo@example.com"))}
    # No raw value anywhere in the stored row.
    text = json.dumps(got, default=str).lower()
    assert "example.com" not in text and "650" not in text and "crm-1" not in text


def test_a_conversion_is_attributed_to_the_click_of_its_second_email(client, api_client, tenant, sink, attributor, r,
                                                                      ch, ch_database):
    world = World(client, api_client, tenant, sink, attributor, r, ch, ch_database)
    world.click("clk-other", world.now - 7200, "autumn", user={"email": "someone@example.com"})
    world.click("clk-b", world.now - 3600, "spring", user={"email": "b@example.com"})
    world.click("clk-x", world.now - 3000, "winter", user={"external_id": sha("crm-9")})
    world.convert("conv-1", world.now, email=[sha("a@example.com"), "B@example.com"])
    world.convert("conv-2", world.now, external_id=["crm-1", "crm-9"], phone=["+33 6 12 34 56 78"])
    world.settle()
    assert world.credits("conv-1") == {"clk-b": 1.0}
    assert [(r["matched_by"], r["campaign_id"]) for r in world.latest("conv-1")] == [("email", "spring")]
    assert world.credits("conv-2") == {"clk-x": 1.0}
    assert world.latest("conv-2")[0]["matched_by"] == "external_id"


def test_a_click_stored_after_the_conversion_finds_it_through_a_later_value(client, api_client, tenant, sink,
                                                                              attributor, r, ch, ch_database):
    """The other way round: the new click's email is the conversion's third one, found in
    event_identities (migration 10's view), and the conversion is restated."""
    world = World(client, api_client, tenant, sink, attributor, r, ch, ch_database)
    world.convert("conv-late", world.now, email=["one@example.com", "two@example.com", "three@example.com"])
    world.settle()
    assert world.credits("conv-late") == {"organic": 1.0}
    world.click("clk-late", world.now - 600, "summer", user={"email": "three@example.com"})
    world.settle()
    assert world.credits("conv-late") == {"clk-late": 1.0}
    assert world.latest("conv-late")[0]["matched_by"] == "email"


def test_too_many_values_or_wrong_items_are_refused_naming_the_field(client, tenant, sink, ch, ch_database):
    now = int(time.time())
    eleven = [f"u{i}@example.com" for i in range(MAX_IDENTIFIER_VALUES + 1)]
    rows = [
        {"event": "Lead", "event_time": now, "event_id": "ok", "user": {"email": eleven[:MAX_IDENTIFIER_VALUES]}},
        {"event": "Lead", "event_time": now, "event_id": "r1", "user": {"email": eleven}},
        {"event": "Lead", "event_time": now, "event_id": "r2", "user": {"phone": [["+336"]]}},
        {"event": "Lead", "event_time": now, "event_id": "r3", "user": {"external_id": [{"id": 1}]}},
        {"event": "Lead", "event_time": now, "event_id": "r4", "user": {"external_id": [True]}},
        {"event": "Lead", "event_time": now, "event_id": "r5",
         "user": {"email": eleven[:6], "sha256_email": [sha(e) for e in eleven[6:]]}},
    ]
    resp = post(client, tenant, rows)
    assert resp.status_code == 200
    assert resp.json["data"]["rejected"] == [
        {"index": 1, "field": "user.email", "rule": "must hold at most 10 values"},
        {"index": 2, "field": "user.phone", "rule": "must be a string or a list of strings"},
        {"index": 3, "field": "user.external_id", "rule": "must be a string or a list of strings"},
        {"index": 4, "field": "user.external_id", "rule": "must be a string"},
        {"index": 5, "field": "user.sha256_email",
         "rule": "must hold at most 10 values, together with the other email fields"},
    ]
    # The same rule through Events API 1.0 and Meta, each naming the field as its sender wrote it.
    v1 = {"pixel_code": tenant.pixel_id, "event": "Lead", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
          "context": {"user": {"email": eleven}}}
    resp = client.post("/open_api/v1.3/pixel/track/", json=v1, headers={"Access-Token": tenant.token})
    assert resp.status_code == 400
    assert resp.json["data"]["rejected"] == [{"index": 0, "field": "context.user.email",
                                              "rule": "must hold at most 10 values"}]
    meta = {"event_name": "Lead", "event_time": now, "action_source": "email",
            "user_data": {"em": [sha(e) for e in eleven]}}
    resp = client.post(f"/v19.0/{tenant.pixel_id}/events", json={"data": [meta], "access_token": tenant.token})
    assert resp.status_code == 400
    assert resp.json["error"]["message"] == "Invalid parameter: data[0].user_data.em must hold at most 10 values"
    # Within the limit, a 1.0 event's lists are kept whole too (context.user, mapped onto user).
    v1 = dict(v1, event_id="v1-ok", context={"user": {"email": eleven[:2], "phone_number": ["+33 6 12 34 56 78"]}})
    resp = client.post("/open_api/v1.3/pixel/track/", json=v1, headers={"Access-Token": tenant.token})
    assert resp.status_code == 200 and resp.json["code"] == 0, resp.json
    sink.drain()
    rows = stored(ch, ch_database)
    assert sorted(rows) == ["ok", "v1-ok"]
    assert len(rows["ok"]["emails_sha256"]) == MAX_IDENTIFIER_VALUES
    assert rows["v1-ok"]["emails_sha256"] == [sha(e) for e in eleven[:2]]
    assert rows["v1-ok"]["phones_sha256"] == [sha("+33612345678")]


def test_meta_em_lists_are_stored_and_matched_with_metas_own_sdk(spawn, monkeypatch, client, api_client, tenant, sink,
                                                                 attributor, r, ch, ch_database):
    base = spawn.collector(workers=1)
    monkeypatch.setattr(FacebookSession, "GRAPH", base)
    world = World(client, api_client, tenant, sink, attributor, r, ch, ch_database)
    world.click("clk-meta", world.now - 1800, "meta-spring", user={"email": "work@example.com"})
    world.click("clk-y", world.now - 900, "meta-summer", user={"email": "y@example.com"})
    FacebookAdsApi.init(access_token=tenant.token, crash_log=False)
    user = UserData(emails=["Home@Example.com", "work@example.com"], phones=["+1 650 555 1212", "+1 650 555 9999"],
                    external_ids=["u-1", "u-2"], client_user_agent=UA, client_ip_address="203.0.113.9")
    event = Event(event_name="Purchase", event_time=world.now, event_id="meta-1", user_data=user,
                  action_source=ActionSource.WEBSITE, event_source_url="https://shop.example/thanks")
    assert EventRequest(events=[event], pixel_id=tenant.pixel_id).execute().events_received == 1
    # JSON as a hand-written integration sends it: raw values, hashed by us.
    raw = {"event_name": "Lead", "event_time": world.now, "event_id": "meta-2", "action_source": "system_generated",
           "user_data": {"em": ["X@example.com", "y@example.com", "x@example.com "]}}
    resp = client.post(f"/v19.0/{tenant.pixel_id}/events", json={"data": [json.dumps(raw)],
                                                                  "access_token": tenant.token})
    assert resp.status_code == 200 and resp.json["events_received"] == 1, resp.json
    world.settle()
    rows = stored(ch, ch_database)
    # Meta's SDK hashes each value its way (phones: digits only) and sends them in no set order
    # (it deduplicates through a set): stored as it sent them, every one, its first in the column.
    got = rows["meta-1"]
    assert sorted(got["emails_sha256"]) == sorted([sha("home@example.com"), sha("work@example.com")])
    assert got["email_sha256"] == got["emails_sha256"][0]
    assert sorted(got["phones_sha256"]) == sorted([sha("16505551212"), sha("16505559999")])
    assert sorted(got["external_ids_sha256"]) == sorted([sha("u-1"), sha("u-2")])
    assert rows["meta-2"]["emails_sha256"] == [sha("x@example.com"), sha("y@example.com")]
    assert world.credits("meta-1") == {"clk-meta": 1.0}
    assert world.latest("meta-1")[0]["matched_by"] == "email"
    assert world.credits("meta-2") == {"clk-y": 1.0}  # through its second em value


def test_pixel_events_carry_lists_too(client, tenant, sink, ch, ch_database):
    batch = {"sent_at": now_ms(), "events": [{
        "event": "CompletePayment", "event_id": "px-1", "timestamp": now_ms(),
        "page": {"url": "https://shop.example/thanks"},
        "user": {"email": [sha("p@example.com"), sha("q@example.com")], "external_id": [sha("e-1")]}}]}
    resp = client.post(f"/e/{tenant.pixel_id}", data=json.dumps(batch), headers={"Origin": "https://shop.example"})
    assert resp.status_code == 200 and resp.json["accepted"] == 1, resp.json
    sink.drain()
    row = stored(ch, ch_database)["px-1"]
    assert row["emails_sha256"] == [sha("p@example.com"), sha("q@example.com")]
    assert row["external_ids_sha256"] == [sha("e-1")]


def test_the_sink_keeps_the_single_column_first_in_its_list_and_refuses_a_bad_list():
    """Records as a hand-requeued dead letter may hold them: the list's first item is always the
    single column's value (migration 10's view indexes the list from its second item)."""
    base = {"pixel_id": "CPIX", "source": "server", "event": "Lead", "event_id": "e", "event_ms": now_ms(),
            "received_ms": now_ms(), "properties": {}}
    records = [dict(base, email="b", emails=["a", "b"]), dict(base, emails=["a", "b"]), dict(base, phone="p"),
               dict(base, external_ids="x"), dict(base, phones=["p", 7])]
    rows, indexes, failures = BUILDER.rows(b"1-0", entry_fields("adv", records))
    assert [(row.email_sha256, row.emails_sha256, row.phone_sha256, row.phones_sha256) for row in rows] == [
        ("b", ["b", "a"], "", []), ("a", ["a", "b"], "", []), ("", [], "p", ["p"])]
    assert [(f.index, f.reason.split(": ")[-1]) for f in failures] == [
        (3, "external_ids must be a list of strings"), (4, "phones must be a list of strings")]


def test_erasure_by_a_later_value_removes_the_persons_stored_and_queued_events(client, api_client, tenant, sink,
                                                                                 attributor, r, ch, ch_database):
    """An erasure request naming a person's second email finds every event that listed it."""
    now = int(time.time()) - 60
    assert post(client, tenant, [{"event": "Lead", "event_id": "stored", "event_time": now,
                                  "user": {"email": ["home@example.com", "work@example.com"]}}]).status_code == 200
    sink.drain()
    assert post(client, tenant, [{"event": "Lead", "event_id": "queued", "event_time": now,
                                  "user": {"email": ["old@example.com", "work@example.com"]}},
                                 {"event": "Lead", "event_id": "other", "event_time": now,
                                  "user": {"email": ["someone@example.com", "else@example.com"]}}]).status_code == 200
    auth = {"Authorization": "Bearer " + registry.create_token(r, tenant.advertiser, ["privacy"])}
    reply = api_client.post("/v1/erasure", json={"user": {"email": sha("work@example.com")}}, headers=auth)
    assert reply.status_code == 202, reply.get_json()
    request_id = reply.get_json()["request_id"]
    for _ in range(100):
        attributor.eraser.step()
        record = api_client.get(f"/v1/erasure/{request_id}", headers=auth).get_json()
        if record["status"] == "done":
            break
        time.sleep(0.2)
    assert record["status"] == "done", record
    assert (record["rows"]["events"], record["rows"]["queued_events"]) == (1, 1)
    queued = [e["event_id"] for _, f in r.xrange("ct:events") for e in json.loads(f[b"d"])]
    assert queued == ["other"]
    sink.drain()
    assert list(stored(ch, ch_database)) == ["other"]


# -- any value: a record with hashes only, or a refusal naming the field ---------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(max_size=30)
                    | st.sampled_from(["a@example.com", sha("x"), sha("x").upper(), "+33 6 12", ""]),
                    lambda inner: st.lists(inner, max_size=12) | st.dictionaries(st.text(max_size=5), inner, max_size=2),
                    max_leaves=14)
KEYS = ["email", "sha256_email", "phone", "phone_number", "sha256_phone_number", "external_id"]
FIELD_KIND = {"email": "email", "sha256_email": "email", "phone": "phone", "phone_number": "phone",
              "sha256_phone_number": "phone", "external_id": "external_id"}
BUILDER = RowBuilder(anonymize_ip=True, ua_cache_size=16)


def _is_hash(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and value == value.lower() and int(value, 16) >= 0


@settings(max_examples=400, deadline=None)
@given(user=st.dictionaries(st.sampled_from(KEYS), JSON, max_size=4))
def test_any_identifier_value_is_a_record_of_hashes_or_a_refusal_naming_the_field(user):
    now = now_ms()
    ctx = Context(pixel_id="CPIX", source="server", received_ms=now, skew_ms=0, ip="", user_agent="",
                  max_age_ms=7 * 86_400_000, max_future_ms=86_400_000)
    result = parse_event({"event": "Lead", "event_time": now // 1000, "user": user}, 0, ctx)
    if isinstance(result, Rejection):
        assert result.field in {f"user.{k}" for k in user} and result.rule
        return
    (row,), _, failures = BUILDER.rows(b"1-0", entry_fields("adv", [orjson.loads(orjson.dumps(result))]))
    assert failures == []
    for kind, single, values in (("email", row.email_sha256, row.emails_sha256),
                                 ("phone", row.phone_sha256, row.phones_sha256),
                                 ("external_id", row.external_id_sha256, row.external_ids_sha256)):
        assert all(_is_hash(v) for v in values) and len(set(values)) == len(values) <= MAX_IDENTIFIER_VALUES
        assert single == (values[0] if values else "")
        sent = [v for k, v in user.items() if FIELD_KIND[k] == kind and v not in (None, "", [])]
        if not sent:
            assert values == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(em=JSON, ph=JSON, external_id=JSON)
def test_any_json_identifiers_over_http_are_2xx_or_a_4xx_naming_the_field(client, tenant, em, ph, external_id):
    now = int(time.time())
    row = {"event": "Lead", "event_time": now, "user": {"email": em, "phone": ph, "external_id": external_id}}
    resp = post(client, tenant, [row])
    assert resp.status_code in (200, 400), resp.data
    for rejected in resp.json["data"]["rejected"]:
        assert rejected["field"] in ("user.email", "user.phone", "user.external_id"), rejected
    meta = {"event_name": "Lead", "event_time": now, "action_source": "email",
            "user_data": {"em": em, "ph": ph, "external_id": external_id}}
    resp = client.post(f"/v19.0/{tenant.pixel_id}/events", json={"data": [meta], "access_token": tenant.token})
    assert resp.status_code in (200, 400), resp.data
    if resp.status_code == 400:
        assert resp.json["error"]["error_user_title"] in (
            "Invalid data[0].user_data.em", "Invalid data[0].user_data.ph", "Invalid data[0].user_data.external_id",
            "Invalid data[0].user_data"), resp.json
