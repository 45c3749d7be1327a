"""Killing the attributor at any point ends in the same stored result as an undisturbed run."""

import random
import signal
import time
from datetime import datetime, timedelta, timezone

import pytest

from attribution.models import MODELS
from pixel import registry
from tests.attribution_world import DAY, HOUR, World, sha


@pytest.fixture
def world(client, api_client, tenant, sink, attributor, r, ch, ch_database):
    return World(client, api_client, tenant, sink, attributor, r, ch, ch_database)


def stored(ch, db) -> dict:
    """The latest revision's credits per conversion and model, as a reader sees them."""
    rows = ch.execute(f"""
        SELECT event_id, model, touch_id, matched_by, round(credit, 9) FROM {db}.credits FINAL
        WHERE (event_id, revision) IN (SELECT event_id, max(revision) FROM {db}.credits GROUP BY event_id)""")
    out: dict = {}
    for event_id, model, touch_id, matched_by, credit in rows:
        out.setdefault((event_id, model), set()).add((touch_id or matched_by, credit))
    return out


def expected(attributor, keys) -> dict:
    """What an undisturbed attributor computes for the same data (no writes)."""
    out: dict = {}
    for res in attributor.compute(keys):
        for model in MODELS:
            credited = res.credited[model]
            value = ({(t.touch_id, round(c, 9)) for t, c in credited} if credited else
                     {(res.not_counted, 0.0)} if res.not_counted else {("", 1.0)})
            out[(res.conv.event_id, model)] = value
    return out


def build(world, n: int) -> set[tuple]:
    t = world.now
    for i in range(n):
        user = {"email": sha(f"user{i % 7}@example.com")}
        world.click(f"clk-{i}", t - (i % 9) * DAY - i, campaign=f"cmp-{i % 3}", user=user)
        if i % 4 == 0:
            world.impression(f"imp-{i}", t - HOUR - i, user=user)
    for i in range(n):
        kwargs = {"email": f"user{i % 5}@example.com"} if i % 2 else {"ttclid": f"clk-{i}"}
        world.convert(f"conv-{i}", t - i, value=float(i), **kwargs)
    world.sink.drain()
    return {(world.tenant.advertiser, world.tenant.pixel_id, "CompletePayment", f"conv-{i}") for i in range(n)}


def wait_lease(r, proc, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        holder = r.get("ct:attributor:lease")
        if holder and holder.decode().endswith(f"-{proc.pid}"):
            return
        time.sleep(0.05)
    raise AssertionError("the attributor never took the lease")


def wait_idle(r, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if r.xlen("ct:attribution") == 0:
            return True
        time.sleep(0.1)
    return False


def test_killed_between_its_two_inserts_the_rerun_completes_the_revision(world, spawn, r, ch, ch_database):
    keys = build(world, 12)
    dying = spawn.start("attributor", "--log-level", "WARNING", failpoint="attributor_between_inserts")
    assert dying.wait(timeout=60) == -signal.SIGKILL
    assert ch.execute(f"SELECT count() FROM {ch_database}.attribution_candidates")[0][0] > 0
    assert ch.execute(f"SELECT count() FROM {ch_database}.credits")[0][0] == 0
    spawn.start("attributor", "--log-level", "WARNING")  # reclaims the dead one's notices
    assert wait_idle(r)
    assert stored(ch, ch_database) == expected(world.attributor, keys)
    # The dead one's candidates and the rerun's are one revision: an explanation lists each touchpoint once.
    for _, _, _, event_id in keys:
        answer = world.api.get(f"/v1/conversions/{event_id}/attribution", headers=world.auth)
        touches = [t["touch_id"] for c in answer.json["conversions"] for t in c["touchpoints"]]
        assert touches and len(touches) == len(set(touches)), (event_id, touches)


def test_sigkill_at_random_points_changes_nothing(world, spawn, r, ch, ch_database):
    keys = build(world, 40)
    rng = random.Random(7)
    for _ in range(4):
        proc = spawn.start("attributor", "--log-level", "WARNING", ATTRIBUTOR_BATCH=1)
        wait_lease(r, proc)  # the dead one's lease lapses first
        time.sleep(rng.uniform(0.1, 0.8))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    spawn.start("attributor", "--log-level", "WARNING")
    assert wait_idle(r)
    assert stored(ch, ch_database) == expected(world.attributor, keys)
    # Each conversion's latest revision is complete: one row per model at least.
    (incomplete,) = ch.execute(f"""
        SELECT count() FROM (SELECT event_id, revision, uniqExact(model) AS models FROM {ch_database}.credits
        GROUP BY event_id, revision HAVING models != {len(MODELS)})""")[0]
    assert incomplete == 0


def test_a_second_attributor_stands_by_and_takes_over_when_the_first_dies(world, spawn, r, ch, ch_database):
    keys = build(world, 10)
    first = spawn.start("attributor", "--log-level", "WARNING")
    wait_lease(r, first)
    holder = r.get("ct:attributor:lease")
    second = spawn.start("attributor", "--log-level", "WARNING")
    assert wait_idle(r)
    time.sleep(1.0)
    assert r.get("ct:attributor:lease") == holder  # the second stood by
    first.send_signal(signal.SIGKILL)
    first.wait()
    build_more = [("late", world.now)]
    for event_id, at in build_more:
        world.convert(event_id, at, ttclid="clk-0")
    world.sink.drain()
    deadline = time.monotonic() + 30  # the lease lapses (2 s in tests), then the second takes over
    while time.monotonic() < deadline and not ch.execute(
            f"SELECT count() FROM {ch_database}.credits WHERE event_id = 'late'")[0][0]:
        time.sleep(0.2)
    assert r.get("ct:attributor:lease").decode().endswith(f"-{second.pid}")
    keys.add((world.tenant.advertiser, world.tenant.pixel_id, "CompletePayment", "late"))
    assert stored(ch, ch_database) == expected(world.attributor, keys)


def test_a_tick_that_loses_its_lease_stops_unacknowledged_and_the_next_holder_finishes_it(world, r, ch, ch_database):
    """A tick renews the lease between chunks; if a standby took over meanwhile, it stops at once."""
    from clicktrail import keys
    from clicktrail.errors import LeaseLost

    world.unattributed_conversions(5, chunk=2)
    attributor = world.attributor
    r.set(keys.ATTRIBUTOR_LEASE, "standby")  # as if this one had stalled past its lease
    with pytest.raises(LeaseLost):
        attributor.tick(block_ms=10)
    written = ch.execute(f"SELECT uniqExact(event_id) FROM {ch_database}.credits WHERE event_id LIKE 'c%'")[0][0]
    assert written == 2  # the first chunk only
    assert r.xpending(keys.ATTRIBUTION_STREAM, keys.ATTRIBUTOR_GROUP)["pending"] > 0  # nothing acknowledged

    standby = type(attributor)(attributor.settings.updated({"CLAIM_IDLE_MS": 0}), r, attributor.ch, ch_database,
                               attributor.stop, name="standby")
    while standby.tick(block_ms=10):
        pass
    assert r.xpending(keys.ATTRIBUTION_STREAM, keys.ATTRIBUTOR_GROUP)["pending"] == 0
    revisions = ch.execute(f"SELECT event_id, max(revision), sum(sign) FROM {ch_database}.credits "
                           f"WHERE event_id LIKE 'c%' AND model = 'last_click' GROUP BY event_id ORDER BY event_id")
    assert [tuple(row) for row in revisions] == [(f"c{i}", 1, 1) for i in range(5)]  # each once, never restated


def test_a_leading_attributor_whose_turn_outlasted_its_lease_writes_nothing(world, r, ch, ch_database):
    """A leading attributor renews its leases once per turn over its partitions; before writing a
    partition's first chunk it checks that lease again, so a turn that outlasted it (and let another
    attributor take the partition) writes nothing there."""
    from clicktrail import keys
    from clicktrail.errors import LeaseLost

    world.unattributed_conversions(3, chunk=10)  # one chunk
    attributor = world.attributor
    attributor.owned = {0}  # it held partition 0 when its turn began...
    r.set(keys.ATTRIBUTOR_LEASE, "another")  # ...and the turn outlasted the lease
    with pytest.raises(LeaseLost):
        attributor.tick(block_ms=10, partitions={0})
    assert ch.execute(f"SELECT count() FROM {ch_database}.credits WHERE event_id LIKE 'c%'")[0][0] == 0
    assert r.xpending(keys.ATTRIBUTION_STREAM, keys.ATTRIBUTOR_GROUP)["pending"] > 0  # left for the holder


# ---- a half-written revision, then the world changes before the re-run ---------------------------

def _new_click_wins(world, r):
    """A click on campaign B, later than A's, reaches the same person: it takes the last-click credit."""
    world.click("k2", world.now - HOUR, "B", user={"email": sha("jane@example.com")})


def _click_window_shortened(world, r):
    """The advertiser's click window goes from 7 days to 1: the 2-day-old click no longer counts."""
    registry.update_settings(r, world.tenant.advertiser, click_window_days=1)


def _click_corrected(world, r):
    """The ad server posts click k1 again, with its campaign corrected (the latest copy counts)."""
    world.click("k1", world.now - 2 * DAY, "A2", user={"email": sha("jane@example.com")})


#: What changes between the dying attributor's first insert and the re-run, and what the re-run's
#: result is: the explanation's touchpoints (id: campaign, last-click credit, linear credit), the
#: feed's conversions per campaign under the advertiser's model (last click), and a report under
#: other windows than the advertiser's (its query, and its conversions per campaign).
CHANGES = {
    "a_new_click_wins": (
        _new_click_wins,
        {"k1": ("A", 0.0, 0.5), "k2": ("B", 1.0, 0.5)},
        {"B": 1.0},
        ({"click_window": "28", "model": "linear"}, {"A": 0.5, "B": 0.5})),
    "the_click_window_changes": (
        _click_window_shortened,
        {"k1": ("A", 0.0, 0.0)},
        {},
        ({"click_window": "7", "model": "linear"}, {"A": 1.0})),
    "a_click_is_corrected": (
        _click_corrected,
        {"k1": ("A2", 1.0, 1.0)},
        {"A2": 1.0},
        ({"click_window": "28", "model": "linear"}, {"A2": 1.0})),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_half_written_revision_never_shows_once_the_rerun_differs(world, spawn, r, ch, ch_database, change):
    """Killed between its two inserts, the attributor leaves candidates of a revision it never
    credited; the world changes before the re-run, which writes that revision again with another
    result. Explanations, reports under other windows and the feed show the re-run's result alone."""
    alter, touchpoints, feed, (report_params, report) = CHANGES[change]
    jane = {"email": sha("jane@example.com")}
    world.click("k1", world.now - 2 * DAY, "A", user=jane)
    world.convert("c1", world.now - 60, email="jane@example.com")
    world.sink.drain()
    dying = spawn.start("attributor", "--log-level", "WARNING", failpoint="attributor_between_inserts")
    assert dying.wait(timeout=60) == -signal.SIGKILL
    orphan = ch.execute(f"SELECT DISTINCT campaign_id FROM {ch_database}.attribution_candidates")
    assert orphan == [("A",)] and not ch.execute(f"SELECT count() FROM {ch_database}.credits")[0][0]

    alter(world, r)
    world.sink.drain()
    spawn.start("attributor", "--log-level", "WARNING")  # reclaims the dead one's notices
    assert wait_idle(r)
    deadline = time.monotonic() + 30  # the last notice is acknowledged once its revision is stored
    while time.monotonic() < deadline and not ch.execute(f"SELECT count() FROM {ch_database}.credits")[0][0]:
        time.sleep(0.1)

    answer = world.api.get("/v1/conversions/c1/attribution", headers=world.auth)
    assert answer.status_code == 200, answer.json
    (conversion,) = answer.json["conversions"]
    assert conversion["revision"] == 1  # the revision the dead one began, written whole by the re-run
    assert {t["touch_id"]: (t["campaign_id"], t["credit"]["last_click"], t["credit"]["linear"])
            for t in conversion["touchpoints"]} == touchpoints
    assert len(conversion["touchpoints"]) == len(touchpoints)  # each touchpoint once

    day = datetime.fromtimestamp(world.now, timezone.utc).date()
    span = {"start": (day - timedelta(days=3)).isoformat(), "end": day.isoformat(), "dimensions": "campaign_id",
            "metrics": "conversions", "date_basis": "conversion"}
    body = world.api.get("/v1/reports", query_string={**span, **report_params}, headers=world.auth).json
    settings = registry.advertiser_settings(r, world.tenant.advertiser)
    assert body["query"]["click_window"] != settings["click_window_days"]  # recomputed from the candidates
    assert {row["campaign_id"]: row["conversions"] for row in body["rows"] if row["conversions"]} == report

    optimizer = {"Authorization": f"Bearer {registry.create_token(r, world.tenant.advertiser, ['optimizer'])}"}
    polled = world.api.get("/v1/optimizer/conversions", headers=optimizer,
                           query_string={"event": "CompletePayment", "level": "campaign", "bucket": "hour"})
    assert polled.status_code == 200, polled.json
    by_campaign: dict = {}
    for row in polled.json["rows"]:
        by_campaign[row["campaign_id"]] = by_campaign.get(row["campaign_id"], 0.0) + row["conversions"]
    assert {c: n for c, n in by_campaign.items() if n} == feed
