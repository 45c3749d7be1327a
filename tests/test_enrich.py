"""Enrichment helpers against the standard library's answers."""

from urllib.parse import parse_qs, urlsplit

import pytest

from pixel.scrub import anonymize_ip
from sink.enrich import split_url

URLS = [
    "https://www.shop.example/thanks?utm_source=tiktok&utm_campaign=spring%20sale&ttclid=E.C.P.x#top",
    "http://user:pw@Shop.Example:8080/a/b?x=1&utm_medium=paid+social",
    "https://shop.example",
    "https://shop.example?utm_term=a&utm_term=b",
    "https://[2001:db8::1]:8443/p?ttclid=abc",
    "https://shop.example/#/route?utm_source=hash-only",
    "https://shop.example./trailing-dot",
]


@pytest.mark.parametrize("url", URLS)
def test_split_url_agrees_with_urllib(url):
    parts = split_url(url)
    expected = urlsplit(url)
    assert parts.host == (expected.hostname or "").rstrip(".")
    assert parts.path == expected.path
    wanted = {k: v[0] for k, v in parse_qs(expected.query).items() if k.startswith("utm_") or k == "ttclid"}
    assert parts.params == wanted


@pytest.mark.parametrize("ip, anonymised", [
    ("203.0.113.77", "203.0.113.0"),
    ("10.0.0.1", "10.0.0.0"),
    ("2001:db8:abcd:12:1::5", "2001:db8:abcd::"),
    ("::1", "::"),
    ("", ""),
])
def test_ips_are_cut_to_their_network(ip, anonymised):
    assert anonymize_ip(ip) == anonymised
