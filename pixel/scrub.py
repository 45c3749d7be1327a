"""Personal data scrubbed at the door: e-mail addresses, phone numbers and client IPs.

Whatever a client sends may hold personal data in places no column was meant for: a form that
puts ``?email=jane@example.com`` in the page URL, a ``properties.phone``, a custom top-level
``ip_address``. The collector passes every record through ``scrub_record`` before it is queued
(collector/privacy.py), so none of it reaches Redis, the dead letters or ClickHouse. The rules
(documented in docs/operations.md, "Privacy", and docs/wire-format.md):

- an e-mail address anywhere in a string (a URL, a referrer, a property, a custom field, a key)
  becomes the SHA-256 hex of the normalised address, as advanced matching hashes ``user.email``
  (pixel/hashing.py): the same address gives the same hash everywhere;
- the value under a key that names an e-mail, a phone or an IP address (an object key, or a URL
  query or fragment parameter: ``email``, ``e-mail``, ``mail``, ``phone``, ``phone_number``,
  ``tel``, ``mobile``, ``ip_address``... in any case, see ``kind_of_key``) is hashed as that kind
  (IP addresses are anonymised instead, as the ``ip`` column is);
- the record's own ``ip`` is anonymised (``anonymize_ip``) unless the operator turned that off.

Values already SHA-256 hex pass through, so scrubbing is idempotent: the sink may scrub again
what an older collector queued. Phone numbers are recognised by their key only: a free-text
number cannot be told from an order number or a timestamp.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from typing import Any
from urllib.parse import unquote, unquote_plus

import orjson

from pixel.hashing import hash_identifier, is_sha256_hex, sha256_hex

EMAIL, PHONE, IP = "email", "phone", "ip"

#: Characters of an address's local part (RFC 5322's atext and dots), but not ``=``, ``&``, ``/``
#: or ``?``: in a URL those end a parameter or a path segment, which must stay readable.
_LOCAL = r"[\w.!#$%'*+^`{|}~-]"
#: An address: the local part, ``@`` (or its percent-encoded forms, as forms send it), a domain
#: with a top-level name of letters. The look-behind makes a match start only where a run of
#: local-part characters starts, so a long run without ``@`` costs linear time, not quadratic.
_EMAIL_RE = re.compile(
    rf"(?<!{_LOCAL}){_LOCAL}+(?:@|%40|%2540)[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{{2,}}", re.IGNORECASE
)
#: ``name=value`` pairs of a query string or fragment (or of any text written that way). A name
#: starts only at the text's start or after a delimiter: linear time on a long path without one.
_PARAM_RE = re.compile(r"(?<![^?&#;\s])([^?&#;=\s]+)=([^&#;\s]*)")
_AT_MARKS = ("@", "%40", "%2540")
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_TOKENS = re.compile(r"[^a-z0-9]+")
_IPV4 = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}", re.ASCII)

_EMAIL_TOKENS = frozenset(("email", "mail", "emailaddress", "mailaddress", "emails"))
_PHONE_TOKENS = frozenset(("tel", "telephone", "mobile", "mobilenumber", "cell", "cellphone", "msisdn", "phones",
                           "telefon", "telefono", "telefone"))
_IP_JOINED = frozenset(("remoteaddr", "remoteaddress", "xforwardedfor", "forwardedfor", "xrealip"))


@lru_cache(maxsize=8192)
def kind_of_key(key: str) -> str | None:
    """What personal data a key (object key or URL parameter name) names: EMAIL, PHONE, IP or None.

    The key is split into words (``user_email``, ``userEmail``, ``e-mail`` ->  user, email...):
    a word ``email``/``mail``, or a name ending in ``email``, is an e-mail; a word ``tel``,
    ``mobile``, ``cell``, ``msisdn`` or anything holding ``phone`` is a phone; a last word ``ip``
    (``client_ip``, ``ip``), a name ending in ``ipaddress``, ``remote_addr`` or
    ``x-forwarded-for`` is an IP address. ``hotel``, ``zip`` or ``ip_country`` are none of these.
    """
    words = [w for w in _TOKENS.split(_CAMEL.sub(r"\1_\2", key[:128]).lower()) if w]
    if not words:
        return None
    joined = "".join(words)
    if joined.endswith("email") or joined == "mail" or any(w in _EMAIL_TOKENS for w in words):
        return EMAIL
    if "phone" in joined or any(w in _PHONE_TOKENS for w in words):
        return PHONE
    if words[-1] in ("ip", "ips", "ipv4", "ipv6") or joined.endswith("ipaddress") or joined in _IP_JOINED:
        return IP
    return None


def anonymize_ip(text: str) -> str:
    """Zero the host part: /24 of an IPv4 address, /48 of an IPv6 address; "" for what is no IP.

    Idempotent (an anonymised address stays as it is), so the sink may apply it again to what
    the collector already anonymised. Dotted IPv4 needs only string slicing; the ipaddress
    module costs about 15 us a call, more than the rest of a row.
    """
    if not text:
        return ""
    if ":" not in text and _IPV4.fullmatch(text):
        return text[: text.rfind(".")] + ".0"
    return _anonymize_other(text)


@lru_cache(maxsize=16384)
def _anonymize_other(text: str) -> str:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return ""
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


def _hash_as(kind: str, text: str, anonymize: bool) -> str:
    """A value found under a key of ``kind``, made harmless (hashes and "" pass through)."""
    text = text.strip()
    if not text or is_sha256_hex(text):
        return text.lower()
    if kind == IP:
        if not anonymize:
            return text
        return anonymize_ip(text) or sha256_hex(text.lower())  # not an address: still nothing readable
    if kind == PHONE:  # a phone without digits ("n/a", "private") is hashed as text
        return hash_identifier(PHONE, text) or sha256_hex(text.lower())
    return hash_identifier(EMAIL, unquote(text))


def _email_hash(match: re.Match) -> str:
    return sha256_hex(unquote(unquote(match.group())).strip().lower())


def _param(match: re.Match, anonymize: bool) -> str:
    name = match.group(1)
    kind = kind_of_key(unquote_plus(name) if "%" in name or "+" in name else name)
    value = match.group(2)
    if kind is None or not value:
        return match.group()
    return f"{name}={_hash_as(kind, unquote_plus(value), anonymize)}"


def scrub_text(text: str, anonymize: bool = True) -> str:
    """``text`` with its ``name=value`` parameters that name personal data and its e-mail addresses hashed."""
    if "=" in text:
        text = _PARAM_RE.sub(lambda m: _param(m, anonymize), text)
    if "@" in text or "%40" in text or "%2540" in text:
        # Again until nothing changes: hashing "a@b.co@c.de" once leaves "<hash>@c.de". Ends:
        # each change removes an "@" (or an encoded one), and a hash adds none.
        while True:
            scrubbed = _EMAIL_RE.sub(_email_hash, text)
            if scrubbed == text:
                break
            text = scrubbed
    return text


def _needs_scrub(text: str) -> bool:
    return "=" in text or any(mark in text for mark in _AT_MARKS)


def scrub(value: Any, anonymize: bool = True, kind: str | None = None) -> Any:
    """``value`` (decoded JSON) with its personal data hashed; the structure (containers, keys,
    list lengths) is kept. ``kind`` is set below a key that names personal data: every string or
    number there is hashed as that kind. Returns ``value`` itself when nothing changed."""
    cls = value.__class__
    if cls is str:
        if kind is not None:
            return _hash_as(kind, value, anonymize)
        return scrub_text(value, anonymize) if _needs_scrub(value) else value
    if cls is dict:
        return _scrub_dict(value, anonymize, kind)
    if cls is list:
        return [scrub(item, anonymize, kind) for item in value]
    if kind is not None and cls in (int, float):  # a phone number sent as a number
        return _hash_as(kind, repr(value) if cls is float else str(value), anonymize)
    return value


def _scrub_dict(value: dict, anonymize: bool, kind: str | None) -> dict:
    out = {}
    for key, item in value.items():
        if key.__class__ is str and _needs_scrub(key):
            scrubbed, n = scrub_text(key, anonymize), 0
            # Two keys may scrub alike ("A@b.co", "a@b.co"): the later one gets a hash of its
            # own rather than overwrite the first.
            while scrubbed in out or (scrubbed != key and scrubbed in value):
                n += 1
                scrubbed = sha256_hex(f"{n}:{key}")
            key = scrubbed
        out[key] = scrub(item, anonymize, kind or (kind_of_key(key) if key.__class__ is str else None))
    return out


#: Record fields never scrubbed as text: the client IP is anonymised on its own (and only when
#: the operator wants it), the rest are set by the collector, not by the client.
_OWN_FIELDS = frozenset(("ip", "pixel_id", "source", "received_ms", "event_ms", "client_ms", "sent_ms",
                         "id_generated", "limited_data_use", "touch_ms", "kind"))


def scrub_record(record: dict, anonymize: bool = True) -> dict:
    """Scrub one queued record (``EventRecord`` or ``TouchRecord``) in place, and return it."""
    for field, value in record.items():
        if field in _OWN_FIELDS or value.__class__ in (int, float, bool) or value is None:
            continue
        if value.__class__ is str:
            if _needs_scrub(value):
                record[field] = scrub_text(value, anonymize)
        else:
            record[field] = scrub(value, anonymize, kind_of_key(field))
    ip = record.get("ip")
    if anonymize and ip:
        record["ip"] = anonymize_ip(ip) if ip.__class__ is str else ""
    return record


#: A dotted IPv4 address standing alone (not part of a longer dotted number such as a version).
_IPV4_IN_TEXT = re.compile(r"(?<![0-9.])[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?![0-9.])", re.ASCII)


def scrub_opaque(text: str, anonymize: bool = True) -> str:
    """Text whose structure is unknown (an entry that does not decode): e-mail addresses and
    parameters as ``scrub_text``, and every dotted IPv4 address anonymised (when on), as nothing
    tells a client's address from another there."""
    text = scrub_text(text, anonymize)
    if anonymize:
        text = _IPV4_IN_TEXT.sub(lambda m: anonymize_ip(m.group()), text)
    return text


def scrub_records_json(data: bytes, anonymize: bool = True) -> bytes:
    """The JSON array of records an entry holds (its DATA), scrubbed; what does not decode as
    JSON, or nests too deep to walk, is scrubbed as opaque text. For the sink's dead letters,
    which may hold what an older collector queued raw."""
    try:
        decoded = orjson.loads(data)
        if decoded.__class__ is list:
            return orjson.dumps([scrub_record(dict(r), anonymize) if r.__class__ is dict else scrub(r, anonymize)
                                 for r in decoded])
    except (orjson.JSONDecodeError, orjson.JSONEncodeError, RecursionError):
        pass
    return scrub_opaque(data.decode("utf-8", "surrogateescape"), anonymize).encode("utf-8", "surrogateescape")
