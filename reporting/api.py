"""The API app (``clicktrail api``): imports and everything that reads stored data.

It runs in its own gunicorn, apart from the collector, so a slow report can never hold up
event collection.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import redis
from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from clicktrail import clickhouse, config, redis_client
from clicktrail.errors import RequestError, StorageError, http_error_dict
from reporting.context import EXTENSION, MAX_API_BODY_BYTES, ApiServices
from reporting.finite_json import FiniteJSONProvider

log = logging.getLogger("clicktrail.api")


def create_app(overrides: Mapping[str, Any] | None = None) -> Flask:
    """Build the API app: defaults, then ``CLICKTRAIL_*`` environment, then ``overrides``."""
    settings = config.load(overrides)
    app = Flask(__name__, static_folder=None)
    # "/r//x" is not "/r/x": a 308 to a merged path would answer a malformed request with a redirect.
    app.url_map.merge_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = MAX_API_BODY_BYTES
    app.json = FiniteJSONProvider(app)
    app.json.sort_keys = False
    url = settings.clickhouse.url
    app.extensions[EXTENSION] = ApiServices(
        settings=settings,
        redis=redis_client.fast(settings.redis.url, 2000),
        clickhouse=clickhouse.ThreadClients(url),
        database=clickhouse.database_of(url),
    )
    from reporting import (conversions, costs, dashboard, diagnostics, erasure, exchange_rates, explain, feed,
                           imports, reports, rule_api, schedule_api)

    app.register_blueprint(imports.bp)
    app.register_blueprint(explain.bp)
    app.register_blueprint(diagnostics.bp)
    app.register_blueprint(feed.bp)
    app.register_blueprint(reports.bp)
    app.register_blueprint(costs.bp)
    app.register_blueprint(exchange_rates.bp)
    app.register_blueprint(conversions.bp)
    app.register_blueprint(erasure.bp)
    app.register_blueprint(dashboard.bp)
    app.register_blueprint(schedule_api.bp)
    app.register_blueprint(rule_api.bp)

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")

    def unavailable(code: str, message: str):
        response = jsonify({"error": {"code": code, "message": message}})
        response.status_code = 503
        response.headers["Retry-After"] = str(settings.limits.retry_after_s)
        return response

    @app.errorhandler(RequestError)
    def _request_error(exc: RequestError):
        response = jsonify(exc.to_dict())
        response.status_code = exc.status
        if exc.status == 503:
            response.headers["Retry-After"] = str(settings.limits.retry_after_s)
        return response

    @app.errorhandler(StorageError)
    def _storage_error(exc: StorageError):
        return unavailable("storage_unavailable", str(exc))

    # A read that finds ClickHouse or Redis unreachable is a 503 to retry, whichever endpoint it is.
    def _clickhouse_down(exc: Exception):
        log.warning("ClickHouse unreachable: %s", exc)
        app.extensions[EXTENSION].clickhouse.get().disconnect()  # the next request connects anew
        return unavailable("storage_unavailable", "storage is unavailable; retry later")

    for error in clickhouse.NETWORK_ERRORS:
        app.register_error_handler(error, _clickhouse_down)

    @app.errorhandler(redis.RedisError)
    def _redis_down(exc: redis.RedisError):
        log.warning("Redis unreachable: %s", exc)
        return unavailable("unavailable", "the registry is unavailable; retry later")

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        response = jsonify(http_error_dict(exc.code, exc.description or exc.name, MAX_API_BODY_BYTES))
        response.status_code = exc.code
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        # Still the JSON error shape, never the server's HTML page; the cause goes to the log.
        log.exception("unexpected error answering %s %s", request.method, request.path)
        return jsonify({"error": {"code": "internal_error", "message": "unexpected error; it was logged"}}), 500

    return app

