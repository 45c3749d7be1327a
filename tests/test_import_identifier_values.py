"""Imported clicks and impressions take every value of ``email``, ``phone`` and ``external_id`` as
events do (tests/test_identifier_values.py): a string or a list of at most 10, raw values hashed by
the events' own rules, hashes taken as sent, repeats dropped; a conversion carrying any one value is
attributed to the touchpoint, whichever of the two arrives first.

Real API, sink, attributor and ClickHouse.
"""

from __future__ import annotations

import hashlib
import json
import time

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pixel.events import MAX_IDENTIFIER_VALUES, identifier_values
from tests.attribution_world import World
from tests.conftest import query_dicts


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def click(click_id: str, user: dict, at: int | None = None) -> dict:
    return {"click_id": click_id, "click_time": at or int(time.time()) - 60, "campaign_id": "cmp",
            "adgroup_id": "grp", "ad_id": "ad", "user": user}


def identities(ch, db: str, touch_id: str) -> set[tuple[str, str]]:
    rows = ch.execute(f"SELECT DISTINCT identity_kind, identity FROM {db}.touch_identities WHERE touch_id = %(t)s "
                      "AND identity_kind IN ('email', 'phone', 'external_id')", {"t": touch_id})
    return {tuple(row) for row in rows}


def test_a_click_with_two_emails_is_credited_to_a_conversion_carrying_only_the_second(
        client, api_client, tenant, sink, attributor, r, ch, ch_database):
    world = World(client, api_client, tenant, sink, attributor, r, ch, ch_database)
    world.click("clk-two", world.now - 3600, "spring",
                user={"email": ["Home@Example.com", "work@example.com", " home@example.com"]})
    world.click("clk-other", world.now - 1800, "autumn", user={"email": "someone@example.com"})
    world.convert("conv-work", world.now, email="WORK@example.com ")
    world.settle()
    assert world.credits("conv-work") == {"clk-two": 1.0}
    assert [(row["matched_by"], row["campaign_id"]) for row in world.latest("conv-work")] == [("email", "spring")]
    # The column keeps the first value; every value, the repeat dropped, is an identity.
    row = query_dicts(ch, f"SELECT email_sha256 FROM {ch_database}.touchpoints WHERE touch_id = 'clk-two'")[0]
    assert row["email_sha256"] == sha("home@example.com")
    assert identities(ch, ch_database, "clk-two") == {("email", sha("home@example.com")),
                                                      ("email", sha("work@example.com"))}


def test_a_conversion_stored_first_is_restated_when_a_click_lists_its_phone_later(
        client, api_client, tenant, sink, attributor, r, ch, ch_database):
    world = World(client, api_client, tenant, sink, attributor, r, ch, ch_database)
    world.convert("conv-phone", world.now, phone="+33 6 12 34 56 78")
    world.convert("conv-ext", world.now, external_id="crm-2")
    world.settle()
    assert world.credits("conv-phone") == {"organic": 1.0}
    # Raw, formatted and pre-hashed values mixed; the number the conversion carries is the third.
    world.click("clk-phones", world.now - 600, "summer",
                user={"phone": ["+1 650 555 1212", sha("+442071234567").upper(), 33612345678]})
    world.impression("imp-ext", world.now - 300, "winter", user={"external_id": [sha("crm-1"), "crm-2"]})
    world.settle()
    assert world.credits("conv-phone") == {"clk-phones": 1.0}
    assert world.latest("conv-phone")[0]["matched_by"] == "phone"
    assert world.credits("conv-ext") == {"imp-ext": 1.0}
    assert world.latest("conv-ext")[0]["matched_by"] == "external_id"
    assert identities(ch, ch_database, "clk-phones") == {
        ("phone", sha("+16505551212")), ("phone", sha("+442071234567")), ("phone", sha("+33612345678"))}


def test_a_reposted_click_without_emails_no_longer_earns_by_its_old_ones(client, api_client, tenant, sink, attributor,
                                                                        r, ch, ch_database):
    """The latest copy wins: an identifier it sends no value of unlinks every value sent before."""
    world = World(client, api_client, tenant, sink, attributor, r, ch, ch_database)
    world.click("clk-fixed", world.now - 3600, "spring", user={"email": ["a@example.com", "b@example.com"]})
    world.click("clk-fixed", world.now - 3600, "spring", user={"phone": "+33 6 12 34 56 78"})
    world.convert("conv-b", world.now, email="b@example.com")
    world.convert("conv-phone", world.now, phone="+33612345678")
    world.settle()
    assert world.credits("conv-b") == {"organic": 1.0}
    assert world.credits("conv-phone") == {"clk-fixed": 1.0}


def _repost(world: World, touch: str, touch_id: str, at: int, user: dict) -> None:
    # A later copy: a few ms on, so its received_ms (which decides the latest copy) is later.
    time.sleep(0.005)
    getattr(world, touch)(touch_id, at, "spring", user=user)


def test_a_corrected_email_unlinks_the_old_one_when_the_click_comes_first(client, api_client, tenant, sink,
                                                                          attributor, r, ch, ch_database):
    """The latest copy decides which values link a touchpoint: a value a re-post no longer lists
    ties nothing, though touch_identities still names it."""
    world = World(client, api_client, tenant, sink, attributor, r, ch, ch_database)
    world.click("clk-one", world.now - 3600, "spring", user={"email": "a@example.com"})
    _repost(world, "click", "clk-one", world.now - 3600, {"email": "b@example.com"})
    world.impression("imp-list", world.now - 3000, "spring", user={"email": ["c@example.com", "d@example.com"]})
    _repost(world, "impression", "imp-list", world.now - 3000, {"email": ["c@example.com", "e@example.com"]})
    for event_id, email in (("conv-a", "a"), ("conv-b", "b"), ("conv-d", "d"), ("conv-e", "e")):
        world.convert(event_id, world.now, email=f"{email}@example.com")
    world.settle()
    assert world.credits("conv-a") == {"organic": 1.0}
    assert world.credits("conv-b") == {"clk-one": 1.0}
    assert world.credits("conv-d") == {"organic": 1.0}
    assert world.credits("conv-e") == {"imp-list": 1.0}
    # The lists hold the latest copy's values, first value first.
    rows = ch.execute(f"SELECT argMax(emails_sha256, received_ms) FROM {ch_database}.touchpoints "
                      "WHERE touch_id = 'imp-list'")
    assert rows[0][0] == [sha("c@example.com"), sha("e@example.com")]


def test_a_corrected_email_unlinks_the_old_one_when_the_conversions_come_first(client, api_client, tenant, sink,
                                                                               attributor, r, ch, ch_database):
    world = World(client, api_client, tenant, sink, attributor, r, ch, ch_database)
    for event_id, email in (("conv-a", "a"), ("conv-b", "b"), ("conv-d", "d"), ("conv-e", "e")):
        world.convert(event_id, world.now, email=f"{email}@example.com")
    world.settle()
    world.click("clk-one", world.now - 3600, "spring", user={"email": "a@example.com"})
    world.impression("imp-list", world.now - 3000, "spring", user={"email": ["c@example.com", "d@example.com"]})
    world.settle()
    assert world.credits("conv-a") == {"clk-one": 1.0}
    assert world.credits("conv-d") == {"imp-list": 1.0}
    _repost(world, "click", "clk-one", world.now - 3600, {"email": "b@example.com"})
    _repost(world, "impression", "imp-list", world.now - 3000, {"email": ["c@example.com", "e@example.com"]})
    world.settle()
    assert world.credits("conv-a") == {"organic": 1.0}
    assert world.credits("conv-b") == {"clk-one": 1.0}
    assert world.credits("conv-d") == {"organic": 1.0}
    assert world.credits("conv-e") == {"imp-list": 1.0}


def test_limits_and_bad_items_are_refused_naming_the_field(api_client, r, tenant, ch, ch_database, attributor):
    from pixel import registry

    auth = {"Authorization": f"Bearer {registry.create_token(r, tenant.advertiser, ['adserver'])}"}
    eleven = [f"u{i}@example.com" for i in range(MAX_IDENTIFIER_VALUES + 1)]
    rows = [click("ten", {"email": eleven[:MAX_IDENTIFIER_VALUES], "phone": ["+336", "+336"]}),
            click("eleven", {"email": eleven}),
            click("nested", {"phone": [["+336"]]}),
            click("object", {"external_id": [{"id": 1}]}),
            click("bool", {"external_id": [True]}),
            click("long", {"email": ["a" * 300]})]
    resp = api_client.post("/v1/clicks", json={"clicks": rows}, headers=auth)
    assert resp.status_code == 200
    assert resp.json == {"accepted": 1, "rejected": [
        {"index": 1, "field": "user.email", "rule": "must hold at most 10 values"},
        {"index": 2, "field": "user.phone", "rule": "must be a string or a list of strings"},
        {"index": 3, "field": "user.external_id", "rule": "must be a string or a list of strings"},
        {"index": 4, "field": "user.external_id", "rule": "must be a string"},
        {"index": 5, "field": "user.email", "rule": "must be at most 256 characters"},
    ]}
    assert identities(ch, ch_database, "ten") == ({("email", sha(e)) for e in eleven[:MAX_IDENTIFIER_VALUES]}
                                                  | {("phone", sha("+336"))})
    # A batch of refusals only is a 400, each named.
    impression = {"impression_id": "i", "impression_time": int(time.time()), "campaign_id": "c", "adgroup_id": "g",
                  "ad_id": "a", "user": {"phone": eleven}}
    resp = api_client.post("/v1/impressions", json={"impressions": [impression]}, headers=auth)
    assert resp.status_code == 400
    assert resp.json["rejected"] == [{"index": 0, "field": "user.phone", "rule": "must hold at most 10 values"}]
    # Nothing raw stored anywhere the import writes.
    stored = json.dumps(ch.execute(f"SELECT * FROM {ch_database}.touchpoints")
                        + ch.execute(f"SELECT * FROM {ch_database}.touch_identities"), default=str)
    assert "example.com" not in stored and "+336" not in stored


JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
                    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30)
                    | st.sampled_from(["a@example.com", sha("x"), sha("x").upper(), "+33 6 12", ""]),
                    lambda inner: st.lists(inner, max_size=12) | st.dictionaries(st.text(max_size=5), inner, max_size=2),
                    max_leaves=14)
#: Mostly what an ad server may send (strings, numbers, lists of them, up to two past the limit),
#: sometimes any JSON at all.
VALUE = (st.none() | st.text(max_size=30) | st.integers(0, 10**16)
         | st.sampled_from(["a@example.com", " A@Example.com", sha("x"), sha("x").upper(), "+33 6 12", ""]))
IDENTIFIER = VALUE | st.lists(VALUE, max_size=MAX_IDENTIFIER_VALUES + 2) | JSON


def _is_hash(value: str) -> bool:
    return len(value) == 64 and value == value.lower() and int(value, 16) >= 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(email=IDENTIFIER, phone=IDENTIFIER, external_id=IDENTIFIER)
def test_any_identifier_shape_is_stored_as_hashes_or_refused_naming_the_field(api_client, r, tenant, ch, ch_database,
                                                                              email, phone, external_id):
    from pixel import registry

    auth = {"Authorization": f"Bearer {registry.create_token(r, tenant.advertiser, ['adserver'])}"}
    touch_id = hashlib.sha256(repr((email, phone, external_id)).encode()).hexdigest()[:20]
    row = click(touch_id, {"email": email, "phone": phone, "external_id": external_id})
    resp = api_client.post("/v1/clicks", json={"clicks": [row]}, headers=auth)
    assert resp.status_code in (200, 400), resp.data
    event(f"status {resp.status_code}")
    if resp.status_code == 400:
        (rejected,) = resp.json["rejected"]
        assert rejected["field"] in ("user.email", "user.phone", "user.external_id") and rejected["rule"], rejected
        return
    values = identities(ch, ch_database, touch_id)
    assert all(_is_hash(value) for _, value in values)
    for kind, sent in (("email", email), ("phone", phone), ("external_id", external_id)):
        stored = [v for k, v in values if k == kind]
        assert len(stored) <= MAX_IDENTIFIER_VALUES
        # Every value the events' rules make of what was sent, and only those.
        assert set(stored) == set(identifier_values(sent, kind, kind))


def test_erasure_by_a_clicks_second_email_removes_the_click(client, api_client, tenant, sink, attributor, r, ch,
                                                            ch_database):
    from pixel import registry

    world = World(client, api_client, tenant, sink, attributor, r, ch, ch_database)
    world.click("clk-jane", world.now - 600, user={"email": ["home@example.com", "jane.work@example.com"]})
    world.click("clk-else", world.now - 600, user={"email": ["someone@example.com", "else@example.com"]})
    auth = {"Authorization": "Bearer " + registry.create_token(r, tenant.advertiser, ["privacy"])}
    reply = api_client.post("/v1/erasure", json={"user": {"email": sha("jane.work@example.com")}}, headers=auth)
    assert reply.status_code == 202, reply.get_json()
    request_id = reply.get_json()["request_id"]
    for _ in range(100):
        attributor.eraser.step()
        record = api_client.get(f"/v1/erasure/{request_id}", headers=auth).get_json()
        if record["status"] == "done":
            break
        time.sleep(0.2)
    assert record["status"] == "done" and record["rows"]["touchpoints"] == 1, record
    assert ch.execute(f"SELECT DISTINCT touch_id FROM {ch_database}.touchpoints") == [("clk-else",)]
    assert ch.execute(f"SELECT DISTINCT touch_id FROM {ch_database}.touch_identities") == [("clk-else",)]


def test_an_imported_click_in_the_click_cache_keeps_its_further_values(r):
    """The attributor takes clicks named by click id from the cache: a cached import keeps every value."""
    from pixel import click_cache
    from pixel.touchpoints import Touch

    now = int(time.time())
    plain = Touch("adv-cache", "click", "k-plain", now * 1000, "c", "g", "a", "", sha("a"), "", "")
    listed = plain._replace(touch_id="k-listed", more=(("email", sha("b")), ("phone", sha("p2"))))
    pipe = r.pipeline(transaction=False)
    click_cache.put(pipe, [plain, listed], now)
    pipe.execute()
    found, missing = click_cache.get(r, {("adv-cache", "k-plain"), ("adv-cache", "k-listed"), ("adv-cache", "nope")})
    assert sorted(found) == [listed, plain] and missing == {("adv-cache", "nope")}
    assert listed.values("email") == [sha("a"), sha("b")] and listed.values("phone") == [sha("p2")]
