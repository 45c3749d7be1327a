"""Enrichment done off the request path: user agents, URL parts, UTM, click id.

IP anonymisation is the collector's, at the door (pixel/scrub.py).

User-agent parsing costs about 3 ms uncached, so parses are cached: a site's traffic has few
distinct user agents compared with its events.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple
from urllib.parse import unquote_plus

from user_agents import parse as parse_ua

from pixel import bots

_UTM = ("utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term")


class Agent(NamedTuple):
    browser: str
    browser_version: str
    os: str
    os_version: str
    device_type: str  # desktop, mobile, tablet, bot, other
    is_bot: int


_NO_AGENT = Agent("", "", "", "", "other", 0)
#: No user agent from a browser's side: no browser (pixel.bots).
NO_BROWSER = Agent("", "", "", "", "bot", 1)


def no_agent(source: object) -> Agent:
    """The agent of an event or click sent without a user agent, from ``source`` (pixel.bots)."""
    return NO_BROWSER if source in bots.BROWSER_SOURCES else _NO_AGENT


def _parse_agent(text: str) -> Agent:
    if not text:
        return _NO_AGENT
    ua = parse_ua(text)
    browser = ua.browser.family
    # pixel.bots decides; ua-parser's crawler flag (ua.is_bot) is its list's, already parsed here.
    is_bot = ua.is_bot or bool(bots.marker(text))
    if is_bot:
        device = "bot"
    elif ua.is_tablet:
        device = "tablet"
    elif ua.is_mobile:
        device = "mobile"
    elif ua.is_pc:
        device = "desktop"
    else:
        device = "other"
    return Agent(
        browser,
        ua.browser.version_string,
        ua.os.family,
        ua.os.version_string,
        device,
        int(is_bot),
    )


def make_agent_parser(cache_size: int):
    """Return a cached user-agent parser (a fresh cache per sink process)."""
    return lru_cache(maxsize=cache_size)(_parse_agent)


class UrlParts(NamedTuple):
    host: str
    path: str
    params: dict[str, str]


EMPTY_URL = UrlParts("", "", {})
_WANTED = frozenset(_UTM) | {"ttclid"}


def split_url(url: str) -> UrlParts:
    """Host, path and the parameters we extract (UTM, ttclid) of a URL.

    A hand-written split: urllib's costs 8-15 us for a URL it has not seen, and the sink sees
    mostly new URLs. Only ``scheme://host/path?query#fragment`` shapes matter here.
    """
    if not url:
        return EMPTY_URL
    start = url.find("://")
    rest = url[start + 3 :] if start != -1 else url
    cut = len(rest)
    for mark in "/?#":
        at = rest.find(mark, 0, cut)
        if at != -1:
            cut = at
    netloc, tail = rest[:cut], rest[cut:]
    hash_at = tail.find("#")
    if hash_at != -1:
        tail = tail[:hash_at]
    path, _, query = tail.partition("?")
    host = netloc.rpartition("@")[2]
    if host.startswith("["):
        host = host[1 : host.find("]")]
    else:
        host = host.partition(":")[0]
    params = _params(query) if ("utm_" in query or "ttclid" in query) else {}
    return UrlParts(host.rstrip(".").lower(), path, params)


def _params(query: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key in _WANTED and key not in found:
            found[key] = unquote_plus(value) if ("%" in value or "+" in value) else value
    return found


def click_id(record_ttclid: str, page: UrlParts, referrer: UrlParts) -> str:
    """TikTok's order: the event's own, the landing URL's, the same-site referrer's."""
    if record_ttclid:
        return record_ttclid
    if "ttclid" in page.params:
        return page.params["ttclid"]
    if referrer.host and referrer.host == page.host:
        return referrer.params.get("ttclid", "")
    return ""


def utm(page: UrlParts) -> tuple[str, ...]:
    return tuple(page.params.get(name, "") for name in _UTM)


def content_ids(props: dict) -> list[str]:
    ids = props.get("content_ids")
    if isinstance(ids, list):
        return [str(i) for i in ids if i is not None]
    contents = props.get("contents")
    if isinstance(contents, list):
        found = [str(c.get("content_id")) for c in contents if isinstance(c, dict) and c.get("content_id")]
        if found:
            return found
    single = props.get("content_id")
    return [str(single)] if single not in (None, "") else []
