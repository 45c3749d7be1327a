"""Issue 17: no raw e-mail address, phone number or client IP anywhere, whatever clients send.

The cases of the issue go through every intake path (pixel batch, image fallback, Events API 2.0
and 1.0, Meta's Conversions API, the click redirect), plus what an older collector may have
queued raw (a poison entry that ends in the dead letters, an entry that does not decode, a valid
one). Then every String and Array(String) column of every table of the test database (read from
``system.columns``) and every key of Redis (the event stream before the sink runs, the dead
letters after) are scanned for the raw values.
"""

import hashlib
import json
import re
from datetime import datetime, timezone

import orjson
import pytest

from clicktrail import keys
from collector import create_app
from pixel.click_urls import make_token
from pixel.records import entry_fields
from tests.conftest import now_ms, query_dicts, where


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


JANE = sha("jane@example.com")
PHONE = sha("+33612345678")
#: One address per way in, so that a leak names its path.
IPS = {
    "browser": "203.0.113.71", "forged": "203.0.113.72", "gif": "203.0.113.73", "server": "203.0.113.74",
    "v1": "203.0.113.75", "click": "203.0.113.76", "older": "203.0.113.77", "undecodable": "203.0.113.78",
    "older_valid": "203.0.113.79", "meta": "2001:db8:abcd:12::77",
}
EMAIL_LIKE = re.compile(r"[^\W_](?:@|%40|%2540)[^\W_]+\.[^\W\d_]{2,}")
#: The phone number in every form sent (+33 6 12 34 56 78, 0612345678, %2B33612345678...).
PHONE_LIKE = re.compile(r"6\D{0,3}12\D{0,3}34\D{0,3}56\D{0,3}78")
RAW_IP = re.compile("|".join(rf"(?<![\d.]){re.escape(ip)}(?![\d])" for ip in IPS.values() if "." in ip)
                    + r"|2001:db8:abcd:12")
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"


def leaks(text: str) -> list[str]:
    return [m.group() for pattern in (EMAIL_LIKE, PHONE_LIKE, RAW_IP) for m in pattern.finditer(text)]


@pytest.fixture
def collector(settings, r):
    """The collector behind a proxy it trusts (as ``clicktrail up`` runs it)."""
    return create_app({**where(settings), "TRUST_PROXY_HEADERS": True}).test_client()


def send_every_case(collector, tenant, settings) -> None:
    now = now_ms()
    browser = {"events": [{
        "event": "CompletePayment", "event_id": "e-browser", "timestamp": now, "ttp": "ttp-jane",
        "page": {"url": "https://shop.example/thanks?email=jane@example.com&utm_source=tiktok&ttclid=E.C.P.c1",
                 "referrer": "https://webmail.example/read?from=Jane%40Example.com&phone=%2B33612345678"},
        "properties": {"value": 10, "currency": "EUR", "email": "Jane@Example.com", "phone": "+33 6 12 34 56 78",
                       "contents": [{"content_id": "sku-1", "customer_mobile": "0612345678"}],
                       "note": "sent to jane@example.com"},
        "email": "jane@example.com", "ip_address": IPS["browser"],
        "user": {"ip": IPS["forged"], "email": "jane@example.com"}, "context": {"ip": IPS["forged"]},
    }]}
    resp = collector.post(f"/e/{tenant.pixel_id}", data=json.dumps(browser),
                          headers={"Origin": "https://shop.example", "Content-Type": "text/plain;charset=UTF-8",
                                   "X-Forwarded-For": f"{IPS['browser']}, 10.0.0.1", "User-Agent": UA},
                          environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert resp.status_code == 200 and resp.json == {"accepted": 1, "rejected": []}

    gif = collector.get(f"/e/{tenant.pixel_id}.gif?ev=ViewContent&eid=e-gif&url=https%3A%2F%2Fshop.example%2F"
                        "%3Femail%3Djane%2540example.com&email=jane@example.com&phone=%2B33612345678",
                        headers={"Referer": "https://shop.example/signup?e-mail=jane@example.com",
                                 "X-Forwarded-For": IPS["gif"]})
    assert gif.status_code == 200 and gif.mimetype == "image/gif"

    server = {"event_source": "web", "event_source_id": tenant.pixel_id, "data": [{
        "event": "Purchase", "event_id": "e-server", "event_time": now // 1000,
        "user": {"email": "Jane@Example.com ", "phone": "+33 6 12 34 56 78", "ip": IPS["server"], "user_agent": UA,
                 "first_name": "Jane"},
        "page": {"url": "https://shop.example/checkout?Mail=jane@example.com"},
        "properties": {"value": 20, "currency": "EUR", "billing_email": "jane@example.com"},
        "customer_phone": "+33612345678", "ip_address": IPS["server"],
    }]}
    resp = collector.post("/open_api/v1.3/event/track/", json=server, headers={"Access-Token": tenant.token})
    assert resp.status_code == 200 and resp.json["data"]["accepted"] == 1

    iso = datetime.fromtimestamp(now / 1000, timezone.utc).isoformat()
    v1 = {"pixel_code": tenant.pixel_id, "event": "SubmitForm", "event_id": "e-v1", "timestamp": iso,
          "context": {"ip": IPS["v1"], "user_agent": UA, "page": {"url": "https://shop.example/lead?tel=0612345678"},
                      "user": {"email": "jane@example.com"}},
          "properties": {"contact": "jane@example.com"}}
    resp = collector.post("/open_api/v1.3/pixel/track/", json=v1, headers={"Access-Token": tenant.token})
    assert resp.status_code == 200 and resp.json["data"]["accepted"] == 1

    meta = {"data": [{
        "event_name": "Purchase", "event_id": "e-meta", "event_time": now // 1000, "action_source": "website",
        "event_source_url": "https://shop.example/?email=jane@example.com",
        "user_data": {"em": "jane@example.com", "ph": "+33612345678", "client_ip_address": IPS["meta"],
                      "client_user_agent": UA},
        "custom_data": {"value": 3, "currency": "EUR", "email": "jane@example.com"},
    }]}
    resp = collector.post(f"/v18.0/{tenant.pixel_id}/events?access_token={tenant.token}", json=meta)
    assert resp.status_code == 200 and resp.json["events_received"] == 1

    token = make_token(settings.site.secret_key, tenant.advertiser, "cmp-1", "grp-1", "ad-1",
                       "https://shop.example/spring")
    click = collector.get(f"/r/{token}", headers={"X-Forwarded-For": IPS["click"], "User-Agent": UA})
    assert click.status_code == 302


def import_clicks_with_raw_lists(api_client, r, tenant) -> None:
    """An ad server's import naming the person by several raw addresses and numbers (hashed on intake)."""
    from pixel import registry

    auth = {"Authorization": f"Bearer {registry.create_token(r, tenant.advertiser, ['adserver'])}"}
    row = {"click_id": "c-import", "click_time": now_ms() // 1000 - 60, "campaign_id": "cmp-1", "adgroup_id": "grp-1",
           "ad_id": "ad-1", "user": {"email": ["jane.work@example.com", "Jane@Example.com"],
                                     "phone": ["+1 650 555 1212", "+33 6 12 34 56 78"], "external_id": "crm-jane"}}
    resp = api_client.post("/v1/clicks", json={"clicks": [row]}, headers=auth)
    assert resp.status_code == 200 and resp.json == {"accepted": 1, "rejected": []}, resp.json


def queue_as_an_older_collector(r, tenant) -> None:
    """Entries queued raw before the collector scrubbed: a poison one, one that does not decode, a valid one."""
    now = now_ms()
    raw = {"pixel_id": tenant.pixel_id, "source": "browser", "event": "Lead", "event_id": "e-old", "event_ms": now,
           "received_ms": "yesterday",  # poison: the sink refuses it, to the dead letters
           "url": "https://shop.example/?email=jane@example.com", "referrer": "", "ttp": "", "ttclid": "",
           "ip": IPS["older"], "user_agent": UA, "properties": {"phone": "+33612345678"},
           "extra": {"ip_address": IPS["older"]}, "test_event_code": "", "limited_data_use": False}
    r.xadd("ct:events", entry_fields(tenant.advertiser, [raw]))
    r.xadd("ct:events", {b"a": tenant.advertiser.encode(), b"n": b"1",
                         b"d": b'\xff[{"email": "jane@example.com", "ip": "%s"' % IPS["undecodable"].encode()})
    valid = dict(raw, event_id="e-old-valid", received_ms=now, ip=IPS["older_valid"], url="https://shop.example/",
                 properties={}, extra={})
    r.xadd("ct:events", entry_fields(tenant.advertiser, [valid]))


def without_recipients(raw: bytes) -> bytes:
    """A schedule's (or rule's) JSON without its ``email.to``: the one place an address may be kept.

    Those are the advertiser's own staff, set by its operator to receive reports (docs/operations.md,
    "Privacy"), never a tracked person; every other field of the object is still scanned.
    """
    owner = json.loads(raw)
    if isinstance(owner.get("email"), dict):
        owner["email"] = {k: v for k, v in owner["email"].items() if k != "to"}
    return json.dumps(owner).encode()


def redis_text(r) -> dict[str, str]:
    """Every key of the test's Redis database with all it holds, as text (recipients of e-mail deliveries aside)."""
    holders = {getattr(keys, name) for name in keys.RECIPIENT_HOLDERS}
    out = {}
    for key in r.scan_iter("*"):
        kind = r.type(key).decode()
        if kind == "string":
            parts = [r.get(key)]
        elif kind == "hash" and key.decode() in holders:
            parts = [b for k, v in r.hgetall(key).items() for b in (k, without_recipients(v))]
        elif kind == "hash":
            parts = [b for pair in r.hgetall(key).items() for b in pair]
        elif kind == "list":
            parts = r.lrange(key, 0, -1)
        elif kind == "set":
            parts = list(r.smembers(key))
        elif kind == "zset":
            parts = r.zrange(key, 0, -1)
        elif kind == "stream":
            parts = [b for _, fields in r.xrange(key) for pair in fields.items() for b in pair]
        else:
            parts = []
        out[key.decode()] = "\n".join(p.decode("utf-8", "replace") for p in parts if p is not None)
    return out


def string_columns(ch, db) -> list[tuple[str, str, str]]:
    return ch.execute(
        "SELECT c.table, c.name, c.type FROM system.columns AS c "
        "ANY INNER JOIN (SELECT name AS table, engine FROM system.tables WHERE database = %(db)s) AS t USING table "
        "WHERE c.database = %(db)s AND t.engine NOT LIKE '%%View' "
        "AND (c.type LIKE '%%String%%' AND c.type NOT LIKE '%%Tuple%%')",
        {"db": db})


def schedule_reports_by_email(r, tenant, settings) -> None:
    """A scheduled report e-mailed to the advertiser's staff: their addresses are kept, as they must be."""
    from pixel.registry import settings_of
    from reporting import schedules

    mail_settings = settings.updated({"SMTP_URL": "smtp://127.0.0.1:25"}).mail
    body = {"range": "yesterday", "at": "07:00", "email": {"to": ["ana@shop.example", "ops@shop.example"]}}
    schedules.save(r, schedules.parse(body, tenant.advertiser, settings_of(None), False, mail_settings))


def test_no_raw_email_phone_or_ip_reaches_redis_or_any_column(collector, api_client, tenant, settings, r, sink,
                                                               attributor, ch, ch_database):
    schedule_reports_by_email(r, tenant, settings)
    send_every_case(collector, tenant, settings)
    import_clicks_with_raw_lists(api_client, r, tenant)
    queued = redis_text(r)
    assert queued["ct:events"].count('"event_id"') == 5  # the five events, then the click
    assert r.hlen(keys.SCHEDULES) == 1 and "ana@shop.example" in r.hvals(keys.SCHEDULES)[0].decode()
    assert {k: leaks(v) for k, v in queued.items() if leaks(v)} == {}

    queue_as_an_older_collector(r, tenant)
    sink.drain()
    attributor.settle()

    kept = redis_text(r)
    letters = r.xrange("ct:events:dead")
    assert len(letters) == 2 and {f[b"index"] for _, f in letters} == {b"0", b"*"}
    assert {k: leaks(v) for k, v in kept.items() if leaks(v)} == {}

    columns = string_columns(ch, ch_database)
    tables = {table for table, _, _ in columns}
    assert {"events", "touchpoints", "credits", "event_identities", "touch_identities"} <= tables
    found = {}
    for table, column, kind in columns:
        value = f"arrayStringConcat(`{column}`, '\\n')" if kind.startswith("Array") else f"toString(`{column}`)"
        for (text,) in ch.execute(f"SELECT DISTINCT {value} FROM {ch_database}.`{table}`"):
            if leaks(text):
                found.setdefault(f"{table}.{column}", []).append(text)
    assert found == {}

    # What the advertiser sees instead: hashes where addresses were, networks where IPs were.
    rows = {row["event_id"]: row for row in query_dicts(
        ch, f"SELECT event_id, ip, url, referrer, properties, extra, email_sha256 FROM {ch_database}.events")}
    assert set(rows) == {"e-browser", "e-gif", "e-server", "e-v1", "e-meta", "e-old-valid"}
    assert rows["e-browser"]["ip"] == "203.0.113.0"  # the connection's, not the one the page chose
    assert rows["e-browser"]["url"] == f"https://shop.example/thanks?email={JANE}&utm_source=tiktok&ttclid=E.C.P.c1"
    assert orjson.loads(rows["e-browser"]["properties"])["email"] == JANE
    assert orjson.loads(rows["e-browser"]["properties"])["phone"] == PHONE
    assert orjson.loads(rows["e-gif"]["extra"]) == {"email": JANE, "phone": PHONE}
    assert rows["e-server"]["email_sha256"] == JANE and rows["e-meta"]["ip"] == "2001:db8:abcd::"
    assert {rows[e]["ip"] for e in ("e-server", "e-v1", "e-old-valid")} == {"203.0.113.0"}
    (touch_ip,), = ch.execute(f"SELECT ip FROM {ch_database}.touchpoints WHERE source = 'redirect'")
    assert touch_ip == "203.0.113.0"
    # The imported click's every value, as hashes only, the person's second address among them.
    assert {tuple(row) for row in ch.execute(f"SELECT identity_kind, identity FROM {ch_database}.touch_identities "
                                             "WHERE touch_id = 'c-import' AND identity_kind != 'browser'")} == {
        ("email", sha("jane.work@example.com")), ("email", JANE), ("phone", sha("+16505551212")), ("phone", PHONE),
        ("external_id", sha("crm-jane"))}
    lists = query_dicts(ch, f"SELECT emails_sha256, phones_sha256 FROM {ch_database}.touchpoints "
                            "WHERE touch_id = 'c-import'")
    assert lists == [{"emails_sha256": [sha("jane.work@example.com"), JANE],
                      "phones_sha256": [sha("+16505551212"), PHONE]}]


def test_recipients_are_allowed_at_email_to_of_a_schedule_and_nowhere_else(r):
    staff = {"id": "sch_1", "email": {"to": ["ana@shop.example"]}}
    r.hset(keys.SCHEDULES, "sch_1", json.dumps(staff))
    assert {k: leaks(v) for k, v in redis_text(r).items() if leaks(v)} == {}
    # A tracked person's address anywhere else, in that hash too, is caught.
    r.hset(keys.SCHEDULES, "sch_2", json.dumps({**staff, "id": "sch_2", "report": {"events": "jane@example.com"}}))
    r.hset(keys.schedule_periods("sch_1"), "2026-03-01", json.dumps({"error": "550 <ana@shop.example> refused"}))
    found = {k: leaks(v) for k, v in redis_text(r).items() if leaks(v)}
    assert found == {keys.SCHEDULES: ["e@example.com"], keys.schedule_periods("sch_1"): ["a@shop.example"]}


def test_with_anonymisation_off_the_ip_is_kept_but_addresses_are_still_hashed(settings, r, tenant, sink, ch,
                                                                              ch_database):
    client = create_app({**where(settings), "TRUST_PROXY_HEADERS": True, "ANONYMIZE_IP": False}).test_client()
    body = {"events": [{"event": "PageView", "event_id": "e-1",
                        "page": {"url": "https://shop.example/?email=jane@example.com"},
                        "ip_address": IPS["browser"], "user": {"ip": IPS["forged"]}}]}
    resp = client.post(f"/e/{tenant.pixel_id}", data=json.dumps(body),
                       headers={"Origin": "https://shop.example", "X-Forwarded-For": IPS["browser"]})
    assert resp.status_code == 200
    (fields,) = [f for _, f in r.xrange("ct:events")]
    (record,) = orjson.loads(fields[b"d"])
    assert record["ip"] == IPS["browser"] and record["extra"] == {"ip_address": IPS["browser"]}
    assert record["url"] == f"https://shop.example/?email={JANE}"
    assert IPS["forged"].encode() not in fields[b"d"]
