"""Scheduled reports (/v1/schedules, `clicktrail scheduler`) on real Redis, ClickHouse and processes.

A webhook receiver (http.server in a thread) records every post; a schedule due this minute must
reach it exactly once, signed with the schedule's secret, even when the scheduler is killed after
the delivery and started again.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import os
import signal
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from clicktrail import keys
from pixel import registry
from reporting import schedules
from reporting.api import create_app
from tests.conftest import where
from tests.test_chaos import wait_for


class Receiver:
    """A local webhook: records (headers, body) of each POST; answers ``codes`` in turn, then 200."""

    def __init__(self, codes: list[int] | None = None) -> None:
        self.posts: list[tuple[dict, bytes]] = []
        self.codes = list(codes or [])
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts.append((dict(self.headers), body))
                self.send_response(outer.codes.pop(0) if outer.codes else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    rec = Receiver()
    yield rec
    rec.close()


@pytest.fixture
def api(settings, r):
    app = create_app({**where(settings), "ALLOW_HTTP_WEBHOOKS": "true"})
    return app.test_client()


def auth(r, advertiser: str) -> dict:
    return {"Authorization": f"Bearer {registry.create_token(r, advertiser, ['reports'])}"}


def this_minute() -> str:
    return datetime.now(timezone.utc).strftime("%H:%M")


def body(url: str, **changes) -> dict:
    return {"report": {"dimensions": "stat_time_day", "metrics": "clicks,conversions"}, "range": "today",
            "format": "csv", "at": this_minute(), "timezone": "UTC", "webhook": {"url": url}, **changes}


def listed(api, headers: dict) -> list[dict]:
    reply = api.get("/v1/schedules", headers=headers)
    assert reply.status_code == 200, reply.get_json()
    return reply.get_json()["schedules"]


def test_delivered_once_signed_across_a_scheduler_kill(settings, r, ch, api, receiver, spawn):
    headers = auth(r, "adv-1")
    today = datetime.now(timezone.utc).date().isoformat()  # the period of `at` = this minute
    reply = api.post("/v1/schedules", json=body(receiver.url), headers=headers)
    assert reply.status_code == 201, reply.get_json()
    created = reply.get_json()
    secret, sid = created["secret"], created["id"]
    assert created["status"] == "active" and created["last_run"] is None

    first = spawn.start("scheduler", "--log-level", "WARNING", ALLOW_HTTP_WEBHOOKS="true", SCHEDULER_LEASE_S=2)
    wait_for("a delivery", lambda: receiver.posts)
    run = wait_for("the run recorded as delivered",
                   lambda: (listed(api, headers)[0]["last_run"] or {}).get("state") == "delivered"
                   and listed(api, headers)[0]["last_run"])
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()

    restarted = time.time() * 1000
    spawn.start("scheduler", "--log-level", "WARNING", ALLOW_HTTP_WEBHOOKS="true", SCHEDULER_LEASE_S=2)
    # The new scheduler takes the lease once the killed one's lapses, then looks at the schedule again.
    wait_for("ticks of the new scheduler", lambda: int(r.get(keys.SCHEDULER_TICK) or 0) > restarted + 3000)

    assert len(receiver.posts) == 1
    sent_headers, sent = receiver.posts[0]
    expected = "sha256=" + hmac.new(secret.encode(), sent, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(sent_headers["X-Clicktrail-Signature"], expected)
    assert sent_headers["Content-Type"].startswith("text/csv")
    assert sent.decode().splitlines()[0] == "stat_time_day,clicks,conversions"
    assert run["period"] == today and run["attempts"] == 1 and run["error"] is None
    assert sent_headers["X-Clicktrail-Delivery"] == f"{sid}:{today}"


def test_failed_delivery_is_retried_with_backoff_then_delivered_once(settings, r, ch, api, ch_database):
    from clicktrail import clickhouse
    from clicktrail.lifecycle import StopFlag
    from reporting.scheduler import Scheduler

    receiver = Receiver(codes=[500])
    try:
        headers = auth(r, "adv-1")
        created = api.post("/v1/schedules", json=body(receiver.url, format="json"), headers=headers).get_json()
        worker = Scheduler(settings, r, clickhouse.connect(settings.clickhouse.url), ch_database, StopFlag(),
                           name="test-scheduler")
        worker.retry_base_s = 0.2
        assert worker.tick() == 1
        failed = listed(api, headers)[0]["last_run"]
        assert failed["state"] == "retrying" and "500" in failed["error"] and failed["attempts"] == 1
        wait_for("the retry", lambda: worker.tick() == 1)
        for _ in range(3):
            assert worker.tick() == 0  # delivered: never again
        done = listed(api, headers)[0]["last_run"]
        assert done["state"] == "delivered" and done["attempts"] == 2
        assert len(receiver.posts) == 2 and receiver.posts[1][0]["Content-Type"] == "application/json"
        assert created["id"] == receiver.posts[1][0]["X-Clicktrail-Schedule"]
    finally:
        receiver.close()


@pytest.mark.parametrize("change, field", [
    ({"range": "last_year"}, "range"),
    ({"format": "xlsx"}, "format"),
    ({"at": "25:00"}, "at"),
    ({"at": 900}, "at"),
    ({"timezone": "Mars/Base"}, "timezone"),
    ({"weekday": "someday"}, "weekday"),
    ({"webhook": {"url": "http://example.com/hook"}}, "webhook.url"),
    ({"webhook": {"url": "ftp://127.0.0.1/x"}}, "webhook.url"),
    ({"webhook": None}, "webhook"),
    ({"report": {"metrics": "happiness"}}, "report.metrics"),
    ({"report": {"order_by": "-happiness"}}, "report.order_by"),
    ({"report": {"start": "2024-01-01"}}, "report.start"),
    ({"report": {"page_size": 5}}, "report.page_size"),
    ({"email": {"to": "a@example.com"}}, "email"),
    ({"colour": "blue"}, "colour"),
])
def test_invalid_schedules_are_refused_naming_the_field(r, api, change, field):
    reply = api.post("/v1/schedules", json=body("http://127.0.0.1:9/hook", **change), headers=auth(r, "adv-1"))
    assert reply.status_code == 400, reply.get_json()
    assert reply.get_json()["error"]["field"] == field
    assert listed(api, auth(r, "adv-1")) == []


def test_plain_http_needs_the_setting(settings, r):
    strict = create_app(where(settings)).test_client()
    reply = strict.post("/v1/schedules", json=body("http://127.0.0.1:9/hook"), headers=auth(r, "adv-1"))
    assert reply.status_code == 400 and reply.get_json()["error"]["field"] == "webhook.url"


def test_pause_resume_delete_and_isolation(settings, r, ch, api, ch_database, receiver):
    from clicktrail import clickhouse
    from clicktrail.lifecycle import StopFlag
    from reporting.scheduler import Scheduler

    mine, theirs = auth(r, "adv-1"), auth(r, "adv-2")
    weekly = body(receiver.url, weekday="mon", at="09:30", timezone="Europe/Berlin")
    sid = api.post("/v1/schedules", json=weekly, headers=mine).get_json()["id"]
    shown = listed(api, mine)[0]
    assert "secret" not in shown and shown["weekday"] == "mon"
    next_run = datetime.fromisoformat(shown["next_run"])
    assert next_run.weekday() == 0 and (next_run.hour, next_run.minute) == (9, 30)
    assert next_run - datetime.now(timezone.utc) <= timedelta(days=7)

    # Another advertiser sees nothing and can change nothing.
    assert listed(api, theirs) == []
    for path in (f"/v1/schedules/{sid}/pause", f"/v1/schedules/{sid}/resume"):
        assert api.post(path, headers=theirs).status_code == 404
    assert api.delete(f"/v1/schedules/{sid}", headers=theirs).status_code == 404
    assert listed(api, mine)[0]["status"] == "active"

    # Paused, a due schedule is not run; resumed, it is.
    due = api.post("/v1/schedules", json=body(receiver.url), headers=mine).get_json()["id"]
    paused = api.post(f"/v1/schedules/{due}/pause", headers=mine)
    assert paused.status_code == 200 and paused.get_json()["status"] == "paused"
    assert paused.get_json()["next_run"] is None
    worker = Scheduler(settings, r, clickhouse.connect(settings.clickhouse.url), ch_database, StopFlag(),
                       name="test-scheduler")
    assert worker.tick() == 0 and receiver.posts == []
    assert api.post(f"/v1/schedules/{due}/resume", headers=mine).get_json()["status"] == "active"
    assert worker.tick() == 1 and len(receiver.posts) == 1

    assert api.delete(f"/v1/schedules/{due}", headers=mine).status_code == 204
    assert api.delete(f"/v1/schedules/{due}", headers=mine).status_code == 404
    assert [s["id"] for s in listed(api, mine)] == [sid]
    assert not r.exists(keys.schedule_periods(due))


def test_relative_ranges():
    from datetime import date

    today = date(2026, 3, 10)
    assert schedules.dates_of("today", today) == (today, today)
    assert schedules.dates_of("yesterday", today) == (date(2026, 3, 9),) * 2
    assert schedules.dates_of("last_7_days", today) == (date(2026, 3, 3), date(2026, 3, 9))
    assert schedules.dates_of("this_month", today) == (date(2026, 3, 1), today)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=10)
FIELDS = st.fixed_dictionaries({}, optional={
    "report": st.dictionaries(st.sampled_from(schedules.REPORT_PARAMS + ("start", "x")), JSON | st.text(), max_size=3),
    "range": st.sampled_from(schedules.RANGES) | JSON, "format": st.sampled_from(["csv", "json"]) | JSON,
    "at": st.from_regex(r"[0-2][0-9]:[0-6][0-9]", fullmatch=True) | JSON,
    "timezone": st.sampled_from(["UTC", "Asia/Kolkata"]) | JSON, "weekday": st.sampled_from(schedules.WEEKDAYS) | JSON,
    "webhook": st.fixed_dictionaries({"url": st.sampled_from(["https://x.example/h", "http://127.0.0.1:1/h"])
                                             | st.text(max_size=30)}) | JSON})


@given(body=FIELDS | JSON)
@hsettings(max_examples=300, deadline=None)
def test_any_body_is_a_schedule_or_a_refusal_naming_a_field(body):
    from clicktrail.errors import BadRequest
    from pixel.registry import settings_of

    try:
        schedule = schedules.parse(body, "adv-1", settings_of(None), allow_http=True)
    except BadRequest as exc:
        assert exc.field is not None and exc.status == 400
        return
    now = datetime.now(timezone.utc)
    assert schedules.next_due(schedule, now) > now
    due = schedules.latest_due(schedule, now)
    assert due is None or due <= now


def test_one_scheduler_leads_the_other_stands_by(settings, r, ch, api, ch_database, receiver):
    from clicktrail import clickhouse
    from clicktrail.lifecycle import StopFlag
    from reporting.scheduler import Scheduler

    leader, standby = (Scheduler(settings, r, clickhouse.connect(settings.clickhouse.url), ch_database, StopFlag(),
                                 name=name) for name in ("first", "second"))
    assert leader.tick() == 0  # nothing due yet, but it leads now
    api.post("/v1/schedules", json=body(receiver.url), headers=auth(r, "adv-1"))
    assert standby.tick() == 0 and receiver.posts == []
    assert leader.tick() == 1 and len(receiver.posts) == 1
    assert r.get(keys.SCHEDULER_LEASE) in (b"first", "first")


def test_missed_periods_are_caught_up_oldest_first_each_once(settings, r, ch, api, ch_database, receiver):
    from clicktrail import clickhouse
    from clicktrail.lifecycle import StopFlag
    from reporting.scheduler import Scheduler

    reply = api.post("/v1/schedules", json=body(receiver.url, at="07:00", range="yesterday", format="json"),
                     headers=auth(r, "adv-1"))
    sid = reply.get_json()["id"]
    made = schedules.load(r, "adv-1", sid)
    made["created_at"] = int(datetime(2026, 3, 1, 12, tzinfo=timezone.utc).timestamp() * 1000)
    schedules.save(r, made)  # as if made weeks ago, and no scheduler ran since
    worker = Scheduler(settings, r, clickhouse.connect(settings.clickhouse.url), ch_database, StopFlag(),
                       name="test-scheduler")
    periods = lambda: [headers["X-Clicktrail-Period"] for headers, _ in receiver.posts]  # noqa: E731

    # Down since March 1st: the last 7 periods, oldest first.
    assert worker.tick(now=datetime(2026, 3, 20, 8, tzinfo=timezone.utc)) == schedules.MAX_CATCH_UP
    assert periods() == [f"2026-03-{day}" for day in range(14, 21)]
    assert worker.tick(now=datetime(2026, 3, 20, 8, 1, tzinfo=timezone.utc)) == 0
    # Down three days (and back before 07:00 on the fourth): the three missed, not the coming one.
    assert worker.tick(now=datetime(2026, 3, 23, 6, 59, tzinfo=timezone.utc)) == 2
    assert periods()[7:] == ["2026-03-21", "2026-03-22"]
    assert worker.tick(now=datetime(2026, 3, 23, 7, tzinfo=timezone.utc)) == 1
    # Nothing from before the last delivered period, even if its record is gone.
    r.hdel(keys.schedule_periods(sid), "2026-03-18")
    assert worker.tick(now=datetime(2026, 3, 23, 9, tzinfo=timezone.utc)) == 0
    assert len(receiver.posts) == 10 and len(set(periods())) == 10
    # Each report is the one of its own period: yesterday of 2026-03-14 is the 13th.
    first = json.loads(receiver.posts[0][1])["query"]
    assert (first["start"], first["end"]) == ("2026-03-13", "2026-03-13")
    assert listed(api, auth(r, "adv-1"))[0]["last_run"]["period"] == "2026-03-23"


def test_due_periods_respect_creation_resumption_and_weekdays():
    at = lambda *a: datetime(*a, tzinfo=timezone.utc)  # noqa: E731
    ms = lambda d: int(d.timestamp() * 1000)  # noqa: E731
    daily = {"timezone": "UTC", "at": "07:00", "weekday": None, "created_at": ms(at(2026, 3, 1, 12))}
    now = at(2026, 3, 5, 8)
    assert [d.day for d in schedules.due_periods(daily, now)] == [2, 3, 4, 5]  # not March 1st: made after 07:00
    assert [d.day for d in schedules.due_periods(daily, now, after="2026-03-03")] == [4, 5]
    # Resumed on the 4th at 09:00: what fell while it was paused is not sent.
    assert [d.day for d in schedules.due_periods({**daily, "resumed_at": ms(at(2026, 3, 4, 9))}, now)] == [5]
    weekly = {**daily, "weekday": "mon", "created_at": ms(at(2025, 1, 1))}
    mondays = schedules.due_periods(weekly, at(2026, 3, 23, 7))
    assert len(mondays) == schedules.MAX_CATCH_UP and all(d.weekday() == 0 for d in mondays)
    assert mondays[-1] == at(2026, 3, 23, 7) and mondays[0] == at(2026, 2, 9, 7)
    assert schedules.latest_due(weekly, at(2026, 3, 23, 6, 59)) == at(2026, 3, 16, 7)
