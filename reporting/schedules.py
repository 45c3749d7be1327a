"""Scheduled reports: what a schedule is, when its runs fall due, and where they are kept in Redis.

A schedule holds ``/v1/reports`` parameters with a relative ``range`` instead of dates, a time of
day ``at`` in a ``timezone`` (daily, or weekly on ``weekday``) and a delivery (a webhook or e-mail,
reporting/delivery.py). Each occurrence is a *period*, named by its local date; a period's state
is kept apart (``keys.schedule_periods``) so that a delivered period is never delivered again,
whichever scheduler process runs it. Periods missed while no scheduler ran are caught up, oldest
first, back to the last delivered one but at most ``MAX_CATCH_UP`` of them and never from before
the schedule was made or last resumed (a pause means: nothing is sent for those periods). A period
still being retried when it leaves that window ends ``failed`` (``to_run``), never stuck ``retrying``.
"""

from __future__ import annotations

import json
import secrets
import time
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from werkzeug.datastructures import MultiDict

from clicktrail import keys
from clicktrail.config import MailSettings
from clicktrail.errors import BadRequest
from reporting import advertiser_objects, delivery
from reporting import report_query as rq

RANGES = ("today", "yesterday", "last_7_days", "last_14_days", "last_30_days", "this_month")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: Report parameters a schedule may carry (start and end come from ``range``).
REPORT_PARAMS = ("timezone", "dimensions", "metrics", "model", "click_window", "view_window", "date_basis",
                 "campaign_ids", "adgroup_ids", "ad_ids", "events", "order_by", "page_size", "include_bots")
#: A failed delivery is retried with backoff this many times, then the period is given up.
MAX_ATTEMPTS = 8
#: Periods missed while no scheduler ran that are still delivered, the latest ones.
MAX_CATCH_UP = 7
DELIVERED, FAILED, RETRYING, PENDING = "delivered", "failed", "retrying", "pending"


def _text(body: dict, name: str, default: str | None = None) -> str:
    value = body.get(name, default)
    if value is None:
        raise BadRequest("is required", field=name, code="missing_field")
    if not isinstance(value, str):
        raise BadRequest("must be a string", field=name, code="invalid_field")
    return value


def _at(text: str) -> tuple[int, int]:
    hh, sep, mm = text.partition(":")
    if not (sep and len(hh) == 2 and len(mm) == 2 and hh.isascii() and hh.isdigit() and mm.isascii()
            and mm.isdigit() and int(hh) < 24 and int(mm) < 60):
        raise BadRequest("must be a time of day HH:MM, 00:00 to 23:59", field="at", code="invalid_field")
    return int(hh), int(mm)


def _report_params(body: dict, settings: dict) -> dict:
    params = body.get("report", {})
    if not isinstance(params, dict):
        raise BadRequest("must be an object of /v1/reports parameters", field="report", code="invalid_field")
    for name, value in params.items():
        if name not in REPORT_PARAMS:
            raise BadRequest(f"unknown report parameter {name!r}; use any of {', '.join(REPORT_PARAMS)}",
                             field=f"report.{name}", code="invalid_field")
        if not isinstance(value, str):
            raise BadRequest("must be a string, as in the /v1/reports query", field=f"report.{name}",
                             code="invalid_field")
    try:  # refused now, not at the first run
        query_for(params, "yesterday", "json", settings, date.today())
    except BadRequest as exc:
        raise BadRequest(exc.message, field=f"report.{exc.field}", code=exc.code) from None
    return params


def parse(body: object, advertiser_id: str, settings: dict, allow_http: bool,
          mail_settings: MailSettings | None = None) -> dict:
    """A new schedule from a ``POST /v1/schedules`` body; each refusal names its field."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", field="body", code="invalid_field")
    known = ("report", "range", "format", "at", "timezone", "weekday", "webhook", "email")
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}; use any of {', '.join(known)}", field=unknown[0],
                         code="invalid_field")
    range_ = _text(body, "range")
    if range_ not in RANGES:
        raise BadRequest(f"must be one of {', '.join(RANGES)}", field="range", code="invalid_field")
    fmt = _text(body, "format", "csv")
    if fmt not in rq.FORMATS:
        raise BadRequest(f"must be one of {', '.join(rq.FORMATS)}", field="format", code="invalid_field")
    at = _text(body, "at")
    _at(at)
    zone = _text(body, "timezone", settings["timezone"])
    if zone not in rq._zones():
        raise BadRequest("must be an IANA time zone name, e.g. Europe/Berlin", field="timezone",
                         code="invalid_field")
    weekday = body.get("weekday")
    if weekday is not None and weekday not in WEEKDAYS:
        raise BadRequest(f"must be one of {', '.join(WEEKDAYS)}, or absent for a daily report", field="weekday",
                         code="invalid_field")
    target = delivery.parse(body, allow_http, mail_settings)
    report = _report_params(body, settings)
    now = int(time.time() * 1000)
    return {"id": "sch_" + secrets.token_hex(8), "advertiser_id": advertiser_id, "report": report, "range": range_,
            "format": fmt, "at": at, "timezone": zone, "weekday": weekday, **target,
            "secret": secrets.token_hex(32), "paused": False, "created_at": now}


def query_for(params: dict, range_: str, fmt: str, settings: dict, today: date) -> rq.ReportQuery:
    """The report query of one run: ``range`` made into dates, ``today`` being the run's local date."""
    start, end = dates_of(range_, today)
    args = MultiDict({**params, "start": start.isoformat(), "end": end.isoformat(), "format": fmt})
    return rq.parse(args, settings)


def dates_of(range_: str, today: date) -> tuple[date, date]:
    if range_ == "today":
        return today, today
    if range_ == "yesterday":
        return today - timedelta(days=1), today - timedelta(days=1)
    if range_ == "this_month":
        return today.replace(day=1), today
    days = int(range_.split("_")[1])  # last_N_days: the N whole days before today
    return today - timedelta(days=days), today - timedelta(days=1)


def to_run(schedule: dict, now: datetime, states: dict[str, dict]) -> tuple[list[datetime], list[str]]:
    """The periods to run now, oldest first, and the *stranded* ones: still unfinished, but no longer
    in the catch-up window (the latest ``MAX_CATCH_UP`` occurrences since the schedule was made or
    resumed), which nothing would ever run again.

    A period runs once it is in the window and neither delivered nor failed, and either after the
    last delivered one (periods missed while no scheduler ran) or already tried (retrying or
    pending): a retry still due is not dropped because a later period got through first.
    """
    window = due_periods(schedule, now)
    last = last_delivered(states)
    unfinished = {period for period, state in states.items() if state["state"] in (RETRYING, PENDING)}
    run = [due for due in window
           if due.date().isoformat() in unfinished
           or (due.date().isoformat() not in states and (last is None or due.date().isoformat() > last))]
    held = {due.date().isoformat() for due in window}
    return run, sorted(unfinished - held)


def outside_window(state: dict) -> dict:
    """The final state of a stranded period: failed, saying why (and what its last attempt met)."""
    error = f"outside the catch-up window (the latest {MAX_CATCH_UP} periods) before it was delivered; given up"
    if state["state"] == PENDING:  # a scheduler died during its delivery: whether it arrived is unknown
        error += "; the last attempt was interrupted before its outcome was recorded"
    elif state.get("error"):
        error += f"; the last attempt failed with {state['error']}"
    return {**state, "state": FAILED, "error": error[:500], "retry_at": None}


def latest_due(schedule: dict, now: datetime) -> datetime | None:
    """The latest occurrence at or before ``now`` (local time), if it falls after the schedule's creation."""
    due = due_periods(schedule, now, limit=1)
    return due[-1] if due else None


def due_periods(schedule: dict, now: datetime, after: str | None = None,
                limit: int = MAX_CATCH_UP) -> list[datetime]:
    """Occurrences at or before ``now``, oldest first: the latest ``limit``, none from before the
    schedule was made or last resumed, and none on or before the period ``after`` (a local date)."""
    zone = ZoneInfo(schedule["timezone"])
    hh, mm = _at(schedule["at"])
    local = now.astimezone(zone)
    # The minute it was created (or resumed) counts: "at" = the current minute runs at once.
    floor = max(schedule["created_at"], schedule.get("resumed_at") or 0) // 60_000 * 60
    found: list[datetime] = []
    step_days = 7 if schedule["weekday"] else 1
    for back in range(limit * step_days + 7):
        day = local.date() - timedelta(days=back)
        if len(found) == limit or (after is not None and day.isoformat() <= after):
            break
        if schedule["weekday"] and WEEKDAYS[day.weekday()] != schedule["weekday"]:
            continue
        due = datetime(day.year, day.month, day.day, hh, mm, tzinfo=zone)
        if due.timestamp() < floor:
            break
        if due <= local:
            found.append(due)
    return found[::-1]


def next_due(schedule: dict, now: datetime) -> datetime:
    zone = ZoneInfo(schedule["timezone"])
    hh, mm = _at(schedule["at"])
    local = now.astimezone(zone)
    for ahead in range(9):
        day = local.date() + timedelta(days=ahead)
        if schedule["weekday"] and WEEKDAYS[day.weekday()] != schedule["weekday"]:
            continue
        due = datetime(day.year, day.month, day.day, hh, mm, tzinfo=zone)
        if due > local:
            return due
    raise AssertionError("a weekly schedule falls within 8 days")


# -- storage --------------------------------------------------------------------------------------

def save(r, schedule: dict) -> None:
    advertiser_objects.save(r, keys.SCHEDULES, schedule)


def load(r, advertiser_id: str, schedule_id: str) -> dict | None:
    """The schedule if it is this advertiser's (reporting/advertiser_objects.py)."""
    return advertiser_objects.load(r, keys.SCHEDULES, advertiser_id, schedule_id)


def every(r) -> list[dict]:
    return advertiser_objects.every(r, keys.SCHEDULES)


def delete(r, schedule_id: str) -> None:
    pipe = r.pipeline(transaction=False)
    pipe.hdel(keys.SCHEDULES, schedule_id)
    pipe.delete(keys.schedule_periods(schedule_id))
    pipe.execute()


def period_state(r, schedule_id: str, period: str) -> dict | None:
    raw = r.hget(keys.schedule_periods(schedule_id), period)
    return json.loads(raw) if raw else None


def set_period_state(r, schedule_id: str, period: str, state: dict) -> None:
    r.hset(keys.schedule_periods(schedule_id), period, json.dumps(state))


def period_states(r, schedule_id: str) -> dict[str, dict]:
    return {(p if isinstance(p, str) else p.decode()): json.loads(v)
            for p, v in r.hgetall(keys.schedule_periods(schedule_id)).items()}


def last_delivered(states: dict[str, dict]) -> str | None:
    delivered = [period for period, state in states.items() if state["state"] == DELIVERED]
    return max(delivered) if delivered else None


def last_run(r, schedule_id: str) -> dict | None:
    """The latest period's state, with its period."""
    return _latest(period_states(r, schedule_id))


def _latest(states: dict[str, dict]) -> dict | None:
    if not states:
        return None
    period = max(states)
    return {"period": period, **states[period]}


def public(r, schedule: dict, now: datetime) -> dict:
    """What the API shows of a schedule: never its secret."""
    shown = {k: v for k, v in schedule.items() if k not in ("secret", "advertiser_id", "resumed_at")}
    shown["status"] = "paused" if schedule["paused"] else "active"
    shown["next_run"] = None if schedule["paused"] else next_due(schedule, now).isoformat()
    states = period_states(r, schedule["id"])
    shown["last_run"] = _latest(states)
    # A period given up is shown even once later periods got through: last_run alone would hide it.
    shown["last_failure"] = _latest({p: state for p, state in states.items() if state["state"] == FAILED})
    return shown
