"""Server events: TikTok Events API 2.0, ``POST /open_api/v1.3/event/track/``.

The envelope is TikTok's, unchanged, so existing integrations only change the host. Unlike
TikTok, one bad row does not fail the batch: valid rows are queued and every refused row is
reported with its index, field and rule.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import NamedTuple

from flask import Blueprint, request

from clicktrail import http_body
from clicktrail.errors import BadRequest, RequestError, Unauthorized
from collector import intake
from collector.context import services
from collector.metrics import count_accepted, count_rejected
from collector.replies import json_reply
from pixel.events import MAX_NAME, Context, Rejection, parse_events
from pixel.ids import token_hash
from pixel.records import EventRecord

bp = Blueprint("events_api", __name__)

EVENT_SOURCES = ("web", "app", "offline", "crm")
# TikTok's response codes, so clients written for TikTok react the same way.
CODE_OK = 0
CODE_AUTH = 40001
CODE_INVALID = 40002
CODE_RETRY = 40100


def _token() -> str:
    token = request.headers.get("Access-Token", "").strip()
    if not token:
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    if not token:
        raise Unauthorized("the Access-Token header is required", field="Access-Token", code="missing_token")
    return token


class Envelope(NamedTuple):
    """What an endpoint reads of its body before the rows: the pixel, the rows, the request's options."""

    pixel_id: str
    rows: list
    test_event_code: str
    sent_at: object = None  # unix seconds, or None
    # 2.0's event_source: the id may then be an app or event set of that kind (pixel/sources.py).
    # "" for 1.0, whose id is a pixel's and whose events are web events.
    event_source: str = ""
    id_field: str = "pixel_id"  # the body's field holding the id, named in errors


def read_test_event_code(body: dict) -> str:
    code = body.get("test_event_code") or ""
    if not isinstance(code, str) or len(code) > 64:
        raise BadRequest("test_event_code must be a string of at most 64 characters", field="test_event_code",
                         code="invalid_field")
    return code


def _envelope(body: object, limit: int) -> Envelope:
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object", field="body", code="invalid_field")
    source = body.get("event_source")
    if source not in EVENT_SOURCES:
        raise BadRequest(f"event_source must be one of {', '.join(EVENT_SOURCES)}", field="event_source",
                         code="invalid_field")
    pixel_id = body.get("event_source_id")
    if not isinstance(pixel_id, str) or not pixel_id.strip():
        raise BadRequest("event_source_id (the pixel id, TikTok App ID or event set id) is required",
                         field="event_source_id", code="invalid_field")
    data = event_list(body, "data", limit)
    return Envelope(pixel_id.strip(), data, read_test_event_code(body), body.get("sent_at"), source,
                    "event_source_id")


def event_list(body: dict, name: str, limit: int) -> list:
    """The body's list of events under ``name`` (2.0's ``data``, 1.0's ``batch``): non-empty, bounded."""
    rows = body.get(name)
    if not isinstance(rows, list) or not rows:
        raise BadRequest(f"{name} must be a non-empty list of events", field=name, code="invalid_field")
    if len(rows) > limit:
        raise BadRequest(f"{name} must hold at most {limit} events per request", field=name,
                         code="too_many_events")
    return rows


def _partner_name(body: dict) -> str:
    """TikTok's ``partner_name`` (the platform that sent the events), stored with each event."""
    name = body.get("partner_name")
    if name is None:
        return ""
    if not isinstance(name, str) or len(name) > MAX_NAME:
        raise BadRequest(f"partner_name must be a string of at most {MAX_NAME} characters", field="partner_name",
                         code="invalid_field")
    return name


def _seconds_to_ms(value: object) -> object:
    """``sent_at`` (a clicktrail extension: the sender's clock at sending) is in unix seconds, as event_time."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value * 1000
    return value


def _claimed_sources(envelope: Envelope, records: list[EventRecord]) -> tuple[str, ...]:
    """The event sources a 2.0 request claims, its body's and any its rows name ((): 1.0)."""
    if not envelope.event_source:
        return ()
    return tuple(sorted({envelope.event_source, *(r["event_source"] for r in records)}))


def _reply(status: int, code: int, message: str, request_id: str, data: dict | None = None):
    response = json_reply({"code": code, "message": message, "request_id": request_id, "data": data or {}}, status)
    response.headers["X-Request-Id"] = request_id
    return response


@bp.route("/open_api/v1.3/event/track/", methods=["POST"])
def track():
    return serve(_envelope, parse_events)


Parser = Callable[[list, Context], tuple[list[EventRecord], list[Rejection]]]


def serve(read: Callable[[object, int], Envelope], parse: Parser):
    """Answer one Events API request, TikTok-style: ``read`` checks the envelope (raising
    ``RequestError`` for the whole request), ``parse`` the rows (refusing row by row); the token
    is checked against the pixel's advertiser when the rows are queued. Shared by the 2.0
    endpoint here and the 1.0 endpoints (collector/events_api_v1.py)."""
    svc = services()
    s = svc.settings
    request_id = secrets.token_hex(12)
    try:
        token = _token()
        received = intake.now_ms()
        body = http_body.read_json(request, s.limits.max_inflated_bytes)
        envelope = read(body, s.limits.max_server_events)
        pixel_id, data = envelope.pixel_id, envelope.rows
        skew = intake.skew_ms(_seconds_to_ms(envelope.sent_at), received, "seconds")
        ctx = Context(pixel_id=pixel_id, source="server", received_ms=received, skew_ms=skew, ip="",
                      user_agent="", max_age_ms=s.limits.max_event_age_s * 1000,
                      max_future_ms=s.limits.max_future_s * 1000, test_event_code=envelope.test_event_code,
                      # 2.0 names its source (checked by its envelope); 1.0 and Meta's bodies are web events.
                      event_source=envelope.event_source or "web", partner_name=_partner_name(body))
        records, rejections = parse(data, ctx)
        reasons = [r.reason for r in rejections]
        svc.buffer.append(pixel_id, records, token_hash=token_hash(token), rejected=reasons,
                          event_sources=_claimed_sources(envelope, records), id_field=envelope.id_field)
    except RequestError as exc:
        count_rejected("server", exc.code)
        code = CODE_RETRY if exc.status >= 500 else CODE_AUTH if exc.status in (401, 403) else CODE_INVALID
        response = _reply(exc.status, code, exc.message, request_id, exc.to_dict())
        if exc.status == 503:
            response.headers["Retry-After"] = str(svc.buffer.retry_after)
        return response
    count_accepted("server", len(records))
    for reason in reasons:
        count_rejected("server", reason)
    data_out = {"accepted": len(records), "rejected": [r.to_dict() for r in rejections]}
    if not records:
        return _reply(400, CODE_INVALID, "every event was rejected", request_id, data_out)
    message = "OK" if not rejections else f"partial success: {len(rejections)} of {len(data)} events rejected"
    return _reply(200, CODE_OK, message, request_id, data_out)
