"""Per-app services the API's views share, stored in ``app.extensions`` (as collector/context.py).

The blueprints import this module, never the app factory (reporting/api.py), which imports them.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app, request

from clicktrail import clickhouse, config
from clicktrail.clickhouse import NETWORK_ERRORS
from clicktrail.errors import StorageError
from clicktrail.inserts import columns
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


def insert(table: str, names: list[str], rows: list[tuple], again: str) -> None:
    """``rows`` (tuples of ``names``) into a table of the API's database, as one insert.

    ClickHouse unreachable is a StorageError (a 503) whose message ends with ``again``: why
    posting the same request again is harmless.
    """
    svc = api_services()
    try:
        svc.clickhouse.get().execute(f"INSERT INTO {svc.database}.{table} ({', '.join(names)}) VALUES",
                                     columns(rows), columnar=True)
    except NETWORK_ERRORS as exc:
        svc.clickhouse.get().disconnect()
        raise StorageError(f"storage is unavailable; retry later ({again})") from exc
