"""Turn stream entries into columns for one ClickHouse insert."""

from __future__ import annotations

from typing import NamedTuple

import orjson

from clicktrail.schema import EVENT_COLUMN_NAMES
from sink.enrich import EMPTY_URL, anonymize_ip, click_id, content_ids, make_agent_parser, split_url

_dumps = orjson.dumps

_MAX_U64 = 2**64 - 1


class PoisonEntry(Exception):
    """An entry that can never be stored (undecodable or malformed): it goes to the dead letters."""


class Failure(NamedTuple):
    """One event of an entry that cannot be stored, and why."""

    index: int
    reason: str
    record: object


class RowBuilder:
    """Builds rows from entries, with the enrichment settings of one sink process."""

    def __init__(self, anonymize_ip: bool, ua_cache_size: int) -> None:
        self._anonymize = anonymize_ip
        self._agent = make_agent_parser(ua_cache_size)

    def rows(self, entry_id: bytes, fields: dict) -> tuple[list[tuple], list[int], list[Failure]]:
        """Return the entry's rows (events or touchpoints), their indexes in the entry, and failures.

        Raises ``PoisonEntry`` when the entry itself cannot be decoded.
        """
        try:
            advertiser = fields[b"a"].decode()
            records = orjson.loads(fields[b"d"])
        except (KeyError, ValueError, AttributeError) as exc:
            raise PoisonEntry(f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(records, list):
            raise PoisonEntry("d must be a JSON array of events")
        stream_id = entry_id.decode()
        make = self._touch_row if is_touch_entry(fields) else self._row
        rows, indexes, failures = [], [], []
        for index, record in enumerate(records):
            try:
                rows.append(make(f"{stream_id}/{index}", advertiser, record))
                indexes.append(index)
            except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
                failures.append(Failure(index, f"cannot decode: {type(exc).__name__}: {exc}", record))
        return rows, indexes, failures

    def _row(self, stream_id: str, advertiser: str, r: dict) -> tuple:
        # The hot loop of the sink: plain dict lookups, no helper calls where one will do.
        # Records come from the collector, so types are trusted here; a record that is wrong
        # anyway fails the insert, and the sink isolates it by bisecting the batch.
        get = r.get
        url = get("url") or ""
        referrer = get("referrer") or ""
        page = split_url(url)
        ref = split_url(referrer) if referrer else EMPTY_URL
        ua = get("user_agent") or ""
        agent = self._agent(ua)
        props = get("properties") or {}
        extra = get("extra")
        if get("user_extra"):
            extra = dict(extra or {}, user=r["user_extra"])
        ip = get("ip") or ""
        event_ms = r["event_ms"]
        received_ms = r["received_ms"]
        value = props.get("value")
        params = page.params
        return (
            advertiser,
            r["pixel_id"],
            r["event"],
            r["event_id"],
            event_ms // 1000,
            event_ms,
            get("client_ms") or 0,
            get("sent_ms") or 0,
            received_ms // 1000,
            received_ms,
            r["source"],
            1 if get("id_generated") else 0,
            get("ttp") or "",
            click_id(get("ttclid") or "", page, ref),
            get("email") or "",
            get("phone") or "",
            get("external_id") or "",
            url,
            page.host,
            page.path,
            referrer,
            ref.host,
            params.get("utm_source", "") if params else "",
            params.get("utm_medium", "") if params else "",
            params.get("utm_campaign", "") if params else "",
            params.get("utm_content", "") if params else "",
            params.get("utm_term", "") if params else "",
            float(value) if value.__class__ in (int, float) else 0.0,
            props.get("currency") or "",
            props.get("order_id") or "",
            props.get("content_type") or "",
            content_ids(props) if props else [],
            props.get("query") or props.get("search_string") or "",
            _dumps(props).decode() if props else "{}",
            _dumps(extra).decode() if extra else "",
            (anonymize_ip(ip) if self._anonymize else ip) if ip else "",
            ua,
            *agent,
            get("test_event_code") or "",
            1 if get("limited_data_use") else 0,
            stream_id,
            _MAX_U64 - received_ms,
        )


    def _touch_row(self, stream_id: str, advertiser: str, r: dict) -> tuple:
        """A touchpoint row in ``TOUCH_COLUMN_NAMES`` order (clicks recorded by the redirect)."""
        ip = r.get("ip") or ""
        touch_ms = r["touch_ms"]
        return (
            advertiser,
            r["kind"],
            r["touch_id"],
            touch_ms // 1000,
            touch_ms,
            r["campaign_id"],
            r["adgroup_id"],
            r["ad_id"],
            r.get("browser_id") or "",
            r.get("email") or "",
            r.get("phone") or "",
            r.get("external_id") or "",
            (anonymize_ip(ip) if self._anonymize else ip) if ip else "",
            r.get("user_agent") or "",
            r.get("source") or "redirect",
            r["received_ms"],
            1,  # counted; the sink clears it for a re-delivered click (see Sink._count_once)
        )


def is_touch_entry(fields: dict) -> bool:
    return fields.get(b"k") == b"t"


def columns(rows: list[tuple]) -> list[list]:
    """Transpose rows into the column lists clickhouse-driver sends as native blocks."""
    return [list(col) for col in zip(*rows)] if rows else [[] for _ in EVENT_COLUMN_NAMES]
