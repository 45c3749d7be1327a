"""Alert rules (/v1/rules, evaluated by `clicktrail scheduler`) on real Redis, ClickHouse and processes.

Events go through the real collector and sink, clicks, costs and conversions through the API and
the attributor (tests/attribution_world.py); a local webhook receiver (tests/test_schedules.py)
records every notification. Evaluations are driven with ``Scheduler.tick(now=...)`` a minute
apart, and once with the real `clicktrail scheduler` killed with SIGKILL between evaluations.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import math
import os
import signal
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, event, given, settings as hsettings, strategies as st

from clicktrail import clickhouse, keys, services
from clicktrail.lifecycle import StopFlag
from pixel import registry
from reporting import rule_eval, rules
from reporting.api import create_app
from reporting.scheduler import Scheduler
from tests.attribution_world import HOUR, World
from tests.conftest import Tenant, where
from tests.test_chaos import wait_for
from tests.test_schedules import Receiver

MINUTE = timedelta(seconds=61)


@pytest.fixture
def receiver():
    rec = Receiver()
    yield rec
    rec.close()


@pytest.fixture
def api(settings, r):
    return create_app({**where(settings), "ALLOW_HTTP_WEBHOOKS": "true"}).test_client()


@pytest.fixture
def worker(settings, r, ch, ch_database):
    return Scheduler(settings, r, clickhouse.connect(settings.clickhouse.url), ch_database, StopFlag(),
                     name="test-scheduler")


def auth(r, advertiser: str) -> dict:
    return {"Authorization": f"Bearer {registry.create_token(r, advertiser, ['reports'])}"}


def create(api, headers: dict, **body) -> dict:
    reply = api.post("/v1/rules", json=body, headers=headers)
    assert reply.status_code == 201, reply.get_json()
    return reply.get_json()


def shown(api, headers: dict, rule_id: str) -> dict:
    reply = api.get(f"/v1/rules/{rule_id}", headers=headers)
    assert reply.status_code == 200, reply.get_json()
    return reply.get_json()


def notes(receiver) -> list[dict]:
    return [json.loads(body) for _, body in receiver.posts]


def at(text: str | None) -> datetime:
    return datetime.fromisoformat(text) if text else datetime.min.replace(tzinfo=timezone.utc)


def page_view(client, pixel_id: str, event_id: str, event: str = "PageView", site: str = "shop.example") -> None:
    body = {"sent_at": time.time_ns() // 1_000_000, "events": [
        {"event": event, "event_id": event_id, "timestamp": time.time_ns() // 1_000_000,
         "page": {"url": f"https://{site}/"}}]}
    reply = client.post(f"/e/{pixel_id}", json=body)
    assert reply.status_code == 200 and reply.get_json()["accepted"] == 1, reply.get_json()


def silent_pixel_rule(api, headers, pixel_id: str, url: str) -> dict:
    return create(api, headers, name="shop pixel silent", metric="event_count", event="PageView", window="1h",
                  scope={"pixel_id": pixel_id}, condition={"op": "==", "threshold": 0}, webhook={"url": url})


# -- firing and resolving -------------------------------------------------------------------------

def test_a_silent_pixel_fires_once_and_resolves_once_when_events_arrive(r, ch, api, client, tenant, sink, worker,
                                                                       receiver):
    headers = auth(r, tenant.advertiser)
    page_view(client, tenant.pixel_id, "not-a-page-view", event="ViewContent")  # another event: not counted
    sink.drain()
    created = silent_pixel_rule(api, headers, tenant.pixel_id, receiver.url)
    assert created["state"] == "ok" and created["last_evaluated"] is None and created["secret"]
    t0 = datetime.now(timezone.utc)

    assert worker.tick(t0) == 1
    (fired,) = notes(receiver)
    assert fired["state"] == "firing" and fired["value"] == 0 and fired["threshold"] == 0
    assert fired["rule_id"] == created["id"] and fired["name"] == "shop pixel silent"
    assert fired["previous"] is None and abs(at(fired["evaluated_at"]) - t0) < timedelta(seconds=1)
    start, end = (datetime.fromisoformat(fired[k]) for k in ("window_start", "window_end"))
    assert end - start == timedelta(hours=1)
    headers_sent, body_sent = receiver.posts[0]
    expected = "sha256=" + hmac.new(created["secret"].encode(), body_sent, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers_sent["X-Clicktrail-Signature"], expected)
    assert headers_sent["X-Clicktrail-Delivery"] == f"{created['id']}:1"
    state = shown(api, headers, created["id"])
    assert state["state"] == "firing" and state["value"] == 0
    assert state["last_notification"]["status"] == "delivered" and state["last_notification"]["state"] == "firing"

    # Still silent a minute later, and ten seconds after that (not due): nothing more is sent.
    assert worker.tick(t0 + timedelta(seconds=10)) == 0
    assert worker.tick(t0 + MINUTE) == 0
    assert shown(api, headers, created["id"])["state"] == "firing" and len(receiver.posts) == 1

    page_view(client, tenant.pixel_id, "back")
    sink.drain()
    assert worker.tick(t0 + 2 * MINUTE) == 1
    assert worker.tick(t0 + 3 * MINUTE) == 0
    resolved = notes(receiver)[1]
    assert resolved["state"] == "resolved" and resolved["value"] == 1
    assert receiver.posts[1][0]["X-Clicktrail-Delivery"] == f"{created['id']}:2"
    state = shown(api, headers, created["id"])
    assert state["state"] == "ok" and state["value"] == 1
    assert at(state["since"]) == at(state["last_evaluated"]) - MINUTE  # resolved at the evaluation before


def test_scheduler_killed_between_evaluations_repeats_and_loses_nothing(r, ch, api, client, tenant, sink, spawn,
                                                                       receiver):
    headers = auth(r, tenant.advertiser)
    rule = silent_pixel_rule(api, headers, tenant.pixel_id, receiver.url)
    env = {"ALLOW_HTTP_WEBHOOKS": "true", "SCHEDULER_LEASE_S": 2, "RULE_INTERVAL_S": 1}
    first = spawn.start("scheduler", "--log-level", "WARNING", **env)
    wait_for("the firing notification", lambda: receiver.posts)
    wait_for("a later evaluation",
             lambda: at(shown(api, headers, rule["id"])["last_evaluated"]) > at(notes(receiver)[0]["evaluated_at"]))
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()

    restarted = time.time() * 1000
    spawn.start("scheduler", "--log-level", "WARNING", **env)
    wait_for("evaluations by the new scheduler",
             lambda: at(shown(api, headers, rule["id"])["last_evaluated"]).timestamp() * 1000 > restarted + 2000)
    assert [n["state"] for n in notes(receiver)] == ["firing"]  # still silent: nothing repeated

    page_view(client, tenant.pixel_id, "back")
    sink.drain()
    wait_for("the resolved notification", lambda: len(receiver.posts) >= 2)
    wait_for("a later evaluation",
             lambda: at(shown(api, headers, rule["id"])["last_evaluated"]) > at(notes(receiver)[1]["evaluated_at"]))
    assert [n["state"] for n in notes(receiver)] == ["firing", "resolved"]
    assert [h["X-Clicktrail-Delivery"] for h, _ in receiver.posts] == [f"{rule['id']}:1", f"{rule['id']}:2"]


class HangingReceiver(Receiver):
    """A webhook that records each POST and, for the first, never answers until ``release`` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.posts: list[tuple[dict, bytes]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts.append((dict(self.headers), body))
                if len(outer.posts) == 1:
                    outer.release.wait(60)
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the scheduler that asked is dead

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        super().close()


def test_scheduler_killed_during_a_notification_sends_it_again_with_the_same_id(r, ch, api, tenant, spawn):
    receiver = HangingReceiver()
    try:
        headers = auth(r, tenant.advertiser)
        rule = silent_pixel_rule(api, headers, tenant.pixel_id, receiver.url)
        env = {"ALLOW_HTTP_WEBHOOKS": "true", "SCHEDULER_LEASE_S": 2, "RULE_INTERVAL_S": 1}
        first = spawn.start("scheduler", "--log-level", "WARNING", **env)
        wait_for("the firing notification, unanswered", lambda: receiver.posts)
        assert shown(api, headers, rule["id"])["last_notification"]["status"] == "pending"
        os.killpg(first.pid, signal.SIGKILL)  # before the receiver's answer: was it delivered? Unknown.
        first.wait()
        receiver.release.set()

        spawn.start("scheduler", "--log-level", "WARNING", **env)
        wait_for("the notification sent again", lambda: len(receiver.posts) >= 2)
        wait_for("it recorded as delivered",
                 lambda: shown(api, headers, rule["id"])["last_notification"]["status"] == "delivered")
        first_sent, again = receiver.posts[0], receiver.posts[1]
        assert first_sent[1] == again[1]  # the same body, so the same signature
        assert first_sent[0]["X-Clicktrail-Delivery"] == again[0]["X-Clicktrail-Delivery"] == f"{rule['id']}:1"
        evaluated = at(shown(api, headers, rule["id"])["last_evaluated"])
        wait_for("later evaluations", lambda: at(shown(api, headers, rule["id"])["last_evaluated"]) > evaluated)
        assert len(receiver.posts) == 2 and shown(api, headers, rule["id"])["state"] == "firing"
    finally:
        receiver.close()


def test_a_rule_not_evaluated_keeps_its_state_and_says_why(settings, r, ch, api, tenant, worker, receiver,
                                                          ch_database):
    headers = auth(r, tenant.advertiser)
    rule = silent_pixel_rule(api, headers, tenant.pixel_id, receiver.url)
    t0 = datetime.now(timezone.utc)
    assert worker.tick(t0) == 1
    down = Scheduler(settings, r, clickhouse.connect(f"clickhouse://127.0.0.1:{services.free_port()}/{ch_database}"),
                     ch_database, StopFlag(), name=worker.name)
    assert down.tick(t0 + MINUTE) == 0
    state = shown(api, headers, rule["id"])
    assert state["state"] == "firing" and state["error"] and at(state["last_evaluated"]) == t0.replace(
        microsecond=t0.microsecond // 1000 * 1000)
    assert len(receiver.posts) == 1
    assert worker.tick(t0 + 2 * MINUTE) == 0  # ClickHouse back, still silent: still firing, nothing sent
    assert shown(api, headers, rule["id"])["error"] is None


def test_an_advertiser_holds_at_most_100_rules(r, api, receiver):
    headers = auth(r, "adv-1")
    for _ in range(rules.MAX_RULES):
        rules.save(r, rules.parse(r, valid(receiver.url), "adv-1", allow_http=True))
    reply = api.post("/v1/rules", json=valid(receiver.url), headers=headers)
    assert reply.status_code == 400 and reply.get_json()["error"]["field"] == "body"
    assert "at most 100" in reply.get_json()["error"]["message"]
    assert len(api.get("/v1/rules", headers=headers).get_json()["rules"]) == rules.MAX_RULES


def test_a_failed_notification_is_retried_with_the_same_id_and_body(r, ch, api, tenant, worker):
    receiver = Receiver(codes=[500, 503])
    try:
        headers = auth(r, tenant.advertiser)
        rule = silent_pixel_rule(api, headers, tenant.pixel_id, receiver.url)
        worker.rules.retry_base_s = 0.001
        t0 = datetime.now(timezone.utc)
        assert worker.tick(t0) == 1
        failing = shown(api, headers, rule["id"])
        assert failing["state"] == "firing"  # the transition stands; its notification is pending
        assert failing["last_notification"]["status"] == "retrying" and "500" in failing["last_notification"]["error"]
        assert worker.tick(t0 + timedelta(seconds=1)) == 1
        # A scheduler started anew (the same host's name, so it has the lease) finds it still to deliver.
        restarted = Scheduler(worker.settings, r, worker.ch, worker.db, StopFlag(), name=worker.name)
        restarted.rules.retry_base_s = 0.001
        assert restarted.tick(t0 + timedelta(seconds=2)) == 1
        assert restarted.tick(t0 + timedelta(seconds=3)) == 0
        assert len(receiver.posts) == 3 and len({body for _, body in receiver.posts}) == 1
        assert {h["X-Clicktrail-Delivery"] for h, _ in receiver.posts} == {f"{rule['id']}:1"}
        done = shown(api, headers, rule["id"])["last_notification"]
        assert done["status"] == "delivered" and done["attempts"] == 3 and done["error"] is None
    finally:
        receiver.close()


@pytest.fixture
def world(client, api_client, tenant, sink, attributor, r, ch, ch_database):
    return World(client, api_client, tenant, sink, attributor, r, ch, ch_database)


def _costs(world, day, campaign: str, spend: float) -> None:
    row = {"date": day.isoformat(), "campaign_id": campaign, "adgroup_id": f"{campaign}-g", "ad_id": f"{campaign}-ad",
           "spend": spend}
    reply = world.api.post("/v1/costs", json={"costs": [row]}, headers=world.auth)
    assert reply.status_code == 200, reply.get_json()


def test_cpa_of_a_campaign_fires_on_spend_without_conversions_and_resolves(world, api, worker, receiver, r):
    now = int(time.time())
    yesterday = datetime.now(timezone.utc).date() - timedelta(days=1)
    _costs(world, yesterday, "A", 100.0)
    world.click("kA1", now - 5 * HOUR, "A")
    world.click("kA2", now - 5 * HOUR, "A")
    world.click("kB", now - 5 * HOUR, "B")
    world.convert("other-campaign", now - 4 * HOUR, ttclid="kB")
    world.settle()
    rule = create(api, world.auth, name="CPA of A", metric="cpa", window="7d", scope={"campaign_id": "A"},
                  condition={"op": ">", "threshold": 50}, webhook={"url": receiver.url})

    t0 = datetime.now(timezone.utc)
    assert worker.tick(t0) == 1
    (fired,) = notes(receiver)
    # 100 spent and no conversion: a CPA above any threshold, shown as no value with why.
    assert fired["state"] == "firing" and fired["value"] is None and fired["value_note"] == "spend without conversions"
    state = shown(api, world.auth, rule["id"])
    assert (state["state"], state["value"], state["note"]) == ("firing", None, "spend without conversions")

    world.convert("a1", now - 3 * HOUR, ttclid="kA1")
    world.convert("a2", now - 3 * HOUR, ttclid="kA2")
    world.settle()
    assert worker.tick(t0 + MINUTE) == 1
    resolved = notes(receiver)[1]
    assert resolved["state"] == "resolved" and resolved["value"] == 50.0  # 100 / 2: not above 50
    assert worker.tick(t0 + 2 * MINUTE) == 0


def test_conversions_falling_by_half_against_the_day_before_fire(world, api, worker, receiver):
    now = int(time.time())
    for i in range(4):  # the 24 h before the window: 4 conversions
        world.click(f"old{i}", now - 40 * HOUR, "A")
        world.convert(f"old{i}", now - 30 * HOUR, ttclid=f"old{i}")
    world.click("new0", now - 3 * HOUR, "A")
    world.convert("new0", now - 2 * HOUR, ttclid="new0")
    world.settle()
    rule = create(api, world.auth, metric="conversions", window="24h", condition={"change": "fall", "percent": 50},
                  webhook={"url": receiver.url})
    assert rule["name"] == "conversions over 24h" and rule["scope"] == {}

    t0 = datetime.now(timezone.utc)
    assert worker.tick(t0) == 1
    fired = notes(receiver)[0]
    assert (fired["state"], fired["value"], fired["previous"], fired["threshold"]) == ("firing", 1.0, 4.0, 50.0)
    for i in (1, 2):  # 3 against 4: a fall of 25 %
        world.click(f"new{i}", now - 3 * HOUR, "A")
        world.convert(f"new{i}", now - 2 * HOUR, ttclid=f"new{i}")
    world.settle()
    assert worker.tick(t0 + MINUTE) == 1
    assert notes(receiver)[1]["state"] == "resolved" and notes(receiver)[1]["value"] == 3.0
    state = shown(api, world.auth, rule["id"])
    assert (state["state"], state["value"], state["previous"]) == ("ok", 3.0, 4.0)


@pytest.mark.parametrize("condition, value, previous, holds", [
    ({"change": "fall", "percent": 50}, 0.0, 0.0, False),  # nothing before, nothing now: no fall
    ({"change": "fall", "percent": 50}, 0.0, 10.0, True),
    ({"change": "fall", "percent": 100}, 0.0, 10.0, True),
    ({"change": "rise", "percent": 50}, 5.0, 0.0, True),  # from nothing, any rise is more than any %
    ({"change": "rise", "percent": 50}, 5.0, None, False),  # no previous value (a CPA of nothing)
    ({"change": "fall", "percent": 50}, 5.0, math.inf, True),  # from spend without conversions to a CPA
    ({"op": "<", "threshold": 1}, None, None, False),  # ROAS without spend is not below 1
    ({"op": ">", "threshold": 50}, math.inf, None, True),  # spend without conversions: CPA above any threshold
    ({"op": "<=", "threshold": 50}, math.inf, None, False),
])
def test_undefined_values(condition, value, previous, holds):
    before = rule_eval.Measure(previous) if "change" in condition else None
    assert rule_eval.holds(condition, rule_eval.Measure(value), before) is holds


# -- the API ----------------------------------------------------------------------------------------

def test_pause_resume_delete_and_isolation(r, ch, api, tenant, worker, receiver):
    mine, theirs = auth(r, tenant.advertiser), auth(r, "adv-2")
    rule = silent_pixel_rule(api, mine, tenant.pixel_id, receiver.url)
    rid = rule["id"]
    assert "secret" not in shown(api, mine, rid)

    # Another advertiser sees nothing, changes nothing, and cannot watch the pixel.
    assert api.get("/v1/rules", headers=theirs).get_json() == {"rules": []}
    assert api.get(f"/v1/rules/{rid}", headers=theirs).status_code == 404
    for path in (f"/v1/rules/{rid}/pause", f"/v1/rules/{rid}/resume"):
        assert api.post(path, headers=theirs).status_code == 404
    assert api.delete(f"/v1/rules/{rid}", headers=theirs).status_code == 404
    stolen = api.post("/v1/rules", headers=theirs, json={
        "metric": "event_count", "event": "PageView", "window": "1h", "scope": {"pixel_id": tenant.pixel_id},
        "condition": {"op": "==", "threshold": 0}, "webhook": {"url": receiver.url}})
    assert stolen.status_code == 400 and stolen.get_json()["error"]["field"] == "scope.pixel_id"

    # Paused, a rule is not evaluated and says so; resumed, it is.
    paused = api.post(f"/v1/rules/{rid}/pause", headers=mine)
    assert paused.status_code == 200 and paused.get_json()["state"] == "paused"
    assert paused.get_json()["status"] == "paused" and paused.get_json()["since"]
    t0 = datetime.now(timezone.utc)
    assert worker.tick(t0) == 0 and receiver.posts == []
    assert shown(api, mine, rid)["last_evaluated"] is None
    assert api.post(f"/v1/rules/{rid}/resume", headers=mine).get_json()["state"] == "ok"
    assert worker.tick(t0 + MINUTE) == 1 and notes(receiver)[0]["state"] == "firing"
    assert [x["state"] for x in api.get("/v1/rules", headers=mine).get_json()["rules"]] == ["firing"]

    assert api.delete(f"/v1/rules/{rid}", headers=mine).status_code == 204
    assert api.delete(f"/v1/rules/{rid}", headers=mine).status_code == 404
    assert api.get("/v1/rules", headers=mine).get_json() == {"rules": []}
    assert not r.hexists(keys.RULE_STATES, rid) and not r.hexists(keys.RULES, rid)
    assert worker.tick(t0 + 2 * MINUTE) == 0


def valid(url: str = "http://127.0.0.1:9/hook", **changes) -> dict:
    return {"metric": "conversions", "window": "24h", "condition": {"op": "<", "threshold": 1},
            "webhook": {"url": url}, **changes}


@pytest.mark.parametrize("change, field", [
    ({"metric": "happiness"}, "metric"),
    ({"metric": None}, "metric"),
    ({"metric": "event_count"}, "event"),
    ({"metric": "spend", "event": "Purchase"}, "event"),
    ({"event": ""}, "event"),
    ({"window": "90m"}, "window"),
    ({"window": "31d"}, "window"),
    ({"window": 3600}, "window"),
    ({"scope": {"campaign_id": "A", "ad_id": "x"}}, "scope"),
    ({"scope": {"country": "DE"}}, "scope"),
    ({"scope": {"pixel_id": "P1"}}, "scope.pixel_id"),  # conversions are not counted per pixel
    ({"metric": "event_count", "event": "PageView", "scope": {"campaign_id": "A"}}, "scope.campaign_id"),
    ({"metric": "event_count", "event": "PageView", "scope": {"pixel_id": "nobody"}}, "scope.pixel_id"),
    ({"scope": {"campaign_id": 7}}, "scope.campaign_id"),
    ({"condition": None}, "condition"),
    ({"condition": {"op": "!=", "threshold": 1}}, "condition.op"),
    ({"condition": {"op": ">", "threshold": True}}, "condition.threshold"),
    ({"condition": {"op": ">", "threshold": "5"}}, "condition.threshold"),
    ({"condition": {"change": "fall", "percent": 150}}, "condition.percent"),
    ({"condition": {"change": "fall", "percent": 0}}, "condition.percent"),
    ({"condition": {"change": "sideways", "percent": 5}}, "condition.change"),
    ({"condition": {"op": ">", "threshold": 1, "change": "fall"}}, "condition"),
    ({"webhook": {"url": "http://example.com/hook"}}, "webhook.url"),
    ({"webhook": None}, "webhook"),
    ({"name": ""}, "name"),
    ({"colour": "blue"}, "colour"),
])
def test_invalid_rules_are_refused_naming_the_field(r, api, change, field):
    reply = api.post("/v1/rules", json=valid(**change), headers=auth(r, "adv-1"))
    assert reply.status_code == 400, reply.get_json()
    assert reply.get_json()["error"]["field"] == field
    assert api.get("/v1/rules", headers=auth(r, "adv-1")).get_json() == {"rules": []}


def test_rules_need_the_reports_scope(r, api):
    events_only = {"Authorization": f"Bearer {registry.create_token(r, 'adv-1', ['events'])}"}
    assert api.post("/v1/rules", json=valid(), headers=events_only).status_code == 403
    assert api.get("/v1/rules", headers=events_only).status_code == 403
    assert api.get("/v1/rules").status_code == 401


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=8)
BODIES = st.fixed_dictionaries({}, optional={
    "name": st.text(max_size=5) | JSON, "metric": st.sampled_from(rules.METRICS) | JSON,
    "event": st.sampled_from(["PageView", "Purchase"]) | JSON,
    "window": st.from_regex(r"[0-9]{1,4}[hdm]", fullmatch=True) | JSON,
    "scope": st.dictionaries(st.sampled_from(rules.SCOPES + ("x",)), st.sampled_from(["P-mine", "A"]) | JSON,
                             max_size=2) | JSON,
    "condition": st.fixed_dictionaries({"op": st.sampled_from(rules.OPS) | JSON, "threshold": JSON})
    | st.fixed_dictionaries({"change": st.sampled_from(rules.CHANGES) | JSON, "percent": JSON}) | JSON,
    "webhook": st.fixed_dictionaries({"url": st.sampled_from(["https://x.example/h", "http://127.0.0.1:1/h"])
                                             | st.text(max_size=20)}) | JSON})


GOOD = st.fixed_dictionaries({
    "metric": st.sampled_from(rules.ATTRIBUTED), "window": st.sampled_from(["1h", "24h", "7d"]),
    "condition": st.sampled_from([{"op": ">", "threshold": 50}, {"change": "fall", "percent": 50}]),
    "webhook": st.just({"url": "https://x.example/h"})},
    optional={"name": st.text(min_size=1, max_size=10), "scope": st.sampled_from([{}, {"campaign_id": "A"}])})
#: A good body with one field made anything: the refusals sit next to the valid bodies.
MUTATED = st.tuples(GOOD, st.sampled_from(rules.KNOWN), JSON).map(lambda t: {**t[0], t[1]: t[2]})


@pytest.fixture
def mine(r) -> dict:
    """adv-1's reports token, with a pixel "P-mine" the bodies below may name."""
    r.hset(keys.PIXELS, "P-mine", json.dumps({"advertiser_id": "adv-1", "domains": ["shop.example"],
                                              "created_at": 0}))
    return auth(r, "adv-1")


@given(body=BODIES | GOOD | MUTATED | JSON)
@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_body_is_a_rule_or_a_refusal_naming_a_field(api, mine, body):
    reply = api.post("/v1/rules", json=body, headers=mine)
    answer = reply.get_json()
    event(f"answered {reply.status_code}")
    assert reply.status_code in (201, 400), answer
    if reply.status_code == 400:
        assert answer["error"]["field"]
    else:
        assert answer["state"] == "ok" and answer["metric"] in rules.METRICS
        assert api.delete(f"/v1/rules/{answer['id']}", headers=mine).status_code == 204


def test_event_count_counts_any_pixel_of_the_advertiser(r, ch, api, client, tenant, sink, worker, receiver):
    other = Tenant(r, tenant.advertiser, "second.example")
    page_view(client, other.pixel_id, "elsewhere", site="second.example")
    sink.drain()
    create(api, auth(r, tenant.advertiser), metric="event_count", event="PageView", window="1h",
           condition={"op": ">=", "threshold": 1}, webhook={"url": receiver.url})
    assert worker.tick(datetime.now(timezone.utc) + timedelta(seconds=1)) == 1
    assert notes(receiver)[0]["value"] == 1.0 and notes(receiver)[0]["scope"] == {}
