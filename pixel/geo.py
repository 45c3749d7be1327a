"""Where a client IP is: its country (ISO 3166-1 alpha-2) and, where the database knows, its region.

Looked up offline, never over the network, by the collector while it still holds the raw IP
(nothing downstream sees one). Two sources:

- the packaged database (``iptocc``: the five Regional Internet Registries' delegations, rebuilt
  nightly and released with the package): countries only, IPv4 and IPv6, in about 0.1 µs. It
  says where a block was *assigned*, which agrees with commercial geolocation for about 95 % of
  IPv4 addresses (iptocc's README);
- a MaxMind DB file (``.mmdb``: MaxMind GeoIP2/GeoLite2 Country or City, DB-IP's lite files) when
  the operator configures one (``CLICKTRAIL_GEOIP_DB``): its country and, for a City file, its
  first subdivision as the region. When set, the file alone answers.

A lookup never raises, whatever the text: an address it cannot place (private, reserved,
malformed, or missing from the database) is ``NOWHERE``, stored as empty strings.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple

from clicktrail.errors import ConfigError

#: The setting's values besides a file path.
PACKAGED = ""  # the default: iptocc's database
OFF = "off"  # no lookup at all: every country and region is ""
#: Codes registries and databases use that are not countries: the EU, Asia/Pacific, unknown.
_NOT_COUNTRIES = frozenset({"EU", "AP", "ZZ", "XX", "A1", "A2", "O1"})
#: Longest region kept (ISO 3166-2 codes are at most 6 characters; names are bounded here).
MAX_REGION = 64
#: Longer text is no IP address: not even handed to the database.
_MAX_IP = 64


class Place(NamedTuple):
    country: str  # ISO 3166-1 alpha-2, upper case, or ""
    region: str  # ISO 3166-2 ("US-CA") when the database has a code, else its English name; or ""


NOWHERE = Place("", "")

Locator = Callable[[str], Place]


def _country(code: object) -> str:
    if code.__class__ is not str or len(code) != 2 or not (code.isascii() and code.isalpha()):
        return ""
    code = code.upper()
    return "" if code in _NOT_COUNTRIES else code


def _unmapped(ip: str) -> str:
    """``::ffff:1.2.3.4`` (an IPv4 client on a dual-stack socket) as the IPv4 address it is."""
    if ip[:7].lower() == "::ffff:" and "." in ip:
        return ip[7:]
    return ip


def _usable(ip: object) -> bool:
    return ip.__class__ is str and 0 < len(ip) <= _MAX_IP


def packaged_locator() -> Locator:
    """Countries from the packaged registry data (iptocc)."""
    from iptocc import country_code

    def locate(ip: str) -> Place:
        if not _usable(ip):
            return NOWHERE
        try:
            # iptocc answers None for text that is no address; a lone surrogate cannot even be
            # encoded for it (UnicodeEncodeError): nowhere, like any other garbage.
            country = _country(country_code(_unmapped(ip)))
        except Exception:
            return NOWHERE
        return Place(country, "") if country else NOWHERE

    return locate


def _region(record: dict, country: str) -> str:
    subdivisions = record.get("subdivisions")
    if subdivisions.__class__ is not list or not subdivisions or subdivisions[0].__class__ is not dict:
        return ""
    first = subdivisions[0]
    code = first.get("iso_code")
    if code.__class__ is str and code and len(code) <= 3 and code.isascii() and code.isalnum():
        return f"{country}-{code.upper()}"
    names = first.get("names")
    name = names.get("en") if names.__class__ is dict else None
    return name[:MAX_REGION] if name.__class__ is str else ""


def file_locator(path: str) -> Locator:
    """Countries and regions from a MaxMind DB file; ``ConfigError`` when it cannot be opened."""
    import maxminddb

    try:
        reader = maxminddb.open_database(path)
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
        raise ConfigError(f"CLICKTRAIL_GEOIP_DB={path!r} is not a readable MaxMind DB (.mmdb) file: "
                          f"{exc}") from None

    def locate(ip: str) -> Place:
        if not _usable(ip):
            return NOWHERE
        try:
            record = reader.get(_unmapped(ip))
        except Exception:  # not an address, or an IPv6 one in an IPv4-only file
            return NOWHERE
        if record.__class__ is not dict:
            return NOWHERE
        found = record.get("country") or record.get("registered_country")
        country = _country(found.get("iso_code")) if found.__class__ is dict else ""
        if not country:
            return NOWHERE
        return Place(country, _region(record, country))

    return locate


def no_locator(ip: str) -> Place:
    return NOWHERE


def open_locator(setting: str) -> Locator:
    """The locator ``CLICKTRAIL_GEOIP_DB`` names: "" the packaged data, "off" none, else a .mmdb path."""
    if setting == PACKAGED:
        return packaged_locator()
    if setting.strip().lower() == OFF:
        return no_locator
    if not os.path.isfile(setting):
        raise ConfigError(f"CLICKTRAIL_GEOIP_DB={setting!r} is no file; set a MaxMind DB (.mmdb) path, "
                          "leave it unset for the packaged country data, or 'off'")
    return file_locator(setting)


def place_records(locate: Locator, records: list) -> None:
    """Set ``country`` and ``region`` on each record (events or touchpoints) from its ``ip``.

    Left out when nothing is known (the sink stores ""), so an unplaced event costs no bytes in
    the stream. A request's records nearly always share one IP: it is looked up once.
    """
    last_ip: object = None
    place = NOWHERE
    for record in records:
        ip = record.get("ip")
        if ip != last_ip:
            last_ip, place = ip, locate(ip) if ip else NOWHERE
        if place.country:
            record["country"] = place.country
            if place.region:
                record["region"] = place.region
