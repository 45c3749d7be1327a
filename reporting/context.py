"""Per-app services the API's views share, stored in ``app.extensions`` (as collector/context.py).

The blueprints import this module, never the app factory (reporting/api.py), which imports them.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app, request

from clicktrail import clickhouse, config
from clicktrail.http_body import read_json

#: The extension's key in ``app.extensions``.
EXTENSION = "clicktrail.api"
MAX_API_BODY_BYTES = config.MAX_API_BODY_BYTES


@dataclass
class ApiServices:
    settings: config.Settings
    redis: object
    clickhouse: clickhouse.ThreadClients
    database: str


def api_services() -> ApiServices:
    return current_app.extensions[EXTENSION]


def json_body() -> object:
    return read_json(request, MAX_API_BODY_BYTES * 4)
