"""The dashboard's "Include bot traffic" toggle and its "By country" table, in Debian's Chromium.

The data go through the real paths: two people's clicks are imported (scope adserver), a headless
Chrome follows a spring ad's click URL on the collector and a server then forwards that headless
visitor's order (a bot's conversion, pixel/bots.py); people's orders carry the client IP the
collector places in a country (pixel/geo.py's packaged data: 8.8.8.8 is Google's, US; 202.12.27.33
the M root server's, JP; 193.0.6.139 the RIPE NCC's, NL). The sink stores them and the attributor
attributes them. Every number the tests expect is computed by hand below and checked against the API.

Screenshots: test-artifacts/dashboard-bots.png, dashboard-countries.png, dashboard-390-countries.png.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from pixel import registry
from pixel.click_urls import make_token
from tests.conftest import ARTIFACTS, Tenant
from tests.test_dashboard_browser import api_base, api_get, page, sign_in  # noqa: F401 - fixtures used below

pytestmark = pytest.mark.browser

HOUR = 3600
CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/120.0.0.0 Safari/537.36")
HEADLESS = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 "
            "Safari/537.36")
US, JP, NL = "8.8.8.8", "202.12.27.33", "193.0.6.139"


class BotShop:
    """Advertiser "acme" (USD): people click spring and summer ads and buy from the US and Japan
    (one order with no IP); a headless Chrome clicks a spring ad and its order comes from NL."""

    def __init__(self, r, settings, client, api_client, sink, attributor) -> None:
        registry.update_settings(r, "acme", currency="USD")
        self.acme = Tenant(r, "acme", "shop.example")
        self.reports = registry.create_token(r, "acme", ["reports"])
        ads = {"Authorization": f"Bearer {registry.create_token(r, 'acme', ['adserver'])}"}
        self.client = client
        now = int(time.time())
        clicks = [{"click_id": "clk-spring", "click_time": now - 2 * HOUR, "campaign_id": "spring",
                   "adgroup_id": "spring-g", "ad_id": "spring-ad"},
                  {"click_id": "clk-summer", "click_time": now - 2 * HOUR, "campaign_id": "summer",
                   "adgroup_id": "summer-g", "ad_id": "summer-ad"}]
        resp = api_client.post("/v1/clicks", json={"clicks": clicks}, headers=ads)
        assert resp.status_code == 200 and resp.json["accepted"] == 2, resp.json

        # A headless Chrome follows a spring ad's click URL: a bot's click.
        landing = make_token(settings.site.secret_key, "acme", "spring", "spring-g", "spring-ad",
                             "https://shop.example/spring")
        resp = client.get(f"/r/{landing}", headers={"User-Agent": HEADLESS})
        assert resp.status_code == 302, resp.status_code
        (bot_click,) = parse_qs(urlsplit(resp.headers["Location"]).query)["ttclid"]

        self._order("us-1", now - HOUR, 40.0, {"ttclid": "clk-spring", "ip": US, "user_agent": CHROME})
        self._order("us-2", now - HOUR + 5, 15.0, {"ttclid": "clk-summer", "ip": US, "user_agent": CHROME})
        self._order("jp-1", now - HOUR + 10, 30.0, {"ttclid": "clk-summer", "ip": JP, "user_agent": CHROME})
        self._order("nowhere-1", now - HOUR + 15, 10.0, {"ttclid": "clk-spring", "user_agent": CHROME})
        self._order("bot-nl", now + 2, 50.0, {"ttclid": bot_click, "ip": NL, "user_agent": HEADLESS})
        sink.drain()
        attributor.settle()

    def _order(self, event_id: str, at: int, value: float, user: dict) -> None:
        body = {"event_source": "web", "event_source_id": self.acme.pixel_id,
                "data": [{"event": "CompletePayment", "event_id": event_id, "event_time": at, "user": user,
                          "properties": {"value": value, "currency": "USD", "order_id": event_id}}]}
        resp = self.client.post("/open_api/v1.3/event/track/", json=body, headers={"Access-Token": self.acme.token})
        assert resp.status_code == 200 and resp.json["data"]["accepted"] == 1, resp.json


@pytest.fixture
def bot_shop(r, settings, client, api_client, sink, attributor) -> BotShop:
    return BotShop(r, settings, client, api_client, sink, attributor)


# ---- what the page should show, computed by hand ---------------------------------------------------
#
# People: clicks spring 1, summer 1; orders us-1 40 (spring), us-2 15 (summer), jp-1 30 (summer),
# nowhere-1 10 (spring): 4 conversions, 95.
# With bots: the headless click on spring (clicks 3) and its order bot-nl 50 (spring): 5 conversions, 145.
# Totals row cells: spend, impressions, clicks, CTR, CPC, CPM, conversions, value, CVR, CPA, ROAS
# (no cost was imported: spend 0, ratios of spend a dash).

D = "\u2014"
PEOPLE_TOTAL = ["Total", "0.00", "0", "2", D, "0.00", D, "4", "95.00", "200.00%", "0.00", D]
WITH_BOTS_TOTAL = ["Total", "0.00", "0", "3", D, "0.00", D, "5", "145.00", "166.67%", "0.00", D]

PEOPLE_COUNTRIES = [["United States (US)", "2", "55.00", "50.00%"], ["Japan (JP)", "1", "30.00", "25.00%"],
                    ["Unknown", "1", "10.00", "25.00%"]]
WITH_BOTS_COUNTRIES = [["United States (US)", "2", "55.00", "40.00%"], ["Japan (JP)", "1", "30.00", "20.00%"],
                       ["Netherlands (NL)", "1", "50.00", "20.00%"], ["Unknown", "1", "10.00", "20.00%"]]


def totals_row(pg) -> list[str]:
    return pg.evaluate("""() => Array.from(document.querySelectorAll('#breakdown tr.totals > *'))
        .map((cell) => cell.textContent.trim())""")


def country_rows(pg) -> list[list[str]]:
    return pg.evaluate("""() => Array.from(document.querySelectorAll('#by-country tbody tr'))
        .map((tr) => Array.from(tr.children).map((cell) => cell.textContent.trim()))""")


def country_total(pg) -> list[str]:
    return pg.evaluate("""() => Array.from(document.querySelectorAll('#by-country tfoot tr > *'))
        .map((cell) => cell.textContent.trim())""")


def wait_bots(pg, bots: str) -> None:
    for table in ("breakdown", "by-country"):
        pg.wait_for_selector(f"#{table}[data-state=ready][data-bots={bots}]", timeout=20_000)


def daily_sums(pg) -> list[float]:
    """Clicks, conversions and value summed over the per-day table's rows (as shown)."""
    return pg.evaluate("""() => [3, 7, 8].map((col) => Array.from(document.querySelectorAll('#daily tbody tr'))
        .reduce((sum, tr) => sum + Number(tr.children[col].textContent), 0))""")


def around_today() -> dict:
    today = datetime.now(UTC).date()
    return {"start": (today - timedelta(days=1)).isoformat(), "end": (today + timedelta(days=1)).isoformat(),
            "timezone": "UTC"}


def test_bot_traffic_is_left_out_until_included_and_the_choice_survives_a_reload(bot_shop, api_base, page):  # noqa: F811
    # The API agrees with the hand count, both ways (what the page must show).
    for bots, expected in (("false", (2, 4, 95)), ("true", (3, 5, 145))):
        totals = api_get(api_base, bot_shop.reports, "/v1/reports", metrics="clicks,conversions,conversion_value",
                         include_bots=bots, **around_today())["totals"]
        assert (totals["clicks"], totals["conversions"], totals["conversion_value"]) == expected, bots

    sign_in(page, api_base, bot_shop.reports)
    wait_bots(page, "excluded")
    toggle = page.get_by_role("checkbox", name="Include bot traffic")
    assert toggle.is_visible() and not toggle.is_checked()
    assert totals_row(page) == PEOPLE_TOTAL
    assert page.locator("#bots-note").is_hidden()
    assert "bot traffic excluded" in page.inner_text("#status")
    assert country_rows(page) == PEOPLE_COUNTRIES
    assert daily_sums(page) == [2, 4, 95]
    # The bot's order is listed among the recent conversions as a bot's, not as organic.
    bot_order = page.locator("button.conversion[data-event-id='bot-nl'] .what")
    assert bot_order.inner_text() == ("CompletePayment, value 50.00 USD \u00b7 a bot's, counted only with "
                                      "bot traffic included")

    # Included: every figure is asked for again with include_bots=true, and the page says so.
    toggle.check()
    wait_bots(page, "included")
    assert totals_row(page) == WITH_BOTS_TOTAL
    note = page.get_by_role("status").filter(has_text="Bot traffic is included")
    assert note.is_visible()
    assert "bot traffic included" in page.inner_text("#status")
    assert country_rows(page) == WITH_BOTS_COUNTRIES
    assert daily_sums(page) == [3, 5, 145]
    assert urlsplit(page.url).fragment == "bots=include"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-bots.png"), full_page=True)

    # A reload keeps the choice (the token is kept in the tab, the filter in the URL).
    page.reload()
    wait_bots(page, "included")
    assert page.get_by_role("checkbox", name="Include bot traffic").is_checked()
    assert totals_row(page) == WITH_BOTS_TOTAL
    assert page.locator("#bots-note").is_visible()

    # Left out again: the people's numbers, and nothing of it in the URL.
    page.get_by_role("checkbox", name="Include bot traffic").uncheck()
    wait_bots(page, "excluded")
    assert totals_row(page) == PEOPLE_TOTAL and country_rows(page) == PEOPLE_COUNTRIES
    assert page.locator("#bots-note").is_hidden()
    assert urlsplit(page.url).fragment == ""

    # A link to #bots=include opened in the signed-in tab (no reload) includes them again.
    page.evaluate("window.location.hash = 'bots=include'")
    wait_bots(page, "included")
    assert page.get_by_role("checkbox", name="Include bot traffic").is_checked()
    assert totals_row(page) == WITH_BOTS_TOTAL

    # Signing out puts the filter back to its default.
    page.click("#sign-out")
    sign_in(page, api_base, bot_shop.reports)
    wait_bots(page, "excluded")
    assert not page.get_by_role("checkbox", name="Include bot traffic").is_checked()


def test_conversions_by_country_sort_like_the_other_tables_and_fit_a_phone(bot_shop, api_base, page):  # noqa: F811
    by_country = api_get(api_base, bot_shop.reports, "/v1/reports", dimensions="country",
                         metrics="conversions,conversion_value", **around_today())
    assert {row["country"]: (row["conversions"], row["conversion_value"]) for row in by_country["rows"]} == {
        "US": (2, 55), "JP": (1, 30), "": (1, 10)}

    sign_in(page, api_base, bot_shop.reports)
    page.wait_for_selector("#by-country[data-state=ready]", timeout=20_000)
    section = page.get_by_role("region", name="By country", exact=True)
    assert section.get_by_role("heading", name="By country").is_visible()
    assert "spend, impressions and clicks are not" in section.inner_text()
    table = page.get_by_role("table", name="Conversions and their value by country")
    assert table.locator("thead th .label").all_inner_texts() == [
        "Country", "Conversions", "Value (USD)", "Share of conversions"]
    # Most conversions first (ties by name), the sorted heading marked for screen readers.
    assert country_rows(page) == PEOPLE_COUNTRIES
    assert country_total(page) == ["Total", "4", "95.00", "100.00%"]
    assert page.inner_text("#countries-status").startswith("2 countries and conversions of no known country, ")
    assert table.locator("thead th[aria-sort]").evaluate_all(
        "ths => ths.map((th) => [th.dataset.key, th.getAttribute('aria-sort')])") == [["conversions", "descending"]]

    # A heading is a button: a click sorts by value, biggest first; again reverses.
    table.get_by_role("button", name="Value (USD)").click()
    assert [row[0] for row in country_rows(page)] == ["United States (US)", "Japan (JP)", "Unknown"]
    assert page.inner_text("#sort-status") == "Countries sorted by Value (USD), descending."
    table.get_by_role("button", name="Value (USD)").click()
    assert [row[0] for row in country_rows(page)] == ["Unknown", "Japan (JP)", "United States (US)"]
    # By keyboard: the country names, A to Z.
    table.get_by_role("button", name="Country").focus()
    page.keyboard.press("Enter")
    assert [row[0] for row in country_rows(page)] == ["Japan (JP)", "United States (US)", "Unknown"]
    assert table.locator("thead th[data-key=country]").get_attribute("aria-sort") == "ascending"
    assert country_total(page) == ["Total", "4", "95.00", "100.00%"]  # the totals stay last
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#countries").screenshot(path=str(ARTIFACTS / "dashboard-countries.png"))

    # With bot traffic the bot's country shows up, in the chosen order.
    page.get_by_role("checkbox", name="Include bot traffic").check()
    wait_bots(page, "included")
    assert [row[0] for row in country_rows(page)] == [
        "Japan (JP)", "Netherlands (NL)", "United States (US)", "Unknown"]
    assert country_total(page) == ["Total", "5", "145.00", "100.00%"]

    # Phone-wide: no sideways scroll for the page, the note and the new table included.
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_function("document.documentElement.scrollWidth <= 390", timeout=5_000)
    assert page.locator("#bots-note").is_visible() and page.locator("#by-country").is_visible()
    page.locator("#countries").screenshot(path=str(ARTIFACTS / "dashboard-390-countries.png"))
