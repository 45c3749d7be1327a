"""Issue 17: events flagged ``limited_data_use`` are stored and counted, never linked across devices."""

import pytest

from tests.attribution_world import DAY, World, sha


@pytest.fixture
def world(client, api_client, tenant, sink, attributor, r, ch, ch_database):
    return World(client, api_client, tenant, sink, attributor, r, ch, ch_database)


def convert(world: World, event_id: str, at: int, limited: bool, **user) -> None:
    body = {"event_source": "web", "event_source_id": world.tenant.pixel_id,
            "data": [{"event": "CompletePayment", "event_id": event_id, "event_time": at, "user": user,
                      "properties": {"value": 10, "currency": "USD"}, "limited_data_use": limited}]}
    resp = world.client.post("/open_api/v1.3/event/track/", json=body, headers={"Access-Token": world.tenant.token})
    assert resp.status_code == 200 and resp.json["data"]["accepted"] == 1, resp.json


def test_limited_data_use_conversions_are_not_linked_by_email_phone_or_external_id(world):
    t = world.now
    jane = {"email": sha("jane@example.com"), "phone": sha("+33612345678"), "external_id": sha("user-7")}
    world.click("other-device", t - 3 * DAY, user=jane)
    world.click("own", t - 2 * DAY)
    world.click("landing", t - 2 * DAY)
    world.browse("landing-view", t - 2 * DAY + 10, ttp="browser-B", ttclid="landing")
    convert(world, "plain", t, False, **jane)
    convert(world, "limited", t, True, **jane)
    convert(world, "limited-own-click", t, True, ttclid="own", **jane)
    convert(world, "limited-own-browser", t, True, ttp="browser-B", **jane)
    world.settle()

    assert world.credits("plain") == {"other-device": 1.0}  # the cross-device link, when allowed
    assert world.credits("limited") == {"organic": 1.0}  # counted, tied to nothing
    assert world.credits("limited-own-click") == {"own": 1.0}
    (row,) = world.latest("limited-own-browser")
    assert (row["touch_id"], row["matched_by"]) == ("landing", "browser_id")
    stored = dict(world.ch.execute(f"SELECT event_id, limited_data_use FROM {world.db}.events"))
    assert stored["limited"] == 1 and stored["plain"] == 0

    # A touchpoint of another device arriving later changes the allowed link, not the limited one.
    world.click("later-other-device", t - DAY, user={"phone": jane["phone"]})
    world.settle()
    assert world.credits("plain") == {"other-device": 0.0, "later-other-device": 1.0}
    assert world.credits("limited") == {"organic": 1.0}
