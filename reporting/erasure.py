"""Erasure requests: ``POST /v1/erasure`` and ``GET /v1/erasure/<request_id>`` (scope privacy).

The API only records and queues a request (pixel/erasure.py); the attributor's eraser does the
work (attribution/erasure.py), within minutes. A token erases and sees only its own advertiser's.
"""

from __future__ import annotations

import redis
from flask import Blueprint, g, jsonify

from clicktrail.errors import BufferUnavailable, NotFound
from pixel import erasure
from reporting.auth import require
from reporting.context import api_services, json_body

bp = Blueprint("erasure", __name__)


@bp.post("/v1/erasure")
@require("privacy")
def request_erasure():
    identifiers = erasure.parse_identifiers(json_body())
    try:
        request_id = erasure.submit(api_services().redis, g.caller.advertiser_id, identifiers, g.caller.token_id)
    except redis.RedisError as exc:
        raise BufferUnavailable("could not record the request; retry later") from exc
    return jsonify({"request_id": request_id, "status": erasure.PENDING}), 202


@bp.get("/v1/erasure/<request_id>")
@require("privacy")
def erasure_status(request_id: str):
    try:
        record = erasure.audit(api_services().redis, g.caller.advertiser_id, request_id)
    except redis.RedisError as exc:
        raise BufferUnavailable("the request store is unavailable; retry later") from exc
    if record is None:
        raise NotFound(f"no erasure request {request_id!r} of this advertiser", field="request_id")
    return jsonify(record)
