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
#: Words one of which every name ``kind_of_key`` takes for personal data holds (a quick filter:
#: a substring test each, in C, costs less than one case-insensitive regex alternation).
_HINTS = ("mail", "phone", "tel", "mobile", "cell", "msisdn", "ip", "addr", "forward")

_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_TOKENS = re.compile(r"[^a-z0-9]+")
_IPV4 = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}", re.ASCII)

_EMAIL_TOKENS = frozenset(("email", "mail", "emailaddress", "mailaddress", "emails"))
_PHONE_TOKENS = frozenset(("tel", "telephone", "mobile", "mobilenumber", "cell", "cellphone", "msisdn", "phones",
                           "telefon", "telefono", "telefone"))
_IP_JOINED = frozenset(("remoteaddr", "remoteaddress", "xforwardedfor", "forwardedfor", "xrealip"))


def kind_of_key(key: str) -> str | None:
    """What personal data a key (object key or URL parameter name) names: EMAIL, PHONE, IP or None
    (see ``_kind_of``); remembered for the usual short keys."""
    return _kind_of_cached(key) if len(key) <= 128 else _kind_of(key)


def _hinted(text: str) -> bool:
    """Whether ``text`` may hold a parameter name that ``kind_of_key`` takes for personal data."""
    # A name may be percent-encoded ("ph%6Fne"): names are decoded once before they are read.
    lowered = (unquote_plus(text) if "%" in text else text).lower()
    for hint in _HINTS:
        if hint in lowered:
            return True
    return False


def _kind_of(key: str) -> str | None:
    """What personal data a key (object key or URL parameter name) names: EMAIL, PHONE, IP or None.

    The key is split into words (``user_email``, ``userEmail``, ``e-mail`` ->  user, email...):
    a word ``email``/``mail``, or a name ending in ``email``, is an e-mail; a word ``tel``,
    ``mobile``, ``cell``, ``msisdn`` or anything holding ``phone`` is a phone; a last word ``ip``
    (``client_ip``, ``ip``), a name ending in ``ipaddress``, ``remote_addr`` or
    ``x-forwarded-for`` is an IP address. ``hotel``, ``zip`` or ``ip_country`` are none of these.
    """
    words = [w for w in _TOKENS.split(_CAMEL.sub(r"\1_\2", key).lower()) if w]
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


_kind_of_cached = lru_cache(maxsize=8192)(_kind_of)


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


def _params(text: str, anonymize: bool) -> str:
    """``text`` with the values of its ``name=value`` parameters that name personal data hashed."""
    pieces, last = [], 0
    for match in _PARAM_RE.finditer(text):
        name, value = match.group(1), match.group(2)
        if not value:
            continue
        kind = kind_of_key(unquote_plus(name) if "%" in name or "+" in name else name)
        if kind is not None:
            start = match.start(2)
            pieces += (text[last:start], _hash_as(kind, unquote_plus(value), anonymize))
            last = match.end(2)
    return "".join(pieces) + text[last:] if pieces else text


def scrub_text(text: str, anonymize: bool = True) -> str:
    """``text`` with its e-mail addresses, and its ``name=value`` parameters that name personal data, hashed."""
    # Addresses first: a parameter's value is hashed whole, so "mail=#@0.co" hashed the other
    # way round would leave "mail=<hash>", which is no hash, for a second scrub to change.
    if "@" in text or "%40" in text or "%2540" in text:
        # Again until nothing changes: hashing "a@b.co@c.de" once leaves "<hash>@c.de". Ends:
        # each change removes an "@" (or an encoded one), and a hash adds none.
        while True:
            scrubbed = _EMAIL_RE.sub(_email_hash, text)
            if scrubbed == text:
                break
            text = scrubbed
    # Most URLs have parameters, few have one that could name personal data: one scan in C
    # for a word a sensitive name holds spares the parameter-by-parameter pass.
    if "=" in text and _hinted(text):
        text = _params(text, anonymize)
    return text


def scrub(value: Any, anonymize: bool = True, kind: str | None = None) -> Any:
    """``value`` (decoded JSON) with its personal data hashed, its structure (containers, the
    number of keys, list lengths) kept. Containers are changed in place (a string is returned
    anew). ``kind`` is set below a key that names personal data: every string or number there
    is hashed as that kind."""
    cls = value.__class__
    if cls is str:
        if kind is not None:
            return _hash_as(kind, value, anonymize)
        return scrub_text(value, anonymize) if ("=" in value or "@" in value or "%" in value) else value
    if cls is dict:
        _scrub_dict(value, anonymize, kind)
    elif cls is list:
        for index, item in enumerate(value):
            if item.__class__ in _CONTAINERS or (item.__class__ is str or kind is not None):
                value[index] = scrub(item, anonymize, kind)
    elif kind is not None and cls in (int, float):  # a phone number sent as a number
        return _hash_as(kind, repr(value) if cls is float else str(value), anonymize)
    return value


_CONTAINERS = (dict, list)


def _scrub_dict(value: dict, anonymize: bool, kind: str | None) -> None:
    renamed = False
    for key, item in value.items():
        # scrub(), inlined for the usual leaves (short strings, numbers): most properties are
        # those. Replacing a value while iterating is allowed (the keys stay as they are).
        below = kind or kind_of_key(key)
        cls = item.__class__
        if cls is str:
            if below is not None:
                value[key] = _hash_as(below, item, anonymize)
            elif "=" in item or "@" in item or "%" in item:
                value[key] = scrub_text(item, anonymize)
        elif cls is dict:
            _scrub_dict(item, anonymize, below)
        elif cls is list or (below is not None and cls in (int, float)):
            value[key] = scrub(item, anonymize, below)
        renamed = renamed or "@" in key or "=" in key or "%" in key
    if renamed:
        _scrub_keys(value, anonymize)


def _scrub_keys(value: dict, anonymize: bool) -> None:
    items = list(value.items())
    value.clear()
    for key, item in items:
        scrubbed, n = scrub_text(key, anonymize), 0
        # Two keys may scrub alike ("A@b.co", "a@b.co"): the later one gets a hash of its own
        # rather than overwrite the first.
        while scrubbed in value or (scrubbed != key and any(scrubbed == k for k, _ in items)):
            n += 1
            scrubbed = sha256_hex(f"{n}:{key}")
        value[scrubbed] = item


#: Record fields never scrubbed: the client IP is anonymised on its own (and only when the
#: operator wants it); the rest are the collector's own, or SHA-256 hex from the parser.
_OWN_FIELDS = frozenset(("ip", "pixel_id", "source", "email", "phone", "external_id"))


def scrub_record(record: dict, anonymize: bool = True) -> dict:
    """Scrub one queued record (``EventRecord`` or ``TouchRecord``) in place, and return it."""
    for field, value in record.items():
        cls = value.__class__
        if cls is str:
            if ("=" in value or "@" in value or "%" in value) and field not in _OWN_FIELDS:
                record[field] = scrub_text(value, anonymize)
        elif (cls is dict or cls is list) and value and field not in _OWN_FIELDS:
            scrub(value, anonymize, kind_of_key(field))
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
