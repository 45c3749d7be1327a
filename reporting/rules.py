"""Alert rules: what a rule is, how a ``POST /v1/rules`` body becomes one, and where rules and their
state are kept in Redis.

A rule watches one *metric* over a sliding *window* ending at each evaluation, for a *scope* (the
whole advertiser, or one pixel, campaign, ad group or ad), and holds a *condition*: a comparison
with a threshold, or a rise or fall in % against the window of the same length just before. It
*fires* once when the condition becomes true and *resolves* once when it stops being true
(reporting/rule_runner.py runs that); each transition is delivered through reporting/delivery.py.

The rule (``keys.RULES``) is written by the API only; its state (``keys.RULE_STATES``) by the
leading scheduler only, by compare-and-set, so neither overwrites the other.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import time

from clicktrail import keys
from clicktrail.errors import BadRequest
from pixel import sources
from reporting import advertiser_objects, delivery

#: ``event_count``: unique events of one name received (the ``events`` table: what pixels and the
#: Events API delivered). The others are the attributed side, as ``/v1/reports`` computes them.
EVENT_COUNT = "event_count"
ATTRIBUTED = ("conversions", "conversion_value", "cpa", "clicks", "spend", "roas")
METRICS = (EVENT_COUNT,) + ATTRIBUTED
#: Metrics that have no event: clicks and spend belong to ads, not to conversions.
NO_EVENT = ("clicks", "spend")
SCOPES = ("pixel_id", "campaign_id", "adgroup_id", "ad_id")
OPS = (">", ">=", "<", "<=", "==")
CHANGES = ("rise", "fall")
WINDOW = re.compile(r"([1-9][0-9]{0,2})([hd])")
MAX_WINDOW_S = 30 * 86_400
MAX_NAME, MAX_ID = 200, 200
#: Rules one advertiser may hold: each is a query or two a minute.
MAX_RULES = 100
OK, FIRING, PAUSED = "ok", "firing", "paused"
KNOWN = ("name", "metric", "event", "window", "scope", "condition") + delivery.CHANNELS


def _text(value: object, field: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise BadRequest(f"must be a non-empty string of at most {limit} characters", field=field,
                         code="invalid_field")
    return value


def _number(value: object, field: str) -> float:
    # bool is an int to Python, never a threshold to anyone.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest("must be a finite number", field=field, code="invalid_field")
    return float(value)


def window_seconds(text: object) -> int:
    match = WINDOW.fullmatch(text) if isinstance(text, str) else None
    seconds = int(match.group(1)) * (3600 if match.group(2) == "h" else 86_400) if match else 0
    if not match or seconds > MAX_WINDOW_S:
        raise BadRequest('must be hours or days, as "1h", "24h" or "7d", of at most 30 days', field="window",
                         code="invalid_field")
    return seconds


def _metric(body: dict) -> tuple[str, str | None]:
    metric = body.get("metric")
    if metric not in METRICS:
        raise BadRequest(f"must be one of {', '.join(METRICS)}", field="metric",
                         code="missing_field" if metric is None else "invalid_field")
    event = body.get("event")
    if metric == EVENT_COUNT and event is None:
        raise BadRequest("is required for event_count: the event to count, e.g. PageView", field="event",
                         code="missing_field")
    if event is not None and metric in NO_EVENT:
        raise BadRequest(f"{metric} has no event: it belongs to ads, not to conversions", field="event",
                         code="invalid_combination")
    return metric, None if event is None else _text(event, "event", 100)


def _scope(r, body: dict, advertiser_id: str, metric: str) -> dict:
    scope = body.get("scope", {})
    if not isinstance(scope, dict) or len(scope) > 1 or any(k not in SCOPES for k in scope):
        raise BadRequest(f"must be {{}} (the advertiser) or an object with one of {', '.join(SCOPES)}",
                         field="scope", code="invalid_field")
    if not scope:
        return {}
    (level, value), = scope.items()
    value = _text(value, f"scope.{level}", MAX_ID)
    if (level == "pixel_id") != (metric == EVENT_COUNT):
        need = "pixel_id (or the advertiser)" if metric == EVENT_COUNT else "campaign_id, adgroup_id or ad_id"
        raise BadRequest(f"{metric} is counted per {need}", field=f"scope.{level}", code="invalid_combination")
    if level == "pixel_id":
        # Another advertiser's pixel is as unknown as one that never was.
        owner = sources.event_source(r, value)
        if owner is None or owner["advertiser_id"] != advertiser_id:
            raise BadRequest("is no pixel or event source of this advertiser", field="scope.pixel_id",
                             code="invalid_field")
    return {level: value}


def _condition(body: dict) -> dict:
    cond = body.get("condition")
    if not isinstance(cond, dict):
        raise BadRequest('is required: {"op": ">", "threshold": 50} or {"change": "fall", "percent": 50}',
                         field="condition", code="missing_field" if cond is None else "invalid_field")
    if set(cond) == {"op", "threshold"}:
        if cond["op"] not in OPS:
            raise BadRequest(f"must be one of {' '.join(OPS)}", field="condition.op", code="invalid_field")
        return {"op": cond["op"], "threshold": _number(cond["threshold"], "condition.threshold")}
    if set(cond) == {"change", "percent"}:
        if cond["change"] not in CHANGES:
            raise BadRequest("must be rise or fall", field="condition.change", code="invalid_field")
        percent = _number(cond["percent"], "condition.percent")
        most = 100.0 if cond["change"] == "fall" else 1e9
        if not 0 < percent <= most:
            raise BadRequest(f"must be more than 0 and at most {most:g} for a {cond['change']}",
                             field="condition.percent", code="invalid_field")
        return {"change": cond["change"], "percent": percent}
    raise BadRequest('must be {"op", "threshold"} or {"change", "percent"}, nothing else', field="condition",
                     code="invalid_field")


def parse(r, body: object, advertiser_id: str, allow_http: bool, mail_settings=None) -> dict:
    """A new rule from a ``POST /v1/rules`` body; each refusal names its field and the rule broken."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", field="body", code="invalid_field")
    unknown = sorted(set(body) - set(KNOWN))
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}; use any of {', '.join(KNOWN)}",
                         field=unknown[0] or "body", code="invalid_field")
    metric, event = _metric(body)
    window = body.get("window")
    window_s = window_seconds(window)
    scope = _scope(r, body, advertiser_id, metric)
    condition = _condition(body)
    name = _text(body["name"], "name", MAX_NAME) if "name" in body else f"{event or metric} over {window}"
    target = delivery.parse(body, allow_http, mail_settings)
    now = int(time.time() * 1000)
    return {"id": "rul_" + secrets.token_hex(8), "advertiser_id": advertiser_id, "name": name, "metric": metric,
            "event": event, "window": window, "window_s": window_s, "scope": scope, "condition": condition,
            **target, "secret": secrets.token_hex(32), "paused": False, "paused_at": None, "created_at": now}


# -- storage --------------------------------------------------------------------------------------

def save(r, rule: dict) -> None:
    advertiser_objects.save(r, keys.RULES, rule)


def load(r, advertiser_id: str, rule_id: str) -> dict | None:
    """The rule if it is this advertiser's (reporting/advertiser_objects.py)."""
    return advertiser_objects.load(r, keys.RULES, advertiser_id, rule_id)


def every(r) -> list[dict]:
    return advertiser_objects.every(r, keys.RULES)


def owned(r, advertiser_id: str) -> list[dict]:
    return sorted((x for x in every(r) if x["advertiser_id"] == advertiser_id), key=lambda x: x["created_at"])


def delete(r, rule_id: str) -> None:
    pipe = r.pipeline(transaction=True)  # one slot on a cluster: both are shared keys
    pipe.hdel(keys.RULES, rule_id)
    pipe.hdel(keys.RULE_STATES, rule_id)
    pipe.execute()


def raw_state(r, rule_id: str) -> str | None:
    raw = r.hget(keys.RULE_STATES, rule_id)
    return raw.decode() if isinstance(raw, bytes) else raw


#: Write a rule's state only if the rule still exists and its state is still what was read: a
#: standby that took over, or a DELETE in between, makes the write a no-op instead of a clobber.
_CAS = """
if redis.call('hexists', KEYS[1], ARGV[1]) == 0 then return 0 end
if (redis.call('hget', KEYS[2], ARGV[1]) or '') ~= ARGV[2] then return 0 end
redis.call('hset', KEYS[2], ARGV[1], ARGV[3])
return 1
"""


def replace_state(r, rule_id: str, old: str | None, new: dict) -> bool:
    return bool(r.eval(_CAS, 2, keys.RULES, keys.RULE_STATES, rule_id, old or "", json.dumps(new)))


def initial_state(rule: dict) -> dict:
    return {"state": OK, "since": rule["created_at"], "value": None, "previous": None, "evaluated_at": None,
            "window_start": None, "window_end": None, "transitions": 0, "outbox": [], "last_notification": None}


def state_of(r, rule: dict) -> dict:
    raw = raw_state(r, rule["id"])
    return json.loads(raw) if raw else initial_state(rule)


def _iso(ms: int | None) -> str | None:
    from datetime import datetime, timezone

    return None if ms is None else datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat()


def public(r, rule: dict) -> dict:
    """What the API shows of a rule and where it stands: never its secret."""
    st = state_of(r, rule)
    shown = {k: rule[k] for k in ("id", "name", "metric", "event", "window", "scope", "condition")}
    shown.update(delivery.public(rule))
    shown["status"] = "paused" if rule["paused"] else "active"
    shown["state"] = PAUSED if rule["paused"] else st["state"]
    shown["since"] = _iso(rule["paused_at"] if rule["paused"] else st["since"])
    for name in ("value", "note", "previous", "previous_note", "error"):
        shown[name] = st.get(name)  # note: why a value is null ("spend without conversions", "no spend")
    shown["last_evaluated"] = _iso(st["evaluated_at"])
    shown["window_start"], shown["window_end"] = _iso(st["window_start"]), _iso(st["window_end"])
    shown["last_notification"] = st["last_notification"]
    shown["created_at"] = _iso(rule["created_at"])
    return shown
