"""Attributors that share the work: 4 partitions of advertisers, real `clicktrail attributor` processes.

Every conversion is attributed exactly once (each partition has one writer), an attributor killed
mid-run hands its partitions to the other with nothing lost or doubled, and the optimizer feed,
polled with its cursors while they work, never skips a change (its watermark never passes a
stamp not yet stored).
"""

from __future__ import annotations

import signal
import time

import pytest

from attribution.models import DEFAULT_MODEL, MODELS
from attribution.partitions import Membership
from clicktrail import keys
from pixel import records, registry
from tests.attribution_world import DAY, HOUR, World, sha
from tests.conftest import Tenant, where
from tests.test_chaos import wait_for
from tests.test_feed import _poll

PARTITIONS = 4


@pytest.fixture
def settings(settings):
    return settings.updated({"ATTRIBUTION_PARTITIONS": PARTITIONS})


@pytest.fixture
def api_client(settings, r):
    from reporting.api import create_app as create_api

    return create_api({**where(settings), "ATTRIBUTION_PARTITIONS": PARTITIONS}).test_client()


def advertiser_of(partition: int) -> str:
    """An advertiser id whose notices go to ``partition`` (the first adv-<n> that does)."""
    return next(f"adv-{n}" for n in range(1000) if records.notice_partition(f"adv-{n}", PARTITIONS) == partition)


@pytest.fixture
def worlds(client, api_client, sink, attributor, r, ch, ch_database) -> list[World]:
    """One advertiser per partition, each with its pixel, tokens and an optimizer token."""
    out = []
    for partition in range(PARTITIONS):
        tenant = Tenant(r, advertiser_of(partition))
        w = World(client, api_client, tenant, sink, attributor, r, ch, ch_database)
        w.optimizer = {"Authorization": f"Bearer {registry.create_token(r, tenant.advertiser, ['optimizer'])}"}
        out.append(w)
    return out


def feed_clicks(w: World, n: int) -> None:
    for i in range(n):
        w.click(f"clk-{i}", w.now - (i % 5) * DAY - i, campaign=f"cmp-{i % 3}",
                user={"email": sha(f"u{i % 4}@example.com")})
        if i % 3 == 0:
            w.impression(f"imp-{i}", w.now - HOUR - i, campaign=f"cmp-{i % 2}")


def convert(w: World, start: int, n: int) -> set[tuple]:
    for i in range(start, start + n):
        kwargs = {"email": f"u{i % 6}@example.com"} if i % 2 else {"ttclid": f"clk-{i % 10}"}
        w.convert(f"conv-{i}", w.now - i, value=1.0 + i, **kwargs)
    return {(w.tenant.advertiser, w.tenant.pixel_id, "CompletePayment", f"conv-{i}") for i in range(start, start + n)}


def idle(r) -> bool:
    """Every partition's notices processed and acknowledged."""
    for n in range(PARTITIONS):
        stream = keys.attribution_stream(n)
        if r.xlen(stream) or (r.exists(stream) and r.xpending(stream, keys.ATTRIBUTOR_GROUP)["pending"]):
            return False
    return True


def holders(r) -> dict[int, str]:
    return {n: (r.get(keys.attributor_lease(n)) or b"").decode() for n in range(PARTITIONS)}


def shared_by(r, procs) -> bool:
    """Each live attributor holds leases on its share (PARTITIONS / len(procs)) of the partitions."""
    held = holders(r)
    names = {p.pid: [n for n, holder in held.items() if holder.endswith(f"-{p.pid}")] for p in procs}
    return all(len(parts) == PARTITIONS // len(procs) for parts in names.values())


def assert_attributed_once(ch, db, conversions: set[tuple]) -> None:
    """Each conversion: one revision, written once; its credits sum to 1 under every model."""
    rows = ch.execute(f"""
        SELECT advertiser_id, event_id, model, uniqExact(revision), sum(sign), round(sum(credit * sign), 9)
        FROM {db}.credits GROUP BY advertiser_id, event_id, model""")
    seen = {(adv, event_id, model): (revisions, signs, credit) for adv, event_id, model, revisions, signs, credit in rows}
    expected = {(adv, event_id, model) for adv, _, _, event_id in conversions for model in MODELS}
    assert set(seen) == expected  # none lost, none invented
    for key, (revisions, signs, credit) in seen.items():
        assert revisions == 1, key  # never restated: one writer per advertiser, never two copies
        assert credit == 1.0, (key, credit, signs)  # a second writer's copy would make it 2


def expected_credits(attributor, conversions: set[tuple]) -> dict:
    out: dict = {}
    for res in attributor.compute(conversions):
        for model in MODELS:
            credited = res.credited[model]
            out[(res.conv.advertiser_id, res.conv.event_id, model)] = (
                {(t.touch_id, round(c, 9)) for t, c in credited} if credited else {("", 1.0)})
    return out


def stored_credits(ch, db) -> dict:
    rows = ch.execute(f"""
        SELECT advertiser_id, event_id, model, touch_id, round(credit, 9) FROM {db}.credits FINAL
        WHERE (advertiser_id, event_id, revision) IN
              (SELECT advertiser_id, event_id, max(revision) FROM {db}.credits GROUP BY advertiser_id, event_id)""")
    out: dict = {}
    for adv, event_id, model, touch_id, credit in rows:
        out.setdefault((adv, event_id, model), set()).add((touch_id, credit))
    return out


def credited(ch, db, world: World) -> float:
    """Conversions the advertiser's stored credits give its touchpoints (the feed's total)."""
    return round(ch.execute(f"SELECT sum(credit * sign) FROM {db}.credits WHERE advertiser_id = %(a)s "
                            "AND model = %(m)s AND touch_id != ''",
                            {"a": world.tenant.advertiser, "m": DEFAULT_MODEL})[0][0], 6)


class Poller:
    """An optimizer polling one advertiser's feed with its cursors, keeping the latest of each bucket."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.cursor: str | None = None
        self.view: dict[tuple, tuple] = {}

    def poll(self) -> None:
        while True:
            body = _poll(self.world, self.cursor)
            for row in body["rows"]:
                self.view[_bucket(row)] = _figures(row)
            self.cursor = body["next_cursor"]
            if not body["has_more"]:
                return


def _bucket(row: dict) -> tuple:
    return row["bucket_start"], row["campaign_id"], row["adgroup_id"], row["ad_id"], row["event"]


def _figures(row: dict) -> tuple:
    return row["clicks"], row["impressions"], row["conversions"], row["conversion_value"]


def fresh_view(world: World) -> dict:
    poller = Poller(world)
    poller.poll()
    return poller.view


def assert_feeds_whole(pollers: list[Poller], ch, db) -> None:
    """The view each poller built by following its cursors is the whole truth: a watermark past
    a stamp not yet stored would have let a change slip behind the cursor for good."""
    for poller in pollers:
        poller.poll()
        assert poller.view == fresh_view(poller.world)
        assert sum(f[2] for f in poller.view.values()) == credited(ch, db, poller.world) > 0


def start_two(worlds: list[World], spawn, r, sink, **overrides) -> tuple:
    """Clicks of every advertiser stored, then two attributors started and sharing the partitions."""
    for w in worlds:
        feed_clicks(w, 10)
    sink.drain()
    first = spawn.start("attributor", "--log-level", "WARNING", **overrides)
    second = spawn.start("attributor", "--log-level", "WARNING", **overrides)
    wait_for("two attributors holding two partitions each", lambda: shared_by(r, [first, second]))
    return first, second


def test_an_advertisers_notices_go_to_its_partitions_stream(worlds, r, sink):
    """The sink and the imports put each advertiser's notices on its partition's stream only."""
    for w in worlds:
        feed_clicks(w, 2)
        convert(w, 0, 2)
    sink.drain()
    for n, w in enumerate(worlds):
        entries = r.xrange(keys.attribution_stream(n))
        assert {e[1][records.ADVERTISER].decode() for e in entries} == {w.tenant.advertiser}
        kinds = {e[1][records.KIND].decode() for e in entries}
        assert kinds == {records.NOTICE_CONVERSIONS, records.NOTICE_TOUCHES}
    assert keys.attribution_stream(0) == "ct:attribution" and keys.attribution_stream(3) == "ct:attribution:3"
    assert keys.feed_watermark(0) == "ct:feed:watermark" and keys.attributor_lease(2) == "ct:attributor:lease:2"


def test_two_attributors_share_the_partitions_and_attribute_each_conversion_once(worlds, spawn, r, ch, ch_database,
                                                                                  sink, attributor):
    first, second = start_two(worlds, spawn, r, sink)
    pollers = [Poller(w) for w in worlds]
    conversions: set[tuple] = set()
    for round_ in range(6):  # conversions keep coming while both attribute, and the feed is polled
        for w in worlds:
            conversions |= convert(w, round_ * 5, 5)
        sink.drain()
        for poller in pollers:
            poller.poll()
    wait_for("every notice processed", lambda: idle(r))
    assert shared_by(r, [first, second])  # nobody took another's share meanwhile
    assert_attributed_once(ch, ch_database, conversions)
    assert stored_credits(ch, ch_database) == expected_credits(attributor, conversions)
    assert_feeds_whole(pollers, ch, ch_database)


def test_killing_one_attributor_mid_run_hands_its_partitions_to_the_other(worlds, spawn, r, ch, ch_database, sink,
                                                                          attributor):
    first, second = start_two(worlds, spawn, r, sink, ATTRIBUTOR_BATCH=1)
    victim_parts = [n for n, holder in holders(r).items() if holder.endswith(f"-{first.pid}")]
    pollers = [Poller(w) for w in worlds]
    conversions: set[tuple] = set()
    for round_ in range(8):
        for w in worlds:
            conversions |= convert(w, round_ * 4, 4)
            sink.drain()  # a notice per advertiser and round: work queued on every partition
        if round_ == 3:
            first.send_signal(signal.SIGKILL)  # mid-run: notices read and not yet acknowledged, maybe
            first.wait()
        for poller in pollers:
            poller.poll()
    wait_for("the survivor holding every partition", lambda: shared_by(r, [second]))
    wait_for("every notice processed, the dead one's pending ones too", lambda: idle(r))
    assert set(victim_parts) <= {n for n, h in holders(r).items() if h.endswith(f"-{second.pid}")}
    assert_attributed_once(ch, ch_database, conversions)
    assert stored_credits(ch, ch_database) == expected_credits(attributor, conversions)
    assert_feeds_whole(pollers, ch, ch_database)


def test_an_attributor_with_another_partition_count_waits_for_the_old_ones(settings, r):
    """Two counts at once would give an advertiser two writers: the newcomer holds nothing."""
    old = Membership(r, "old", 4, 2000)
    assert old.wanted() == {0, 1, 2, 3}
    new = Membership(r, "new", 8, 2000)
    assert new.wanted() == set() and new.blocked
    assert set(r.hkeys(keys.ATTRIBUTORS)) == {b"old"}  # the waiting one never counted in the ranks
    peer = Membership(r, "peer", 4, 2000)
    assert peer.wanted() == {1, 3} and old.wanted() == {0, 2}  # ranks by name: "old" < "peer"
    old.leave()
    peer.leave()
    assert new.wanted() == set(range(8)) and not new.blocked


def test_a_notice_left_on_another_partitions_stream_moves_to_its_own(worlds, r, ch, ch_database, sink, attributor):
    """Notices queued before the partition count changed are still attributed, by their partition's holder."""
    w = worlds[2]
    feed_clicks(w, 3)
    conversions = convert(w, 0, 3)
    sink.drain()
    stream = keys.attribution_stream(2)
    entries = r.xrange(stream)
    for entry_id, fields in entries:  # as if written while there was one partition
        r.xadd(keys.ATTRIBUTION_STREAM, fields)
        r.xdel(stream, entry_id)
    assert attributor.tick(block_ms=10, partitions={0}) == len(entries)
    assert r.xlen(keys.ATTRIBUTION_STREAM) == 0 and r.xlen(stream) == len(entries)
    assert ch.execute(f"SELECT count() FROM {ch_database}.credits")[0][0] == 0  # not by partition 0's holder
    attributor.settle()
    assert_attributed_once(ch, ch_database, conversions)


def test_the_feed_reads_the_watermark_of_the_advertisers_partition(worlds, r):
    """An advertiser's cursor follows its own partition's writer, never another partition's."""
    now = time.time_ns() // 1_000_000
    r.set(keys.feed_watermark(0), now + 1_000)
    r.set(keys.feed_watermark(2), now + 5_000)
    assert _poll(worlds[2], str(now))["next_cursor"] == str(now + 5_000)
    assert _poll(worlds[0], str(now))["next_cursor"] == str(now + 1_000)
    assert _poll(worlds[1], str(now))["next_cursor"] == str(now)  # partition 1 has published nothing yet


def test_an_erasure_is_done_by_its_advertisers_partition_holder_and_stamped_there(worlds, r, ch, ch_database, sink,
                                                                                  attributor):
    from pixel import erasure

    w = worlds[2]
    feed_clicks(w, 4)
    convert(w, 0, 4)
    w.settle()
    published = {n: int(r.get(keys.feed_watermark(n)) or 0) for n in range(PARTITIONS)}
    assert published[2] > 0 and published[0] == 0  # the tick published in partition 2 only
    rid = erasure.submit(r, w.tenant.advertiser, {"email": [sha("u1@example.com")]}, "test")
    for _ in range(3):
        attributor.eraser.step(lambda adv: attributor._partition_of(adv).index in {0, 1, 3})
    assert erasure.load_work(r, rid)["phase"] == "new"  # not the business of other partitions' holders
    deadline = time.monotonic() + 60
    while erasure.audit(r, w.tenant.advertiser, rid)["status"] != erasure.DONE:
        assert time.monotonic() < deadline, erasure.load_work(r, rid)
        attributor.eraser.step(lambda adv: attributor._partition_of(adv).index == 2)
        time.sleep(0.1)
    # Its cancels were stamped after the partition's last tick, and published in its watermark.
    assert int(r.get(keys.feed_watermark(2))) > published[2]
    assert not r.get(keys.feed_watermark(0))
    left = {row[0] for row in ch.execute(f"SELECT DISTINCT event_id FROM {ch_database}.credits "
                                         "WHERE advertiser_id = %(a)s", {"a": w.tenant.advertiser})}
    assert "conv-1" not in left and left  # the person's conversion (u1) is gone, the others stay
