"""Server events: TikTok Events API 1.0, ``POST /open_api/v1.3/pixel/track/`` and ``/pixel/batch/``.

What TikTok's official SDKs still send (``EventCallbackApi.pixel_track`` and ``pixel_batch``).
The request is answered exactly as the 2.0 endpoint answers (collector/events_api.py: the same
token rule, limits, dedup, reply and per-row refusals); only the envelope and the row shape
differ, and the rows are read as 2.0 rows (pixel/events_v1.py).
"""

from __future__ import annotations

from flask import Blueprint

from clicktrail.errors import BadRequest
from collector.events_api import Envelope, event_list, read_test_event_code, serve
from pixel.events_v1 import parse_events_v1

bp = Blueprint("events_api_v1", __name__)

#: The track body is one event with the envelope's fields beside it.
_TRACK_ENVELOPE = ("pixel_code", "test_event_code")


def _pixel_code(body: object) -> str:
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object", field="body", code="invalid_field")
    pixel_id = body.get("pixel_code")
    if not isinstance(pixel_id, str) or not pixel_id.strip():
        raise BadRequest("pixel_code (the pixel id) is required", field="pixel_code", code="invalid_field")
    return pixel_id.strip()


def _track(body: object, limit: int) -> Envelope:
    pixel_id = _pixel_code(body)
    event = {k: v for k, v in body.items() if k not in _TRACK_ENVELOPE}
    return Envelope(pixel_id, [event], read_test_event_code(body), id_field="pixel_code")


def _batch(body: object, limit: int) -> Envelope:
    pixel_id = _pixel_code(body)
    return Envelope(pixel_id, event_list(body, "batch", limit), read_test_event_code(body), id_field="pixel_code")


@bp.route("/open_api/v1.3/pixel/track/", methods=["POST"])
def pixel_track():
    return serve(_track, parse_events_v1)


@bp.route("/open_api/v1.3/pixel/batch/", methods=["POST"])
def pixel_batch():
    return serve(_batch, parse_events_v1)
