"""JSON replies built with orjson: Flask's jsonify goes through the standard library encoder,
several times slower for the collector's small bodies."""

from __future__ import annotations

import orjson
from flask import Response


def json_reply(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")
