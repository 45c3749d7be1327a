"""The click redirect: signed URLs, recorded clicks, no open redirect."""

import json
import subprocess
import sys
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from pixel import records
from pixel.click_urls import make_token
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
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    # The tag's last character carries 4 spare bits: flipping one spells the same bytes otherwise,
    # and that spelling must be refused too (a changed URL is not this URL).
    same_bytes = signature[:-1] + alphabet[alphabet.index(signature[-1]) ^ 1]
    altered = signature[:-2] + ("xx" if signature[-2:] != "xx" else "yy")
    for bad in (f"/r/{payload}", f"/r/{payload}.{altered}", f"/r/{payload}.{same_bytes}", f"/r/{forged}",
                "/r/garbage", f"/r/{payload}=.{signature}"):
        resp = client.get(bad)
        assert resp.status_code == 400, bad
        assert resp.json["error"]["code"] == "bad_signature"
    assert r.xlen("ct:events") == 0


def test_landing_outside_the_advertisers_domains_is_never_redirected(client, settings, r, tenant):
    token = make_token(settings.site.secret_key, "adv-1", "cmp-1", "grp-1", "ad-1", "https://evil.example/phish")
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


def test_bots_clicks_are_flagged_cached_as_bots_and_counted_apart(client, click_url, sink, ch, ch_database, r):
    """The collector decides (pixel/bots.py), the cache entry and the stored row say the same; a click
    record queued before the collector decided is judged by the sink from its user agent."""
    path = urlsplit(click_url().stdout.strip()).path
    agents = {"person": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                        "Chrome/120.0.0.0 Safari/537.36",
              "curl": "curl/8.5.0", "none": ""}
    ids = {}
    for who, agent in agents.items():
        location = client.get(path, headers={"User-Agent": agent}).headers["Location"]
        ids[who] = parse_qs(urlsplit(location).query)["ttclid"][0]
    cached = {who: json.loads(r.get(f"ct:click:adv-1:{click}"))[-1] for who, click in ids.items()}
    assert cached == {"person": 0, "curl": 1, "none": 1}
    # An entry of the previous version: no is_bot in the record.
    old = {"kind": "click", "touch_id": "old-curl", "touch_ms": 1767225600000, "campaign_id": "cmp-1",
           "adgroup_id": "grp-1", "ad_id": "ad-1", "browser_id": "", "ip": "", "user_agent": "Wget/1.21",
           "source": "redirect", "received_ms": 1767225600000}
    r.xadd("ct:events", records.entry_fields("adv-1", [old], touch=True))
    sink.drain()
    stored = dict(ch.execute(f"SELECT touch_id, is_bot FROM {ch_database}.touchpoints"))
    assert stored == {ids["person"]: 0, ids["curl"]: 1, ids["none"]: 1, "old-curl": 1}
    assert ch.execute(f"SELECT sum(touches) FROM {ch_database}.touch_stats")[0][0] == 1
    assert ch.execute(f"SELECT sum(touches) FROM {ch_database}.bot_touch_stats")[0][0] == 3


def _signed(secret: str, payload: bytes) -> str:
    """A token in the documented format (payload.signature, both unpadded base64url, HMAC-SHA256
    cut to 16 bytes), for payloads make_token would never write."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return f"{b64(payload)}.{b64(hmac.new(secret.encode(), payload, hashlib.sha256).digest()[:16])}"


BAD_LANDINGS = ["https://www.shop.example:99999/spring", "https://www.shop.example:abc/", "https://www.shop.example:0/",
                "https://a..shop.example/", "http://[::1/"]


@pytest.mark.parametrize("landing", BAD_LANDINGS)
def test_click_url_refuses_a_landing_the_redirect_could_not_send_to(click_url, landing):
    printed = click_url(landing=landing)
    assert printed.returncode == 2 and printed.stdout == "", printed.stderr
    assert "must be an absolute http(s) URL" in printed.stderr and "Traceback" not in printed.stderr


@pytest.mark.parametrize("landing", BAD_LANDINGS)
def test_a_signed_landing_the_redirect_cannot_send_to_is_a_json_400(client, settings, r, tenant, landing):
    """Signed before landings were checked this way (or with a leaked key): a 400, never a 500."""
    payload = json.dumps({"a": "adv-1", "c": "cmp-1", "g": "grp-1", "d": "ad-1", "l": landing}).encode()
    resp = client.get(f"/r/{_signed(settings.site.secret_key, payload)}")
    assert resp.status_code == 400 and "Location" not in resp.headers
    assert resp.json["error"]["field"] == "landing" and r.xlen("ct:events") == 0


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                         max_size=3), max_leaves=8)
click_fields = st.fixed_dictionaries({}, optional={
    "a": st.one_of(st.just("adv-1"), json_values), "c": st.one_of(st.just("cmp-1"), json_values),
    "g": st.one_of(st.just("grp-1"), json_values), "d": st.one_of(st.just("ad-1"), json_values),
    "l": st.one_of(st.sampled_from(["https://shop.example/", "https://shop.example:99999/", "mailto:x@shop.example",
                                    "https://shop.example:443/ü?q=1#f", "https://evil.example/"]),
                   st.text(max_size=30).map(lambda t: "https://shop.example/" + t), json_values)})


@hsettings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(token=st.one_of(st.text(min_size=1, max_size=60).map(lambda t: quote(t, safe="")),
                       click_fields.map(lambda f: json.dumps(f).encode()), json_values.map(lambda v: json.dumps(v).encode())))
def test_any_token_is_a_redirect_or_a_json_4xx(client, settings, tenant, token):
    """Any path after /r/, and any payload signed with the key (as one could with a leaked key)."""
    if isinstance(token, bytes):
        token = _signed(settings.site.secret_key, token)
    resp = client.get(f"/r/{token}")
    if resp.status_code == 302:
        assert urlsplit(resp.headers["Location"]).hostname == "shop.example"
    else:
        assert 400 <= resp.status_code < 500 and resp.json["error"]["code"], (token, resp.status_code)


def test_an_empty_path_segment_is_a_json_404_not_a_redirect(client):
    resp = client.get("/r/%2F0")  # the path /r//0
    assert resp.status_code == 404 and resp.json["error"]["code"] == "not_found"
    assert "Location" not in resp.headers
