"""App and offline event sources (issue 13): a TikTok App ID or an event set registered from the CLI
takes Events API 2.0 events of its kind, stored, attributed and reported like a pixel's.

The CLI runs as a real process; events go to a real gunicorn collector, a real sink stores them in
ClickHouse and the attributor credits them; reports and diagnostics come from the API app.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from clicktrail.errors import RegistryError
from pixel import ids, registry, sources
from tests.attribution_world import HOUR, World, sha
from tests.conftest import query_dicts
from tests.http import call
from tests.test_cli import run

APP_ID = "7234567890"
OFFLINE_SET = "7301234567890123456"
TRACK = "/open_api/v1.3/event/track/"


def post(base: str, token: str, body: dict):
    return call("POST", base + TRACK, body, {"Access-Token": token, "Content-Type": "application/json"})


def app_body(source_id: str = APP_ID, event_source: str = "app", **row) -> dict:
    event = {"event": "Purchase", "event_time": int(time.time()) - 60, "event_id": "app-1",
             "properties": {"value": 25.0, "currency": "USD"}, **row}
    return {"event_source": event_source, "event_source_id": source_id, "data": [event]}


def add(settings, *args):
    out = run(settings, "source", "add", *args)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture
def world(client, api_client, tenant, sink, attributor, r, ch, ch_database):
    return World(client, api_client, tenant, sink, attributor, r, ch, ch_database)


def test_cli_adds_lists_and_removes_sources(settings, r):
    assert add(settings, "--advertiser", "acme", "--app-id", APP_ID, "--name", "Shop for iOS") == APP_ID + "\n"
    assert add(settings, "--advertiser", "acme", "--offline-set", OFFLINE_SET) == OFFLINE_SET + "\n"
    listed = run(settings, "source", "list", "--advertiser", "acme")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(x["event_source_id"], x["event_source"], x["name"]) for x in rows] == [
        (APP_ID, "app", "Shop for iOS"), (OFFLINE_SET, "offline", "")]
    # Adding again renames; the other advertiser sees none of them.
    add(settings, "--advertiser", "acme", "--app-id", APP_ID, "--name", "Shop")
    assert sources.get_source(r, APP_ID)["name"] == "Shop"
    assert run(settings, "source", "list", "--advertiser", "other").stdout == ""
    removed = run(settings, "source", "remove", APP_ID, "--advertiser", "acme")
    assert removed.returncode == 0 and removed.stdout == APP_ID + "\n"
    assert sources.get_source(r, APP_ID) is None and sources.get_source(r, OFFLINE_SET)["kind"] == "offline"


def test_cli_refuses_clashes_and_bad_input_with_one_line(settings, r):
    pixel_id = registry.create_pixel(r, "acme", ["shop.example"])
    add(settings, "--advertiser", "acme", "--app-id", APP_ID)
    cases = [
        (("add", "--advertiser", "other", "--app-id", APP_ID), "is registered by another advertiser"),
        (("add", "--advertiser", "acme", "--offline-set", APP_ID), "already registered as a TikTok App ID"),
        (("add", "--advertiser", "acme", "--app-id", pixel_id), "is a pixel id"),
        (("add", "--advertiser", "acme"), "exactly one of --app-id, --offline-set or --crm-set"),
        (("add", "--advertiser", "acme", "--app-id", "1", "--crm-set", "2"), "exactly one of"),
        (("add", "--advertiser", "acme", "--app-id", "7 2"), "TikTok App ID '7 2' must be 1-64 characters"),
        (("add", "--advertiser", "acme", "--app-id", "9", "--name", "x" * 101), "name must be at most 100"),
        (("remove", APP_ID, "--advertiser", "other"), "is not an event source of advertiser 'other'"),
    ]
    for args, words in cases:
        out = run(settings, "source", *args)
        assert out.returncode == 2 and out.stdout == "", (args, out)
        assert words in out.stderr and out.stderr.count("\n") == 1, (args, out.stderr)
    assert sources.get_source(r, APP_ID)["advertiser_id"] == "acme"  # nothing taken over


def test_app_events_are_stored_attributed_and_reported(settings, spawn, world, tenant, r, ch, ch_database):
    base = spawn.collector(workers=1)
    # Before registering: a 404 that says what to do, naming the field.
    resp = post(base, tenant.token, app_body())
    assert resp.status == 404, resp.json
    assert resp.json["data"]["error"]["field"] == "event_source_id"
    assert "clicktrail source add" in resp.json["message"]
    add(settings, "--advertiser", tenant.advertiser, "--app-id", APP_ID, "--name", "Shop app")

    t = int(time.time()) - 2 * HOUR
    world.click("E.C.P.app-click", t, "AppCampaign")
    world.click("mail-click", t, "MailCampaign", user={"email": sha("jane@example.com")})
    world.settle()
    rows = [
        # TikTok's click id for an app event comes as ad.callback.
        {"event": "Purchase", "event_time": t + 600, "event_id": "app-order-1", "ad": {"callback": "E.C.P.app-click"},
         "app": {"app_id": APP_ID, "app_name": "Shop"}, "properties": {"value": 25.0, "currency": "USD"}},
        {"event": "Purchase", "event_time": t + 900, "event_id": "app-order-2",
         "user": {"email": "Jane@Example.com", "external_id": sha("u-7")},
         "properties": {"value": 5.0, "currency": "USD"}},
    ]
    resp = post(base, tenant.token, {"event_source": "app", "event_source_id": APP_ID, "data": rows,
                                     "partner_name": "AppsFlyer"})
    assert resp.status == 200 and resp.json["code"] == 0, resp.json
    assert resp.json["data"] == {"accepted": 2, "rejected": []}
    world.settle()

    stored = {row["event_id"]: row for row in query_dicts(ch, f"SELECT * FROM {ch_database}.events_unique")}
    assert set(stored) == {"app-order-1", "app-order-2"}
    for row in stored.values():
        assert (row["advertiser_id"], row["pixel_id"], row["source"], row["event_source"], row["partner_name"]) == (
            tenant.advertiser, APP_ID, "server", "app", "AppsFlyer")
    assert stored["app-order-1"]["click_id"] == "E.C.P.app-click"
    assert stored["app-order-2"]["email_sha256"] == sha("jane@example.com")  # hashed, never raw
    (first,) = world.latest("app-order-1")
    assert (first["touch_id"], first["matched_by"], first["campaign_id"]) == ("E.C.P.app-click", "click_id",
                                                                             "AppCampaign")
    (second,) = world.latest("app-order-2")
    assert (second["touch_id"], second["matched_by"]) == ("mail-click", "email")

    day = datetime.fromtimestamp(t + 600, timezone.utc).date().isoformat()
    report = world.api.get("/v1/reports", query_string={"start": day, "end": day, "dimensions": "campaign_id",
                                                         "metrics": "clicks,conversions,conversion_value"},
                           headers=world.auth)
    assert report.status_code == 200, report.json
    assert {r["campaign_id"]: r for r in report.json["rows"]} == {
        "AppCampaign": {"campaign_id": "AppCampaign", "clicks": 1, "conversions": 1.0, "conversion_value": 25.0},
        "MailCampaign": {"campaign_id": "MailCampaign", "clicks": 1, "conversions": 1.0, "conversion_value": 5.0},
    }

    diag = world.api.get(f"/v1/pixels/{APP_ID}/diagnostics", headers=world.auth)
    assert diag.status_code == 200, diag.json
    assert (diag.json["pixel_id"], diag.json["event_source"], diag.json["snippet"]) == (APP_ID, "app", None)
    assert diag.json["events"] == [{"event": "Purchase", "source": "server", "last_24h": 2, "last_7d": 2}]
    assert diag.json["matched_share_7d"] == 1.0
    advertiser = world.api.get("/v1/advertiser", headers=world.auth).json
    assert advertiser["event_sources"] == [{"event_source_id": APP_ID, "event_source": "app", "name": "Shop app"}]
    assert [p["pixel_id"] for p in advertiser["pixels"]] == [tenant.pixel_id]


def test_a_source_takes_only_its_own_kind_and_only_its_owner(settings, spawn, tenant, r, sink, ch, ch_database):
    base = spawn.collector(workers=1)
    add(settings, "--advertiser", tenant.advertiser, "--app-id", APP_ID)
    add(settings, "--advertiser", tenant.advertiser, "--offline-set", OFFLINE_SET)
    other_token = registry.create_token(r, "adv-2", ["events"])

    # Another advertiser's token: refused as for a pixel.
    resp = post(base, other_token, app_body())
    assert resp.status == 403 and resp.json["data"]["error"]["code"] == "token_advertiser", resp.json
    # The kind must agree: in the body, and in any row that names its own.
    for body in (app_body(event_source="web"), app_body(OFFLINE_SET, "app"),
                 {**app_body(), "data": [app_body()["data"][0], {**app_body()["data"][0], "event_id": "x",
                                                                  "event_source": "offline"}]}):
        resp = post(base, tenant.token, body)
        assert resp.status == 400, resp.json
        error = resp.json["data"]["error"]
        assert (error["field"], error["code"]) == ("event_source", "event_source_mismatch")
        assert "event_source must be" in resp.json["message"]
    # The endpoints for pixels refuse a source by the field that named it.
    v1 = call("POST", base + "/open_api/v1.3/pixel/track/",
              {"pixel_code": APP_ID, "event": "Purchase", "timestamp": "2026-01-01T00:00:00Z"},
              {"Access-Token": tenant.token, "Content-Type": "application/json"})
    assert v1.status == 400 and v1.json["data"]["error"]["field"] == "pixel_code", v1.json
    assert "not a pixel" in v1.json["message"] and "event_source 'app'" in v1.json["message"]
    browser = call("POST", f"{base}/e/{APP_ID}", {"events": [{"event": "PageView"}]},
                   {"Origin": "https://shop.example"})
    assert browser.status == 400 and browser.json["error"]["code"] == "not_a_pixel", browser.json
    meta = call("POST", f"{base}/v19.0/{APP_ID}/events?access_token={tenant.token}",
                {"data": [{"event_name": "Purchase", "event_time": int(time.time()), "action_source": "app"}]},
                {"Content-Type": "application/json"})
    assert meta.status == 400 and "not a pixel" in meta.json["error"]["message"], meta.json

    # Right kind, right owner: stored under the offline set, as offline events.
    resp = post(base, tenant.token, app_body(OFFLINE_SET, "offline", event_id="store-1"))
    assert resp.status == 200, resp.json
    # And once removed, the app is unknown again; its stored events stay.
    assert run(settings, "source", "remove", APP_ID, "--advertiser", tenant.advertiser).returncode == 0
    assert post(base, tenant.token, app_body()).status == 404
    sink.drain()
    assert ch.execute(f"SELECT pixel_id, event_source, event_id FROM {ch_database}.events_unique") == [
        (OFFLINE_SET, "offline", "store-1")]
    # Refusals are counted for the source's diagnostics, as a pixel's.
    counts = {k.decode(): int(v) for k, v in r.hgetall("ct:stats:rejected").items()}
    assert counts[f"{APP_ID}:request: event_source is not app"] == 3  # per event the requests held
    assert counts[f"{OFFLINE_SET}:request: event_source is not offline"] == 1
    assert counts[f"{APP_ID}:request: app event source sent as a pixel"] == 3


def test_a_pixel_still_takes_any_event_source(client, tenant):
    # A pixel is the web source, but a site's server may send its app or store events under it.
    for kind in ("web", "app", "offline", "crm"):
        body = app_body(tenant.pixel_id, kind, event_id=f"p-{kind}")
        resp = client.post(TRACK, json=body, headers={"Access-Token": tenant.token})
        assert resp.status_code == 200, resp.json


def test_another_advertisers_source_is_not_in_its_diagnostics(settings, r, api_client, tenant):
    sources.add_source(r, tenant.advertiser, "app", APP_ID)
    reports = {"Authorization": f"Bearer {registry.create_token(r, 'adv-2', ['reports'])}"}
    resp = api_client.get(f"/v1/pixels/{APP_ID}/diagnostics", headers=reports)
    assert resp.status_code == 404 and resp.json["error"]["field"] == "pixel_id"
    assert api_client.get("/v1/advertiser", headers=reports).json["event_sources"] == []


@hyp_settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.one_of(st.sampled_from(sorted(sources.KINDS)), st.text(max_size=8)),
       source_id=st.one_of(st.from_regex(r"[0-9]{1,20}", fullmatch=True), st.text(max_size=70)),
       name=st.text(max_size=120))
def test_any_registration_input_is_stored_as_given_or_refused_with_a_reason(r, kind, source_id, name):
    r.delete("ct:sources")
    try:
        record = sources.add_source(r, "acme", kind, source_id, name)
    except RegistryError as exc:
        assert str(exc) and r.hlen("ct:sources") == 0
        return
    assert kind in sources.KINDS and ids.is_valid_id(source_id)
    assert sources.get_source(r, source_id) == record
    assert record == {**record, "advertiser_id": "acme", "kind": kind, "name": name.strip()}
    assert list(sources.list_sources(r, "acme")) == [source_id]
