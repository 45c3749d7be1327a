"""Scheduled reports at the edges of the catch-up window (reporting/schedules.py ``to_run``).

No period may wait forever: one still retrying when it falls out of the window (the latest
``MAX_CATCH_UP`` periods since the schedule was made or resumed) ends ``failed``, saying so, and
``GET /v1/schedules`` shows it as ``last_failure`` even once later periods got through. A retry
still inside the window is not dropped because a later period was delivered first.
"""

from __future__ import annotations

from datetime import datetime, timezone

from clicktrail import clickhouse
from clicktrail.lifecycle import StopFlag
from reporting import schedules
from reporting.scheduler import Scheduler
from tests.test_chaos import wait_for
from tests.test_schedules import api, auth, body, listed, receiver  # noqa: F401 - fixtures


def at(*args) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def made_on_march_1st(api, r, receiver) -> str:  # noqa: F811
    """A daily 07:00 schedule, as if made on 2026-03-01 at noon."""
    reply = api.post("/v1/schedules", json=body(receiver.url, at="07:00", range="yesterday", format="json"),
                     headers=auth(r, "adv-1"))
    assert reply.status_code == 201, reply.get_json()
    schedule = schedules.load(r, "adv-1", reply.get_json()["id"])
    schedules.save(r, {**schedule, "created_at": ms(at(2026, 3, 1, 12))})
    return schedule["id"]


def worker_for(settings, r, ch_database) -> Scheduler:
    return Scheduler(settings, r, clickhouse.connect(settings.clickhouse.url), ch_database, StopFlag(),
                     name="test-scheduler")


def posted_periods(receiver) -> list[str]:  # noqa: F811
    return [headers["X-Clicktrail-Period"] for headers, _ in receiver.posts]


def test_a_period_retrying_when_it_leaves_the_window_ends_failed(settings, r, ch, api, ch_database,  # noqa: F811
                                                                  receiver):  # noqa: F811
    made_on_march_1st(api, r, receiver)
    worker = worker_for(settings, r, ch_database)
    receiver.codes = [503]
    assert worker.tick(now=at(2026, 3, 2, 8)) == 1
    assert listed(api, auth(r, "adv-1"))[0]["last_run"]["state"] == "retrying"

    # The scheduler is down ten days: March 2nd is no longer among the latest 7 periods.
    assert worker.tick(now=at(2026, 3, 12, 8)) == schedules.MAX_CATCH_UP
    shown = listed(api, auth(r, "adv-1"))[0]
    assert shown["last_run"]["period"] == "2026-03-12" and shown["last_run"]["state"] == "delivered"
    failure = shown["last_failure"]
    assert failure["period"] == "2026-03-02" and failure["state"] == "failed" and failure["attempts"] == 1
    assert failure["retry_at"] is None
    assert failure["error"].startswith("outside the catch-up window (the latest 7 periods)")
    assert "503" in failure["error"]  # what its last attempt met is kept

    assert worker.tick(now=at(2026, 3, 13, 8)) == 1  # the 13th only: March 2nd is over
    assert posted_periods(receiver) == ["2026-03-02"] + [f"2026-03-{day:02d}" for day in range(6, 14)]
    assert listed(api, auth(r, "adv-1"))[0]["last_failure"]["period"] == "2026-03-02"


def test_a_retry_is_not_dropped_when_a_later_period_got_through_first(settings, r, ch, api, ch_database,  # noqa: F811
                                                                      receiver):  # noqa: F811
    made_on_march_1st(api, r, receiver)
    worker = worker_for(settings, r, ch_database)
    worker.retry_base_s = 0.2
    receiver.codes = [500]  # the first post of the catch-up fails, the next ones go through
    assert worker.tick(now=at(2026, 3, 4, 8)) == 3
    assert posted_periods(receiver) == ["2026-03-02", "2026-03-03", "2026-03-04"]
    assert schedules.period_state(r, listed(api, auth(r, "adv-1"))[0]["id"], "2026-03-02")["state"] == "retrying"

    wait_for("the retry of March 2nd", lambda: worker.tick(now=at(2026, 3, 4, 8, 1)) == 1)
    assert posted_periods(receiver)[3:] == ["2026-03-02"]
    assert worker.tick(now=at(2026, 3, 4, 8, 2)) == 0
    shown = listed(api, auth(r, "adv-1"))[0]
    assert shown["last_failure"] is None and shown["last_run"]["period"] == "2026-03-04"


def test_which_periods_run_and_which_are_given_up():
    daily = {"timezone": "UTC", "at": "07:00", "weekday": None, "created_at": ms(at(2026, 3, 1, 12))}
    now = at(2026, 3, 12, 8)
    state = lambda s: {"state": s, "attempts": 1, "error": "x"}  # noqa: E731
    states = {"2026-03-02": state("retrying"), "2026-03-03": state("pending"), "2026-03-05": state("failed"),
              "2026-03-07": state("retrying"), "2026-03-08": state("delivered"), "2026-03-10": state("delivered")}
    run, stranded = schedules.to_run(daily, now, states)
    # In the window (6th..12th): the 7th (a retry before the last delivered), and those after the 10th.
    assert [d.day for d in run] == [7, 11, 12]
    assert stranded == ["2026-03-02", "2026-03-03"]
    # Not the 6th or 9th: nothing is sent for a period before the last delivered one it never tried.
    # Resumed on the 11th at 09:00: what was still retrying from before the pause is given up.
    run, stranded = schedules.to_run({**daily, "resumed_at": ms(at(2026, 3, 11, 9))}, now, states)
    assert [d.day for d in run] == [12] and stranded == ["2026-03-02", "2026-03-03", "2026-03-07"]
    final = schedules.outside_window({"state": "retrying", "attempts": 3, "error": "E", "at": 5, "retry_at": 9})
    assert final == {"state": "failed", "attempts": 3, "at": 5, "retry_at": None,
                     "error": "outside the catch-up window (the latest 7 periods) before it was delivered; "
                              "given up; the last attempt failed with E"}
    interrupted = schedules.outside_window({"state": "pending", "attempts": 1, "error": None})
    assert interrupted["state"] == "failed" and interrupted["error"].endswith("before its outcome was recorded")
