"""Erasure requests (GDPR art. 17, CCPA deletion): what a request names, and its audit record.

A request names one person of one advertiser by any of their identifiers. Two things are kept
in Redis, apart on purpose:

- the **audit record** (``ct:erasure:<id>``), kept for good: who asked, when, the status, and how
  many rows of each table were removed. It never holds an identifier in any form, hashes
  included: for erasure the hashes *are* the identifiers.
- the **work** (``ct:erasure:<id>:work``): the identifiers, and what the eraser found from them,
  which it needs to resume after a crash. It is deleted when the request is done.

The eraser (attribution/erasure.py) runs inside the attributor, the one writer of credits.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import TypedDict

import orjson
import redis

from clicktrail import keys
from clicktrail.errors import BadRequest

#: Identifier kinds a request may name: the wire name and the events column it matches.
HASHED = {"email": "email_sha256", "phone": "phone_sha256", "external_id": "external_id_sha256"}
BROWSER = "ttp"
KINDS = (*HASHED, BROWSER)
#: Values per kind in one request (one person rarely has more; a list of thousands is not a person).
MAX_VALUES = 20
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_BROWSER_ID = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII, as the collector stores it

PENDING, DONE = "pending", "done"


class Identifiers(TypedDict, total=False):
    email: list[str]
    phone: list[str]
    external_id: list[str]
    ttp: list[str]


class AuditRecord(TypedDict):
    request_id: str
    advertiser_id: str
    requested_by: str  # which token (its id, never the token) or "cli"
    requested_at: str
    status: str
    done_at: str | None
    rows: dict[str, int]


def parse_identifiers(body: object) -> Identifiers:
    """The identifiers of ``{"user": {...}}``; BadRequest naming the field and the rule otherwise."""
    if not isinstance(body, dict) or not isinstance(body.get("user"), dict):
        raise BadRequest("body must be an object with a 'user' object", field="user", code="invalid_field")
    user = body["user"]
    unknown = sorted(set(user) - set(KINDS))
    if unknown:
        raise BadRequest(f"unknown identifier {unknown[0]!r}; use {', '.join(KINDS)}",
                         field=f"user.{unknown[0]}", code="invalid_field")
    found: Identifiers = {}
    for kind in KINDS:
        if kind in user:
            found[kind] = _values(kind, user[kind])  # type: ignore[literal-required]
    if not any(found.values()):
        raise BadRequest(f"name at least one identifier of the person: {', '.join(KINDS)}", field="user",
                         code="invalid_field")
    return found


def _values(kind: str, value: object) -> list[str]:
    field = f"user.{kind}"
    items = value if isinstance(value, list) else [value]
    if not 1 <= len(items) <= MAX_VALUES:
        raise BadRequest(f"{field} must hold 1 to {MAX_VALUES} values", field=field, code="invalid_field")
    out = []
    for item in items:
        if not isinstance(item, str):
            raise BadRequest(f"{field} values must be strings", field=field, code="invalid_field")
        if kind in HASHED:
            if not _SHA256.fullmatch(item):
                raise BadRequest(f"{field} must be the SHA-256 hex (64 characters) of the normalised value, "
                                 "as sent with events; clicktrail stores no raw value to match",
                                 field=field, code="invalid_field")
            item = item.lower()
        elif not _BROWSER_ID.fullmatch(item):
            raise BadRequest(f"{field} must be a browser id (_ttp) of 1 to 128 printable characters",
                             field=field, code="invalid_field")
        out.append(item)
    return sorted(set(out))


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def submit(r: redis.Redis, advertiser_id: str, identifiers: Identifiers, requested_by: str) -> str:
    """Record a request and queue it for the eraser; return its id."""
    request_id = "er_" + secrets.token_hex(12)
    now_ms = time.time_ns() // 1_000_000
    audit = {"request_id": request_id, "advertiser_id": advertiser_id, "requested_by": requested_by,
             "requested_ms": now_ms, "status": PENDING, "done_ms": 0, "rows": {}}
    work = {"advertiser_id": advertiser_id, "identifiers": identifiers, "phase": "new", "requested_ms": now_ms}
    pipe = r.pipeline(transaction=True)
    pipe.set(keys.erasure_audit(request_id), orjson.dumps(audit))
    pipe.set(keys.erasure_work(request_id), orjson.dumps(work))
    pipe.zadd(keys.ERASURE_QUEUE, {request_id: now_ms})
    pipe.execute()
    return request_id


def audit(r: redis.Redis, advertiser_id: str, request_id: str) -> AuditRecord | None:
    """The public record of a request of this advertiser (None for another advertiser's)."""
    raw = r.get(keys.erasure_audit(request_id)) if request_id.startswith("er_") else None
    record = orjson.loads(raw) if raw else None
    if not record or record["advertiser_id"] != advertiser_id:
        return None
    return {"request_id": record["request_id"], "advertiser_id": record["advertiser_id"],
            "requested_by": record["requested_by"], "requested_at": _iso(record["requested_ms"]),
            "status": record["status"], "done_at": _iso(record["done_ms"]) if record["done_ms"] else None,
            "rows": record["rows"]}


def queued(r: redis.Redis, limit: int) -> list[str]:
    """Ids of the oldest requests not yet done."""
    return [m.decode() for m in r.zrange(keys.ERASURE_QUEUE, 0, limit - 1)]


def load_work(r: redis.Redis, request_id: str) -> dict | None:
    raw = r.get(keys.erasure_work(request_id))
    return orjson.loads(raw) if raw else None


def save_work(r: redis.Redis, request_id: str, work: dict) -> None:
    r.set(keys.erasure_work(request_id), orjson.dumps(work))


def finish(r: redis.Redis, request_id: str, rows: dict[str, int]) -> None:
    """Mark done with its counts, and forget the identifiers (the work) in the same transaction."""
    record = orjson.loads(r.get(keys.erasure_audit(request_id)))
    record.update(status=DONE, done_ms=time.time_ns() // 1_000_000, rows=rows)
    pipe = r.pipeline(transaction=True)
    pipe.set(keys.erasure_audit(request_id), orjson.dumps(record))
    pipe.delete(keys.erasure_work(request_id))
    pipe.zrem(keys.ERASURE_QUEUE, request_id)
    pipe.execute()
