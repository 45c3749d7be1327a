"""A current ClickHouse (chDB: the ClickHouse engine in-process) behind clickhouse-driver's ``execute``.

Debian's server here is 18.16; production runs a current LTS. chDB lets the suite run the same
migrations and queries on a current engine too, so version-gated schema code is tested both ways.
"""

from __future__ import annotations

import datetime
import json

from chdb import session


def _literal(value) -> str:
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, datetime.datetime):
        return "'" + value.strftime("%Y-%m-%d %H:%M:%S") + "'"
    if isinstance(value, datetime.date):
        return "'" + value.isoformat() + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_literal(v) for v in value) + "]"
    return repr(value)


def _typed(kind: str):
    """How to turn a JSONCompact value of a ClickHouse type into what clickhouse-driver returns."""
    kind = kind.removeprefix("LowCardinality(").rstrip(")") if kind.startswith("LowCardinality(") else kind
    if kind == "Date":
        return datetime.date.fromisoformat
    if kind.startswith("DateTime"):
        return lambda v: datetime.datetime.strptime(v, "%Y-%m-%d %H:%M:%S")
    if kind.startswith(("UInt", "Int")):
        return int
    if kind.startswith("Float"):
        return float
    return None


class ChdbClient:
    def __init__(self, path: str) -> None:
        from clickhouse_driver import Client

        self.session = session.Session(path)
        self._escaper = Client("localhost")  # never connects: used to substitute %(name)s parameters

    def execute(self, sql: str, params=None, columnar: bool = False, **_):
        if params is not None and sql.rstrip().upper().endswith("VALUES"):
            rows = list(zip(*params)) if columnar else params
            self.session.query(sql + " " + ",".join("(" + ",".join(_literal(v) for v in row) + ")" for row in rows))
            return len(rows)
        if isinstance(params, dict):
            sql = self._escaper.substitute_params(sql, params, self._escaper.connection.context)
        result = self.session.query(sql, "JSONCompact")
        text = result.bytes()
        if not text.strip():
            return []
        body = json.loads(text)
        casts = [_typed(column["type"]) for column in body["meta"]]
        return [tuple(v if cast is None or v is None else cast(v) for v, cast in zip(row, casts))
                for row in body["data"]]

    def close(self) -> None:
        self.session.close()
