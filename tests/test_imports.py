"""Bulk import of clicks and impressions: validation, idempotence, tenancy."""

import time

import pytest

from pixel import registry
from tests.conftest import query_dicts


@pytest.fixture
def adserver(r, tenant):
    return {"Authorization": f"Bearer {registry.create_token(r, tenant.advertiser, ['adserver'])}"}


def click(click_id="c1", **changes):
    row = {"click_id": click_id, "click_time": int(time.time()) - 60, "campaign_id": "cmp", "adgroup_id": "grp",
           "ad_id": "ad"}
    row.update(changes)
    return row


def test_rows_are_stored_and_reposting_is_harmless(api_client, adserver, ch, ch_database, attributor):
    body = {"clicks": [click("c1", user={"email": "Jane@Example.com "}), click("c2")]}
    for _ in range(2):
        resp = api_client.post("/v1/clicks", json=body, headers=adserver)
        assert resp.status_code == 200 and resp.json == {"accepted": 2, "rejected": []}
    rows = query_dicts(ch, f"SELECT touch_id, kind, source, email_sha256 FROM {ch_database}.touchpoints FINAL "
                           "ORDER BY touch_id")
    assert [(r["touch_id"], r["kind"], r["source"]) for r in rows] == [("c1", "click", "import"),
                                                                        ("c2", "click", "import")]
    import hashlib
    assert rows[0]["email_sha256"] == hashlib.sha256(b"jane@example.com").hexdigest()  # raw never stored


def test_bad_rows_are_reported_and_good_ones_kept(api_client, adserver, ch, ch_database, attributor):
    now = int(time.time())
    rows = [click("ok"), click("old", click_time=now - 29 * 86400), click("ms", click_time=now * 1000),
            {"click_time": now, "campaign_id": "c", "adgroup_id": "g", "ad_id": "a"},
            click("noad", ad_id=""), click("baduser", user="x")]
    resp = api_client.post("/v1/clicks", json={"clicks": rows}, headers=adserver)
    assert resp.status_code == 200
    assert resp.json == {"accepted": 1, "rejected": [
        {"index": 1, "field": "click_time", "rule": "must be at most 28 days old"},
        {"index": 2, "field": "click_time", "rule": "must be unix time in seconds (this looks like milliseconds)"},
        {"index": 3, "field": "click_id", "rule": "is required"},
        {"index": 4, "field": "ad_id", "rule": "is required"},
        {"index": 5, "field": "user", "rule": "must be an object"},
    ]}


@pytest.mark.parametrize("body, status, code, field", [
    ({"clicks": []}, 400, "invalid_field", "clicks"),
    ({"impressions": [click()]}, 400, "invalid_field", "clicks"),
    ({"clicks": [click(str(i)) for i in range(10_001)]}, 400, "too_many_rows", "clicks"),
])
def test_malformed_bodies(api_client, adserver, body, status, code, field, attributor):
    resp = api_client.post("/v1/clicks", json=body, headers=adserver)
    assert resp.status_code == status
    assert resp.json["error"]["code"] == code and resp.json["error"]["field"] == field


def test_tokens_need_the_adserver_scope(api_client, r, tenant, attributor):
    reports = registry.create_token(r, tenant.advertiser, ["reports"])
    resp = api_client.post("/v1/clicks", json={"clicks": [click()]}, headers={"Authorization": f"Bearer {reports}"})
    assert resp.status_code == 403 and resp.json["error"]["code"] == "token_scope"
    resp = api_client.post("/v1/clicks", json={"clicks": [click()]}, headers={"Authorization": "Bearer nope"})
    assert resp.status_code == 401 and resp.json["error"]["code"] == "bad_token"
    resp = api_client.post("/v1/clicks", json={"clicks": [click()]})
    assert resp.status_code == 401 and resp.json["error"]["code"] == "missing_token"


def test_impressions_are_imported_for_the_tokens_advertiser_only(api_client, r, ch, ch_database, attributor):
    other = registry.create_token(r, "adv-other", ["adserver"])
    row = {"impression_id": "i1", "impression_time": int(time.time()) - 5, "campaign_id": "c", "adgroup_id": "g",
           "ad_id": "a", "advertiser_id": "adv-1"}  # an advertiser field in the body is ignored
    resp = api_client.post("/v1/impressions", json={"impressions": [row]}, headers={"Authorization": f"Bearer {other}"})
    assert resp.status_code == 200
    assert ch.execute(f"SELECT advertiser_id, kind FROM {ch_database}.touchpoints") == [("adv-other", "impression")]


@pytest.mark.parametrize("collection, changes, field", [
    ("clicks", {"click_time": 1e308}, "click_time"),
    ("clicks", {"click_time": -1e308}, "click_time"),
    ("clicks", {"click_time": 2**64 - 1}, "click_time"),
    ("clicks", {"click_time": -(2**63)}, "click_time"),
    ("clicks", {"click_time": "1700000000"}, "click_time"),
    ("clicks", {"click_time": True}, "click_time"),
    ("clicks", {"click_id": 1.5}, "click_id"),
    ("clicks", {"click_id": 1e308}, "click_id"),
    ("clicks", {"campaign_id": -(2**63)}, None),  # an integer id is its digits
    ("impressions", {"impression_time": 1e308}, "impression_time"),
    ("impressions", {"impression_time": -0.0}, "impression_time"),
    ("impressions", {"ad_id": {"$gt": ""}}, "ad_id"),
])
def test_numbers_out_of_range_are_refused_by_field(api_client, adserver, collection, changes, field, attributor):
    kind = "impression" if collection == "impressions" else "click"
    good = {f"{kind}_id": "good", f"{kind}_time": int(time.time()) - 60, "campaign_id": "c", "adgroup_id": "g",
            "ad_id": "a"}
    resp = api_client.post(f"/v1/{collection}", json={collection: [{**good, f"{kind}_id": "bad", **changes}, good]},
                           headers=adserver)
    assert resp.status_code == 200, resp.json
    if field is None:
        assert resp.json == {"accepted": 2, "rejected": []}
    else:  # the bad row is refused by name, its batch-mate kept
        (rejected,) = resp.json["rejected"]
        assert resp.json["accepted"] == 1 and (rejected["index"], rejected["field"]) == (0, field), resp.json


@pytest.mark.parametrize("number, answer", [
    ("18446744073709551616", "click_time"),  # past 64 bits: read as a double, then out of range
    ("1" + "0" * 400, "malformed_json"),  # past a double: no JSON number this API reads
    ("NaN", "malformed_json"),
    ("Infinity", "malformed_json"),
])
def test_numbers_past_64_bits_or_a_double(api_client, adserver, attributor, number, answer):
    body = ('{"clicks": [{"click_id": "k", "click_time": %s, "campaign_id": "c", "adgroup_id": "g", "ad_id": "a"}]}'
            % number).encode()
    resp = api_client.post("/v1/clicks", data=body, headers={**adserver, "Content-Type": "application/json"})
    assert resp.status_code == 400, resp.json
    if answer == "malformed_json":
        assert resp.json["error"]["code"] == "malformed_json"
    else:
        assert resp.json["rejected"] == [{"index": 0, "field": answer, "rule": "must be unix time in seconds (this "
                                                                               "looks like milliseconds)"}]
