"""The collector's app factory."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException

from clicktrail import config, keys, redis_client
from clicktrail.errors import RequestError, http_error_dict
from collector.buffer import EventBuffer
from collector.context import Services
from collector.fast_path import BrowserFastPath
from collector.metrics import StreamCollector, observe_request
from pixel.geo import open_locator


def create_app(overrides: Mapping[str, Any] | None = None) -> Flask:
    """Build the collector: defaults, then ``CLICKTRAIL_*`` environment, then ``overrides``."""
    settings = config.load(overrides)
    app = Flask(__name__, static_folder=None)
    # "/r//x" is not "/r/x": a 308 to a merged path would answer a malformed request with a redirect.
    app.url_map.merge_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = settings.limits.max_body_bytes
    app.json.sort_keys = False
    app.json.compact = True
    # One client per process; its pool reconnects by itself after gunicorn forks.
    client = redis_client.fast(settings.redis.url, settings.redis.timeout_ms)
    svc = app.extensions["clicktrail"] = Services(
        settings=settings,
        buffer=EventBuffer(client, settings.stream.max_len, settings.limits.retry_after_s, settings.stream.shards,
                           open_locator(settings.geo.database), settings.privacy,
                           wait_replicas=settings.redis.wait_replicas, wait_timeout_ms=settings.redis.wait_timeout_ms),
        redis=client,
        stream_metrics=StreamCollector(client, keys.event_streams(settings.stream.shards), keys.SINK_GROUP,
                                       keys.DEAD_LETTER_STREAM),
    )
    _register_blueprints(app)
    _register_handlers(app)
    app.wsgi_app = BrowserFastPath(app.wsgi_app, svc, settings.limits.max_body_bytes)
    return app


def _register_blueprints(app: Flask) -> None:
    from collector import browser, clicks, events_api, events_api_v1, health, meta_capi, sdk

    for module in (browser, clicks, events_api, events_api_v1, health, meta_capi, sdk):
        app.register_blueprint(module.bp)


def _register_handlers(app: Flask) -> None:
    @app.before_request
    def _start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _observe(response):
        started = g.get("started")
        if started is not None:
            observe_request(request.endpoint or "unmatched", response.status_code, time.perf_counter() - started)
        return response

    @app.errorhandler(RequestError)
    def _request_error(exc: RequestError):
        return jsonify(exc.to_dict()), exc.status

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        body = http_error_dict(exc.code, exc.description or exc.name, app.config["MAX_CONTENT_LENGTH"])
        if request.path.startswith("/open_api/"):
            body = {"code": 40002, "message": body["error"]["message"], "request_id": "", "data": body}
        response = jsonify(body)
        response.status_code = exc.code
        # Werkzeug's own headers, e.g. a 405's Allow (RFC 9110 requires it); not its Content-Type.
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response
