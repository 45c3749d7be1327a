"""Objects an advertiser owns (scheduled reports, alert rules), kept as JSON in one Redis hash by id.

One place for the tenancy rule of such objects: another advertiser's is as absent as one that
never was, so the API answers 404 for both and never tells that an id exists.
"""

from __future__ import annotations

import json


def save(r, key: str, obj: dict) -> None:
    r.hset(key, obj["id"], json.dumps(obj))


def load(r, key: str, advertiser_id: str, obj_id: str) -> dict | None:
    raw = r.hget(key, obj_id)
    obj = json.loads(raw) if raw else None
    return obj if obj and obj["advertiser_id"] == advertiser_id else None


def every(r, key: str) -> list[dict]:
    return [json.loads(raw) for raw in r.hvals(key)]
