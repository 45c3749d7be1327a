"""Meta Conversions API receiver: ``POST /v<version>/<pixel_id>/events``.

Requests are taken as Meta's ``facebook-business`` SDK sends them (form-encoded, ``data`` a JSON
array of JSON strings, ``access_token`` in the query) or as JSON. Each Meta event is turned into an
Events API 2.0 row and validated by the same parser (pixel/events.py), so every rule of the
TikTok endpoints applies. The ``access_token`` is a clicktrail token with the ``events`` scope of
the pixel's advertiser, checked by the same atomic append (collector/buffer.py).

Like Meta, a batch is all or nothing: one invalid event refuses the request (400) and nothing is
queued; the error names the event's index, the field and the rule.
"""

from __future__ import annotations

import re
import secrets
from urllib.parse import parse_qsl

import orjson
from flask import Blueprint, abort, request

from clicktrail import http_body
from clicktrail.errors import BadRequest, RequestError, Unauthorized
from collector import intake
from collector.context import services
from collector.metrics import count_accepted, count_rejected
from collector.replies import json_reply
from pixel.events import Context, InvalidField, Rejection, parse_event
from pixel.ids import token_hash

bp = Blueprint("meta_capi", __name__)

#: Meta's ``action_source`` values.
ACTION_SOURCES = frozenset(
    "email website app phone_call chat physical_store system_generated business_messaging other".split()
)
#: Meta's error codes (Graph API): invalid parameter, bad token, permission, temporary failure.
CODE_INVALID = 100
CODE_TOKEN = 190
CODE_PERMISSION = 200
CODE_TRANSIENT = 2
#: Meta's subcode for "object does not exist" (an unknown pixel id).
SUBCODE_NO_OBJECT = 33
_FORM = "application/x-www-form-urlencoded"
_VERSION = re.compile(r"v[0-9]{1,3}\.[0-9]{1,3}", re.ASCII)
_FBC = re.compile(r"fb\.[0-9]+\.[0-9]+\.(.+)", re.ASCII | re.DOTALL)
#: Meta event keys given a place of their own in the 2.0 row; every other key is kept in ``extra``.
_MAPPED = frozenset("event_name event_id event_time event_source_url referrer_url user_data custom_data".split())
#: Keys of our own row shape: a Meta event carrying one would be read as ours, so it is refused.
_OURS = frozenset("event page user properties limited_data_use event_source partner_name".split())
#: Meta's ``action_source`` as TikTok's ``event_source`` (web, app, offline, crm); kept as sent in ``extra`` too.
EVENT_SOURCE_OF = {"website": "web", "app": "app", "physical_store": "offline", "phone_call": "offline",
                   "email": "crm", "chat": "crm", "business_messaging": "crm", "system_generated": "crm",
                   "other": "crm"}
#: ``user_data`` keys: Meta's name -> the 2.0 ``user`` key.
_USER_KEYS = {"em": "email", "ph": "phone", "external_id": "external_id",
              "client_ip_address": "ip", "client_user_agent": "user_agent", "fbp": "ttp"}
#: The 2.0 ``user`` key -> Meta's name, to name a refused field as it was sent.
_META_USER_KEYS = {ours: theirs for theirs, ours in _USER_KEYS.items()} | {"ttclid": "fbc"}
#: A Meta ``contents`` item's keys -> ours.
_CONTENT_KEYS = {"id": "content_id", "item_price": "price", "title": "content_name", "category": "content_category"}


def _meta_error(status: int, code: int, message: str, trace: str, *, subcode: int | None = None,
                field: str | None = None, transient: bool = False):
    error = {"message": message, "type": "OAuthException", "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    if field is not None:  # clicktrail's addition: the field that broke the rule
        error["error_user_title"] = f"Invalid {field}"
        error["error_user_msg"] = message
    error["is_transient"] = transient
    error["fbtrace_id"] = trace
    return json_reply({"error": error}, status)


def _from_request_error(exc: RequestError, trace: str):
    if exc.status in (401, 403):
        code = CODE_TOKEN if exc.status == 401 else CODE_PERMISSION
        response = _meta_error(exc.status, code, exc.message, trace)
        if exc.status == 401:  # RFC 9110 requires the challenge; this one is Graph API's
            response.headers["WWW-Authenticate"] = 'OAuth "Facebook Platform" "invalid_token"'
        return response
    if exc.status == 404:  # Meta answers an unknown object with a 400, code 100, subcode 33
        return _meta_error(400, CODE_INVALID, exc.message, trace, subcode=SUBCODE_NO_OBJECT, field=exc.field)
    if exc.status >= 500:
        response = _meta_error(exc.status, CODE_TRANSIENT, exc.message, trace, transient=True)
        response.headers["Retry-After"] = str(services().buffer.retry_after)
        return response
    return _meta_error(exc.status, CODE_INVALID, exc.message, trace, field=exc.field)


def _params(max_inflated: int) -> dict:
    """The request's parameters: the query string, then the form or JSON body over it."""
    params = {k: v for k, v in request.args.items()}
    body = http_body.read_body(request.environ, request.max_content_length)
    if not body:
        return params
    mimetype = request.mimetype
    if mimetype == _FORM:
        if (request.headers.get("Content-Encoding") or "identity").lower() != "identity":
            raise BadRequest("a form-encoded body must not be compressed; send gzip as JSON", field="body")
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                              max_num_fields=1000)
        except (UnicodeDecodeError, ValueError):
            raise BadRequest("form body must be UTF-8 with at most 1000 fields", field="body") from None
        params.update(pairs)
        return params
    if mimetype not in ("application/json", ""):
        raise BadRequest(f"Content-Type {mimetype!r} is not supported; send form-encoded or JSON",
                         field="Content-Type")
    parsed = http_body.decode_json(body, request.headers.get("Content-Encoding") or "", max_inflated)
    if not isinstance(parsed, dict):
        raise BadRequest("body must be a JSON object", field="body")
    params.update(parsed)
    return params


def _text_param(params: dict, name: str, limit: int) -> str:
    value = params.get(name)
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > limit:
        raise BadRequest(f"{name} must be a string of at most {limit} characters", field=name)
    return value.strip()


def _data(params: dict, limit: int) -> list:
    data = params.get("data")
    if isinstance(data, str):
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise BadRequest("data must be a JSON array of events", field="data") from None
    if not isinstance(data, list) or not data:
        raise BadRequest("data must be a non-empty array of events", field="data")
    if len(data) > limit:
        raise BadRequest(f"data must hold at most {limit} events per request", field="data")
    return data


def _first(value: object) -> object:
    """A user field clicktrail keeps one value of: the first non-empty item of a list."""
    if isinstance(value, list):
        return next((v for v in value if v not in (None, "")), None)
    return value


def _click_id(fbc: object) -> str:
    """The ``fbclid`` of an ``fbc`` value, ``fb.<subdomain index>.<creation time>.<fbclid>``."""
    if fbc in (None, ""):
        return ""
    match = _FBC.fullmatch(fbc) if isinstance(fbc, str) else None
    if not match:
        raise InvalidField("user_data.fbc", "must be fb.<subdomain index>.<creation time>.<fbclid>")
    return match.group(1)


def _user(user_data: object, action_source: object) -> dict:
    if not isinstance(user_data, dict) or not user_data:
        raise InvalidField("user_data", "is required (an object with at least one customer parameter)")
    if action_source == "website" and not user_data.get("client_user_agent"):
        raise InvalidField("user_data.client_user_agent", "is required for website events")
    user: dict = {}
    for key, value in user_data.items():
        if key in _USER_KEYS:  # em, ph, external_id: SHA-256, one or a list (raw values are hashed by the parser)
            user[_USER_KEYS[key]] = value
        elif key == "fbc":
            user["ttclid"] = _click_id(value)
        elif key in _OURS_USER:  # named "user_data", never the sender's key: rejection counts stay bounded
            raise InvalidField("user_data", "must use Meta's keys (em, ph, fbp...), not clicktrail's")
        else:
            user[key] = _first(value)  # fn, ln, ct, zp...: personal, so hashed by the parser
    return user


#: 2.0 ``user`` keys that a Meta ``user_data`` must not set directly.
_OURS_USER = frozenset("email phone ip user_agent ttp ttclid sha256_email sha256_phone_number phone_number".split())


def _properties(custom_data: object) -> dict:
    if custom_data is None:
        return {}
    if not isinstance(custom_data, dict):
        raise InvalidField("custom_data", "must be an object")
    props = dict(custom_data)
    contents = props.get("contents")
    if isinstance(contents, list):
        props["contents"] = [
            {_CONTENT_KEYS.get(k, k): v for k, v in item.items()} if isinstance(item, dict) else item
            for item in contents
        ]
    return props


def to_row(event: object) -> dict:
    """One Meta event as an Events API 2.0 ``data[]`` row (raises ``InvalidField``)."""
    if isinstance(event, str):  # the SDK sends each event as a JSON string
        try:
            event = orjson.loads(event)
        except orjson.JSONDecodeError:
            raise InvalidField("", "event must be a JSON object or a JSON string of one") from None
    if not isinstance(event, dict):
        raise InvalidField("", "event must be a JSON object or a JSON string of one")
    clash = sorted(_OURS.intersection(event))
    if clash:
        raise InvalidField(clash[0], "is not a Conversions API field")
    source = event.get("action_source")
    if not isinstance(source, str) or source not in ACTION_SOURCES:
        raise InvalidField("action_source", f"must be one of {', '.join(sorted(ACTION_SOURCES))}")
    row = {k: v for k, v in event.items() if k not in _MAPPED}  # action_source and the rest: extra
    row["event_source"] = EVENT_SOURCE_OF[source]
    row["event"] = event.get("event_name")
    row["event_time"] = event.get("event_time")
    if event.get("event_id") is not None:
        row["event_id"] = event["event_id"]
    page = {}
    if event.get("event_source_url") is not None:
        page["url"] = event["event_source_url"]
    if event.get("referrer_url") is not None:
        page["referrer"] = event["referrer_url"]
    row["page"] = page
    row["user"] = _user(event.get("user_data"), source)
    row["properties"] = _properties(event.get("custom_data"))
    return row


def parse_meta_events(data: list, ctx: Context) -> tuple[list, list[Rejection]]:
    """Records for Meta events, or the rejections of those that break a rule (never raises)."""
    records, rejections = [], []
    for index, event in enumerate(data):
        try:
            row = to_row(event)
        except InvalidField as exc:
            rejections.append(exc.rejection(index))
            continue
        result = parse_event(row, index, ctx)
        (rejections if isinstance(result, Rejection) else records).append(result)
    return records, rejections


def _rejection_field(rejection: Rejection) -> str:
    """Our field names for the ones renamed from Meta's, so that the error names what was sent."""
    renames = (("event_time", "event_time"), ("event", "event_name"), ("page.url", "event_source_url"),
               ("page.referrer", "referrer_url"), ("user", "user_data"), ("properties", "custom_data"))
    field = rejection.field
    if field.startswith("user."):  # em, ph, client_ip_address...: the key as Meta's sender wrote it
        key = field[5:]
        return "user_data." + _META_USER_KEYS.get(key, key)
    for ours, theirs in renames:
        if field == ours or field.startswith(ours + "."):
            return theirs + field[len(ours):]
    return field


@bp.route("/<api_version>/<pixel_id>/events", methods=["POST"])
def events(api_version: str, pixel_id: str):
    if not _VERSION.fullmatch(api_version):
        abort(404)
    svc = services()
    s = svc.settings
    trace = secrets.token_urlsafe(9)
    try:
        received = intake.now_ms()
        params = _params(s.limits.max_inflated_bytes)
        token = _text_param(params, "access_token", 512)
        if not token:
            raise Unauthorized("access_token is required", field="access_token")
        data = _data(params, s.limits.max_server_events)
        test_code = _text_param(params, "test_event_code", 64)
        ctx = Context(pixel_id=pixel_id, source="server", received_ms=received, skew_ms=0, ip="",
                      user_agent="", max_age_ms=s.limits.max_event_age_s * 1000,
                      max_future_ms=s.limits.max_future_s * 1000, test_event_code=test_code)
        records, rejections = parse_meta_events(data, ctx)
        # All or nothing, as Meta: with a refused event nothing is queued, but the token and the
        # pixel are still checked (a bad token is a 401 whatever the data) and the refusals counted.
        svc.buffer.append(pixel_id, [] if rejections else records,
                          token_hash=token_hash(token), rejected=[r.reason for r in rejections])
    except RequestError as exc:
        count_rejected("server", exc.code)
        return _from_request_error(exc, trace)
    if rejections:
        for rejection in rejections:
            count_rejected("server", rejection.reason)
        first = rejections[0]
        field = _rejection_field(first)
        message = (f"Invalid parameter: data[{first.index}].{field} {first.rule}"
                   + (f" ({len(rejections)} of {len(data)} events invalid)" if len(rejections) > 1 else ""))
        return _meta_error(400, CODE_INVALID, message, trace, field=f"data[{first.index}].{field}")
    count_accepted("server", len(records))
    return json_reply({"events_received": len(records), "messages": [], "fbtrace_id": trace})
