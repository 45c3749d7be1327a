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
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_literal(v) for v in value) + "]"
    return repr(value)


class ChdbClient:
    def __init__(self, path: str) -> None:
        self.session = session.Session(path)

    def execute(self, sql: str, params=None, columnar: bool = False, **_):
        if params is not None and sql.rstrip().upper().endswith("VALUES"):
            rows = list(zip(*params)) if columnar else params
            self.session.query(sql + " " + ",".join("(" + ",".join(_literal(v) for v in row) + ")" for row in rows))
            return len(rows)
        result = self.session.query(sql, "JSONCompact")
        text = result.bytes()
        if not text.strip():
            return []
        return [tuple(row) for row in json.loads(text)["data"]]

    def close(self) -> None:
        self.session.close()
