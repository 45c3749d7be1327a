"""Serves the browser SDK: GET /s/ct.js (short cache, ETag) and GET /s/<version>/ct.js (immutable).

Register with `app.register_blueprint(bp)`. The body is the committed static/js/ct.min.js;
its gzip form is computed once, here, at import.
"""

from __future__ import annotations

import gzip

from flask import Blueprint, Response, abort, request

from pixel.snippet import SDK_VERSION, sdk_source

bp = Blueprint("sdk", __name__)

_BODY = sdk_source()
_BODY_GZ = gzip.compress(_BODY, compresslevel=9, mtime=0)
_ETAG = f'"{SDK_VERSION}"'

SHORT_CACHE = "public, max-age=300"
LONG_CACHE = "public, max-age=31536000, immutable"


def _sdk_response(cache_control: str) -> Response:
    headers = {
        "Cache-Control": cache_control,
        "ETag": _ETAG,
        "Vary": "Accept-Encoding",
        "X-Content-Type-Options": "nosniff",
    }
    if request.if_none_match.contains_weak(SDK_VERSION):
        return Response(status=304, headers=headers)
    body = _BODY
    if request.accept_encodings.quality("gzip") > 0:
        body = _BODY_GZ
        headers["Content-Encoding"] = "gzip"
    return Response(body, status=200, headers=headers, content_type="application/javascript; charset=utf-8")


@bp.get("/s/ct.js")
def sdk_latest() -> Response:
    return _sdk_response(SHORT_CACHE)


@bp.get("/s/<version>/ct.js")
def sdk_versioned(version: str) -> Response:
    if version != SDK_VERSION:
        abort(404)
    return _sdk_response(LONG_CACHE)
