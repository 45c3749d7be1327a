"""Identifiers: pixel ids, API tokens, event ids."""

from __future__ import annotations

import hashlib
import re
import secrets

_PIXEL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
#: Ids given by users (advertisers, campaigns, pixels): safe in URLs, logs and SQL literals.
ID_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
TOKEN_PREFIX = "ctk_"


def new_pixel_id() -> str:
    """Return a new pixel id shaped like TikTok's pixel codes: 20 upper-case letters and digits."""
    return "C" + "".join(secrets.choice(_PIXEL_ALPHABET) for _ in range(19))


def new_token() -> str:
    """Return a new API token (about 240 bits of randomness)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(30)


def token_hash(token: str) -> str:
    """Return the SHA-256 hex under which a token is stored; tokens themselves are never stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and bool(ID_PATTERN.match(value))
