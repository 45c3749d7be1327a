"""What the sink and the attributor share to write rows: columnar blocks, external tables, counting once.

Both stages insert into ClickHouse; these helpers sit below them both, so neither imports the other.
"""

from __future__ import annotations

from clickhouse_driver import Client

from pixel.records import EventRow, TouchRow


def columns(rows: list[tuple]) -> list[list]:
    """Transpose rows into the column lists clickhouse-driver sends as native blocks."""
    return [list(col) for col in zip(*rows)] if rows else [[] for _ in EventRow._fields]


def external_table(name: str, columns: list[str], rows) -> dict:
    """An external table of String columns sent with a query (rows as tuples: dicts cost more)."""
    return {"name": name, "structure": [(c, "String") for c in columns],
            "data": rows if isinstance(rows, list) else list(rows)}


def count_once(ch: Client, db: str, rows: list[TouchRow]) -> list[TouchRow]:
    """Touchpoint rows with ``counted`` cleared for ids already stored or repeated in ``rows``.

    One primary-key lookup for the whole batch; this is what lets touch_stats count a re-posted
    or re-delivered touchpoint once with a plain sum.
    """
    if not rows:
        return rows
    wanted = {(row.advertiser_id, row.kind, row.touch_id) for row in rows}
    stored = {tuple(r) for r in ch.execute(
        f"SELECT DISTINCT advertiser_id, kind, touch_id FROM {db}.touchpoints "
        "WHERE advertiser_id IN (SELECT DISTINCT advertiser_id FROM _t) AND kind IN ('click', 'impression') "
        "AND touch_id IN (SELECT touch_id FROM _t)",
        external_tables=[external_table("_t", ["advertiser_id", "kind", "touch_id"], wanted)],
    )}
    out = []
    for row in rows:
        key = (row.advertiser_id, row.kind, row.touch_id)
        first = key not in stored
        stored.add(key)
        out.append(row if first == bool(row.counted) else row._replace(counted=int(first)))
    return out
