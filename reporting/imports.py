"""Bulk import of clicks and impressions from ad servers: ``POST /v1/clicks``, ``POST /v1/impressions``.

Rows go straight into ClickHouse (an import is not a hot path, and a 200 then means stored),
then the attributor is told, so conversions that arrived before their click are restated.
Re-posting a row is harmless: the latest copy of a touchpoint id replaces the earlier one.
A row's ``user.email``/``phone``/``external_id`` may each be a list (pixel/touchpoints.py): the
first value fills the touchpoint's single column, every value its list column (emails_sha256...),
which a view indexes into touch_identities.
"""

from __future__ import annotations

import time

import redis
from flask import Blueprint, g, jsonify

from pixel import click_cache, touchpoints
from reporting.batches import rows_of
from reporting.context import api_services, json_body
from reporting.auth import require
from clicktrail.clickhouse import NETWORK_ERRORS
from clicktrail.inserts import columns, count_once
from clicktrail.errors import BufferUnavailable, StorageError
from clicktrail.schema import TOUCH_COLUMN_NAMES
from pixel import records

bp = Blueprint("imports", __name__)


def _store(touches: list[touchpoints.Touch]) -> None:
    svc = api_services()
    now_ms = time.time_ns() // 1_000_000
    sql = f"INSERT INTO {svc.database}.touchpoints ({', '.join(TOUCH_COLUMN_NAMES)}) VALUES"
    try:
        ch = svc.clickhouse.get()
        rows = count_once(ch, svc.database, [t.row(now_ms) for t in touches])
        ch.execute(sql, columns(rows), columnar=True)
    except NETWORK_ERRORS as exc:
        svc.clickhouse.get().disconnect()
        raise StorageError("storage is unavailable; retry later (re-posting rows is harmless)") from exc
    notice = records.encode_notice(g.caller.advertiser_id, records.NOTICE_TOUCHES, [records.touch_key(t) for t in touches])
    try:
        pipe = svc.redis.pipeline(transaction=False)
        click_cache.put(pipe, touches, time.time())
        pipe.xadd(records.notice_stream(g.caller.advertiser_id, svc.settings.attributor.partitions), notice,
                  maxlen=1_000_000, approximate=True)
        pipe.execute()
    except redis.RedisError as exc:
        # Stored but the attributor was not told: ask for a re-post, which is harmless.
        raise BufferUnavailable("could not schedule attribution; retry later (re-posting rows is harmless)") from exc


def _import(collection: str):
    rows = rows_of(json_body(), collection)
    touches, rejections = touchpoints.parse_rows(collection, rows, g.caller.advertiser_id, time.time())
    if touches:
        _store(touches)
    result = {"accepted": len(touches), "rejected": [r.to_dict() for r in rejections]}
    return jsonify(result), 200 if touches else 400


@bp.post("/v1/clicks")
@require("adserver")
def import_clicks():
    return _import("clicks")


@bp.post("/v1/impressions")
@require("adserver")
def import_impressions():
    return _import("impressions")
