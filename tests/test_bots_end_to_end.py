"""Bots end to end, on real processes: a gunicorn collector, a sink, an attributor and the API.

Clicks through the redirect and conversions from every transport (pixel, Events API 2.0 and
1.0, Meta's Conversions API), some from bots: the bots' are stored and flagged, and left out of
reports, the optimizer feed and attribution unless a report asks for them (include_bots=true);
the diagnostics count them. A server event is judged by the user agent it carries, never by the
sending server's own.
"""

from __future__ import annotations

import http.client
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from clicktrail import services
from pixel import registry
from pixel.click_urls import make_token
from tests import servers
from tests.conftest import now_ms, query_dicts
from tests.http import call

CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/120.0.0.0 Safari/537.36")
HEADLESS = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 "
            "Safari/537.36")


def _click(base: str, secret: str, ad: str, user_agent: str, cookie: str = "") -> str:
    """Follow an ad's click URL as a client with ``user_agent``; return the ttclid it lands with."""
    token = make_token(secret, "adv-1", "cmp-1", "grp-1", ad, "https://www.shop.example/spring")
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    headers = {"User-Agent": user_agent} if user_agent else {}
    if cookie:
        headers["Cookie"] = cookie
    try:
        # http.client sends no User-Agent unless told: with user_agent "" the request has none.
        conn.putrequest("GET", f"/r/{token}", skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 302, resp.status
        return parse_qs(urlsplit(resp.getheader("Location")).query)["ttclid"][0]
    finally:
        conn.close()


def _browser_event(base: str, pixel: str, event_id: str, ttclid: str, value: float, user_agent: str) -> None:
    now = now_ms()
    body = {"sent_at": now, "events": [{"event": "CompletePayment", "event_id": event_id, "timestamp": now,
                                        "ttclid": ttclid, "page": {"url": "https://www.shop.example/thanks"},
                                        "properties": {"value": value, "currency": "USD"}}]}
    reply = call("POST", f"{base}/e/{pixel}", body, {"Content-Type": "text/plain", "Origin": "https://shop.example",
                                                      "User-Agent": user_agent})
    assert reply.status == 200 and reply.json["accepted"] == 1, reply.body


def _server_event(base: str, tenant, event_id: str, user: dict, value: float, sender: str) -> None:
    body = {"event_source": "web", "event_source_id": tenant.pixel_id,
            "data": [{"event": "CompletePayment", "event_id": event_id, "event_time": int(time.time()) + 2,
                      "user": user, "properties": {"value": value, "currency": "USD"}}]}
    reply = call("POST", f"{base}/open_api/v1.3/event/track/", body,
                 {"Content-Type": "application/json", "Access-Token": tenant.token, "User-Agent": sender})
    assert reply.status == 200 and reply.json["code"] == 0, reply.body


def _wait(fetch, done, timeout: float = 90.0):
    """Poll ``fetch()`` until ``done(answer)``; return the last answer (the caller asserts on it)."""
    deadline = time.monotonic() + timeout
    answer = fetch()
    while not done(answer) and time.monotonic() < deadline:
        time.sleep(0.3)
        answer = fetch()
    return answer


@pytest.fixture
def live(r, ch, spawn, settings, tenant):
    """Collector, sink, attributor and API as real processes, and the tokens to use them."""
    collector = spawn.collector(workers=2)
    spawn.sink()
    spawn.start("attributor", "--log-level", "WARNING")
    port = services.free_port()
    spawn.start("api", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "4")
    api = f"http://127.0.0.1:{port}"
    servers.wait_http(api + "/healthz")
    return {"collector": collector, "api": api, "secret": settings.site.secret_key,
            "reports": {"Authorization": f"Bearer {registry.create_token(r, 'adv-1', ['reports'])}"},
            "optimizer": {"Authorization": f"Bearer {registry.create_token(r, 'adv-1', ['optimizer'])}"}}


def _report(live: dict, **params) -> dict:
    today = datetime.now(UTC).date()
    query = {"start": (today - timedelta(days=1)).isoformat(), "end": (today + timedelta(days=1)).isoformat(),
             "dimensions": "ad_id", "metrics": "clicks,conversions,conversion_value,cvr", "events": "CompletePayment",
             **params}
    reply = call("GET", f"{live['api']}/v1/reports?{urlencode(query)}", headers=live["reports"])
    assert reply.status == 200, reply.body
    return reply.json


def test_bots_are_stored_flagged_and_counted_nowhere_unless_asked(live, tenant, ch, ch_database):
    base, secret = live["collector"], live["secret"]
    # Five people click ad-1 (one of them in a browser with a _ttp cookie, for Meta's fbp);
    # curl fetches ad-2's click URL, a headless Chrome ad-3's.
    people = [_click(base, secret, "ad-1", CHROME) for _ in range(4)]
    people.append(_click(base, secret, "ad-1", CHROME, cookie="_ttp=browser-meta"))
    curl_click = _click(base, secret, "ad-2", "curl/8.5.0")
    headless_click = _click(base, secret, "ad-3", HEADLESS)

    # People convert through every transport. Server events carry the visitor's user agent in the
    # event (or none); the sending server's own user agent is a library's and is never read.
    _browser_event(base, tenant.pixel_id, "human-browser", people[0], 10.0, CHROME)
    _server_event(base, tenant, "human-server", {"ttclid": people[1], "user_agent": CHROME}, 20.0,
                  sender="python-requests/2.31.0")
    _server_event(base, tenant, "server-no-ua", {"ttclid": people[2]}, 5.0, sender="python-requests/2.31.0")
    v1 = {"pixel_code": tenant.pixel_id, "event": "CompletePayment", "event_id": "human-v1",
          "timestamp": datetime.fromtimestamp(time.time() + 2, UTC).isoformat(timespec="seconds"),
          "context": {"ad": {"callback": people[3]}, "user_agent": CHROME, "page": {"url": "https://shop.example/"}},
          "properties": {"value": 7.0, "currency": "USD"}}
    reply = call("POST", f"{base}/open_api/v1.3/pixel/track/", v1,
                 {"Content-Type": "application/json", "Access-Token": tenant.token, "User-Agent": "Go-http-client/1.1"})
    assert reply.status == 200 and reply.json["code"] == 0, reply.body
    meta = {"data": [{"event_name": "CompletePayment", "event_id": "human-meta", "event_time": int(time.time()) + 2,
                      "action_source": "website", "event_source_url": "https://shop.example/thanks",
                      "user_data": {"client_user_agent": CHROME, "fbp": "browser-meta"},
                      "custom_data": {"value": 3.0, "currency": "USD"}}]}
    reply = call("POST", f"{base}/v18.0/{tenant.pixel_id}/events?access_token={tenant.token}", meta,
                 {"Content-Type": "application/json", "User-Agent": "facebook-python-business-sdk/18.0.0"})
    assert reply.status == 200 and reply.json["events_received"] == 1, reply.body
    # Bots convert: a headless Chrome through the pixel, and a server forwarding a headless visitor
    # who came through a person's click (people[0]).
    _browser_event(base, tenant.pixel_id, "bot-browser", headless_click, 99.0, HEADLESS)
    _server_event(base, tenant, "bot-server", {"ttclid": people[0], "user_agent": HEADLESS}, 50.0,
                  sender="python-requests/2.31.0")
    # A person's conversion carrying the click id curl got: a bot's click is no touchpoint.
    _browser_event(base, tenant.pixel_id, "human-curl-click", curl_click, 1.0, CHROME)

    with_bots = _wait(lambda: _report(live, include_bots="true"), lambda rep: rep["totals"]["conversions"] >= 7)

    # Everything is stored, raw, with the bots flagged.
    events = {row["event_id"]: row for row in query_dicts(
        ch, f"SELECT event_id, source, user_agent, is_bot, device_type FROM {ch_database}.events_unique")}
    assert {k: (v["is_bot"], v["user_agent"]) for k, v in events.items()} == {
        "human-browser": (0, CHROME), "human-server": (0, CHROME), "server-no-ua": (0, ""),
        "human-v1": (0, CHROME), "human-meta": (0, CHROME), "bot-browser": (1, HEADLESS),
        "bot-server": (1, HEADLESS), "human-curl-click": (0, CHROME)}
    assert events["bot-browser"]["device_type"] == "bot"
    clicks = {row["touch_id"]: (row["ad_id"], row["is_bot"]) for row in query_dicts(
        ch, f"SELECT touch_id, ad_id, is_bot FROM {ch_database}.touchpoints")}
    assert clicks == {**{c: ("ad-1", 0) for c in people}, curl_click: ("ad-2", 1), headless_click: ("ad-3", 1)}

    # Reports: people only; curl's click does not halve the CVR.
    report = _report(live)
    assert report["rows"] == [{"ad_id": "ad-1", "clicks": 5, "conversions": 5.0, "conversion_value": 45.0,
                               "cvr": 1.0}]
    assert report["totals"] == {"clicks": 5, "conversions": 5.0, "conversion_value": 45.0, "cvr": 1.0}
    assert report["query"]["include_bots"] is False
    # include_bots=true: the bots' clicks, and their conversions credited by the same rules.
    assert with_bots["rows"] == [
        {"ad_id": "ad-1", "clicks": 5, "conversions": 6.0, "conversion_value": 95.0, "cvr": 1.2},
        {"ad_id": "ad-2", "clicks": 1, "conversions": 0.0, "conversion_value": 0.0, "cvr": 0.0},
        {"ad_id": "ad-3", "clicks": 1, "conversions": 1.0, "conversion_value": 99.0, "cvr": 1.0},
    ]
    assert with_bots["query"]["include_bots"] is True
    # The same through the other paths: ClickHouse-joined (no ad breakdown needed: by ad group)
    # and recomputed under other windows.
    assert _report(live, dimensions="adgroup_id")["totals"]["conversions"] == 5.0
    assert _report(live, click_window="28")["totals"]["conversions"] == 5.0
    assert _report(live, click_window="28", include_bots="true")["totals"]["conversions"] == 7.0

    # The optimizer feed: people's clicks and conversions only.
    # (The attributor publishes its last write to the feed when it acknowledges the tick: wait for it.)
    feed = _wait(lambda: call("GET", f"{live['api']}/v1/optimizer/conversions?event=CompletePayment",
                              headers=live["optimizer"]),
                 lambda reply: reply.status != 200 or sum(row["conversions"] for row in reply.json["rows"]) >= 5)
    assert feed.status == 200, feed.body
    rows = feed.json["rows"]
    assert {row["ad_id"] for row in rows} == {"ad-1"}
    assert (sum(row["clicks"] for row in rows), sum(row["conversions"] for row in rows),
            sum(row["conversion_value"] for row in rows)) == (5, 5.0, 45.0)

    # Explanations: the headless conversion's own click would have earned it; a person's
    # conversion with curl's click id got nothing from it.
    def why(event_id: str) -> dict:
        reply = call("GET", f"{live['api']}/v1/conversions/{event_id}/attribution", headers=live["reports"])
        assert reply.status == 200, reply.body
        (conv,) = reply.json["conversions"]
        return conv

    bot = why("bot-browser")
    assert bot["attributed"] is False and [r["code"] for r in bot["not_attributed_because"]] == ["bot"]
    assert [(t["touch_id"], t["eligible"]) for t in bot["touchpoints"]] == [(headless_click, False)]
    person = why("human-curl-click")
    assert person["attributed"] is False and person["touchpoints"] == []
    assert [(r["code"], "is a bot's click" in r["message"]) for r in person["not_attributed_because"]] == [
        ("click_id_not_found", True)]

    # Diagnostics say what was left out.
    diag = call("GET", f"{live['api']}/v1/pixels/{tenant.pixel_id}/diagnostics", headers=live["reports"])
    assert diag.status == 200, diag.body
    assert diag.json["bots_excluded_7d"] == {"clicks": 2, "conversions": 2}
    by_source = {(e["event"], e["source"]): (e["last_7d"], e["bots_7d"]) for e in diag.json["events"]}
    assert by_source == {("CompletePayment", "browser"): (3, 1), ("CompletePayment", "server"): (5, 1)}
    # Of the six people's conversions, five are matched (the one with curl's click id is not).
    assert diag.json["matched_share_7d"] == pytest.approx(5 / 6)


def test_a_click_without_a_user_agent_is_a_bots(live, tenant, ch, ch_database):
    """Every browser sends a user agent: a click without one is a program's."""
    click = _click(live["collector"], live["secret"], "ad-1", "")
    _browser_event(live["collector"], tenant.pixel_id, "after-bare-click", click, 10.0, CHROME)
    rows = _wait(lambda: query_dicts(ch, f"SELECT touch_id, is_bot, user_agent FROM {ch_database}.touchpoints"),
                 lambda found: len(found) == 1)
    assert rows == [{"touch_id": click, "is_bot": 1, "user_agent": ""}]
    report = _wait(lambda: _report(live, include_bots="true"), lambda rep: rep["totals"]["clicks"] == 1)
    assert report["totals"]["clicks"] == 1 and report["totals"]["conversions"] == 0.0  # a person's: no touchpoint
    assert _report(live)["totals"]["clicks"] == 0
