"""The click redirect: record an ad click, then send the visitor on with ``ttclid`` added."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, redirect, request

from clicktrail.errors import BufferUnavailable, RequestError
from collector import intake
from collector.context import services
from collector.metrics import count_accepted, count_rejected
from collector.replies import json_reply
from pixel import bots, click_cache
from pixel.click_urls import add_click_id, check_landing, new_click_id, read_token
from pixel.touchpoints import Touch
from pixel.records import TouchRecord

bp = Blueprint("clicks", __name__)
log = logging.getLogger("clicktrail.clicks")


def _click_record(click: dict, click_id: str) -> TouchRecord:
    s = services().settings
    now = intake.now_ms()
    user_agent = request.headers.get("User-Agent", "")[:1024]
    return {
        "kind": "click",
        "touch_id": click_id,
        "touch_ms": now,
        "campaign_id": click["campaign"],
        "adgroup_id": click["adgroup"],
        "ad_id": click["ad"],
        # A collector on the site's own domain also sees the browser id: a direct stitch.
        "browser_id": request.cookies.get("_ttp", "")[:64],
        "ip": intake.client_ip(request, s.privacy.trust_proxy_headers),
        "user_agent": user_agent,
        "source": "redirect",
        "received_ms": now,
        # Decided here, once: the click cache entry below carries it to the attributor.
        "is_bot": bots.is_bot(user_agent, "redirect"),
    }


@bp.route("/r/<token>", methods=["GET"])
def click_redirect(token: str) -> Response:
    svc = services()
    try:
        click = read_token(svc.settings.site.secret_key, token)
        host = check_landing(click["landing"])
        click_id = new_click_id()
        record = _click_record(click, click_id)
        touch = Touch(click["advertiser"], "click", click_id, record["touch_ms"], record["campaign_id"],
                      record["adgroup_id"], record["ad_id"], record["browser_id"], "", "", "", int(record["is_bot"]))
        svc.buffer.append_click(click["advertiser"], host, record, click_cache.key(click["advertiser"], click_id),
                                click_cache.value(touch), click_cache.TTL_S)
    except BufferUnavailable:
        # The URL is signed, so its landing was checked when it was made: send the visitor on
        # rather than break the advertiser's site; the click itself could not be recorded.
        count_rejected("click", "buffer_unavailable")
        log.warning("click not recorded: buffer unavailable")
        return _redirect(click["landing"])
    except RequestError as exc:
        count_rejected("click", exc.code)
        return json_reply(exc.to_dict(), exc.status)
    count_accepted("click", 1)
    return _redirect(add_click_id(click["landing"], click_id))


def _redirect(location: str) -> Response:
    response = redirect(location, code=302)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer-when-downgrade"
    return response
