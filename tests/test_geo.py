"""Country and region of a client IP: looked up by the collector, stored, and a report dimension.

The addresses whose country is asserted are hard facts of the registries, not beliefs about
geolocation: 193.0.0.0/21 and 2001:67c:2e8::/48 are the RIPE NCC's own networks (Amsterdam,
NL), 8.8.8.0/24 is Google's (ARIN, US), 202.12.27.33 is the M root server (WIDE, JP); and the
documentation ranges of RFC 5737 and RFC 3849 belong to no country at all.
"""

from __future__ import annotations

import ipaddress
import json
import time
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from clicktrail.errors import ConfigError
from pixel import geo
from pixel.click_urls import make_token
from pixel.records import decode_entry
from tests.attribution_world import HOUR, World
from tests.conftest import query_dicts, where

RIPE = "193.0.6.139"  # www.ripe.net, in 193.0.0.0/21 (RIPE NCC, NL)
RIPE_V6 = "2001:67c:2e8:22::c100:68b"  # www.ripe.net over IPv6 (2001:67c:2e8::/48, RIPE NCC, NL)
GOOGLE = "8.8.8.8"  # 8.8.8.0/24, Google (US)
M_ROOT = "202.12.27.33"  # m.root-servers.net, WIDE Project (JP)
DOCUMENTATION = ("192.0.2.1", "198.51.100.7", "203.0.113.9", "2001:db8::1")  # RFC 5737, RFC 3849
PRIVATE = ("10.0.0.1", "127.0.0.1", "::1", "fe80::1", "100.64.0.1")


@pytest.fixture(scope="module")
def mmdb(tmp_path_factory) -> str:
    """A small MaxMind DB file in the City layout: what an operator's GeoIP2/DB-IP file holds."""
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, database_type="GeoIP2-City", ipv4_compatible=True)
    # MaxMind's layout: a subdivision with its ISO 3166-2 code.
    writer.insert_network(IPSet(["193.0.0.0/21", "2001:67c:2e8::/48"]),
                          {"country": {"iso_code": "NL"},
                           "subdivisions": [{"iso_code": "NH", "names": {"en": "North Holland"}}]})
    # DB-IP lite's layout: a subdivision by name only.
    writer.insert_network(IPSet(["8.8.8.0/24"]), {"country": {"iso_code": "US"},
                                                  "subdivisions": [{"names": {"en": "California"}}]})
    # A country only (a Country file), and a record with nothing usable in it.
    writer.insert_network(IPSet(["202.12.27.0/24"]), {"country": {"iso_code": "jp"}})
    writer.insert_network(IPSet(["1.1.1.0/24"]), {"country": {"iso_code": "EU"}, "subdivisions": ["x"]})
    path = tmp_path_factory.mktemp("geoip") / "test-city.mmdb"
    writer.to_db_file(str(path))
    return str(path)


# -- the lookup -------------------------------------------------------------------------------


def test_the_packaged_data_places_registry_facts_and_nothing_else():
    locate = geo.open_locator("")
    assert locate(RIPE) == ("NL", "") and locate(RIPE_V6) == ("NL", "")
    assert locate(GOOGLE) == ("US", "") and locate(M_ROOT) == ("JP", "")
    # An IPv4 client seen on a dual-stack socket is the IPv4 address it is.
    assert locate("::ffff:" + RIPE) == ("NL", "")
    for ip in DOCUMENTATION + PRIVATE + ("", "not an ip", "193.0.6.139 ", "193.0.6", "\ud800", "1" * 10_000):
        assert locate(ip) == geo.NOWHERE, ip


def test_an_operators_mmdb_gives_countries_and_regions(mmdb):
    locate = geo.open_locator(mmdb)
    assert locate(RIPE) == ("NL", "NL-NH") and locate(RIPE_V6) == ("NL", "NL-NH")
    assert locate("::ffff:" + RIPE) == ("NL", "NL-NH")
    assert locate(GOOGLE) == ("US", "California")  # a file with subdivision names only
    assert locate(M_ROOT) == ("JP", "")  # no subdivision; the code upper-cased
    assert locate("1.1.1.1") == geo.NOWHERE  # "EU" is no country
    for ip in ("9.9.9.9",) + DOCUMENTATION + PRIVATE + ("", "garbage", "\ud800"):
        assert locate(ip) == geo.NOWHERE, ip


def test_off_and_bad_settings(tmp_path):
    assert geo.open_locator("off")(RIPE) == geo.NOWHERE
    with pytest.raises(ConfigError, match="CLICKTRAIL_GEOIP_DB"):
        geo.open_locator(str(tmp_path / "missing.mmdb"))
    junk = tmp_path / "junk.mmdb"
    junk.write_bytes(b"this is no MaxMind DB" * 100)
    with pytest.raises(ConfigError, match="CLICKTRAIL_GEOIP_DB.*not a readable MaxMind DB"):
        geo.open_locator(str(junk))


_ips = st.one_of(st.ip_addresses().map(str), st.ip_addresses(v=6).map(lambda a: a.exploded.upper()),
                 st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"))
_anything = st.one_of(st.text(max_size=80), _ips, st.none(), st.integers(), st.binary(max_size=20))


@pytest.fixture(scope="module")
def locators(mmdb) -> tuple:
    return geo.open_locator(""), geo.open_locator(mmdb)


@hsettings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=_anything)
def test_a_lookup_never_raises_and_gives_a_country_code_or_nothing(locators, value):
    for locate in locators:
        country, region = locate(value)
        assert country == "" or (len(country) == 2 and country.isascii() and country.isupper()), country
        assert isinstance(region, str) and len(region) <= geo.MAX_REGION and (country or not region)


#: Networks no registry gives to anyone: private use (RFC 1918, RFC 4193) and documentation (RFC
#: 5737, RFC 3849). (Other special-purpose blocks may be: 2001:4:112::/48, AS112, is ARIN's, US.)
_NO_COUNTRY = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7",
                                                 "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24",
                                                 "2001:db8::/32")]


@hsettings(max_examples=300, deadline=None)
@given(ip=st.one_of(st.ip_addresses(), *(st.ip_addresses(network=net) for net in _NO_COUNTRY)))
def test_special_addresses_have_no_country_and_spellings_of_one_address_agree(ip):
    locate = geo.open_locator("")
    place = locate(str(ip))
    if ip.is_loopback or ip.is_link_local or ip.is_multicast or any(ip in net for net in _NO_COUNTRY):
        assert place == geo.NOWHERE
    if ip.version == 6:
        assert locate(ip.exploded) == place  # the full and the compressed spelling are one address
    else:
        assert locate(f"::ffff:{ip}") == place


def test_records_are_placed_from_their_own_ip(mmdb):
    records = [{"ip": RIPE}, {"ip": RIPE}, {"ip": GOOGLE}, {"ip": "198.51.100.7"}, {"ip": ""}, {}]
    geo.place_records(geo.open_locator(mmdb), records)
    assert records == [{"ip": RIPE, "country": "NL", "region": "NL-NH"}, {"ip": RIPE, "country": "NL", "region": "NL-NH"},
                       {"ip": GOOGLE, "country": "US", "region": "California"}, {"ip": "198.51.100.7"}, {"ip": ""}, {}]


# -- collected and stored -------------------------------------------------------------------


def _stored(ch, db, table="events_unique"):
    return query_dicts(ch, f"SELECT * FROM {db}.{table} ORDER BY received_ms")


def _browser(client, tenant, event_id, remote, **headers):
    body = {"sent_at": int(time.time() * 1000),
            "events": [{"event": "PageView", "event_id": event_id, "page": {"url": "https://www.shop.example/"}}]}
    resp = client.post(f"/e/{tenant.pixel_id}", data=json.dumps(body), environ_base={"REMOTE_ADDR": remote},
                       headers={"Origin": "https://www.shop.example", **headers})
    assert resp.status_code == 200 and resp.json["accepted"] == 1, resp.json


def test_a_browser_event_is_stored_with_its_clients_country(client, tenant, sink, ch, ch_database, r):
    _browser(client, tenant, "pv-nl", RIPE)
    _browser(client, tenant, "pv-v6", RIPE_V6)
    _browser(client, tenant, "pv-doc", "203.0.113.9")
    # The stream carries the place: the sink never needs the raw IP to know it.
    placed = [rec.get("country") for _, fields in r.xrange("ct:events") for rec in decode_entry(fields).records]
    assert placed == ["NL", "NL", None]
    sink.drain()
    rows = {row["event_id"]: row for row in _stored(ch, ch_database)}
    assert (rows["pv-nl"]["country"], rows["pv-nl"]["region"], rows["pv-nl"]["ip"]) == ("NL", "", "193.0.6.0")
    assert (rows["pv-v6"]["country"], rows["pv-v6"]["ip"]) == ("NL", "2001:67c:2e8::")
    assert (rows["pv-doc"]["country"], rows["pv-doc"]["region"]) == ("", "")


def test_the_country_is_the_forwarded_clients_behind_a_trusted_proxy(settings, r, tenant, sink, ch, ch_database):
    from collector import create_app

    client = create_app({**where(settings), "TRUST_PROXY_HEADERS": True}).test_client()
    _browser(client, tenant, "pv-fwd", "127.0.0.1", **{"X-Forwarded-For": f"{M_ROOT}, 10.0.0.1"})
    sink.drain()
    (row,) = _stored(ch, ch_database)
    assert row["country"] == "JP"


def test_server_events_are_placed_by_the_ip_in_the_event_never_the_senders(client, tenant, sink, ch, ch_database):
    now = int(time.time())
    data = [{"event": "CompletePayment", "event_id": "v2-us", "event_time": now, "user": {"ip": GOOGLE}},
            {"event": "CompletePayment", "event_id": "v2-none", "event_time": now, "user": {}}]
    resp = client.post("/open_api/v1.3/event/track/", headers={"Access-Token": tenant.token},
                       json={"event_source": "web", "event_source_id": tenant.pixel_id, "data": data},
                       environ_base={"REMOTE_ADDR": RIPE})  # the sending server: in NL
    assert resp.status_code == 200 and resp.json["data"]["accepted"] == 2, resp.json
    # Events API 1.0: context.ip.
    v1 = {"pixel_code": tenant.pixel_id, "event": "Lead", "event_id": "v1-jp", "timestamp": _iso(now),
          "context": {"ip": M_ROOT, "user_agent": "UA"}}
    resp = client.post("/open_api/v1.3/pixel/track/", json=v1, headers={"Access-Token": tenant.token},
                       environ_base={"REMOTE_ADDR": RIPE})
    assert resp.status_code == 200 and resp.json["data"]["accepted"] == 1, resp.json
    # Meta's Conversions API: user_data.client_ip_address.
    meta = {"data": [{"event_name": "Purchase", "event_time": now, "event_id": "meta-nl", "action_source": "website",
                      "user_data": {"client_ip_address": RIPE_V6, "client_user_agent": "UA"}}], "access_token": tenant.token}
    resp = client.post(f"/v19.0/{tenant.pixel_id}/events", json=meta, environ_base={"REMOTE_ADDR": GOOGLE})
    assert resp.status_code == 200 and resp.json["events_received"] == 1, resp.json
    sink.drain()
    countries = {row["event_id"]: row["country"] for row in _stored(ch, ch_database)}
    assert countries == {"v2-us": "US", "v2-none": "", "v1-jp": "JP", "meta-nl": "NL"}


def _iso(seconds: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_redirect_click_is_stored_with_its_country(client, settings, tenant, sink, ch, ch_database):
    token = make_token(settings.site.secret_key, "adv-1", "c", "g", "a", "https://www.shop.example/")
    resp = client.get(f"/r/{token}", environ_base={"REMOTE_ADDR": RIPE})
    assert resp.status_code == 302
    (click_id,) = parse_qs(urlsplit(resp.headers["Location"]).query)["ttclid"]
    sink.drain()
    (row,) = _stored(ch, ch_database, "touchpoints")
    assert (row["touch_id"], row["country"], row["region"], row["ip"]) == (click_id, "NL", "", "193.0.6.0")


def test_an_operators_mmdb_stores_regions(settings, r, tenant, sink, ch, ch_database, mmdb):
    from collector import create_app

    client = create_app({**where(settings), "GEOIP_DB": mmdb}).test_client()
    _browser(client, tenant, "pv-region", RIPE)
    sink.drain()
    (row,) = _stored(ch, ch_database)
    assert (row["country"], row["region"]) == ("NL", "NL-NH")


def test_a_collector_with_an_unreadable_geoip_db_does_not_start(settings, tmp_path):
    from collector import create_app

    with pytest.raises(ConfigError, match="CLICKTRAIL_GEOIP_DB"):
        create_app({**where(settings), "GEOIP_DB": str(tmp_path / "nowhere.mmdb")})


def test_a_record_with_a_place_of_the_wrong_type_is_refused_alone(sink, r, ch, ch_database):
    good = {"pixel_id": "P", "source": "server", "event": "Lead", "event_id": "ok", "event_ms": int(time.time() * 1000),
            "received_ms": int(time.time() * 1000), "ip": "", "country": "DE", "region": "DE-BE",
            "user_agent": "", "properties": {}}
    bad = {**good, "event_id": "bad", "country": ["DE"]}
    r.xadd("ct:events", {b"a": b"adv-1", b"n": b"2", b"d": orjson.dumps([good, bad])})
    sink.drain()
    assert [(row["event_id"], row["country"], row["region"]) for row in _stored(ch, ch_database)] == [
        ("ok", "DE", "DE-BE")]
    (_, letter), = r.xrange("ct:events:dead")
    assert b"country must be a string" in letter[b"reason"]


# -- reports ----------------------------------------------------------------------------------


@pytest.fixture
def world(client, api_client, tenant, sink, attributor, r, ch, ch_database):
    return World(client, api_client, tenant, sink, attributor, r, ch, ch_database)


def _report(world, **params):
    resp = world.api.get("/v1/reports", query_string=params, headers=world.auth)
    return resp.status_code, resp.json


def test_reports_break_conversions_down_by_country(world):
    from datetime import datetime, timedelta, timezone

    today = datetime.now(timezone.utc).date()
    d = int(datetime(today.year, today.month, today.day, tzinfo=timezone.utc).timestamp()) - 2 * 86400
    for i, (ip, campaign) in enumerate([(RIPE, "A"), (RIPE_V6, "A"), (GOOGLE, "A"), (M_ROOT, "B"), ("", "B")]):
        world.click(f"k{i}", d + 10 * HOUR, campaign)
        world.convert(f"c{i}", d + 11 * HOUR, value=10.0 * (i + 1), ttclid=f"k{i}", **({"ip": ip} if ip else {}))
    world.settle()
    day = (today - timedelta(days=2)).isoformat()
    status, body = _report(world, start=day, end=day, dimensions="country", metrics="conversions,conversion_value")
    assert status == 200, body
    assert body["rows"] == [{"country": "", "conversions": 1.0, "conversion_value": 50.0},
                            {"country": "JP", "conversions": 1.0, "conversion_value": 40.0},
                            {"country": "NL", "conversions": 2.0, "conversion_value": 30.0},
                            {"country": "US", "conversions": 1.0, "conversion_value": 30.0}]
    status, by_campaign = _report(world, start=day, end=day, dimensions="campaign_id,country", metrics="conversions",
                                  order_by="-conversions")
    assert status == 200, by_campaign
    assert by_campaign["rows"][0] == {"campaign_id": "A", "country": "NL", "conversions": 2.0}
    assert len(by_campaign["rows"]) == 4
    # Other windows than the advertiser's recompute credits from the stored candidates: same places.
    status, recomputed = _report(world, start=day, end=day, dimensions="country,region", metrics="conversions",
                                 click_window=28)
    assert status == 200, recomputed
    assert {(row["country"], row["region"]): row["conversions"] for row in recomputed["rows"]} == {
        ("", ""): 1.0, ("JP", ""): 1.0, ("NL", ""): 2.0, ("US", ""): 1.0}
    csv_text = world.api.get("/v1/reports", headers=world.auth, query_string={
        "start": day, "end": day, "dimensions": "country", "metrics": "conversions", "format": "csv"}).text
    assert csv_text.splitlines() == ["country,conversions", ",1.0", "JP,1.0", "NL,2.0", "US,1.0"]


def test_a_touch_metric_by_country_is_refused_naming_both(world):
    status, body = _report(world, start="2026-01-01", end="2026-01-02", dimensions="country", metrics="clicks")
    assert status == 400
    assert body["error"]["field"] == "metrics" and "country" in body["error"]["message"]
