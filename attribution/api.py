"""The API app (``clicktrail api``): imports and everything that reads stored data.

It runs in its own gunicorn, apart from the collector, so a slow report can never hold up
event collection.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from clicktrail import clickhouse, config, redis_client
from clicktrail.errors import RequestError, StorageError, http_error_dict


@dataclass
class ApiServices:
    settings: dict
    redis: object
    clickhouse: clickhouse.ThreadClients
    database: str


#: Bulk imports carry up to 10,000 rows.
MAX_API_BODY_BYTES = 16 * 1024 * 1024


def create_app(overrides: Mapping[str, Any] | None = None) -> Flask:
    """Build the API app: defaults, then ``CLICKTRAIL_*`` environment, then ``overrides``."""
    settings = config.load(overrides)
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_API_BODY_BYTES
    app.json.sort_keys = False
    url = settings["CLICKHOUSE_URL"]
    app.extensions["clicktrail.api"] = ApiServices(
        settings=settings,
        redis=redis_client.fast(settings["REDIS_URL"], 2000),
        clickhouse=clickhouse.ThreadClients(url),
        database=clickhouse.database_of(url),
    )
    from attribution import diagnostics, explain, imports
    from attribution import conversions, costs, feed, reports
    from attribution import dashboard

    app.register_blueprint(imports.bp)
    app.register_blueprint(explain.bp)
    app.register_blueprint(diagnostics.bp)
    app.register_blueprint(feed.bp)
    app.register_blueprint(reports.bp)
    app.register_blueprint(costs.bp)
    app.register_blueprint(conversions.bp)
    app.register_blueprint(dashboard.bp)

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")

    @app.errorhandler(RequestError)
    def _request_error(exc: RequestError):
        response = jsonify(exc.to_dict())
        response.status_code = exc.status
        if exc.status == 503:
            response.headers["Retry-After"] = str(settings["RETRY_AFTER_S"])
        return response

    @app.errorhandler(StorageError)
    def _storage_error(exc: StorageError):
        response = jsonify({"error": {"code": "storage_unavailable", "message": str(exc)}})
        response.status_code = 503
        response.headers["Retry-After"] = str(settings["RETRY_AFTER_S"])
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        return jsonify(http_error_dict(exc.code, exc.description or exc.name, MAX_API_BODY_BYTES)), exc.code

    return app


def api_services() -> ApiServices:
    from flask import current_app

    return current_app.extensions["clicktrail.api"]


def json_body() -> object:
    from collector.intake import read_json

    return read_json(request, MAX_API_BODY_BYTES * 4)
