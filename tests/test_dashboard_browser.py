"""The advertiser dashboard (GET /dashboard) in Debian's Chromium, against the real API under gunicorn.

The data go through the real paths: clicks and costs are posted to the API (scope adserver),
the browser's landing page views and the conversions to the collector (browser endpoint and
Events API), then the sink stores them and the attributor attributes them. One conversion's
browser saw a click on campaign "spring" and later one on "summer", so last click and first
click credit different campaigns; every number the tests expect is computed by hand below.

Screenshots: test-artifacts/dashboard.png (full page, signed in, first click, an explanation
open), dashboard-other-advertiser.png and dashboard-bad-token.png.
"""

from __future__ import annotations

import csv
import io
import time
import urllib.error
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

import pytest

from clicktrail import services
from pixel import registry
from tests import servers
from tests.conftest import ARTIFACTS, ROOT, Tenant

pytestmark = pytest.mark.browser

DAY = 86_400
DASH = "\u2014"
P100 = "100.00%"


# ---- fixtures ------------------------------------------------------------------------------------


# `playwright` and `browser` (Debian's Chromium) are fixtures of tests/conftest.py.


@pytest.fixture
def page(browser):
    ctx = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    problems: list[str] = []
    pg.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    pg.on("console", lambda msg: problems.append(f"console: {msg.text}")
          if msg.type == "error" and "Content Security Policy" in msg.text else None)
    pg.problems = problems
    yield pg
    ctx.close()
    assert not problems, problems  # no script error and no CSP violation on any page of the test


@pytest.fixture
def api_base(r, ch, spawn):
    """The API app (`clicktrail api`) under gunicorn, 2 workers; returns its base URL.

    Asks for ``r`` and ``ch`` before ``spawn`` so the server is stopped before Redis is flushed."""
    port = services.free_port()
    spawn.start("api", "--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "4")
    base = f"http://127.0.0.1:{port}"
    servers.wait_http(base + "/healthz")
    return base


class Shop:
    """Advertiser "acme" with one pixel, its clicks, costs and two conversions; "zeta" with its own."""

    def __init__(self, r, client, api_client, sink, attributor) -> None:
        self.acme = Tenant(r, "acme", "shop.example")
        self.zeta = Tenant(r, "zeta", "zeta.example")
        self.reports = registry.create_token(r, "acme", ["reports"])
        self.zeta_reports = registry.create_token(r, "zeta", ["reports"])
        self.client, self.api = client, api_client
        now = int(time.time()) - 60
        self.today = datetime.now(UTC).date()
        self.cost_day = self.today - timedelta(days=1)
        self.t = {"clk-a1": now - 3 * DAY, "clk-a2": now - 2 * DAY, "clk-b1": now - DAY,
                  "clk-b2": now - DAY + 5,
                  "clk-c1": now - 2 * DAY, "order-1": now - 3600, "order-2": now - 1800}

        acme_ads = registry.create_token(r, "acme", ["adserver"])
        self._post("/v1/clicks", acme_ads, {"clicks": [
            self._click("clk-a1", "spring", "spring-shoes", "spring-video-1"),
            self._click("clk-a2", "spring", "spring-shoes", "spring-video-2"),
            self._click("clk-b1", "summer", "summer-hats", "summer-image-1"),
            self._click("clk-b2", "summer", "summer-hats", "summer-image-1"),
            self._click("clk-c1", "autumn", "autumn-all", "autumn-text-1"),
        ]}, accepted=5)
        self._post("/v1/costs", acme_ads, {"costs": [
            self._cost("spring", "spring-shoes", "spring-video-1", 10.0, 200),
            self._cost("spring", "spring-shoes", "spring-video-2", 20.0, 300),
            self._cost("summer", "summer-hats", "summer-image-1", 25.0, 400),
            self._cost("autumn", "autumn-all", "autumn-text-1", 5.0, 100),
        ]})
        # The previous 7 days (the default range's comparison): 40 spent, 800 impressions, one click.
        self.old_day = self.today - timedelta(days=9)
        self._post("/v1/costs", acme_ads, {"costs": [
            self._cost("spring", "spring-shoes", "spring-video-1", 40.0, 800, day=self.old_day)]})
        self._post("/v1/clicks", acme_ads, {"clicks": [
            self._click("clk-old", "spring", "spring-shoes", "spring-video-1", at=now - 9 * DAY)]}, accepted=1)
        # One browser lands from a spring ad, then two days later from a summer ad; it buys an hour
        # ago without a click id on the order: both clicks are matched by its browser id.
        self._browse("land-1", self.t["clk-a1"] + 10, "browser-1", "clk-a1")
        self._browse("land-2", self.t["clk-b1"] + 10, "browser-1", "clk-b1")
        self._convert("order-1", self.t["order-1"], 120.0, {"ttp": "browser-1"})
        # Another order carries its own click id: spring under every model.
        self._convert("order-2", self.t["order-2"], 40.0, {"ttclid": "clk-a2"})

        zeta_ads = registry.create_token(r, "zeta", ["adserver"])
        zeta_click = self._click("clk-z1", "zeta-winter", "zeta-g", "zeta-ad", at=now - DAY)
        self._post("/v1/clicks", zeta_ads, {"clicks": [zeta_click]}, accepted=1)
        body = {"event_source": "web", "event_source_id": self.zeta.pixel_id,
                "data": [{"event": "CompletePayment", "event_id": "zeta-order", "event_time": now - 600,
                          "user": {"ttclid": "clk-z1"}, "properties": {"value": 7.0, "currency": "USD"}}]}
        resp = client.post("/open_api/v1.3/event/track/", json=body,
                           headers={"Access-Token": self.zeta.token})
        assert resp.status_code == 200 and resp.json["data"]["accepted"] == 1, resp.json

        sink.drain()
        attributor.settle()

    def _click(self, click_id: str, campaign: str, adgroup: str, ad: str, at: int | None = None) -> dict:
        return {"click_id": click_id, "click_time": at or self.t[click_id], "campaign_id": campaign,
                "adgroup_id": adgroup, "ad_id": ad}

    def _cost(self, campaign: str, adgroup: str, ad: str, spend: float, impressions: int,
              day: date | None = None) -> dict:
        return {"date": (day or self.cost_day).isoformat(), "campaign_id": campaign, "adgroup_id": adgroup,
                "ad_id": ad, "spend": spend, "impressions": impressions}

    def _post(self, path: str, token: str, body: dict, accepted: int | None = None) -> None:
        resp = self.api.post(path, json=body, headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 200, resp.json
        if accepted is not None:
            assert resp.json["accepted"] == accepted and not resp.json["rejected"], resp.json

    def _browse(self, event_id: str, at: int, ttp: str, ttclid: str) -> None:
        body = {"sent_at": time.time_ns() // 1_000_000, "events": [{
            "event": "PageView", "event_id": event_id, "timestamp": at * 1000, "ttp": ttp, "ttclid": ttclid,
            "page": {"url": f"https://shop.example/landing?ttclid={ttclid}"}}]}
        resp = self.client.post(f"/e/{self.acme.pixel_id}", json=body,
                                headers={"Origin": "https://shop.example"})
        assert resp.status_code == 200 and resp.json["accepted"] == 1, resp.json

    def _convert(self, event_id: str, at: int, value: float, user: dict) -> None:
        body = {"event_source": "web", "event_source_id": self.acme.pixel_id,
                "data": [{"event": "CompletePayment", "event_id": event_id, "event_time": at, "user": user,
                          "properties": {"value": value, "currency": "USD", "order_id": event_id}}]}
        resp = self.client.post("/open_api/v1.3/event/track/", json=body,
                                headers={"Access-Token": self.acme.token})
        assert resp.status_code == 200 and resp.json["data"]["accepted"] == 1, resp.json


@pytest.fixture
def shop(r, client, api_client, sink, attributor) -> Shop:
    return Shop(r, client, api_client, sink, attributor)


# ---- what the page should show, computed by hand ---------------------------------------------------
#
# Spend (one day) and impressions: spring-video-1 10 / 200, spring-video-2 20 / 300, summer-image-1
# 25 / 400, autumn-text-1 5 / 100.
# Clicks: spring 2 (a1, a2), summer 2 (b1, b2), autumn 1.
# order-1 (120): browser-matched to clk-a1 (spring-video-1) and clk-b1 (summer-image-1):
#   last click -> summer-image-1, first click -> spring-video-1.
# order-2 (40): its own click clk-a2 -> spring-video-2 under every model.
# Rows: campaigns by spend (spring 30, summer 25, autumn 5), then ad groups and ads by spend.
# Cells: spend, impressions, clicks, CTR (clicks/impressions), CPC (spend/clicks), CPM (spend per
# 1,000 impressions), conversions, value, CVR (conv/clicks), CPA (spend/conv), ROAS (value/spend).

HEADER = ["level", "campaign_id", "adgroup_id", "ad_id", "spend_usd", "impressions", "clicks", "ctr", "cpc_usd",
          "cpm_usd", "conversions", "conversion_value_usd", "cvr", "cpa_usd", "roas"]

LAST_CLICK = [
    ["campaign", "spring", "", "", "30.00", "500", "2", "0.40%", "15.00", "60.00",
     "1", "40.00", "50.00%", "30.00", "1.33"],
    ["adgroup", "spring", "spring-shoes", "", "30.00", "500", "2", "0.40%", "15.00", "60.00",
     "1", "40.00", "50.00%", "30.00", "1.33"],
    ["ad", "spring", "spring-shoes", "spring-video-2", "20.00", "300", "1", "0.33%", "20.00", "66.67",
     "1", "40.00", P100, "20.00", "2.00"],
    ["ad", "spring", "spring-shoes", "spring-video-1", "10.00", "200", "1", "0.50%", "10.00", "50.00",
     "0", "0.00", "0.00%", DASH, "0.00"],
    ["campaign", "summer", "", "", "25.00", "400", "2", "0.50%", "12.50", "62.50",
     "1", "120.00", "50.00%", "25.00", "4.80"],
    ["adgroup", "summer", "summer-hats", "", "25.00", "400", "2", "0.50%", "12.50", "62.50",
     "1", "120.00", "50.00%", "25.00", "4.80"],
    ["ad", "summer", "summer-hats", "summer-image-1", "25.00", "400", "2", "0.50%", "12.50", "62.50",
     "1", "120.00", "50.00%", "25.00", "4.80"],
    ["campaign", "autumn", "", "", "5.00", "100", "1", "1.00%", "5.00", "50.00", "0", "0.00", "0.00%", DASH, "0.00"],
    ["adgroup", "autumn", "autumn-all", "", "5.00", "100", "1", "1.00%", "5.00", "50.00",
     "0", "0.00", "0.00%", DASH, "0.00"],
    ["ad", "autumn", "autumn-all", "autumn-text-1", "5.00", "100", "1", "1.00%", "5.00", "50.00",
     "0", "0.00", "0.00%", DASH, "0.00"],
    ["total", "", "", "", "60.00", "1000", "5", "0.50%", "12.00", "60.00", "2", "160.00", "40.00%", "30.00", "2.67"],
]

# The same delivery (the first six cells) under first click; only the conversion cells differ.
_DELIVERY = {tuple(row[:4]): row[4:10] for row in LAST_CLICK}
FIRST_CLICK = [list(ids) + _DELIVERY[tuple(ids)] + conv for ids, conv in [
    (["campaign", "spring", "", ""], ["2", "160.00", P100, "15.00", "5.33"]),
    (["adgroup", "spring", "spring-shoes", ""], ["2", "160.00", P100, "15.00", "5.33"]),
    (["ad", "spring", "spring-shoes", "spring-video-2"], ["1", "40.00", P100, "20.00", "2.00"]),
    (["ad", "spring", "spring-shoes", "spring-video-1"], ["1", "120.00", P100, "10.00", "12.00"]),
    (["campaign", "summer", "", ""], ["0", "0.00", "0.00%", DASH, "0.00"]),
    (["adgroup", "summer", "summer-hats", ""], ["0", "0.00", "0.00%", DASH, "0.00"]),
    (["ad", "summer", "summer-hats", "summer-image-1"], ["0", "0.00", "0.00%", DASH, "0.00"]),
    (["campaign", "autumn", "", ""], ["0", "0.00", "0.00%", DASH, "0.00"]),
    (["adgroup", "autumn", "autumn-all", ""], ["0", "0.00", "0.00%", DASH, "0.00"]),
    (["ad", "autumn", "autumn-all", "autumn-text-1"], ["0", "0.00", "0.00%", DASH, "0.00"]),
    (["total", "", "", ""], ["2", "160.00", "40.00%", "30.00", "2.67"]),
]]

# The totals' change from the 7 days before (40 spent, 800 impressions, 1 click, no conversion):
# spend 40 -> 60, impressions 800 -> 1000, clicks 1 -> 5, CTR 0.125% -> 0.5%, CPC 40 -> 12,
# CPM 50 -> 60; conversions, value, CVR, CPA and ROAS had no (or a zero) base: a dash.
CHANGE = ["+50.0%", "+25.0%", "+400.0%", "+300.0%", "-70.0%", "+20.0%", DASH, DASH, DASH, DASH, DASH]

ACME_NAMES = ("spring", "summer", "autumn", "spring-video-1", "summer-image-1", "order-1", "order-2")


# ---- helpers -------------------------------------------------------------------------------------


def sign_in(page, base: str, token: str) -> None:
    page.goto(base + "/dashboard")
    page.fill("#token", token)
    page.click("#sign-in-button")


def wait_table(page, model: str) -> None:
    page.wait_for_selector(f"#breakdown[data-state=ready][data-model={model}]", timeout=20_000)


def table_rows(page) -> list[list[str]]:
    """The visible rows of the breakdown table as [level, campaign, ad group, ad, *cells]."""
    return page.evaluate("""() => Array.from(document.querySelectorAll('#breakdown tr[data-level]'))
        .filter(tr => !tr.hidden && tr.dataset.level && tr.dataset.level !== 'change')
        .map(tr => {
          const cells = Array.from(tr.querySelectorAll('td')).map(td => td.textContent.trim());
          const name = tr.querySelector('th span').textContent.trim();
          const level = tr.dataset.level;
          return [level, ...(level === 'total' ? ['Total'] : [name]), ...cells];
        })""")


def change_row(page) -> list[str]:
    """The row under the totals: its label, then each metric's change from the previous period."""
    return page.evaluate("""() => Array.from(document.querySelectorAll('#breakdown tr[data-level=change] > *'))
        .map(cell => cell.textContent.trim())""")


def headings(page, table: str) -> list[str]:
    return page.eval_on_selector_all(f"#{table} thead th .label", "ls => ls.map(l => l.textContent)")


def daily_rows(page) -> list[list[str]]:
    """The per-day table as shown: [day, *cells] in table order."""
    return page.evaluate("""() => Array.from(document.querySelectorAll('#daily tbody tr'))
        .map(tr => Array.from(tr.children).map(cell => cell.textContent.trim()))""")


def bar_titles(page) -> list[str]:
    return page.eval_on_selector_all("#chart rect.bar title", "ts => ts.map(t => t.textContent)")


def as_table(expected: list[list[str]]) -> list[list[str]]:
    """The expected rows as the table shows them: level, the row's own name, the cells."""
    out = []
    for level, campaign, adgroup, ad, *cells in expected:
        name = {"campaign": campaign, "adgroup": adgroup, "ad": ad, "total": "Total"}[level]
        out.append([level, name, *cells])
    return out


def day_of(unix_s: int) -> str:
    return datetime.fromtimestamp(unix_s, UTC).date().isoformat()


# ---- tests ---------------------------------------------------------------------------------------


def test_the_page_and_its_assets_are_served_with_caching_and_a_strict_policy(api_base):
    import re
    import urllib.request

    with urllib.request.urlopen(api_base + "/dashboard") as resp:
        html = resp.read().decode()
        assert resp.headers["Content-Type"].startswith("text/html")
        assert resp.headers["Cache-Control"] == "no-cache" and resp.headers["ETag"]
        csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "http" not in csp
    script = re.search(r'src="(/dashboard/app\.js\?v=\w+)"', html).group(1)
    with urllib.request.urlopen(api_base + script) as resp:
        assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert resp.headers["Content-Type"].startswith("text/javascript")
        etag = resp.headers["ETag"]
    req = urllib.request.Request(api_base + "/dashboard/app.js", headers={"If-None-Match": etag})
    try:
        urllib.request.urlopen(req)
        raise AssertionError("expected 304")
    except urllib.error.HTTPError as exc:
        assert exc.code == 304
    for bad in ("/dashboard/nope.js", "/dashboard/../api.py", "/dashboard/%2e%2e/api.py"):
        try:
            urllib.request.urlopen(api_base + bad)
            raise AssertionError(f"{bad} was served")
        except urllib.error.HTTPError as exc:
            assert exc.code == 404


def test_sign_in_shows_the_numbers_and_the_model_changes_them(shop, api_base, page):
    sign_in(page, api_base, shop.reports)
    wait_table(page, "last_click")
    today = datetime.now(UTC).date()  # the page's default: the last 7 days in the advertiser's zone
    assert page.input_value("#f-end") in (shop.today.isoformat(), today.isoformat())
    end = date.fromisoformat(page.input_value("#f-end"))
    assert page.input_value("#f-start") == (end - timedelta(days=6)).isoformat()
    assert page.input_value("#f-timezone") == "UTC"
    assert page.input_value("#f-event") == "CompletePayment"
    assert page.inner_text("#who") == "Advertiser acme"
    assert page.input_value("#f-preset") == "last_7"
    assert headings(page, "breakdown") == [
        "Campaign / ad group / ad", "Spend (USD)", "Impressions", "Clicks", "CTR", "CPC (USD)", "CPM (USD)",
        "Conversions", "Value (USD)", "CVR", "CPA (USD)", "ROAS"]
    assert table_rows(page) == as_table(LAST_CLICK)
    # Under the totals, the change from the 7 days before.
    previous = (end - timedelta(days=13)).isoformat(), (end - timedelta(days=7)).isoformat()
    assert change_row(page) == [f"vs {previous[0]} to {previous[1]}", *CHANGE]
    assert f"compared with {previous[0]} to {previous[1]}" in page.inner_text("#status")
    # The chart: conversions per day by default, dated by the touch (the click).
    assert page.inner_text("#chart-caption") == "Conversions per day"
    assert sorted(bar_titles(page)) == sorted([f"{day_of(shop.t['clk-a2'])} \u00b7 Conversions: 1",
                                               f"{day_of(shop.t['clk-b1'])} \u00b7 Conversions: 1"])
    assert not page.is_visible("#unconverted")

    page.select_option("#f-model", "first_click")
    wait_table(page, "first_click")
    assert table_rows(page) == as_table(FIRST_CLICK)
    assert sorted(bar_titles(page)) == sorted([f"{day_of(shop.t['clk-a1'])} \u00b7 Conversions: 1",
                                               f"{day_of(shop.t['clk-a2'])} \u00b7 Conversions: 1"])

    # Why order-1 went where it went: both clicks were considered, each model credited one.
    page.wait_for_selector("button.conversion[data-event-id='order-1']")
    assert page.locator("button.conversion").count() == 2  # only acme's CompletePayment orders
    page.click("button.conversion[data-event-id='order-1']")
    page.wait_for_selector("#explanation article.explain")
    explained = page.inner_text("#explanation")
    assert "Touchpoints considered (2)" in explained
    credited = page.locator("#explanation li[data-model]").all_inner_texts()
    assert credited[0].startswith(f"last click: click clk-b1 {DASH} campaign summer"), credited
    assert credited[1].startswith(f"first click: click clk-a1 {DASH} campaign spring"), credited
    assert "matched by browser_id" in explained and "a later eligible touchpoint exists" in explained

    # The pixel, with its snippet and the events it saw.
    card = page.locator(f"article.pixel[data-pixel-id='{shop.acme.pixel_id}']")
    assert card.locator("pre.snippet").inner_text().count(shop.acme.pixel_id) >= 1
    assert "CompletePayment" in card.locator("table.events").inner_text()
    assert page.locator("article.pixel").count() == 1
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

    # Sign-out forgets the token: a reload shows the sign-in form again.
    page.click("#sign-out")
    assert page.evaluate("sessionStorage.length") == 0
    page.reload()
    assert page.is_visible("#sign-in") and not page.is_visible("#app")


def test_the_csv_is_what_the_table_shows(shop, api_base, page):
    sign_in(page, api_base, shop.reports)
    wait_table(page, "last_click")
    page.select_option("#f-model", "first_click")
    wait_table(page, "first_click")
    # Collapse the autumn campaign: its ad group and ad leave the table, and the CSV.
    page.click("#breakdown tr[data-level=campaign]:has-text('autumn') button.toggle")
    shown = table_rows(page)
    assert [row[1] for row in shown] == ["spring", "spring-shoes", "spring-video-2", "spring-video-1",
                                        "summer", "summer-hats", "summer-image-1", "autumn", "Total"]
    with page.expect_download() as info:
        page.click("#download-csv")
    download = info.value
    start, end = page.input_value("#f-start"), page.input_value("#f-end")
    assert download.suggested_filename == f"clicktrail-acme-{start}_{end}-CompletePayment-first_click.csv"
    text = download.path().read_text(encoding="utf-8")
    lines = list(csv.reader(io.StringIO(text)))
    assert lines[0] == HEADER
    expected = [row for row in FIRST_CLICK if row[1] != "autumn" or row[0] == "campaign"]
    assert lines[1:] == [[cell.replace(DASH, "") for cell in row] for row in expected]
    # ...which is, cell by cell, the table as shown (the table writes an empty number as a dash).
    as_csv = [[r[0], *(c if c != DASH else "" for c in r[2:])] for r in shown]
    assert [[r[0], *r[4:]] for r in lines[1:]] == as_csv


def test_another_advertiser_sees_nothing_of_this_one(shop, api_base, page):
    sign_in(page, api_base, shop.zeta_reports)
    wait_table(page, "last_click")
    assert page.inner_text("#who") == "Advertiser zeta"
    rows = table_rows(page)
    # No spend and no impressions: CTR and CPM have no denominator, CPC and CPA are 0.
    zeta = ["0.00", "0", "1", DASH, "0.00", DASH, "1", "7.00", P100, "0.00", DASH]
    assert rows == as_table([
        ["campaign", "zeta-winter", "", "", *zeta],
        ["adgroup", "zeta-winter", "zeta-g", "", *zeta],
        ["ad", "zeta-winter", "zeta-g", "zeta-ad", *zeta],
        ["total", "", "", "", *zeta],
    ])
    page.wait_for_selector("button.conversion[data-event-id='zeta-order']")
    page.wait_for_selector(f"article.pixel[data-pixel-id='{shop.zeta.pixel_id}'] pre.snippet")
    text = page.inner_text("body")
    for name in (*ACME_NAMES, shop.acme.pixel_id, "shop.example"):
        assert name not in text, f"{name!r} of advertiser acme is shown to zeta"
    assert page.locator("article.pixel").count() == 1
    page.screenshot(path=str(ARTIFACTS / "dashboard-other-advertiser.png"), full_page=True)


def test_a_bad_token_is_refused_plainly(shop, api_base, page):
    sign_in(page, api_base, "ctk_not-a-real-token")
    page.wait_for_selector("#error:not([hidden])")
    assert "the token is not valid" in page.inner_text("#error")
    assert "401" in page.inner_text("#error")
    assert page.is_visible("#sign-in") and not page.is_visible("#app")
    assert page.evaluate("sessionStorage.length") == 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-bad-token.png"), full_page=True)

    # A token of the right advertiser without the reports scope: refused, saying why.
    page.fill("#token", shop.acme.token)  # scope events
    page.click("#sign-in-button")
    page.wait_for_selector("#error:has-text('scope')")  # (no wait_for_function: the page's CSP forbids eval)
    assert "lacks the 'reports' scope" in page.inner_text("#error")
    assert not page.is_visible("#app")


def test_an_error_from_the_api_is_shown(shop, api_base, page):
    sign_in(page, api_base, shop.reports)
    wait_table(page, "last_click")
    page.fill("#f-start", "2001-01-01")  # over a year before the end: the report refuses it
    page.dispatch_event("#f-start", "change")
    page.wait_for_selector("#breakdown[data-state=error]")
    assert "at most 366 days" in page.inner_text("#error") and "field end" in page.inner_text("#error")
    # A token revoked meanwhile: the next call answers 401 and the page signs out, saying so.
    page.evaluate("sessionStorage.setItem('clicktrail.dashboard.token', 'ctk_revoked')")
    page.reload()
    page.wait_for_selector("#error:not([hidden])")
    assert "the token is not valid" in page.inner_text("#error") and page.is_visible("#sign-in")


FORMULA_IDS = ['=HYPERLINK("http://x")', "+SUM(1,2)", "@SUM(1+1)", "-1+cmd|' /C calc'!A0", "-5"]


def test_the_csv_never_starts_a_formula(r, api_client, api_base, page):
    """Campaign, ad group and ad ids an ad server sent as formulas are downloaded as text ('
    first); a plain negative number stays a number. The table itself shows the ids as they are."""
    ads = registry.create_token(r, "formulas", ["adserver"])
    reports = registry.create_token(r, "formulas", ["reports"])
    day = datetime.now(UTC).date() - timedelta(days=1)
    at = int(datetime(day.year, day.month, day.day, 12, tzinfo=UTC).timestamp())
    clicks = [{"click_id": f"k{i}", "click_time": at, "campaign_id": name, "adgroup_id": name, "ad_id": name}
              for i, name in enumerate(FORMULA_IDS)]
    costs = [{"date": day.isoformat(), "campaign_id": name, "adgroup_id": name, "ad_id": name, "spend": 1.0 + i}
             for i, name in enumerate(FORMULA_IDS)]
    for path, body in (("/v1/clicks", {"clicks": clicks}), ("/v1/costs", {"costs": costs})):
        resp = api_client.post(path, json=body, headers={"Authorization": f"Bearer {ads}"})
        assert resp.status_code == 200 and resp.json["accepted"] == len(FORMULA_IDS), resp.json
    sign_in(page, api_base, reports)
    wait_table(page, "last_click")
    shown = {row[1] for row in table_rows(page) if row[0] == "campaign"}
    assert shown == set(FORMULA_IDS)
    with page.expect_download() as info:
        page.click("#download-csv")
    lines = list(csv.reader(io.StringIO(info.value.path().read_text(encoding="utf-8"))))
    assert lines[0] == HEADER
    ids = {cell for line in lines[1:] for cell in line[1:4] if cell}
    assert ids == {"'" + name for name in FORMULA_IDS[:4]} | {"-5"}
    for line in lines[1:]:
        for cell in line:
            assert not cell.startswith(("=", "+", "@", "\t", "\r")), line
            assert not cell.startswith("-") or float(cell) < 0, line


# ---- the Ads Manager view: columns, sorting, periods, chart, per day, comparison, narrow screens ------

METRICS = ["spend", "impressions", "clicks", "ctr", "cpc", "cpm", "conversions", "conversion_value", "cvr", "cpa",
           "roas"]
KINDS = {"spend": "money", "cpc": "money", "cpm": "money", "cpa": "money", "conversion_value": "money",
         "impressions": "integer", "clicks": "integer", "ctr": "percent", "cvr": "percent",
         "conversions": "count", "roas": "ratio"}


def shown(kind: str, x: float | None, digits: int = 2) -> str:
    """A number as the dashboard writes it (JavaScript's toFixed: the float's exact value, halves up)."""
    if x is None:
        return DASH

    def fixed(v: float, n: int) -> str:
        return str(Decimal(v).quantize(Decimal(1).scaleb(-n), rounding=ROUND_HALF_UP))

    if kind == "money":
        return fixed(x, digits)
    if kind == "integer":
        return str(round(x))
    if kind == "percent":
        return fixed(x * 100, 2) + "%"
    if kind == "ratio":
        return fixed(x, 2)
    v = float(fixed(x, 2))
    return str(int(v)) if v.is_integer() else repr(v)


def api_get(base: str, token: str, path: str, **params) -> dict:
    import json
    import urllib.parse
    import urllib.request

    req = urllib.request.Request(f"{base}{path}?{urllib.parse.urlencode(params)}",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req) as resp:
        return json.loads(resp.read())


def page_query(page) -> dict:
    """The selection the page shows, as /v1/reports parameters."""
    return {"start": page.input_value("#f-start"), "end": page.input_value("#f-end"),
            "timezone": page.input_value("#f-timezone"), "events": page.input_value("#f-event"),
            "model": page.input_value("#f-model"), "click_window": page.input_value("#f-click-window"),
            "view_window": page.input_value("#f-view-window"), "date_basis": page.input_value("#f-date-basis")}


def wait_range(page, start: str, end: str) -> None:
    page.wait_for_selector(f"#breakdown[data-state=ready][data-range='{start}_{end}']", timeout=20_000)
    page.wait_for_selector(f"#daily[data-state=ready][data-range='{start}_{end}']", timeout=20_000)


def test_every_column_and_every_day_agrees_with_the_api(shop, api_base, page):
    sign_in(page, api_base, shop.reports)
    wait_table(page, "last_click")
    q = page_query(page)
    by_ad = api_get(api_base, shop.reports, "/v1/reports", dimensions="campaign_id,adgroup_id,ad_id",
                    metrics=",".join(METRICS), page_size=1000, **q)
    ads = {row[1]: row[2:] for row in table_rows(page) if row[0] == "ad"}
    assert set(ads) == {row["ad_id"] for row in by_ad["rows"]} and len(ads) == 4
    for row in by_ad["rows"]:
        assert ads[row["ad_id"]] == [shown(KINDS[m], row[m]) for m in METRICS], row["ad_id"]
    total = table_rows(page)[-1]
    assert total[0] == "total" and total[2:] == [shown(KINDS[m], by_ad["totals"][m]) for m in METRICS]

    # The table per day: every day of the range, in date order, with the API's numbers of that day.
    by_day = api_get(api_base, shop.reports, "/v1/reports", dimensions="stat_time_day", metrics=",".join(METRICS),
                     **q)
    api_days = {row["stat_time_day"]: row for row in by_day["rows"]}
    days = daily_rows(page)
    end = date.fromisoformat(q["end"])
    assert [d[0] for d in days] == [(end - timedelta(days=6 - i)).isoformat() for i in range(7)]
    empty = {"spend": 0.0, "impressions": 0, "clicks": 0, "conversions": 0.0, "conversion_value": 0.0}
    for day, *cells in days:
        row = api_days.get(day, empty)
        assert cells == [shown(KINDS[m], row.get(m)) for m in METRICS], day
    # By hand, under last click: yesterday had all the spend, clicks b1 and b2, and order-1 (by b1).
    by_name = {d[0]: d[1:] for d in days}
    assert by_name[shop.cost_day.isoformat()] == ["60.00", "1000", "2", "0.20%", "30.00", "60.00", "1", "120.00",
                                                  "50.00%", "60.00", "2.00"]
    # Clicks a2 and c1 the day before, and order-2 (by a2); click a1 a day earlier still, no conversion.
    assert by_name[day_of(shop.t["clk-a2"])] == ["0.00", "0", "2", DASH, "0.00", DASH, "1", "40.00", "50.00%", "0.00",
                                                 DASH]
    assert by_name[day_of(shop.t["clk-a1"])] == ["0.00", "0", "1", DASH, "0.00", DASH, "0", "0.00", "0.00%", DASH,
                                                 DASH]


def test_columns_sort_by_click_and_by_keyboard_keeping_ads_under_their_campaign(shop, api_base, page):
    sign_in(page, api_base, shop.reports)
    wait_table(page, "last_click")

    def order() -> list[str]:
        return [row[1] for row in table_rows(page)]

    def sorted_by() -> dict:
        return page.evaluate("""() => Object.fromEntries(Array.from(document.querySelectorAll('#breakdown th[aria-sort]'))
            .map(th => [th.dataset.key, th.getAttribute('aria-sort')]))""")

    # By spend, biggest first, until told otherwise.
    assert sorted_by() == {"spend": "descending"}
    assert order() == ["spring", "spring-shoes", "spring-video-2", "spring-video-1", "summer", "summer-hats",
                       "summer-image-1", "autumn", "autumn-all", "autumn-text-1", "Total"]
    # CPA: biggest first; rows without one (no conversion) last.
    page.click("#breakdown th[data-key=cpa] button")
    assert sorted_by() == {"cpa": "descending"}
    assert order() == ["spring", "spring-shoes", "spring-video-2", "spring-video-1", "summer", "summer-hats",
                       "summer-image-1", "autumn", "autumn-all", "autumn-text-1", "Total"]
    page.click("#breakdown th[data-key=cpa] button")  # again: smallest first, still without one last
    assert sorted_by() == {"cpa": "ascending"}
    assert order() == ["summer", "summer-hats", "summer-image-1", "spring", "spring-shoes", "spring-video-2",
                       "spring-video-1", "autumn", "autumn-all", "autumn-text-1", "Total"]
    assert "sorted by CPA (USD), ascending" in page.inner_text("#sort-status")
    # The keyboard: Tab to a heading's button, Enter sorts. CTR, biggest first (ties by name).
    page.focus("#breakdown th[data-key=cpm] button")
    page.keyboard.press("Shift+Tab")  # from CPM back to CPC ...
    page.keyboard.press("Shift+Tab")  # ... and to CTR
    assert page.evaluate("document.activeElement.closest('th').dataset.key") == "ctr"
    page.keyboard.press("Enter")
    assert sorted_by() == {"ctr": "descending"}
    assert order() == ["autumn", "autumn-all", "autumn-text-1", "summer", "summer-hats", "summer-image-1",
                       "spring", "spring-shoes", "spring-video-1", "spring-video-2", "Total"]
    # The name: A to Z.
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Shift+Tab")
    assert page.evaluate("document.activeElement.closest('th').dataset.key") == "name"
    page.keyboard.press("Space")
    assert sorted_by() == {"name": "ascending"}
    assert order() == ["autumn", "autumn-all", "autumn-text-1", "spring", "spring-shoes", "spring-video-1",
                       "spring-video-2", "summer", "summer-hats", "summer-image-1", "Total"]
    # The CSV follows the order shown.
    with page.expect_download() as info:
        page.click("#download-csv")
    lines = list(csv.reader(io.StringIO(info.value.path().read_text(encoding="utf-8"))))
    assert [line[3] or line[2] or line[1] or "Total" for line in lines[1:]] == order()
    # A model change keeps the order chosen.
    page.select_option("#f-model", "first_click")
    wait_table(page, "first_click")
    assert sorted_by() == {"name": "ascending"} and order()[0] == "autumn"

    # The table per day sorts too: by spend, biggest first, the spend day on top.
    page.click("#daily th[data-key=spend] button")
    assert page.get_attribute("#daily th[data-key=spend]", "aria-sort") == "descending"
    assert page.get_attribute("#daily th[data-key=day]", "aria-sort") is None
    assert daily_rows(page)[0][:2] == [shop.cost_day.isoformat(), "60.00"]
    page.click("#daily th[data-key=day] button")
    days = [d[0] for d in daily_rows(page)]
    assert days == sorted(days) and page.get_attribute("#daily th[data-key=day]", "aria-sort") == "ascending"


def test_periods_are_days_of_the_advertisers_time_zone(r, api_base, page):
    """An advertiser whose today is not UTC's today: Kiritimati (UTC+14) from 10:00 UTC, Pago Pago
    (UTC-11) before 11:00 UTC."""
    tz = "Pacific/Kiritimati" if datetime.now(UTC).hour >= 10 else "Pacific/Pago_Pago"
    registry.update_settings(r, "islands", timezone=tz)
    token = registry.create_token(r, "islands", ["reports"])
    sign_in(page, api_base, token)
    page.wait_for_selector("#breakdown[data-state=ready]", timeout=20_000)
    assert page.input_value("#f-timezone") == tz

    def expected(preset: str, today: date) -> tuple[str, str]:
        start, end = {"today": (today, today), "yesterday": (today - timedelta(days=1),) * 2,
                      "last_7": (today - timedelta(days=6), today), "last_14": (today - timedelta(days=13), today),
                      "last_30": (today - timedelta(days=29), today),
                      "this_month": (today.replace(day=1), today)}[preset]
        return start.isoformat(), end.isoformat()

    for preset in ("last_7", "today", "yesterday", "last_14", "last_30", "this_month"):
        before = datetime.now(ZoneInfo(tz)).date()
        page.select_option("#f-preset", preset)
        start, end = page.input_value("#f-start"), page.input_value("#f-end")
        after = datetime.now(ZoneInfo(tz)).date()
        assert (start, end) in {expected(preset, before), expected(preset, after)}, preset
        assert before != datetime.now(UTC).date() or after != datetime.now(UTC).date()
        wait_range(page, start, end)  # the report asked for is of those days ...
        n = (date.fromisoformat(end) - date.fromisoformat(start)).days + 1
        first = (date.fromisoformat(start) - timedelta(days=n)).isoformat()
        last = (date.fromisoformat(start) - timedelta(days=1)).isoformat()
        assert change_row(page)[0] == f"vs {first} to {last}"  # ... compared with as many days before
        assert len(daily_rows(page)) == n
    # A day typed by hand makes the period custom.
    page.fill("#f-start", "2026-01-05")
    page.dispatch_event("#f-start", "change")
    assert page.input_value("#f-preset") == "custom"
    wait_range(page, "2026-01-05", page.input_value("#f-end"))


def test_the_chart_shows_the_metric_chosen_per_day(shop, api_base, page):
    sign_in(page, api_base, shop.reports)
    wait_table(page, "last_click")
    spend_day, a2_day, b1_day = shop.cost_day.isoformat(), day_of(shop.t["clk-a2"]), day_of(shop.t["clk-b1"])
    a1_day = day_of(shop.t["clk-a1"])
    choices = {
        "spend": ("Spend (USD) per day", [f"{spend_day} \u00b7 Spend: 60.00 USD"]),
        "clicks": ("Clicks per day", [f"{a1_day} \u00b7 Clicks: 1", f"{a2_day} \u00b7 Clicks: 2",
                                      f"{b1_day} \u00b7 Clicks: 2"]),
        "conversions": ("Conversions per day", [f"{a2_day} \u00b7 Conversions: 1", f"{b1_day} \u00b7 Conversions: 1"]),
        # CPA and ROAS only where there is spend and a conversion: yesterday (60 / 1; 120 / 60).
        "cpa": ("CPA (USD) per day", [f"{spend_day} \u00b7 CPA: 60.00 USD"]),
        "roas": ("ROAS per day", [f"{spend_day} \u00b7 ROAS: 2.00"]),
        "conversion_value": ("Conversion value (USD) per day", [f"{a2_day} \u00b7 Conversion value: 40.00 USD",
                                                                f"{b1_day} \u00b7 Conversion value: 120.00 USD"]),
    }
    for metric, (caption, bars) in choices.items():
        page.select_option("#chart-metric", metric)
        assert page.inner_text("#chart-caption") == caption
        assert page.get_attribute("#chart", "data-metric") == metric
        assert sorted(bar_titles(page)) == sorted(bars), metric
        if metric == "spend":
            page.locator("#over-time").screenshot(path=str(ARTIFACTS / "dashboard-chart-spend.png"))
    # Bars stand in date order: the spend day's is right of the click days'.
    page.select_option("#chart-metric", "clicks")
    xs = page.eval_on_selector_all("#chart rect.bar", "rs => rs.map(r => [r.dataset.day, +r.getAttribute('x')])")
    assert [day for day, _ in sorted(xs, key=lambda p: p[1])] == sorted([a1_day, a2_day, b1_day])


def test_a_phone_wide_screen_never_scrolls_sideways_and_tables_scroll_in_their_box(shop, api_base, browser):
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                              has_touch=True)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(api_base + "/dashboard")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # the sign-in form
        page.fill("#token", shop.reports)
        page.click("#sign-in-button")
        wait_table(page, "last_click")
        page.wait_for_selector(f"article.pixel[data-pixel-id='{shop.acme.pixel_id}'] table.events")
        page.click("button.conversion[data-event-id='order-1']")
        page.wait_for_selector("#explanation article.explain")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page is {width} px wide"
        # The wide tables are wider than the screen, inside boxes that scroll and show it.
        for selector in ("#breakdown", "#daily"):
            box = page.evaluate(f"""() => {{ const wrap = document.querySelector('{selector}').closest('.table-wrap');
                return [wrap.scrollWidth, wrap.clientWidth, wrap.parentElement.className]; }}""")
            assert box[0] > box[1] and "more-right" in box[2] and "more-left" not in box[2], (selector, box)
        assert page.evaluate("""() => getComputedStyle(document.querySelector('#breakdown').closest('.scroll-box'),
            '::after').opacity""") == "1"
        # The names stay in view while the numbers scroll: the first column is as far left after scrolling.
        name_x = page.evaluate("() => document.querySelector('#breakdown tbody th.name').getBoundingClientRect().x")
        page.screenshot(path=str(ARTIFACTS / "dashboard-390.png"), full_page=True)
        for section in ("filters", "over-time", "numbers", "countries", "recent", "pixels-card"):
            page.locator(f"#{section}").screenshot(path=str(ARTIFACTS / f"dashboard-390-{section}.png"))
        # Scrolled to its end, the cue moves to the other side.
        page.evaluate("""() => { const wrap = document.querySelector('#breakdown').closest('.table-wrap');
            wrap.scrollLeft = wrap.scrollWidth; }""")
        page.wait_for_selector("#numbers .scroll-box.more-left:not(.more-right)")
        assert page.evaluate("() => document.querySelector('#breakdown tbody th.name').getBoundingClientRect().x") \
            == name_x
        assert page.evaluate(
            "() => getComputedStyle(document.querySelector('#breakdown tbody th.name')).boxShadow") != "none"
        page.locator("#numbers").screenshot(path=str(ARTIFACTS / "dashboard-390-scrolled.png"))
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        assert not errors, errors
    finally:
        ctx.close()


def test_money_has_the_minor_unit_of_the_advertisers_currency_and_only_its_label(r, client, api_client, sink,
                                                                                   attributor, api_base, page):
    """A yen advertiser (no minor unit): 1,000 spent on 3 clicks and 7 impressions shows CPC 333 and
    CPM 142857, never 333.33 or a dollar sign; two orders in euros, for which no exchange rate was
    posted, are counted in a warning when the API counts them."""
    registry.update_settings(r, "yen", currency="JPY")
    shop = Tenant(r, "yen", "yen.example")
    ads = registry.create_token(r, "yen", ["adserver"])
    reports = registry.create_token(r, "yen", ["reports"])
    day = datetime.now(UTC).date() - timedelta(days=1)
    noon = int(datetime(day.year, day.month, day.day, 12, tzinfo=UTC).timestamp())
    clicks = [{"click_id": f"y{i}", "click_time": noon + i, "campaign_id": "tokyo", "adgroup_id": "tokyo-g",
               "ad_id": "tokyo-ad"} for i in range(3)]
    for path, body in (("/v1/clicks", {"clicks": clicks}),
                       ("/v1/costs", {"costs": [{"date": day.isoformat(), "campaign_id": "tokyo", "adgroup_id": "tokyo-g",
                                                 "ad_id": "tokyo-ad", "spend": 1000.0, "impressions": 7}]})):
        resp = api_client.post(path, json=body, headers={"Authorization": f"Bearer {ads}"})
        assert resp.status_code == 200, resp.json
    now = int(time.time()) - 60
    orders = [("yen-order", 2500.0, "JPY", "y0"), ("euro-order-1", 10.0, "EUR", "y1"), ("euro-order-2", 12.0, "EUR", "y2")]
    for event_id, value, currency, click_id in orders:
        body = {"event_source": "web", "event_source_id": shop.pixel_id, "data": [{
            "event": "CompletePayment", "event_id": event_id, "event_time": now, "user": {"ttclid": click_id},
            "properties": {"value": value, "currency": currency, "order_id": event_id}}]}
        resp = client.post("/open_api/v1.3/event/track/", json=body, headers={"Access-Token": shop.token})
        assert resp.status_code == 200 and resp.json["data"]["accepted"] == 1, resp.json
    sink.drain()
    attributor.settle()

    sign_in(page, api_base, reports)
    wait_table(page, "last_click")
    assert headings(page, "breakdown")[1:6] == ["Spend (JPY)", "Impressions", "Clicks", "CTR", "CPC (JPY)"]
    ad = next(row for row in table_rows(page) if row[0] == "ad")
    assert ad[:8] == ["ad", "tokyo-ad", "1000", "7", "3", "42.86%", "333", "142857"]
    assert ad[8] == "3" and ad[11] == "333"  # three conversions, CPA 1000 / 3
    # The value: whatever the API sums in yen (the orders in euros only once it converts them), unrounded
    # to the yen.
    q = page_query(page)
    totals = api_get(api_base, reports, "/v1/reports", metrics=",".join(METRICS), **q)["totals"]
    assert ad[9] == shown("money", totals["conversion_value"], 0) and "." not in ad[9]
    page.select_option("#chart-metric", "spend")
    assert bar_titles(page) == [f"{day.isoformat()} \u00b7 Spend: 1000 JPY"]
    assert page.inner_text("#chart-caption") == "Spend (JPY) per day"
    with page.expect_download() as info:
        page.click("#download-csv")
    lines = list(csv.reader(io.StringIO(info.value.path().read_text(encoding="utf-8"))))
    assert lines[0][4:10] == ["spend_jpy", "impressions", "clicks", "ctr", "cpc_jpy", "cpm_jpy"]
    assert lines[3][4:10] == ["1000", "7", "3", "42.86%", "333", "142857"]

    # Conversions in a currency without an exchange rate: a warning exactly when the API counts them.
    try:
        counted = api_get(api_base, reports, "/v1/reports", metrics="conversions,unconverted_conversions", **q)
        unconverted = counted["totals"].get("unconverted_conversions", counted.get("unconverted_conversions"))
    except urllib.error.HTTPError as exc:  # an API that does not convert currencies knows no such metric
        assert exc.code == 400 and "unconverted_conversions" in exc.read().decode()
        unconverted = None
    if unconverted:
        assert unconverted == 2  # the two orders in euros
        assert page.inner_text("#unconverted").startswith(
            "2 conversions in currencies without an exchange rate are not in Value")
    else:
        assert not page.is_visible("#unconverted")

    # No currency but the advertiser's is named anywhere, and the dashboard has none of its own.
    page.click("button.conversion[data-event-id='yen-order']")
    page.wait_for_selector("#explanation article.explain")
    assert "value 2500 JPY" in page.inner_text("#explanation")
    text = page.inner_text("#app")
    assert "USD" not in text, text[max(0, text.find("USD") - 300):text.find("USD") + 50]
    for name in ("app.js", "index.html"):
        assert "USD" not in (ROOT / "static" / "dashboard" / name).read_text(encoding="utf-8")
    page.screenshot(path=str(ARTIFACTS / "dashboard-yen.png"), full_page=True)
