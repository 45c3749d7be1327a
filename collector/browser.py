"""Browser events: the pixel's batch endpoint and the no-script image fallback."""

from __future__ import annotations

import base64
import logging
import re

import redis
from flask import Blueprint, Response, request
from werkzeug.http import dump_cookie

from clicktrail import http_body
from clicktrail.errors import BadRequest, BufferUnavailable, Forbidden, RequestError
from collector import intake
from collector.context import Services, services
from collector.metrics import count_accepted, count_rejected
from collector.replies import Reply
from pixel.events import Context, parse_events
from pixel.registry import get_pixel, host_allowed

bp = Blueprint("browser", __name__)
log = logging.getLogger("clicktrail.collector")

# The smallest transparent GIF: 1x1, one colour, transparent.
GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
_COOKIE_SAFE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_IMAGE_FIELDS = {"ev", "eid", "ts", "url", "ref", "ttp", "ttclid", "value", "currency", "order_id", "tec", "noscript"}


def _context(svc: Services, inc: intake.Incoming, pixel_id: str, source: str, received_ms: int,
             skew: int) -> Context:
    s = svc.settings
    return Context(
        pixel_id=pixel_id,
        source=source,
        received_ms=received_ms,
        skew_ms=skew,
        ip=intake.client_ip_of(inc.remote_addr, inc.forwarded_for, s.privacy.trust_proxy_headers),
        user_agent=inc.user_agent[:1024],
        max_age_ms=s.limits.max_event_age_s * 1000,
        max_future_ms=s.limits.max_future_s * 1000,
    )


def _site_host(events: list, inc: intake.Incoming) -> str:
    """The site that sent the events: Origin, else Referer, else the first event's page URL."""
    host = intake.host_of(inc.origin) or intake.host_of(inc.referer)
    if not host:
        for raw in events:
            if isinstance(raw, dict) and isinstance(raw.get("page"), dict):
                host = intake.host_of(str(raw["page"].get("url") or ""))
                if host:
                    break
    if not host:
        raise Forbidden(
            "cannot tell which site sent these events: no Origin, Referer or page.url", field="origin",
            code="unknown_origin",
        )
    return host


def _cors(reply: Reply, inc: intake.Incoming) -> Reply:
    """Let the page read the status, so the pixel never retries what was refused for good.

    Safe to reflect any origin: a response here holds only counts and error reasons, nothing a
    tenant owns. The preflight (needed only for application/json) is what is limited to the
    pixel's registered sites.
    """
    if inc.origin:
        reply.headers.extend((("Access-Control-Allow-Origin", inc.origin),
                              ("Access-Control-Allow-Credentials", "true"), ("Vary", "Origin")))
    return reply


def _batch(body: object, limit: int) -> tuple[list, int | float | None]:
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object with an 'events' list", field="body", code="invalid_field")
    events = body.get("events")
    if not isinstance(events, list) or not events:
        raise BadRequest("events must be a non-empty list", field="events", code="invalid_field")
    if len(events) > limit:
        raise BadRequest(f"events must hold at most {limit} events", field="events", code="too_many_events")
    return events, body.get("sent_at")


@bp.route("/e/<pixel_id>", methods=["POST"], provide_automatic_options=False)
def browser_events(pixel_id: str):
    # Most requests never get here: the fast path in front of Flask answers them with the same
    # accept_batch (collector/fast_path.py). This view serves the rest, e.g. chunked bodies.
    svc = services()
    try:
        body = http_body.read_body(request.environ, svc.settings.limits.max_body_bytes)
    except RequestError as exc:
        return _cors(_error(svc, exc, "browser"), intake.incoming(request)).to_response()
    return accept_batch(svc, pixel_id, intake.incoming(request, body)).to_response()


def accept_batch(svc: Services, pixel_id: str, inc: intake.Incoming) -> Reply:
    """Validate a pixel batch, queue its valid events, and build the answer (Flask-free)."""
    try:
        received = intake.now_ms()
        body = http_body.decode_json(inc.body, inc.content_encoding, svc.settings.limits.max_inflated_bytes)
        events, sent_at = _batch(body, svc.settings.limits.max_browser_events)
        ctx = _context(svc, inc, pixel_id, "browser", received, intake.skew_ms(sent_at, received))
        records, rejections = parse_events(events, ctx)
        reasons = [r.reason for r in rejections]
        appended = svc.buffer.append(pixel_id, records, host=_site_host(events, inc), rejected=reasons)
    except RequestError as exc:
        return _cors(_error(svc, exc, "browser"), inc)
    _count("browser", len(records), reasons)
    reply = Reply.json({"accepted": len(records), "rejected": [r.to_dict() for r in rejections]},
                       200 if records or not rejections else 400)
    _first_party_cookie(svc, inc, reply, appended.site_domain, records)
    return _cors(reply, inc)


#: TikTok keeps _ttp for 13 months from its last use.
TTP_MAX_AGE_S = 396 * 86400


def _first_party_cookie(svc: Services, inc: intake.Incoming, reply: Reply, site_domain: str,
                        records: list[dict]) -> None:
    """Refresh ``_ttp`` with Set-Cookie when the collector is served from the site's own domain.

    Safari caps cookies written by script at 7 days but not those set by the site's server, so a
    collector on a subdomain of the site (t.shop.example for shop.example) keeps the browser id
    for its full 13 months. Not HttpOnly: the pixel reads the id it sends.
    """
    collector_host = intake.host_name(inc.host)
    if not site_domain or not host_allowed(collector_host, [site_domain]):
        return
    ttp = next((r["ttp"] for r in records if r.get("ttp")), "")
    if not ttp or not _COOKIE_SAFE.match(ttp):
        return
    forwarded_https = svc.settings.privacy.trust_proxy_headers and inc.forwarded_proto.lower() == "https"
    reply.headers.append(("Set-Cookie", dump_cookie("_ttp", ttp, max_age=TTP_MAX_AGE_S, domain=site_domain,
                                                    path="/", secure=inc.secure or forwarded_https,
                                                    httponly=False, samesite="Lax")))


@bp.route("/e/<pixel_id>", methods=["OPTIONS"])
def browser_preflight(pixel_id: str):
    """CORS preflight for ``application/json`` bodies: allowed only for the pixel's registered sites."""
    svc = services()
    origin_host = intake.host_of(request.headers.get("Origin", ""))
    try:
        record = get_pixel(svc.redis, pixel_id) if origin_host else None
    except redis.RedisError:
        unavailable = BufferUnavailable("the pixel registry is unavailable; retry later", code="buffer_unavailable")
        return _error(svc, unavailable, "browser").to_response()
    domains = record["domains"] if record else []
    if not host_allowed(origin_host, domains):
        return Response(status=403)
    response = _cors(Reply(204, b"", []), intake.incoming(request)).to_response()
    response.headers["Access-Control-Allow-Methods"] = "POST"
    response.headers["Access-Control-Allow-Headers"] = "Content-Type, Content-Encoding"
    response.headers["Access-Control-Max-Age"] = "3600"
    return response


def _image_event(args) -> dict:
    props = {k: args[k] for k in ("value", "currency", "order_id") if args.get(k)}
    raw: dict = {"event": args.get("ev") or "PageView", "page": {"url": args.get("url") or request.referrer or "",
                                                                  "referrer": args.get("ref", "")}}
    for key, target in (("eid", "event_id"), ("ttp", "ttp"), ("ttclid", "ttclid"), ("tec", "test_event_code")):
        if args.get(key):
            raw[target] = args[key]
    ts = args.get("ts", "")
    if ts:
        # ASCII digits only ("²".isdigit() is true, and int() refuses it); anything else is passed
        # on as it is, for the validation to refuse and count.
        raw["timestamp"] = int(ts) if ts.isascii() and ts.isdigit() and len(ts) <= 20 else ts
    if props:
        raw["properties"] = props
    for key in args:  # unknown parameters are kept, not dropped
        if key not in _IMAGE_FIELDS:
            raw[key] = args.get(key)
    return raw


@bp.route("/e/<pixel_id>.gif", methods=["GET"])
def image_event(pixel_id: str):
    """Record one event from query parameters; always answer the GIF, whatever happened."""
    svc = services()
    inc = intake.incoming(request)
    reasons: list[str] = []
    accepted = 0
    try:
        raw = _image_event(request.args)
        records, rejections = parse_events([raw], _context(svc, inc, pixel_id, "image", intake.now_ms(), 0))
        reasons = [r.reason for r in rejections]
        svc.buffer.append(pixel_id, records, host=_site_host([raw], inc),
                          rejected=reasons)
        accepted = len(records)
    except RequestError as exc:
        reasons = [exc.code]
    except Exception:  # a bug must not turn an image into a JSON 500 on the advertiser's page
        log.exception("image event failed for pixel %r", pixel_id)
        reasons = ["internal_error"]
    _count("image", accepted, reasons)
    response = Response(GIF, mimetype="image/gif")
    response.headers["Cache-Control"] = "no-store, max-age=0"
    return response


def _count(source: str, accepted: int, reasons: list[str]) -> None:
    count_accepted(source, accepted)
    for reason in reasons:
        count_rejected(source, reason)


def _error(svc: Services, exc: RequestError, source: str) -> Reply:
    count_rejected(source, exc.code)
    reply = Reply.json(exc.to_dict(), exc.status)
    if exc.status == 503:
        reply.headers.append(("Retry-After", str(svc.buffer.retry_after)))
    return reply
