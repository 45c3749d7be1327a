"""Erasure of one person's data (POST /v1/erasure, `clicktrail erase`), on real Redis and ClickHouse.

The world: advertiser adv-1 with two people. Jane: a click on ad `a-jane` carrying her email, a
PageView carrying every identifier (email, phone, external id, browser id), and a purchase that
carries only her browser id and her click id (found by the browser hop). John: his own click and
purchase. Advertiser adv-2 has a Jane too (same email hash), with a click and a purchase.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from clicktrail.errors import BadRequest
from pixel import erasure, registry
from tests.conftest import Tenant, query_dicts
from tests.servers import env_for


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


JANE = {"email": sha("jane@example.com"), "phone": sha("+4915112345678"), "external_id": sha("user-jane"),
        "ttp": "ttp-jane-browser"}
JOHN = {"email": sha("john@example.com"), "ttp": "ttp-john-browser"}


class World:
    def __init__(self, r, client, api_client, sink, attributor):
        self.r, self.client, self.api, self.sink, self.attributor = r, client, api_client, sink, attributor
        self.one = Tenant(r, "adv-1")
        self.two = Tenant(r, "adv-2", "other.example")
        self.tokens = {adv: registry.create_token(r, adv, ["reports", "adserver", "privacy", "optimizer"])
                       for adv in ("adv-1", "adv-2")}

    def post_events(self, tenant: Tenant, events: list[dict]) -> None:
        body = {"event_source": "web", "event_source_id": tenant.pixel_id, "data": events}
        reply = self.client.post("/open_api/v1.3/event/track/", json=body, headers={"Access-Token": tenant.token})
        assert reply.status_code == 200 and reply.get_json()["data"]["accepted"] == len(events), reply.get_json()

    def post_clicks(self, advertiser: str, clicks: list[dict]) -> None:
        reply = self.api.post("/v1/clicks", json={"clicks": clicks}, headers=self.auth(advertiser))
        assert reply.status_code == 200, reply.get_json()

    def auth(self, advertiser: str) -> dict:
        return {"Authorization": f"Bearer {self.tokens[advertiser]}"}

    def build(self) -> None:
        now = int(time.time())
        self.post_clicks("adv-1", [
            {"click_id": "click-jane", "click_time": now - 7200, "campaign_id": "c", "adgroup_id": "g",
             "ad_id": "a-jane", "user": {"email": JANE["email"]}},
            {"click_id": "click-john", "click_time": now - 7200, "campaign_id": "c", "adgroup_id": "g",
             "ad_id": "a-john", "user": {"email": JOHN["email"]}}])
        self.post_clicks("adv-2", [{"click_id": "click-jane-2", "click_time": now - 7200, "campaign_id": "c",
                                    "adgroup_id": "g", "ad_id": "a-jane", "user": {"email": JANE["email"]}}])
        self.post_events(self.one, [
            {"event": "PageView", "event_time": now - 3600, "event_id": "jane-view",
             "user": {"email": JANE["email"], "phone": JANE["phone"], "external_id": JANE["external_id"],
                      "ttp": JANE["ttp"]}},
            {"event": "CompletePayment", "event_time": now - 60, "event_id": "jane-buy",
             "user": {"ttp": JANE["ttp"], "ttclid": "click-jane"}, "properties": {"value": 30, "currency": "USD"}},
            {"event": "CompletePayment", "event_time": now - 60, "event_id": "john-buy",
             "user": {"ttp": JOHN["ttp"], "ttclid": "click-john", "email": JOHN["email"]},
             "properties": {"value": 20, "currency": "USD"}}])
        self.post_events(self.two, [
            {"event": "CompletePayment", "event_time": now - 60, "event_id": "jane-buy-2",
             "user": {"email": JANE["email"], "ttclid": "click-jane-2"}, "properties": {"value": 5, "currency": "USD"}}])
        self.sink.drain()
        self.attributor.settle()

    def report(self, advertiser: str) -> dict:
        day = time.strftime("%Y-%m-%d", time.gmtime())
        reply = self.api.get(f"/v1/reports?start={day}&end={day}&events=CompletePayment&dimensions=ad_id"
                             "&metrics=clicks,conversions,conversion_value", headers=self.auth(advertiser))
        assert reply.status_code == 200, reply.get_json()
        return {row["ad_id"]: (row["clicks"], row["conversions"], row["conversion_value"])
                for row in reply.get_json()["rows"]}

    def feed(self, advertiser: str) -> dict:
        reply = self.api.get("/v1/optimizer/conversions?event=CompletePayment&level=ad&bucket=hour",
                             headers=self.auth(advertiser))
        assert reply.status_code == 200, reply.get_json()
        sums: dict = {}
        for row in reply.get_json()["rows"]:  # per ad, over the hours of its clicks
            clicks, conversions = sums.get(row["ad_id"], (0, 0.0))
            sums[row["ad_id"]] = (clicks + row["clicks"], round(conversions + row["conversions"], 9))
        return sums

    def erase(self, advertiser: str, user: dict) -> str:
        reply = self.api.post("/v1/erasure", json={"user": user}, headers=self.auth(advertiser))
        assert reply.status_code == 202, reply.get_json()
        return reply.get_json()["request_id"]

    def finish(self, advertiser: str, request_id: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.attributor.eraser.step()
            record = self.status(advertiser, request_id)
            if record["status"] == "done":
                return record
            time.sleep(0.2)
        raise AssertionError(f"erasure {request_id} not done in {timeout} s: {record}")

    def status(self, advertiser: str, request_id: str) -> dict:
        reply = self.api.get(f"/v1/erasure/{request_id}", headers=self.auth(advertiser))
        assert reply.status_code == 200, reply.get_json()
        return reply.get_json()


@pytest.fixture
def world(r, ch, client, api_client, sink, attributor):
    w = World(r, client, api_client, sink, attributor)
    w.build()
    return w


def stored_ids(ch, db: str, advertiser: str) -> dict[str, set]:
    def ids(sql: str) -> set:
        return {row[0] for row in ch.execute(sql, {"a": advertiser})}

    return {
        "events": ids(f"SELECT event_id FROM {db}.events WHERE advertiser_id = %(a)s"),
        "touchpoints": ids(f"SELECT touch_id FROM {db}.touchpoints WHERE advertiser_id = %(a)s"),
        "event_identities": ids(f"SELECT identity FROM {db}.event_identities WHERE advertiser_id = %(a)s"),
        "touch_identities": ids(f"SELECT identity FROM {db}.touch_identities WHERE advertiser_id = %(a)s"),
        "credits": ids(f"SELECT event_id FROM {db}.credits WHERE advertiser_id = %(a)s"),
        "candidates": ids(f"SELECT event_id FROM {db}.attribution_candidates WHERE advertiser_id = %(a)s"),
    }


@pytest.mark.parametrize("kind", ["email", "phone", "external_id", "ttp"])
def test_erasure_by_any_one_identifier_removes_everything_of_the_person(world, ch, ch_database, r, kind):
    assert world.report("adv-1") == {"a-jane": (1, 1.0, 30.0), "a-john": (1, 1.0, 20.0)}
    assert world.feed("adv-1")["a-jane"] == (1, 1.0)
    before_two = stored_ids(ch, ch_database, "adv-2")

    request_id = world.erase("adv-1", {kind: JANE[kind]})
    assert world.status("adv-1", request_id)["status"] == "pending"
    record = world.finish("adv-1", request_id)

    left = stored_ids(ch, ch_database, "adv-1")
    assert left["events"] == {"john-buy"}  # her page view and, through her browser id, her purchase
    assert left["touchpoints"] == {"click-john"}  # her click, found through her purchase's click id
    assert left["credits"] == left["candidates"] == {"john-buy"}
    assert set(JANE.values()).isdisjoint(left["event_identities"] | left["touch_identities"])
    assert "click-jane" not in left["event_identities"]
    # Reports and the feed no longer count her click or her purchase; John's are whole.
    assert without_zeros(world.report("adv-1")) == {"a-john": (1, 1.0, 20.0)}
    assert world.feed("adv-1").get("a-jane", (0, 0.0)) == (0, 0.0)
    assert world.feed("adv-1")["a-john"] == (1, 1.0)
    # The other advertiser's Jane is not this advertiser's to erase.
    assert stored_ids(ch, ch_database, "adv-2") == before_two
    assert world.report("adv-2") == {"a-jane": (1, 1.0, 5.0)}

    assert record["rows"]["events"] == 2 and record["rows"]["touchpoints"] == 1
    assert record["requested_by"].startswith("token:") and record["done_at"]
    # The audit keeps no identifier in any form; the work record with them is gone.
    assert_no_identifier_in_redis(r)
    commands = " ".join(row[0] for row in ch.execute(
        "SELECT command FROM system.mutations WHERE database = %(db)s", {"db": ch_database}))
    assert not any(value in commands for value in JANE.values())


def without_zeros(report: dict) -> dict:
    """The rows that still count something (a restated sum of 0 may leave its ad's row, all zeros)."""
    return {ad: sums for ad, sums in report.items() if any(sums)}


def assert_no_identifier_in_redis(r) -> None:
    for key in r.scan_iter(match="ct:erasure*"):
        value = r.get(key) if r.type(key) == b"string" else b" ".join(m for m, _ in r.zscan_iter(key))
        for identifier in JANE.values():
            assert identifier.encode() not in value, f"{key!r} holds an identifier"


def test_another_advertisers_token_erases_only_its_own(world, ch, ch_database):
    before_one = stored_ids(ch, ch_database, "adv-1")
    request_id = world.erase("adv-2", {"email": JANE["email"]})
    record = world.finish("adv-2", request_id)
    assert record["rows"]["events"] == 1
    assert stored_ids(ch, ch_database, "adv-1") == before_one
    assert world.report("adv-1") == {"a-jane": (1, 1.0, 30.0), "a-john": (1, 1.0, 20.0)}
    assert stored_ids(ch, ch_database, "adv-2")["events"] == set()
    # adv-1 cannot even see that adv-2's request exists.
    reply = world.api.get(f"/v1/erasure/{request_id}", headers=world.auth("adv-1"))
    assert reply.status_code == 404 and reply.get_json()["error"]["field"] == "request_id"


def test_queued_events_and_dead_letters_of_the_person_are_removed_and_the_others_kept(world, r, ch, ch_database):
    now = int(time.time())
    world.post_events(world.one, [  # one request, two people: one stream entry
        {"event": "Lead", "event_time": now, "event_id": "jane-lead", "user": {"email": JANE["email"]}},
        {"event": "Lead", "event_id": "john-lead", "event_time": now, "user": {"email": JOHN["email"]}}])
    r.xadd("ct:events:dead", {"id": "1-0", "index": "*", "reason": "test", "a": "adv-1", "n": "1",
                              "d": json.dumps([{"event": "Lead", "event_id": "jane-dead", "ttp": JANE["ttp"]}])})
    record = world.finish("adv-1", world.erase("adv-1", {"email": JANE["email"]}))
    assert record["rows"]["queued_events"] == 2
    queued = [e["event_id"] for _, f in r.xrange("ct:events") for e in json.loads(f[b"d"])]
    assert queued == ["john-lead"]
    assert r.xlen("ct:events:dead") == 0
    world.sink.drain()
    assert "john-lead" in stored_ids(ch, ch_database, "adv-1")["events"]


def test_the_cli_erases_and_prints_the_audit_record(world, settings, ch, ch_database, spawn):
    spawn.start("attributor", "--log-level", "WARNING")
    done = subprocess.run([sys.executable, "-m", "clicktrail.cli", "erase", "--advertiser", "adv-1",
                           "--ttp", JANE["ttp"]], env=env_for(settings), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    request_id, audit = done.stdout.splitlines()
    record = json.loads(audit)
    assert record["request_id"] == request_id and record["status"] == "done" and record["requested_by"] == "cli"
    assert stored_ids(ch, ch_database, "adv-1")["events"] == {"john-buy"}
    bad = subprocess.run([sys.executable, "-m", "clicktrail.cli", "erase", "--advertiser", "adv-1",
                          "--email-sha256", "jane@example.com"], env=env_for(settings), capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "--email must be the SHA-256 hex" in bad.stderr


def test_an_erasure_killed_half_way_resumes_and_subtracts_once(world, settings, ch, ch_database, spawn, r):
    request_id = world.erase("adv-1", {"email": JANE["email"]})
    # The attributor dies right after the erasure's cancel rows are inserted, before it records that.
    dying = spawn.start("attributor", "--log-level", "WARNING", failpoint="attributor_after_credit_input")
    assert dying.wait(timeout=60) == -9
    assert erasure.load_work(r, request_id)["phase"] == "collected"  # not recorded as restated
    r.delete("ct:attributor:lease")
    spawn.start("attributor", "--log-level", "WARNING")
    deadline = time.monotonic() + 60
    while world.status("adv-1", request_id)["status"] != "done" and time.monotonic() < deadline:
        time.sleep(0.3)
    assert world.status("adv-1", request_id)["status"] == "done"
    # Cancelled once: John's counts are whole, Jane's are zero, not minus one.
    assert without_zeros(world.report("adv-1")) == {"a-john": (1, 1.0, 20.0)}
    sums = query_dicts(ch, f"SELECT ad_id, sum(conversions) AS c FROM {ch_database}.conversion_stats "
                           "WHERE advertiser_id = 'adv-1' AND model = 'last_click' GROUP BY ad_id")
    assert {row["ad_id"]: round(row["c"], 9) for row in sums} == {"a-jane": 0.0, "a-john": 1.0}


@pytest.mark.parametrize("body, field", [
    ({}, "user"),
    ({"user": {}}, "user"),
    ({"user": {"email": "jane@example.com"}}, "user.email"),
    ({"user": {"phone": ["a" * 64] * 21}}, "user.phone"),
    ({"user": {"ttp": ""}}, "user.ttp"),
    ({"user": {"name": "Jane"}}, "user.name"),
    ({"user": {"external_id": 42}}, "user.external_id"),
])
def test_bad_requests_are_refused_naming_the_field(api_client, r, body, field):
    token = registry.create_token(r, "adv-1", ["privacy"])
    reply = api_client.post("/v1/erasure", json=body, headers={"Authorization": f"Bearer {token}"})
    assert reply.status_code == 400 and reply.get_json()["error"]["field"] == field
    assert r.zcard("ct:erasures") == 0


def test_a_token_without_the_privacy_scope_cannot_erase(api_client, r):
    token = registry.create_token(r, "adv-1", ["reports", "events", "adserver", "optimizer"])
    reply = api_client.post("/v1/erasure", json={"user": {"ttp": "x"}}, headers={"Authorization": f"Bearer {token}"})
    assert reply.status_code == 403 and r.zcard("ct:erasures") == 0


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=70),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                     max_leaves=12)


@hsettings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_json, st.fixed_dictionaries({"user": st.dictionaries(
    st.sampled_from(["email", "phone", "external_id", "ttp", "other"]),
    st.one_of(_json, st.lists(st.sampled_from(["a" * 64, "B" * 64, "ttp-1", ""]), max_size=25)), max_size=4)})))
def test_any_body_is_parsed_or_refused_clearly(body):
    try:
        found = erasure.parse_identifiers(body)
    except BadRequest as exc:
        assert exc.field and exc.message
        return
    assert found and all(values for values in found.values())
    for kind, values in found.items():
        assert values == sorted(set(values)) and len(values) <= erasure.MAX_VALUES
        if kind != "ttp":
            assert all(len(v) == 64 and v == v.lower() for v in values)
