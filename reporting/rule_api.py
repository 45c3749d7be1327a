"""``/v1/rules`` (scope reports): create, list, show, pause, resume and delete alert rules.

The API only records rules; `clicktrail scheduler` evaluates them (reporting/rule_runner.py) and
the API shows where each stands. A token sees and changes only its own advertiser's: another's
rule answers 404, as a missing one. Redis unreachable is the app's 503 (reporting/api.py).
"""

from __future__ import annotations

import time

from flask import Blueprint, g, jsonify

from clicktrail.errors import BadRequest, NotFound
from reporting import rules
from reporting.auth import require
from reporting.context import api_services, json_body

bp = Blueprint("rules", __name__)


def _owned(rule_id: str) -> dict:
    rule = rules.load(api_services().redis, g.caller.advertiser_id, rule_id)
    if rule is None:
        raise NotFound(f"no rule {rule_id!r} of this advertiser", field="rule_id")
    return rule


@bp.post("/v1/rules")
@require("reports")
def create_rule():
    svc = api_services()
    rule = rules.parse(svc.redis, json_body(), g.caller.advertiser_id, svc.settings.scheduler.allow_http_webhooks,
                       svc.settings.mail)
    if len(rules.owned(svc.redis, g.caller.advertiser_id)) >= rules.MAX_RULES:
        raise BadRequest(f"an advertiser may hold at most {rules.MAX_RULES} rules; delete one first", field="body",
                         code="too_many_rules")
    rules.save(svc.redis, rule)
    # The secret is shown this once: the receiver checks X-Clicktrail-Signature with it.
    return jsonify({**rules.public(svc.redis, rule), "secret": rule["secret"]}), 201


@bp.get("/v1/rules")
@require("reports")
def list_rules():
    r = api_services().redis
    return jsonify({"rules": [rules.public(r, rule) for rule in rules.owned(r, g.caller.advertiser_id)]})


@bp.get("/v1/rules/<rule_id>")
@require("reports")
def show_rule(rule_id: str):
    return jsonify(rules.public(api_services().redis, _owned(rule_id)))


def _set_paused(rule_id: str, paused: bool):
    rule = _owned(rule_id)
    if rule["paused"] != paused:
        rule["paused"] = paused
        rule["paused_at"] = int(time.time() * 1000) if paused else None
        rules.save(api_services().redis, rule)
    return jsonify(rules.public(api_services().redis, rule))


@bp.post("/v1/rules/<rule_id>/pause")
@require("reports")
def pause_rule(rule_id: str):
    return _set_paused(rule_id, True)


@bp.post("/v1/rules/<rule_id>/resume")
@require("reports")
def resume_rule(rule_id: str):
    return _set_paused(rule_id, False)


@bp.delete("/v1/rules/<rule_id>")
@require("reports")
def delete_rule(rule_id: str):
    _owned(rule_id)
    rules.delete(api_services().redis, rule_id)
    return "", 204
