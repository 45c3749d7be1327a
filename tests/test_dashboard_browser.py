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
from datetime import UTC, date, datetime, timedelta

import pytest

from clicktrail import services
from pixel import registry
from tests import servers
from tests.conftest import ARTIFACTS, Tenant

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
            self._cost("spring", "spring-shoes", "spring-video-1", 10.0),
            self._cost("spring", "spring-shoes", "spring-video-2", 20.0),
            self._cost("summer", "summer-hats", "summer-image-1", 25.0),
            self._cost("autumn", "autumn-all", "autumn-text-1", 5.0),
        ]})
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

    def _cost(self, campaign: str, adgroup: str, ad: str, spend: float) -> dict:
        return {"date": self.cost_day.isoformat(), "campaign_id": campaign, "adgroup_id": adgroup,
                "ad_id": ad, "spend": spend}

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
# Spend (one day): spring-video-1 10, spring-video-2 20, summer-image-1 25, autumn-text-1 5.
# Clicks: spring 2 (a1, a2), summer 2 (b1, b2), autumn 1.
# order-1 (120): browser-matched to clk-a1 (spring-video-1) and clk-b1 (summer-image-1):
#   last click -> summer-image-1, first click -> spring-video-1.
# order-2 (40): its own click clk-a2 -> spring-video-2 under every model.
# Rows: campaigns by spend (spring 30, summer 25, autumn 5), then ad groups and ads by spend.
# Cells: spend, clicks, conversions, value, CVR (conv/clicks), CPA (spend/conv), ROAS (value/spend).

HEADER = ["level", "campaign_id", "adgroup_id", "ad_id", "spend_usd", "clicks", "conversions",
          "conversion_value_usd", "cvr", "cpa_usd", "roas"]

LAST_CLICK = [
    ["campaign", "spring", "", "", "30.00", "2", "1", "40.00", "50.00%", "30.00", "1.33"],
    ["adgroup", "spring", "spring-shoes", "", "30.00", "2", "1", "40.00", "50.00%", "30.00", "1.33"],
    ["ad", "spring", "spring-shoes", "spring-video-2", "20.00", "1", "1", "40.00", P100, "20.00", "2.00"],
    ["ad", "spring", "spring-shoes", "spring-video-1", "10.00", "1", "0", "0.00", "0.00%", DASH, "0.00"],
    ["campaign", "summer", "", "", "25.00", "2", "1", "120.00", "50.00%", "25.00", "4.80"],
    ["adgroup", "summer", "summer-hats", "", "25.00", "2", "1", "120.00", "50.00%", "25.00", "4.80"],
    ["ad", "summer", "summer-hats", "summer-image-1", "25.00", "2", "1", "120.00", "50.00%", "25.00", "4.80"],
    ["campaign", "autumn", "", "", "5.00", "1", "0", "0.00", "0.00%", DASH, "0.00"],
    ["adgroup", "autumn", "autumn-all", "", "5.00", "1", "0", "0.00", "0.00%", DASH, "0.00"],
    ["ad", "autumn", "autumn-all", "autumn-text-1", "5.00", "1", "0", "0.00", "0.00%", DASH, "0.00"],
    ["total", "", "", "", "60.00", "5", "2", "160.00", "40.00%", "30.00", "2.67"],
]

FIRST_CLICK = [
    ["campaign", "spring", "", "", "30.00", "2", "2", "160.00", P100, "15.00", "5.33"],
    ["adgroup", "spring", "spring-shoes", "", "30.00", "2", "2", "160.00", P100, "15.00", "5.33"],
    ["ad", "spring", "spring-shoes", "spring-video-2", "20.00", "1", "1", "40.00", P100, "20.00", "2.00"],
    ["ad", "spring", "spring-shoes", "spring-video-1", "10.00", "1", "1", "120.00", P100, "10.00", "12.00"],
    ["campaign", "summer", "", "", "25.00", "2", "0", "0.00", "0.00%", DASH, "0.00"],
    ["adgroup", "summer", "summer-hats", "", "25.00", "2", "0", "0.00", "0.00%", DASH, "0.00"],
    ["ad", "summer", "summer-hats", "summer-image-1", "25.00", "2", "0", "0.00", "0.00%", DASH, "0.00"],
    ["campaign", "autumn", "", "", "5.00", "1", "0", "0.00", "0.00%", DASH, "0.00"],
    ["adgroup", "autumn", "autumn-all", "", "5.00", "1", "0", "0.00", "0.00%", DASH, "0.00"],
    ["ad", "autumn", "autumn-all", "autumn-text-1", "5.00", "1", "0", "0.00", "0.00%", DASH, "0.00"],
    ["total", "", "", "", "60.00", "5", "2", "160.00", "40.00%", "30.00", "2.67"],
]

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
        .filter(tr => !tr.hidden && tr.dataset.level)
        .map(tr => {
          const cells = Array.from(tr.querySelectorAll('td')).map(td => td.textContent.trim());
          const name = tr.querySelector('th span').textContent.trim();
          const level = tr.dataset.level;
          return [level, ...(level === 'total' ? ['Total'] : [name]), ...cells];
        })""")


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
    assert table_rows(page) == as_table(LAST_CLICK)
    assert page.inner_text("#h-spend") == "Spend (USD)"
    # The chart: one bar per day and campaign with a conversion, dated by the touch (the click).
    bars = page.eval_on_selector_all("#chart-conversions rect.bar title", "ts => ts.map(t => t.textContent)")
    assert sorted(bars) == sorted([f"{day_of(shop.t['clk-a2'])} \u00b7 spring: 1 conversion",
                                   f"{day_of(shop.t['clk-b1'])} \u00b7 summer: 1 conversion"])
    values = page.eval_on_selector_all("#chart-value rect.bar title", "ts => ts.map(t => t.textContent)")
    assert sorted(values) == sorted([f"{day_of(shop.t['clk-a2'])} \u00b7 spring: 40.00 USD",
                                     f"{day_of(shop.t['clk-b1'])} \u00b7 summer: 120.00 USD"])

    page.select_option("#f-model", "first_click")
    wait_table(page, "first_click")
    assert table_rows(page) == as_table(FIRST_CLICK)
    bars = page.eval_on_selector_all("#chart-conversions rect.bar title", "ts => ts.map(t => t.textContent)")
    assert sorted(bars) == sorted([f"{day_of(shop.t['clk-a1'])} \u00b7 spring: 1 conversion",
                                   f"{day_of(shop.t['clk-a2'])} \u00b7 spring: 1 conversion"])

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
    assert rows == as_table([
        ["campaign", "zeta-winter", "", "", "0.00", "1", "1", "7.00", P100, "0.00", DASH],
        ["adgroup", "zeta-winter", "zeta-g", "", "0.00", "1", "1", "7.00", P100, "0.00", DASH],
        ["ad", "zeta-winter", "zeta-g", "zeta-ad", "0.00", "1", "1", "7.00", P100, "0.00", DASH],
        ["total", "", "", "", "0.00", "1", "1", "7.00", P100, "0.00", DASH],
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
