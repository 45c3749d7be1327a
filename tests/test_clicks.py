"""The click redirect: signed URLs, recorded clicks, no open redirect."""

import subprocess
import sys
from urllib.parse import parse_qs, urlsplit

import pytest

from attribution.click_urls import make_token
from tests.conftest import query_dicts
from tests.servers import env_for


@pytest.fixture
def click_url(settings, tenant):
    def make(landing="https://www.shop.example/spring?color=red#reviews", advertiser="adv-1"):
        proc = subprocess.run(
            [sys.executable, "-m", "clicktrail.cli", "click-url", "--advertiser", advertiser, "--campaign", "cmp-1",
             "--adgroup", "grp-1", "--ad", "ad-1", "--landing", landing],
            env=env_for(settings, PUBLIC_URL="https://t.shop.example"), capture_output=True, text=True, timeout=60)
        return proc
    return make


def test_click_is_recorded_and_the_visitor_lands_with_ttclid(client, click_url, sink, ch, ch_database, r):
    printed = click_url()
    assert printed.returncode == 0, printed.stderr
    url = printed.stdout.strip()
    assert url.startswith("https://t.shop.example/r/")
    resp = client.get(urlsplit(url).path, headers={"User-Agent": "Mozilla/5.0 Test"},
                      environ_base={"REMOTE_ADDR": "198.51.100.23"})
    assert resp.status_code == 302
    location = urlsplit(resp.headers["Location"])
    assert (location.scheme, location.netloc, location.path, location.fragment) == (
        "https", "www.shop.example", "/spring", "reviews")
    query = parse_qs(location.query)
    assert query["color"] == ["red"]
    (click_id,) = query["ttclid"]
    sink.drain()
    (row,) = query_dicts(ch, f"SELECT * FROM {ch_database}.touchpoints")
    assert (row["advertiser_id"], row["kind"], row["touch_id"], row["source"]) == ("adv-1", "click", click_id,
                                                                                   "redirect")
    assert (row["campaign_id"], row["adgroup_id"], row["ad_id"]) == ("cmp-1", "grp-1", "ad-1")
    assert row["ip"] == "198.51.100.0" and row["user_agent"] == "Mozilla/5.0 Test"
    # The click is cached for the attributor for as long as the longest window can reach it.
    assert 28 * 86400 < r.ttl(f"ct:click:adv-1:{click_id}") <= 29 * 86400
    # The sink told the attributor about the new touchpoint.
    (_, notice), = r.xrange("ct:attribution")
    assert notice[b"k"] == b"t" and click_id.encode() in notice[b"d"]


def test_each_visit_is_a_new_click(client, click_url):
    path = urlsplit(click_url().stdout.strip()).path
    first = parse_qs(urlsplit(client.get(path).headers["Location"]).query)["ttclid"]
    second = parse_qs(urlsplit(client.get(path).headers["Location"]).query)["ttclid"]
    assert first != second


def test_tampered_url_is_refused(client, click_url, r):
    path = urlsplit(click_url().stdout.strip()).path
    payload, signature = path.rsplit("/", 1)[1].split(".")
    forged = make_token("not-our-secret", "adv-1", "cmp-1", "grp-1", "ad-1", "https://evil.example/")
    for bad in (f"/r/{payload}", f"/r/{payload}.{signature[:-2]}xx", f"/r/{forged}", "/r/garbage"):
        resp = client.get(bad)
        assert resp.status_code == 400, bad
        assert resp.json["error"]["code"] == "bad_signature"
    assert r.xlen("ct:events") == 0


def test_landing_outside_the_advertisers_domains_is_never_redirected(client, settings, r, tenant):
    token = make_token(settings["SECRET_KEY"], "adv-1", "cmp-1", "grp-1", "ad-1", "https://evil.example/phish")
    resp = client.get(f"/r/{token}")
    assert resp.status_code == 403 and "Location" not in resp.headers
    assert resp.json["error"]["code"] == "landing_not_allowed"
    assert r.xlen("ct:events") == 0


def test_click_url_refuses_a_landing_outside_the_advertisers_domains(click_url):
    printed = click_url(landing="https://evil.example/")
    assert printed.returncode == 2 and printed.stdout == ""
    assert "not a site domain of advertiser 'adv-1' (shop.example)" in printed.stderr


def test_a_click_redelivered_to_the_sink_is_stored_again_but_counted_once(client, click_url, sink, ch, ch_database,
                                                                           r):
    """A sink killed between insert and acknowledgement stores the batch again: clicks still count once."""
    url = click_url().stdout.strip()
    assert client.get(urlsplit(url).path).status_code == 302
    entries = r.xrange("ct:events")
    sink.store(entries)
    sink.store(entries)  # the re-delivery
    assert ch.execute(f"SELECT count() FROM {ch_database}.touchpoints")[0][0] == 2
    assert ch.execute(f"SELECT sum(touches) FROM {ch_database}.touch_stats")[0][0] == 1
