"""The dashboard's "Alert rules" and "Scheduled reports" stay current without a reload, in Chromium.

A rule's state is driven by the scheduler's own code (``Scheduler.tick``) and the API; a schedule's
last run is written as the scheduler writes it. The page's clock is Playwright's (``page.clock``), so
"every minute" is a jump of the page's time, not a wait; every read the page makes is counted where
it calls ``fetch``, to show that refreshes never stack up, stop while the tab is hidden and stop on
sign-out. Screenshot: test-artifacts/dashboard-live-rules.png.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from clicktrail import clickhouse
from clicktrail.lifecycle import StopFlag
from reporting import schedules
from reporting.api import create_app
from reporting.scheduler import Scheduler
from tests.conftest import ARTIFACTS, Tenant, where
from tests.test_dashboard_browser import api_base, page, sign_in  # noqa: F401 - fixtures used below
from tests.test_rules import auth, create, page_view
from tests.test_schedules import Receiver

pytestmark = pytest.mark.browser

MINUTE = timedelta(minutes=1)

# Counts the page's reads of each API path, as it calls fetch (before any answer).
COUNT_READS = """
window.__reads = {};
const pageFetch = window.fetch;
window.fetch = function (input, init) {
  const path = new URL(String(input), window.location.href).pathname;
  window.__reads[path] = (window.__reads[path] || 0) + 1;
  return pageFetch.apply(this, arguments);
};
"""


def reads(pg) -> tuple[int, int]:
    """How often the page has read the rules and the schedules so far, once neither read is pending."""
    pg.wait_for_function("""() => !document.querySelector('#rules').hasAttribute('aria-busy') &&
        !document.querySelector('#schedules').hasAttribute('aria-busy')""", timeout=20_000)
    counts = pg.evaluate("window.__reads")
    return counts.get("/v1/rules", 0), counts.get("/v1/schedules", 0)


def set_visibility(pg, state: str) -> None:
    """What the browser does when the tab is hidden or shown again: visibilityState, then the event."""
    pg.evaluate("""(state) => {
        Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => state});
        document.dispatchEvent(new Event('visibilitychange'));
    }""", state)


def test_rules_and_schedules_refresh_without_a_reload(settings, r, ch, ch_database, client, sink,
                                                      api_base, page):  # noqa: F811
    receiver = Receiver()
    try:
        acme = Tenant(r, "acme", "shop.example")
        api = create_app({**where(settings), "ALLOW_HTTP_WEBHOOKS": "true"}).test_client()
        mine = auth(r, "acme")
        rule = create(api, mine, name="shop pixel silent", metric="event_count", event="PageView", window="1h",
                      scope={"pixel_id": acme.pixel_id}, condition={"op": "==", "threshold": 0},
                      webhook={"url": receiver.url})
        made = api.post("/v1/schedules", json={"range": "yesterday", "at": "07:00", "timezone": "UTC",
                                               "webhook": {"url": "https://reports.example.com/in"}}, headers=mine)
        assert made.status_code == 201, made.get_json()
        schedule = made.get_json()["id"]
        worker = Scheduler(settings, r, clickhouse.connect(settings.clickhouse.url), ch_database, StopFlag(),
                           name="test-scheduler")
        t0 = datetime.now(UTC)
        assert worker.tick(t0) == 1  # the pixel is silent: the rule fires

        page.add_init_script(COUNT_READS)
        page.clock.install()
        sign_in(page, api_base, mine["Authorization"].removeprefix("Bearer "))
        row = page.locator(f"#rules-table tr[data-rule-id='{rule['id']}']")
        row.and_(page.locator("[data-state=firing]")).wait_for(timeout=20_000)
        page.wait_for_selector("#schedules[data-state=ready]", timeout=20_000)
        page.clock.pause_at(datetime.now(UTC) + timedelta(seconds=2))  # from here, time moves when told
        page.evaluate("window.__sameDocument = true")  # gone if the page were loaded again
        assert reads(page) == (1, 1)
        assert page.locator("#rules-updated").inner_text().startswith("Updated ")
        last_run = page.locator(f"tr[data-schedule-id='{schedule}'] td.last-run")
        assert last_run.inner_text() == "never yet"

        # The pixel is heard from; the scheduler resolves the rule. The page learns it on "Refresh".
        page_view(client, acme.pixel_id, "back")
        sink.drain()
        assert worker.tick(t0 + 2 * MINUTE) == 1
        assert api.get(f"/v1/rules/{rule['id']}", headers=mine).get_json()["state"] == "ok"
        assert row.get_attribute("data-state") == "firing"  # nothing read since
        page.get_by_role("button", name="Refresh alert rules").click()
        row.and_(page.locator("[data-state=ok]")).wait_for(timeout=20_000)
        assert row.locator("td").nth(2).inner_text().startswith("OK since ")
        assert page.inner_text("#rules-news") == "Alert rules updated: rule shop pixel silent is now OK."
        assert reads(page) == (2, 1)  # the rules only; the schedules keep their own minute

        # A minute later both sections are read again by themselves: the rule paused through the API,
        # the schedule's run delivered (as the scheduler records it).
        assert api.post(f"/v1/rules/{rule['id']}/pause", headers=mine).status_code == 200
        schedules.set_period_state(r, schedule, "2026-03-09", {"state": "delivered", "attempts": 1, "error": None,
                                                               "at": 1})
        page.clock.fast_forward(61_000)
        row.and_(page.locator("[data-state=paused]")).wait_for(timeout=20_000)
        page.wait_for_selector(f"tr[data-schedule-id='{schedule}'] td.last-run[data-state=delivered]",
                               timeout=20_000)
        assert last_run.inner_text() == "2026-03-09: delivered"
        assert reads(page) == (3, 2)
        ARTIFACTS.mkdir(exist_ok=True)
        page.locator("#rules-card").screenshot(path=str(ARTIFACTS / "dashboard-live-rules.png"))

        # "Refresh" pressed three times in a row (each read starts before the last one is answered)
        # leaves one timer, not three: a minute on, one read each.
        page.get_by_role("button", name="Refresh alert rules").click(click_count=3)
        assert reads(page) == (6, 2)
        page.clock.fast_forward(61_000)
        assert reads(page) == (7, 3)
        page.clock.fast_forward(30_000)
        assert reads(page) == (7, 3)

        # Nothing is read while the tab is hidden; shown again after a while, both are read at once.
        set_visibility(page, "hidden")
        page.clock.fast_forward(180_000)
        assert reads(page) == (7, 3)
        set_visibility(page, "visible")
        assert reads(page) == (8, 4)
        assert page.evaluate("window.__sameDocument") is True

        # Signed out: no more reads, and the sections are empty.
        page.click("#sign-out")
        page.clock.fast_forward(180_000)
        assert reads(page) == (8, 4)
        assert page.inner_text("#rules") == "" and page.inner_text("#rules-updated") == ""
    finally:
        receiver.close()
