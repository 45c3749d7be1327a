"""Issue 15's first "done when": the same traffic into a single-node system and into a one-machine
cluster gives the same answers, with a sink and an attributor killed mid-run.

Two whole systems as real processes, driven through HTTP only, as their users would:

- single node: the shared test Redis (one stream shard) and a plain ClickHouse database, one
  collector, one sink, one attributor (one partition), the API;
- cluster: a Redis Cluster of 3 masters with a replica each (4 stream shards) and a two-shard
  ClickHouse cluster (Distributed tables), one collector, two sinks, two attributors sharing 4
  advertiser partitions, the API. Its first sink dies (SIGKILL) right after storing a batch it has
  not acknowledged, and its first attributor dies between the two inserts of a revision; the
  others take their work over.

The same clicks (signed redirects, and imports from an ad server), impressions, browser events and
server conversions (fixed ids and times; a duplicate; a late click that restates a conversion) for
six advertisers go to both. Then each system's events counts, credits per conversion and model,
/v1/reports answers and /v1/optimizer/conversions rows must be identical. Ids one system makes at
random (pixel ids, the click ids of redirects) are named by what they stand for before comparing.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from urllib.parse import urlencode

import pytest

from clicktrail import clickhouse, keys, services
from clicktrail import cluster as ch_layout
from pixel.click_urls import make_token
from tests.browser import PERSON_USER_AGENT
from tests.http import call
from tests.servers import env_for, wait_http
from tests.test_chaos import wait_for
from tests.test_clickhouse_cluster import ADVERTISERS, MODELS, ch_cluster, traffic  # noqa: F401 (a fixture)
from tests.test_redis_cluster import cluster, cr  # noqa: F401 (fixtures)

pytestmark = pytest.mark.cluster

SHARDS = 4
PARTITIONS = 4
CLUSTER_DB = "ct_e2e"
LANDING = "https://shop.example/landing"
PERSON = {"User-Agent": PERSON_USER_AGENT, "Origin": "https://shop.example"}
#: Every event is a conversion to attribute (a page view too); "-c3" is sent twice (one event).
CONVERSIONS = ("p1", "c1", "c2", "c3", "c4", "c5", "rp", "r1")


class Deployment:
    """One running system, reached as its users reach it: the collector's and the API's URLs."""

    def __init__(self, name: str, spawn, settings, redis, streams: list[str], notices: list[str], **overrides):
        self.name, self.spawn, self.settings, self.overrides = name, spawn, settings, overrides
        self.redis, self.streams, self.notices = redis, streams, notices
        self.collector = spawn.collector(workers=1, **overrides)
        port = services.free_port()
        spawn.start("api", "--bind", f"127.0.0.1:{port}", "--workers", "1", **overrides)
        self.api = f"http://127.0.0.1:{port}"
        wait_http(self.api + "/healthz")
        self.pixels, self.tokens = register(settings, **overrides)
        self.aliases: dict[str, str] = {pixel: f"pixel-of-{adv}" for adv, pixel in self.pixels.items()}
        self.settled = 0
        self.on_settle = lambda: None

    def worker(self, kind: str, failpoint: str = "", *args: str):
        return self.spawn.start(kind, "--log-level", "WARNING", *args, failpoint=failpoint, **self.overrides)

    # ---- traffic, as tests/test_clickhouse_cluster.py's traffic() sends it ---------------------

    def touch(self, adv: str, kind: str, touch_id: str, at: int, campaign: str, user: dict | None = None) -> None:
        collection, id_field, time_field = {"click": ("clicks", "click_id", "click_time"),
                                            "impression": ("impressions", "impression_id", "impression_time")}[kind]
        row = {id_field: touch_id, time_field: at, "campaign_id": campaign, "adgroup_id": f"{campaign}-g",
               "ad_id": f"{campaign}-ad", **({"user": user} if user else {})}
        reply = self.post(f"{self.api}/v1/{collection}", {collection: [row]}, self.auth(adv))
        assert reply.json["accepted"] == 1, reply.json

    def browse(self, adv: str, event_id: str, at: int, ttp: str, ttclid: str = "", event: str = "PageView",
               properties: dict | None = None) -> None:
        # No sent_at: the browser's clock is then taken as right, and the event keeps its fixed time.
        body = {"events": [{"event": event, "event_id": event_id, "timestamp": at * 1000,
                                                  "ttp": ttp, "ttclid": ttclid, "page": {"url": LANDING},
                                                  **({"properties": properties} if properties else {})}]}
        reply = self.post(f"{self.collector}/e/{self.pixels[adv]}", body, PERSON)
        assert reply.json["accepted"] == 1, reply.json

    def convert(self, adv: str, event_id: str, at: int, value: float, **user) -> None:
        body = {"event_source": "web", "event_source_id": self.pixels[adv],
                "data": [{"event": "CompletePayment", "event_id": event_id, "event_time": at, "user": user,
                          "properties": {"value": value, "currency": "USD"}}]}
        reply = self.post(f"{self.collector}/open_api/v1.3/event/track/", body, self.auth(adv))
        assert reply.json["data"]["accepted"] == 1, reply.json

    def redirect(self, adv: str, campaign: str) -> str:
        """An ad click through the collector's signed redirect; returns the click id it gave."""
        token = make_token(self.settings.site.secret_key, adv, campaign, f"{campaign}-g", f"{campaign}-ad", LANDING)
        connection = http.client.HTTPConnection(self.collector.split("://")[1], timeout=10)
        connection.request("GET", f"/r/{token}", headers={"User-Agent": PERSON_USER_AGENT})
        reply = connection.getresponse()
        assert reply.status == 302, reply.read()
        connection.close()
        click_id = reply.getheader("Location").split("ttclid=")[1].split("&")[0]
        self.aliases[click_id] = f"redirect-of-{adv}-{campaign}"
        return click_id

    def auth(self, adv: str) -> dict:
        return {"Authorization": f"Bearer {self.tokens[adv]}", "Access-Token": self.tokens[adv],
                "User-Agent": PERSON_USER_AGENT}

    @staticmethod
    def post(url: str, body: dict, headers: dict):
        reply = call("POST", url, body, {**headers, "Content-Type": "application/json"})
        assert reply.status == 200, (url, reply.status, reply.body)
        return reply

    def settle(self) -> None:
        """Until every stream entry is stored and every notice attributed (each stage deletes what
        it has acknowledged, after handing it on)."""
        self.on_settle()
        wait_for(f"{self.name}: everything stored and attributed", self._idle, 90,
                 detail=lambda: {s: self.redis.xlen(s) for s in self.streams + self.notices})
        self.settled += 1

    def _idle(self) -> bool:
        return (all(self.redis.xlen(s) == 0 for s in self.streams)
                and all(self.redis.xlen(s) == 0 for s in self.notices))

    # ---- what the users see --------------------------------------------------------------------

    def get(self, adv: str, path: str, **query) -> dict:
        reply = call("GET", f"{self.api}{path}?{urlencode(query)}", headers=self.auth(adv))
        assert reply.status == 200, (path, query, reply.status, reply.body)
        return self.named(reply.json)

    def named(self, answer):
        """``answer`` with this system's random ids replaced by what they stand for."""
        text = json.dumps(answer, sort_keys=True)
        for made, alias in self.aliases.items():
            text = text.replace(made, alias)
        return json.loads(text)


def register(settings, **overrides) -> tuple[dict, dict]:
    """Each advertiser's pixel and a token, made in a `clicktrail`-configured process of the system
    (on a cluster, its client renames the keys of its whole process: never this one's)."""
    script = ("import json, sys\n"
              "from clicktrail import config, redis_client\n"
              "from pixel import registry\n"
              "r = redis_client.patient(config.load().redis.url)\n"
              "out = {a: [registry.create_pixel(r, a, ['shop.example']),\n"
              "           registry.create_token(r, a, ['events', 'adserver', 'reports', 'optimizer'])]\n"
              "       for a in sys.argv[1:]}\n"
              "print(json.dumps(out))\n")
    done = subprocess.run([sys.executable, "-c", script, *ADVERTISERS], env=env_for(settings, **overrides),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    made = json.loads(done.stdout)
    return {a: made[a][0] for a in ADVERTISERS}, {a: made[a][1] for a in ADVERTISERS}


def redirects(systems: list[Deployment], now: int) -> None:
    """Each advertiser's ad clicked through each system's redirect (the same moment in both), a page
    view and a purchase carrying its click id (fixed times after the click)."""
    clicks = {(s.name, adv): s.redirect(adv, "R") for adv in ADVERTISERS for s in systems}
    for system in systems:
        for n, adv in enumerate(ADVERTISERS):
            click_id = clicks[(system.name, adv)]
            system.browse(adv, f"{adv}-rp", now + 300, ttp=f"rbrowser-{n}", ttclid=click_id)
            system.browse(adv, f"{adv}-r1", now + 360, ttp=f"rbrowser-{n}", ttclid=click_id,
                          event="CompletePayment", properties={"value": 20 + n, "currency": "USD"})


def differences(single, sharded, path: str = "") -> list[str]:
    """Where two answers differ (paths to the leaves), for an assertion's message."""
    if isinstance(single, dict) and isinstance(sharded, dict):
        return [d for k in sorted(set(single) | set(sharded), key=str)
                for d in differences(single.get(k), sharded.get(k), f"{path}/{k}")]
    if isinstance(single, list) and isinstance(sharded, list):
        extra = [] if len(single) == len(sharded) else [f"{path}: {len(single)} items != {len(sharded)}"]
        return extra + [d for n, (a, b) in enumerate(zip(single, sharded)) for d in differences(a, b, f"{path}[{n}]")]
    return [] if single == sharded else [f"{path}: {single!r} != {sharded!r}"]


def same(single, sharded) -> None:
    found = differences(single, sharded)
    print("single node != cluster:", *found, sep="\n  ")  # shown in full when the test fails
    assert not found, found[:5]


def event_counts(ch, db: str) -> list[tuple]:
    """Per advertiser and event: stored rows once folded, and distinct event ids."""
    return ch.execute(f"SELECT advertiser_id, event, count(), uniqExact(event_id) FROM {db}.events FINAL "
                      "GROUP BY advertiser_id, event ORDER BY advertiser_id, event")


def credit_sums(ch, db: str, system: Deployment) -> list[tuple]:
    rows = ch.execute(
        f"SELECT advertiser_id, event_id, model, touch_kind, touch_id, round(sum(credit * sign), 9), sum(sign) "
        f"FROM {db}.credits GROUP BY advertiser_id, event_id, model, touch_kind, touch_id "
        "HAVING sum(sign) != 0 ORDER BY advertiser_id, event_id, model, touch_kind, touch_id")
    return sorted(tuple(system.named(list(row))) for row in rows)


def explanations(system: Deployment) -> dict:
    out = {(adv, c): system.get(adv, f"/v1/conversions/{adv}-{c}/attribution")
           for adv in ADVERTISERS for c in CONVERSIONS if c != "c4"}
    for answer in out.values():
        for touch in answer["conversions"][0]["touchpoints"]:
            if touch["touch_id"].startswith("redirect-of-"):  # clicked now, some ms apart in the two
                del touch["touch_time"], touch["days_before_conversion"]
    return out


def reports(system: Deployment, start: str, end: str) -> dict:
    out = {}
    for adv in ADVERTISERS:
        for model in MODELS:
            out[(adv, model)] = system.get(adv, "/v1/reports", start=start, end=end, model=model,
                                           dimensions="campaign_id,ad_id")
        out[(adv, "day")] = system.get(adv, "/v1/reports", start=start, end=end, dimensions="stat_time_day,event")
        out[(adv, "conversion")] = system.get(adv, "/v1/reports", start=start, end=end, model="linear",
                                              dimensions="stat_time_hour,campaign_id", date_basis="conversion")
    return out


def feed(system: Deployment) -> dict:
    out = {}
    for adv in ADVERTISERS:
        answer = system.get(adv, "/v1/optimizer/conversions", event="CompletePayment", level="ad", bucket="hour")
        # A row's revision is when its attributor wrote it: the two systems wrote at other moments.
        out[adv] = [{k: v for k, v in row.items() if k != "revision"} for row in answer["rows"]]
    return out


def test_a_one_machine_cluster_answers_as_a_single_node_with_a_sink_and_an_attributor_killed(
        spawn, settings, r, ch, ch_database, cluster, cr, ch_cluster):  # noqa: F811 (fixtures)
    cluster_url = clickhouse.with_database(ch_cluster.base_url, CLUSTER_DB)
    ch_layout.migrate(cluster_url, CLUSTER_DB, ch_cluster.layout.name)
    on_cluster = {"REDIS_URL": cluster.url, "STREAM_SHARDS": SHARDS, "REDIS_TIMEOUT_MS": 1000,
                  "CLICKHOUSE_URL": cluster_url, "ATTRIBUTION_PARTITIONS": PARTITIONS}
    single = Deployment("single node", spawn, settings, r, [keys.event_stream(0)], [keys.attribution_stream(0)])
    single.worker("sink")
    single.worker("attributor")
    # On the cluster, as a user inspecting it names them (this process keeps the single-Redis names).
    sharded = Deployment("cluster", spawn, settings, cr, [f"ct:{{events:{n}}}" for n in range(SHARDS)],
                         ["{ct}:attribution"] + [f"{{ct}}:attribution:{n}" for n in range(1, PARTITIONS)],
                         **on_cluster)
    # Alone at first, each takes the first work there is and dies in the middle of it.
    doomed_sink = sharded.worker("sink", "sink_after_insert")
    doomed_attributor = sharded.worker("attributor", "attributor_between_inserts")

    def take_over() -> None:
        if sharded.settled:
            return
        assert doomed_sink.wait(60) == -9  # stored a batch, never acknowledged it
        sharded.worker("sink", "", "--shards", "0,1")
        sharded.worker("sink", "", "--shards", "2,3")
        assert doomed_attributor.wait(60) == -9  # wrote a revision's candidates, not its credits
        sharded.worker("attributor")
        sharded.worker("attributor")

    sharded.on_settle = take_over

    now = int(time.time()) - 60
    redirects([single, sharded], now)
    for system in (single, sharded):
        traffic(system, now)

    counts = event_counts(ch, ch_database)
    per_adv = {adv: sum(n for a, _, n, _ in counts if a == adv) for adv in ADVERTISERS}
    # A page view, five server conversions and a redirect's page view and purchase each.
    assert per_adv == {adv: 8 for adv in ADVERTISERS}, counts
    assert all(rows == ids for *_, rows, ids in counts)
    on_shards = clickhouse.connect(cluster_url)
    assert event_counts(on_shards, CLUSTER_DB) == counts

    credits = credit_sums(ch, ch_database, single)
    conversions = {(adv, event_id) for adv, event_id, *_ in credits}
    assert conversions == {(adv, f"{adv}-{c}") for adv in ADVERTISERS for c in CONVERSIONS}
    assert all(row[-1] == 1 for row in credits), "a credit row counted twice or cancelled wrong"
    assert {model for _, _, model, *_ in credits} == set(MODELS)
    assert any(row[4] == f"redirect-of-{ADVERTISERS[0]}-R" for row in credits)
    got = credit_sums(on_shards, CLUSTER_DB, sharded)
    assert got == credits, (sorted(set(credits) - set(got))[:5], sorted(set(got) - set(credits))[:5])
    explained = explanations(single)
    for adv in ADVERTISERS:  # the purchase after a redirect is credited to the redirect's click
        purchase, = explained[(adv, "r1")]["conversions"]
        assert purchase["attributed"] and purchase["touchpoints"][0]["touch_id"] == f"redirect-of-{adv}-R"
    same(explained, explanations(sharded))

    days = time.strftime("%Y-%m-%d", time.gmtime(now - 4 * 86_400)), time.strftime("%Y-%m-%d", time.gmtime(now + 86_400))
    answers = reports(single, *days)
    assert all(answer["rows"] for answer in answers.values())
    same(answers, reports(sharded, *days))
    rows = feed(single)
    assert all(rows[adv] for adv in ADVERTISERS)
    same(rows, feed(sharded))
