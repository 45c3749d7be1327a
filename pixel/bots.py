"""Which user agents are bots: crawlers, headless browsers and plain HTTP libraries.

Bots are stored like everyone else and flagged (``events.is_bot``, ``touchpoints.is_bot``);
only counting leaves them out (docs/attribution.md, "Bots"): a bot's click is no touchpoint and
no click in reports or the feed, a bot's conversion is credited to nothing. One decision for
every stage: the collector asks here whether a click is a bot's (its click cache entry says so),
the sink whether an event or a click is.

Three kinds of sender are bots:

- crawlers, by ua-parser's maintained list (its device family ``Spider``: Googlebot, bingbot,
  Bytespider, facebookexternalhit, uptime monitors, Scrapy...), plus the few it misses, below;
- headless browsers: a real engine that no person looks at (Puppeteer, Playwright, Selenium);
- plain HTTP libraries and command-line clients: they fetch a URL and run no page, so no person
  saw the ad's landing page. A ``curl`` of a click URL is a link checker or a script, not a click.

An empty user agent is a bot's when it reached us from a browser's side (a pixel request or a
click redirect): every browser sends one. A server event with none is not a bot's: servers
forward what they know of the visitor, and many know no user agent; the sending server's own
user agent (``python-requests/...``) is never the visitor's and is never read.
"""

from __future__ import annotations

import re
from functools import lru_cache

from ua_parser import user_agent_parser

#: (regular expression, case-insensitive, searched anywhere in the user agent; why it is a bot).
#: Tokens that also occur inside real browsers' user agents are anchored at the start.
MARKERS: tuple[tuple[str, str], ...] = (
    # Headless and scripted browsers: a real engine, no person looking at the page.
    (r"headless", "HeadlessChrome, HeadlessEdg: Chromium run without a window by Puppeteer, Playwright or Selenium"),
    (r"phantomjs", "PhantomJS: a scriptable headless WebKit, used for scraping and ad fraud"),
    (r"slimerjs", "SlimerJS: a scriptable Gecko, PhantomJS's counterpart"),
    (r"lighthouse", "Lighthouse and PageSpeed Insights: Google's page audits load pages (and pixels) headless"),
    # Crawlers ua-parser's list misses.
    (r"applebot", "Applebot: Apple's crawler, which borrows Safari's user agent"),
    (r"google-inspectiontool", "Google Search Console's URL inspection crawler"),
    # Command-line clients: a person or a script fetching a URL, never a page view.
    (r"^curl/", "curl: a command-line fetch (link checkers, scripts, someone testing a click URL)"),
    (r"^wget/", "Wget: a command-line download"),
    (r"^httpie/", "HTTPie: a command-line client for APIs"),
    (r"^postmanruntime/", "Postman: an API testing tool"),
    (r"^insomnia/", "Insomnia: an API testing tool"),
    # HTTP libraries: a program fetching a URL; none runs a page.
    (r"python-requests/", "requests: Python's most used HTTP library"),
    (r"python-urllib", "urllib and urllib3: Python's standard and low-level HTTP libraries"),
    (r"python-httpx/", "httpx: a Python HTTP library"),
    (r"aiohttp/", "aiohttp: Python's asyncio HTTP client (sends Python/3.x aiohttp/3.x)"),
    (r"^go-http-client/", "Go's net/http client, as Go programs send it by default"),
    (r"^okhttp/", "OkHttp alone (not inside a WebView's user agent): an Android app's or a JVM program's fetch"),
    (r"^java/", "Java's built-in HTTP client (HttpURLConnection)"),
    (r"^apache-httpclient/", "Apache HttpClient: a JVM HTTP library"),
    (r"^libwww-perl/", "LWP: Perl's HTTP library"),
    (r"^node-fetch", "node-fetch: a Node.js HTTP library"),
    (r"^axios/", "axios: a JavaScript HTTP library (in Node; browsers send their own user agent)"),
    (r"^undici", "undici: Node.js's built-in fetch"),
    (r"^guzzlehttp/", "Guzzle: PHP's most used HTTP library"),
    (r"^ruby$", "Ruby's Net::HTTP"),
    (r"^faraday ", "Faraday: a Ruby HTTP library"),
    (r"^dart/.*dart:io", "Dart's dart:io HttpClient (a Flutter app's fetch, not its WebView)"),
    (r"^scrapy/", "Scrapy: a Python crawling framework"),
)

_MARKERS = re.compile("|".join(f"(?:{pattern})" for pattern, _ in MARKERS), re.IGNORECASE)

#: Sources whose requests come from the visitor's own browser (events.source, touchpoints.source):
#: from these, no user agent at all means no browser. (A tuple: ``in`` compares, never hashes, so
#: a malformed record's value is simply not one of them.)
BROWSER_SOURCES = ("browser", "image", "redirect")


def marker(user_agent: str) -> str:
    """The first of ``MARKERS`` the user agent matches (its text as matched), or ``""``."""
    found = _MARKERS.search(user_agent)
    return found.group(0) if found else ""


def is_crawler(user_agent: str) -> bool:
    """Whether ua-parser's maintained list names it a crawler (its device family ``Spider``)."""
    return user_agent_parser.ParseDevice(user_agent)["family"] == "Spider"


@lru_cache(maxsize=8192)
def is_bot_agent(user_agent: str) -> bool:
    """Whether a (non-empty) user agent is a bot's: listed in ``MARKERS`` or a known crawler.

    Cached: ua-parser costs about 0.3 ms a call, and a site sees few distinct user agents.
    """
    return bool(_MARKERS.search(user_agent)) or is_crawler(user_agent)


def is_bot(user_agent: str, source: str) -> bool:
    """Whether a request with this user agent, from this source, is a bot's.

    ``source`` is ``browser``, ``image`` or ``redirect`` (the visitor's own browser asked) or
    ``server`` / ``import`` (a server forwarded it): an empty user agent is a bot's only from the first.
    """
    if not user_agent:
        return source in BROWSER_SOURCES
    return is_bot_agent(user_agent)
