"""Turn stream entries into columns for one ClickHouse insert."""

from __future__ import annotations

from datetime import datetime, timezone

import orjson

from clicktrail.schema import EVENT_COLUMN_NAMES
from sink import enrich

_MAX_U64 = 2**64 - 1
_UTC = timezone.utc


class PoisonEntry(Exception):
    """An entry that can never be stored (undecodable or malformed): it goes to the dead letters."""


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms // 1000, _UTC).replace(tzinfo=None)


def _text(value) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


class RowBuilder:
    """Builds rows from entries, with the enrichment settings of one sink process."""

    def __init__(self, anonymize_ip: bool, ua_cache_size: int) -> None:
        self._anonymize = anonymize_ip
        self._agent = enrich.make_agent_parser(ua_cache_size)

    def row(self, entry_id: bytes, fields: dict) -> tuple:
        """Return one row in ``EVENT_COLUMN_NAMES`` order, or raise ``PoisonEntry``."""
        try:
            advertiser = fields[b"a"].decode()
            record = orjson.loads(fields[b"d"])
            return self._row(entry_id.decode(), advertiser, record)
        except (KeyError, ValueError, TypeError, AttributeError, OverflowError) as exc:
            raise PoisonEntry(f"{type(exc).__name__}: {exc}") from exc

    def _row(self, stream_id: str, advertiser: str, r: dict) -> tuple:
        page = enrich.split_url(_text(r.get("url")))
        ref = enrich.split_url(_text(r.get("referrer")))
        agent = self._agent(_text(r.get("user_agent")))
        props = r.get("properties") or {}
        if not isinstance(props, dict):
            raise TypeError("properties must be an object")
        extra = dict(r.get("extra") or {})
        if r.get("user_extra"):
            extra["user"] = r["user_extra"]
        ip = _text(r.get("ip"))
        event_ms = int(r["event_ms"])
        received_ms = int(r["received_ms"])
        value = props.get("value")
        return (
            advertiser,
            r["pixel_id"],
            r["event"],
            r["event_id"],
            _dt(event_ms),
            event_ms,
            int(r.get("client_ms") or 0),
            int(r.get("sent_ms") or 0),
            _dt(received_ms),
            received_ms,
            r["source"],
            int(bool(r.get("id_generated"))),
            _text(r.get("ttp")),
            enrich.click_id(_text(r.get("ttclid")), page, ref),
            _text(r.get("email")),
            _text(r.get("phone")),
            _text(r.get("external_id")),
            _text(r.get("url")),
            page.host,
            page.path,
            _text(r.get("referrer")),
            ref.host,
            *enrich.utm(page),
            float(value) if isinstance(value, (int, float)) else 0.0,
            _text(props.get("currency")),
            _text(props.get("order_id")),
            _text(props.get("content_type")),
            enrich.content_ids(props),
            _text(props.get("query") or props.get("search_string")),
            orjson.dumps(props).decode(),
            orjson.dumps(extra).decode() if extra else "",
            enrich.anonymize_ip(ip) if self._anonymize else ip,
            _text(r.get("user_agent")),
            *agent,
            _text(r.get("test_event_code")),
            int(bool(r.get("limited_data_use"))),
            stream_id,
            _MAX_U64 - received_ms,
        )


def columns(rows: list[tuple]) -> list[list]:
    """Transpose rows into the column lists clickhouse-driver sends as native blocks."""
    return [list(col) for col in zip(*rows)] if rows else [[] for _ in EVENT_COLUMN_NAMES]
