"""Advanced matching: normalise identifiers, then SHA-256 them, as TikTok does.

Raw email addresses and phone numbers must never reach storage. Browsers hash before sending;
the collector hashes whatever arrives unhashed (a server caller that forgot to) before it is
queued, so the raw value never leaves the request.
"""

from __future__ import annotations

import hashlib
import re

_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
# ASCII digits only, as the pixel's /\D/g does: the same number must hash alike from both sides.
_NON_DIGITS = re.compile(r"\D+", re.ASCII)
#: E.164 allows at most 15 digits.
MAX_PHONE_DIGITS = 15


def is_sha256_hex(value: str) -> bool:
    return bool(_SHA256_HEX.fullmatch(value))


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def normalize_email(value: str) -> str:
    return value.strip().lower()


def normalize_phone(value: str) -> str:
    """E.164 with the ``+``: keep the digits, prefix ``+``, at most 15 digits (TikTok's rule)."""
    digits = _NON_DIGITS.sub("", value)[:MAX_PHONE_DIGITS]
    return "+" + digits if digits else ""


def normalize_external_id(value: str) -> str:
    # TikTok's own template trims but does not lowercase external ids: ids may be case-sensitive.
    return value.strip()


NORMALIZERS = {
    "email": normalize_email,
    "phone": normalize_phone,
    "external_id": normalize_external_id,
}


def hash_identifier(kind: str, value: str) -> str:
    """Return the SHA-256 hex of a normalised identifier; pre-hashed values pass through.

    Returns "" for an empty value (nothing to match on).
    """
    value = value.strip()
    if not value:
        return ""
    if is_sha256_hex(value):
        return value.lower()
    normalized = NORMALIZERS[kind](value)
    return sha256_hex(normalized) if normalized else ""
