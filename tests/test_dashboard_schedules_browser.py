"""The dashboard's "Scheduled reports" section in Debian's Chromium, against the real API under gunicorn.

Schedules are made through the API (as an advertiser would), their runs' states written as the
scheduler writes them; the section must list each with its range, time, zone, delivery target,
status, next run and last run, as an accessible table, and show another advertiser none of them.
Screenshot: test-artifacts/dashboard-schedules.png.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from pixel import registry
from reporting import schedules
from reporting.api import create_app
from tests.conftest import ARTIFACTS, where
from tests.test_dashboard_browser import api_base, page, sign_in  # noqa: F401 - fixtures

pytestmark = pytest.mark.browser


def schedule_rows(pg) -> list[list[str]]:
    return pg.evaluate("""() => Array.from(document.querySelectorAll('#schedule-table tbody tr'))
        .map((tr) => Array.from(tr.children).map((c) => c.innerText.trim()))""")


def test_scheduled_reports_are_listed_with_their_state(settings, r, api_base, page):  # noqa: F811
    api = create_app({**where(settings), "SMTP_URL": "smtp://127.0.0.1:25"}).test_client()
    acme = {"Authorization": f"Bearer {registry.create_token(r, 'acme', ['reports'])}"}
    zeta = registry.create_token(r, "zeta", ["reports"])

    def make(**body) -> str:
        reply = api.post("/v1/schedules", json={"range": "yesterday", "at": "07:00", **body}, headers=acme)
        assert reply.status_code == 201, reply.get_json()
        return reply.get_json()["id"]

    daily = make(timezone="Europe/Berlin", report={"metrics": "spend,conversions"},
                 webhook={"url": "https://reports.example.com/clicktrail?k=1"})
    weekly = make(range="last_7_days", format="json", weekday="mon", at="09:30", timezone="America/New_York",
                  email={"to": ["ana@shop.example", "ops@shop.example"]})
    broken = make(timezone="UTC", email={"to": ["ana@shop.example"]})
    assert api.post(f"/v1/schedules/{weekly}/pause", headers=acme).status_code == 200
    schedules.set_period_state(r, daily, "2026-03-09", {"state": "delivered", "attempts": 1, "error": None, "at": 1})
    schedules.set_period_state(r, broken, "2026-03-09", {"state": "retrying", "attempts": 3, "at": 1, "retry_at": 2,
                                                         "error": "DeliveryFailed: SMTP ConnectionRefusedError"})
    listed = {s["id"]: s for s in api.get("/v1/schedules", headers=acme).get_json()["schedules"]}

    sign_in(page, api_base, acme["Authorization"].split()[1])
    page.wait_for_selector("#schedules[data-state=ready]", timeout=20_000)
    berlin_next = datetime.fromisoformat(listed[daily]["next_run"]).strftime("%Y-%m-%d %H:%M:%S")
    utc_next = datetime.fromisoformat(listed[broken]["next_run"]).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    assert schedule_rows(page) == [
        ["Yesterday (CSV) \u00b7 spend,conversions", "Daily at 07:00 Europe/Berlin", "Webhook: reports.example.com",
         "Active", f"{berlin_next} Europe/Berlin", "2026-03-09: delivered"],
        ["Last 7 days (JSON)", "Every Monday at 09:30 America/New_York",
         "E-mail: ana@shop.example, ops@shop.example", "Paused", "\u2014", "never yet"],
        ["Yesterday (CSV)", "Daily at 07:00 UTC", "E-mail: ana@shop.example", "Active", f"{utc_next} UTC",
         "2026-03-09: failed, retrying (3 attempts)\nDeliveryFailed: SMTP ConnectionRefusedError"],
    ]
    # Accessible: a captioned table, column and row headers, the state as data for styles and tests.
    table = page.locator("#schedule-table")
    assert table.locator("caption").inner_text() == "Scheduled reports, oldest first"
    assert table.locator("thead th[scope=col]").all_inner_texts() == [
        "Report", "When", "Delivered to", "Status", "Next run", "Last run"]
    assert table.locator("tbody th[scope=row]").count() == 3
    assert page.locator(f"tr[data-schedule-id='{weekly}']").get_attribute("data-status") == "paused"
    assert page.locator(f"tr[data-schedule-id='{broken}'] td.last-run").get_attribute("data-state") == "retrying"
    assert page.get_by_role("region", name="Scheduled reports", exact=True).is_visible()  # the section
    assert page.get_by_role("region", name="Table of scheduled reports").is_visible()  # it scrolls, by keyboard too
    assert page.get_by_role("heading", name="Scheduled reports").is_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    page.wait_for_selector("#breakdown[data-state=ready]", timeout=20_000)  # the page above has its final height
    page.locator("#schedules-card").screenshot(path=str(ARTIFACTS / "dashboard-schedules.png"))
    assert "secret" not in json.dumps(schedule_rows(page))

    # Another advertiser sees none of them; signing out empties the section.
    page.click("#sign-out")
    assert page.inner_text("#schedules") == ""
    sign_in(page, api_base, zeta)
    page.wait_for_selector("#schedules[data-state=ready]", timeout=20_000)
    assert page.inner_text("#schedules") == "No scheduled report yet."
    assert "ana@shop.example" not in page.inner_text("body")
