"""The dashboard's "Alert rules" section in Debian's Chromium, against the real API under gunicorn.

Rules are made through the API and evaluated by the scheduler's own code (``Scheduler.tick``), so
the page shows what the API says: one rule firing, one paused, none of another advertiser's.
Screenshot: test-artifacts/dashboard-rules.png.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from clicktrail import clickhouse
from clicktrail.lifecycle import StopFlag
from reporting.api import create_app
from reporting.scheduler import Scheduler
from tests.conftest import ARTIFACTS, Tenant, where
from tests.test_dashboard_browser import api_base, page, sign_in  # noqa: F401 - fixtures used below
from tests.test_rules import auth, create
from tests.test_schedules import Receiver

pytestmark = pytest.mark.browser


def utc(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def test_the_dashboard_lists_the_rules_with_their_state(settings, r, ch, ch_database, api_base, page):  # noqa: F811
    receiver = Receiver()
    try:
        acme = Tenant(r, "acme", "shop.example")
        api = create_app({**where(settings), "ALLOW_HTTP_WEBHOOKS": "true"}).test_client()
        mine, theirs = auth(r, "acme"), auth(r, "zeta")
        silent = create(api, mine, name="shop pixel silent", metric="event_count", event="PageView", window="1h",
                        scope={"pixel_id": acme.pixel_id}, condition={"op": "==", "threshold": 0},
                        webhook={"url": receiver.url})
        cpa = create(api, mine, name="CPA of spring", metric="cpa", window="24h", scope={"campaign_id": "spring"},
                     condition={"op": ">", "threshold": 50}, webhook={"url": receiver.url})
        assert api.post(f"/v1/rules/{cpa['id']}/pause", headers=mine).status_code == 200
        create(api, theirs, name="zeta secret rule", metric="conversions", window="7d",
               condition={"change": "fall", "percent": 30}, webhook={"url": receiver.url})
        worker = Scheduler(settings, r, clickhouse.connect(settings.clickhouse.url), ch_database, StopFlag(),
                           name="test-scheduler")
        assert worker.tick() == 1  # acme's silent pixel fires; zeta's rule (nothing before, nothing now) does not
        fired = api.get(f"/v1/rules/{silent['id']}", headers=mine).get_json()
        paused = api.get(f"/v1/rules/{cpa['id']}", headers=mine).get_json()
        assert fired["state"] == "firing"

        sign_in(page, api_base, mine["Authorization"].removeprefix("Bearer "))
        table = page.get_by_role("table", name="Alert rules and their state")
        table.locator("tbody tr").first.wait_for(timeout=20_000)
        assert page.get_by_role("heading", name="Alert rules").is_visible()
        assert table.locator("thead th").all_inner_texts() == [
            "Rule", "Watches", "Condition", "State", "Last value", "Last evaluated", "Last notification"]
        rows = [row.locator("th, td").all_inner_texts() for row in table.locator("tbody tr").all()]
        assert rows == [
            ["shop pixel silent", f"PageView events of pixel {acme.pixel_id}, last 1h", "== 0",
             f"Firing since {utc(fired['since'])}", "0", utc(fired["last_evaluated"]),
             "Firing notice delivered, " + utc(datetime.fromtimestamp(fired["last_notification"]["at"] / 1000,
                                                                       timezone.utc).isoformat())],
            ["CPA of spring", "CPA of campaign spring, last 24h", "> 50", f"Paused since {utc(paused['since'])}",
             "\u2014", "not yet", "none yet"],
        ]
        assert "zeta secret rule" not in page.inner_text("body")
        ARTIFACTS.mkdir(exist_ok=True)
        page.locator("#rules-card").screenshot(path=str(ARTIFACTS / "dashboard-rules.png"))
    finally:
        receiver.close()
