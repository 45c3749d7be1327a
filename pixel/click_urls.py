"""Signed click-tracking URLs: ``<public url>/r/<payload>.<signature>``.

The payload names the advertiser, campaign, ad group, ad and landing URL; an HMAC-SHA256 of it
under ``CLICKTRAIL_SECRET_KEY`` makes a tampered or forged URL detectable, so the redirect can
never be used as an open redirect or to book clicks on someone else's ads.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
from werkzeug.urls import iri_to_uri

from clicktrail.errors import BadRequest
from pixel.ids import is_valid_id

_SIG_BYTES = 16  # 128-bit tag: forging one is out of reach, and URLs stay short
FIELDS = {"a": "advertiser", "c": "campaign", "g": "adgroup", "d": "ad", "l": "landing"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: str, payload: bytes) -> bytes:
    return hmac.new(secret.encode(), payload, hashlib.sha256).digest()[:_SIG_BYTES]


def check_landing(landing: str) -> str:
    """The landing URL's host name, or ``BadRequest`` if the redirect could not send a visitor there."""
    problem = f"landing URL {landing!r} must be an absolute http(s) URL"
    try:
        parts = urlsplit(landing)
        parts.port  # noqa: B018 - raises for a port past 65535 or not a number
        # The redirect's Location header is this URL as the redirect writes it (host name to IDNA,
        # the rest percent-encoded): a URL it cannot write is refused now, not at the visitor's click.
        iri_to_uri(add_click_id(landing, "CT.x"))
    except ValueError as exc:  # UnicodeError included (a host name IDNA refuses)
        raise BadRequest(f"{problem} with a port from 1 to 65535 and a valid host name ({exc})",
                         field="landing") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.port == 0:
        raise BadRequest(problem, field="landing")
    return parts.hostname.rstrip(".").lower()


def make_token(secret: str, advertiser: str, campaign: str, adgroup: str, ad: str, landing: str) -> str:
    for name, value in (("advertiser", advertiser), ("campaign", campaign), ("adgroup", adgroup), ("ad", ad)):
        if not is_valid_id(value):
            raise BadRequest(f"{name} {value!r} must be 1-64 letters, digits, '_', '-' or '.'", field=name)
    check_landing(landing)
    payload = orjson.dumps({"a": advertiser, "c": campaign, "g": adgroup, "d": ad, "l": landing})
    return f"{_b64(payload)}.{_b64(_sign(secret, payload))}"


def read_token(secret: str, token: str) -> dict:
    """Return the click's fields, or raise ``BadRequest`` for a tampered or malformed URL."""
    try:
        encoded, _, signature = token.partition(".")
        payload = _unb64(encoded)
        # Compared as written, not as decoded: base64's last character carries spare bits, so
        # several spellings decode alike; only the one make_token writes is this URL.
        valid = _b64(payload) == encoded and hmac.compare_digest(signature.encode(), _b64(_sign(secret, payload)).encode())
    except (ValueError, TypeError):
        valid = False
    if not valid:
        raise BadRequest("click URL is not signed by this clicktrail, or was altered", field="token",
                         code="bad_signature")
    try:
        fields = orjson.loads(payload)
        click = {name: fields[key] for key, name in FIELDS.items()}
    except (orjson.JSONDecodeError, KeyError, TypeError):
        click = None  # signed with this secret, yet not what make_token writes
    if (click is None or not all(isinstance(v, str) for v in click.values())
            or not all(is_valid_id(click[name]) for name in ("advertiser", "campaign", "adgroup", "ad"))):
        raise BadRequest("click URL does not hold a click", field="token", code="bad_token")
    return click


def new_click_id() -> str:
    """A fresh click id (the ``ttclid`` value): 128 random bits, URL-safe."""
    return "CT." + secrets.token_urlsafe(16)


def add_click_id(landing: str, click_id: str) -> str:
    """The landing URL with ``ttclid`` set, its own query and fragment kept."""
    parts = urlsplit(landing)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "ttclid"]
    query.append(("ttclid", click_id))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))
