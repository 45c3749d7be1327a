"""``/v1/schedules`` (scope reports): create, list, pause, resume and delete scheduled reports.

The API only records schedules; `clicktrail scheduler` runs them (reporting/scheduler.py). A token
sees and changes only its own advertiser's: another's schedule answers 404, as a missing one.
Redis unreachable is the app's 503 (reporting/api.py).
"""

from __future__ import annotations

from datetime import datetime, timezone

from flask import Blueprint, g, jsonify

from clicktrail.errors import NotFound
from pixel.registry import advertiser_settings
from reporting import schedules
from reporting.auth import require
from reporting.context import api_services, json_body

bp = Blueprint("schedules", __name__)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _owned(schedule_id: str) -> dict:
    schedule = schedules.load(api_services().redis, g.caller.advertiser_id, schedule_id)
    if schedule is None:
        raise NotFound(f"no schedule {schedule_id!r} of this advertiser", field="schedule_id")
    return schedule


@bp.post("/v1/schedules")
@require("reports")
def create_schedule():
    svc = api_services()
    settings = advertiser_settings(svc.redis, g.caller.advertiser_id)
    schedule = schedules.parse(json_body(), g.caller.advertiser_id, settings,
                               svc.settings.scheduler.allow_http_webhooks, svc.settings.mail)
    schedules.save(svc.redis, schedule)
    # The secret is shown this once: the receiver checks X-Clicktrail-Signature with it.
    return jsonify({**schedules.public(svc.redis, schedule, _now()), "secret": schedule["secret"]}), 201


@bp.get("/v1/schedules")
@require("reports")
def list_schedules():
    r = api_services().redis
    mine = [s for s in schedules.every(r) if s["advertiser_id"] == g.caller.advertiser_id]
    now = _now()
    return jsonify({"schedules": [schedules.public(r, s, now) for s in sorted(mine, key=lambda s: s["created_at"])]})


def _set_paused(schedule_id: str, paused: bool):
    schedule = _owned(schedule_id)
    if schedule["paused"] and not paused:
        # Periods that fell while it was paused are not caught up: a pause means none is sent.
        schedule["resumed_at"] = int(_now().timestamp() * 1000)
    schedule["paused"] = paused
    r = api_services().redis
    schedules.save(r, schedule)
    return jsonify(schedules.public(r, schedule, _now()))


@bp.post("/v1/schedules/<schedule_id>/pause")
@require("reports")
def pause_schedule(schedule_id: str):
    return _set_paused(schedule_id, True)


@bp.post("/v1/schedules/<schedule_id>/resume")
@require("reports")
def resume_schedule(schedule_id: str):
    return _set_paused(schedule_id, False)


@bp.delete("/v1/schedules/<schedule_id>")
@require("reports")
def delete_schedule(schedule_id: str):
    _owned(schedule_id)
    schedules.delete(api_services().redis, schedule_id)
    return "", 204
