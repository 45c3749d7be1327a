"""Which user agents are bots (pixel/bots.py): a table of real user agents, and properties."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from pixel import bots
from sink.enrich import NO_BROWSER, make_agent_parser, no_agent

CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/120.0.0.0 Safari/537.36")
IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
          "Version/17.0 Mobile/15E148 Safari/604.1")

#: (user agent, whether it is a bot's): every entry of bots.MARKERS has at least one example here.
TABLE = [
    # Headless and scripted browsers.
    ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 "
     "Safari/537.36", True),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 "
     "Safari/537.36 HeadlessEdg/120.0.0.0", True),
    ("Mozilla/5.0 (Unknown; Linux x86_64) AppleWebKit/538.1 (KHTML, like Gecko) PhantomJS/2.1.1 Safari/538.1",
     True),
    ("Mozilla/5.0 (Windows NT 6.1; rv:38.0) Gecko/20100101 SlimerJS/0.10.0", True),
    ("Mozilla/5.0 (Linux; Android 7.0; Moto G (4)) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.0.0 "
     "Mobile Safari/537.36 Chrome-Lighthouse", True),
    # Crawlers: ua-parser's list, and those it misses.
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", True),
    ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", True),
    ("Mozilla/5.0 (compatible; Bytespider; spider-feedback@bytedance.com)", True),
    ("facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)", True),
    ("AdsBot-Google (+http://www.google.com/adsbot.html)", True),
    ("Mozilla/5.0 (compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)", True),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/13.1.1 "
     "Safari/605.1.15 (Applebot/0.1; +http://www.apple.com/go/applebot)", True),
    ("Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/131.0.0.0 Mobile Safari/537.36 (compatible; Google-InspectionTool/1.0;)", True),
    # Command-line clients and HTTP libraries.
    ("curl/8.5.0", True),
    ("Wget/1.21.4", True),
    ("HTTPie/3.2.2", True),
    ("PostmanRuntime/7.36.0", True),
    ("insomnia/8.4.0", True),
    ("python-requests/2.31.0", True),
    ("Python-urllib/3.11", True),
    ("python-urllib3/2.0.7", True),
    ("python-httpx/0.25.0", True),
    ("Python/3.11 aiohttp/3.9.1", True),
    ("Go-http-client/1.1", True),
    ("Go-http-client/2.0", True),
    ("okhttp/4.12.0", True),
    ("Java/17.0.2", True),
    ("Apache-HttpClient/4.5.13 (Java/11.0.20)", True),
    ("libwww-perl/6.72", True),
    ("node-fetch/1.0 (+https://github.com/bitinn/node-fetch)", True),
    ("axios/1.6.0", True),
    ("undici", True),
    ("GuzzleHttp/7", True),
    ("Ruby", True),
    ("Faraday v2.7.4", True),
    ("Dart/3.1 (dart:io)", True),
    ("Scrapy/2.11.0 (+https://scrapy.org)", True),
    # People: desktop and mobile browsers, in-app browsers, a phone maker whose name ends in "bot".
    (CHROME, False),
    (IPHONE, False),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0", False),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 "
     "Safari/537.36 Edg/120.0.2210.91", False),
    ("Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
     "SamsungBrowser/23.0 Chrome/115.0.0.0 Mobile Safari/537.36", False),
    ("Mozilla/5.0 (Linux; Android 13; SM-S908B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/112.0.0.0 Mobile "
     "Safari/537.36 musical_ly_2022803040 JsSdk/1.0 NetType/WIFI Channel/googleplay AppName/musical_ly "
     "app_version/28.3.4 ByteLocale/en ByteFullLocale/en Region/US BytedanceWebview/d8a21c6", False),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "Mobile/15E148 [FBAN/FBIOS;FBAV/431.0.0.38.108]", False),
    ("Mozilla/5.0 (Linux; Android 9; CUBOT X19) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/90.0.4430.91 "
     "Mobile Safari/537.36", False),
]


@pytest.mark.parametrize("user_agent, expected", TABLE)
def test_the_table(user_agent, expected):
    assert bots.is_bot_agent(user_agent) is expected
    for source in ("browser", "image", "redirect", "server", "import"):
        assert bots.is_bot(user_agent, source) is expected  # a user agent judges alike from any source


def test_every_listed_marker_has_a_reason_and_an_example_in_the_table():
    for pattern, why in bots.MARKERS:
        assert len(why) > 15, pattern
        examples = [ua for ua, is_bot in TABLE if is_bot and re.search(pattern, ua, re.IGNORECASE)]
        assert examples, f"no example of {pattern!r} in TABLE"
    # ...and no person's browser matches any of them.
    assert not [ua for ua, is_bot in TABLE if not is_bot and bots.marker(ua)]


@pytest.mark.parametrize("source, expected", [
    ("browser", True), ("image", True), ("redirect", True),  # every browser sends a user agent
    ("server", False), ("import", False),  # servers forward what they know; many know no user agent
])
def test_no_user_agent_is_a_bot_only_from_a_browsers_side(source, expected):
    assert bots.is_bot("", source) is expected
    assert no_agent(source).is_bot == int(expected)
    assert (no_agent(source) == NO_BROWSER) is expected


_VERSION = st.builds("{}.{}.{}.{}".format, *[st.integers(0, 999)] * 4)
_PEOPLE = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v} Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{v} "
    "Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{v} "
    "Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; {device}) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v} Mobile "
    "Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/{v}",
]
_LIBRARIES = ["curl/{v}", "Wget/{v}", "python-requests/{v}", "Go-http-client/{v}", "okhttp/{v}", "Java/{v}",
              "libwww-perl/{v}", "Python/3.12 aiohttp/{v}", "Apache-HttpClient/{v} (Java/17)", "axios/{v}"]
_HEADLESS = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/{v} Safari/537.36"


@hsettings(max_examples=200, deadline=None)
@given(st.sampled_from(_PEOPLE), _VERSION, st.from_regex(r"[A-Z]{2}-[A-Z][0-9]{3}[A-Z]?", fullmatch=True))
def test_peoples_browsers_of_any_version_and_device_are_not_bots(template, version, device):
    assert not bots.is_bot_agent(template.format(v=version, device=device))


@hsettings(max_examples=200, deadline=None)
@given(st.sampled_from(_LIBRARIES + [_HEADLESS]), _VERSION, st.sampled_from(["", " (linux)", " extra/1.0"]))
def test_libraries_and_headless_browsers_of_any_version_are_bots(template, version, tail):
    assert bots.is_bot_agent(template.format(v=version) + tail)


_parse = make_agent_parser(1024)


@hsettings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), st.sampled_from([ua for ua, _ in TABLE]).flatmap(
    lambda ua: st.builds(lambda a, b: a + ua + b, st.text(max_size=8), st.text(max_size=8)))),
    st.sampled_from(["browser", "image", "redirect", "server", "import"]))
def test_any_text_gets_an_answer_and_the_sink_agrees(user_agent, source):
    """Whatever the text, an answer and no exception; the sink's device_type and is_bot say the same."""
    answer = bots.is_bot(user_agent, source)
    assert isinstance(answer, bool)
    agent = _parse(user_agent) if user_agent else no_agent(source)
    assert agent.is_bot == int(answer)
    assert (agent.device_type == "bot") is answer
