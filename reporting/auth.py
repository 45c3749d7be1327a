"""Bearer-token authentication for the API: a token's advertiser is the only data it can see."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import wraps

import redis
from flask import current_app, g, request

from clicktrail.errors import BufferUnavailable, Forbidden, Unauthorized
from pixel import ids
from pixel.registry import lookup_token


@dataclass(frozen=True)
class Caller:
    advertiser_id: str
    scopes: tuple[str, ...]
    token_id: str = ""  # the first hex digits of the token's hash: names it in audit records, never reveals it


def _bearer() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send the token as 'Authorization: Bearer <token>'", field="Authorization",
                           code="missing_token")
    return token.strip()


#: Seconds a token lookup is reused by this process: an optimizer polling every second costs one
#: Redis round trip per poll instead of two. A token removed from Redis stops working this late.
TOKEN_CACHE_S = 5.0
_TOKEN_CACHE_SIZE = 10_000
_tokens: dict[str, tuple[float, dict | None]] = {}


def _lookup(token: str) -> dict | None:
    now = time.monotonic()
    hit = _tokens.get(token)
    if hit is not None and hit[0] > now:
        return hit[1]
    try:
        record = lookup_token(current_app.extensions["clicktrail.api"].redis, token)
    except redis.RedisError as exc:
        raise BufferUnavailable("the token store is unavailable; retry later") from exc
    if record is not None:  # unknown tokens are not kept: a guessing client cannot fill the cache
        if len(_tokens) >= _TOKEN_CACHE_SIZE:
            _tokens.clear()
        _tokens[token] = (now + TOKEN_CACHE_S, record)
    return record


def token_id(token: str) -> str:
    return "token:" + ids.token_hash(token)[:12]


def require(scope: str):
    """Decorator: the request must carry a token with ``scope``; sets ``g.caller``."""

    def decorate(view):
        @wraps(view)
        def wrapped(*args, **kwargs):
            token = _bearer()
            record = _lookup(token)
            if record is None:
                raise Unauthorized("the token is not valid", field="Authorization", code="bad_token")
            if scope not in record["scopes"]:
                raise Forbidden(f"the token lacks the {scope!r} scope", field="Authorization", code="token_scope")
            g.caller = Caller(record["advertiser_id"], tuple(record["scopes"]), token_id(token))
            return view(*args, **kwargs)

        return wrapped

    return decorate
