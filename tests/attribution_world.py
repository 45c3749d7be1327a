"""A small world for attribution tests: clicks, impressions and conversions through the real paths."""

from __future__ import annotations

import hashlib
import time

from pixel import registry

DAY = 86_400
HOUR = 3_600


def sha(text: str) -> str:
    return hashlib.sha256(text.strip().lower().encode()).hexdigest()


class World:
    def __init__(self, client, api_client, tenant, sink, attributor, r, ch, db) -> None:
        self.client, self.api, self.tenant = client, api_client, tenant
        self.sink, self.attributor, self.ch, self.db = sink, attributor, ch, db
        self.token = registry.create_token(r, tenant.advertiser, ["adserver", "reports"])
        self.auth = {"Authorization": f"Bearer {self.token}"}
        self.now = int(time.time()) - 60

    def _touch(self, collection: str, id_field: str, time_field: str, touch_id: str, at: int, campaign: str,
               user: dict | None) -> None:
        row = {id_field: touch_id, time_field: at, "campaign_id": campaign, "adgroup_id": f"{campaign}-g",
               "ad_id": f"{campaign}-ad"}
        if user:
            row["user"] = user
        resp = self.api.post(f"/v1/{collection}", json={collection: [row]}, headers=self.auth)
        assert resp.status_code == 200 and resp.json["accepted"] == 1, resp.json

    def click(self, click_id: str, at: int, campaign: str = "cmp", user: dict | None = None) -> None:
        self._touch("clicks", "click_id", "click_time", click_id, at, campaign, user)

    def impression(self, impression_id: str, at: int, campaign: str = "cmp", user: dict | None = None) -> None:
        self._touch("impressions", "impression_id", "impression_time", impression_id, at, campaign, user)

    def convert(self, event_id: str, at: int, event: str = "CompletePayment", value: float = 10.0,
                currency: str = "USD", **user) -> None:
        props = {"value": value, "currency": currency} if currency else {"value": value}
        if "order_id" in user:
            props["order_id"] = user.pop("order_id")
        body = {"event_source": "web", "event_source_id": self.tenant.pixel_id,
                "data": [{"event": event, "event_id": event_id, "event_time": at, "user": user, "properties": props}]}
        resp = self.client.post("/open_api/v1.3/event/track/", json=body, headers={"Access-Token": self.tenant.token})
        assert resp.status_code == 200 and resp.json["data"]["accepted"] == 1, resp.json

    def browse(self, event_id: str, at: int, ttp: str, ttclid: str = "", event: str = "PageView") -> None:
        body = {"sent_at": time.time_ns() // 1_000_000, "events": [{"event": event, "event_id": event_id, "timestamp": at * 1000,
                                                  "ttp": ttp, "ttclid": ttclid,
                                                  "page": {"url": "https://shop.example/landing"}}]}
        resp = self.client.post(f"/e/{self.tenant.pixel_id}", json=body)
        assert resp.status_code == 200 and resp.json["accepted"] == 1, resp.json

    def unattributed_conversions(self, n: int, chunk: int) -> None:
        """n clicks, attributed; then a conversion of each (c0.., clicks k0..), stored but not yet
        attributed, with the attributor writing ``chunk`` conversions at a time."""
        t = self.now - 2 * 3600
        for i in range(n):
            self.click(f"k{i}", t, f"C{i}")
        self.settle()
        for i in range(n):
            self.convert(f"c{i}", t + 60, ttclid=f"k{i}")
        self.sink.drain()
        self.attributor.settings = self.attributor.settings.updated({"ATTRIBUTOR_CHUNK": chunk})

    def settle(self) -> None:
        self.sink.drain()
        self.attributor.settle()

    def latest(self, event_id: str, model: str = "last_click") -> list[dict]:
        rows, cols = self.ch.execute(
            f"""SELECT touch_id, touch_kind, credit, matched_by, revision, campaign_id FROM {self.db}.credits FINAL
                WHERE event_id = %(e)s AND model = %(m)s
                  AND revision = (SELECT max(revision) FROM {self.db}.credits WHERE event_id = %(e)s)""",
            {"e": event_id, "m": model}, with_column_types=True)
        return [dict(zip([c[0] for c in cols], row)) for row in rows]

    def credits(self, event_id: str, model: str = "last_click") -> dict[str, float]:
        """{touch id: credit}, with "organic" for a conversion no touchpoint earned."""
        rows = self.latest(event_id, model)
        assert rows, f"conversion {event_id} was not attributed"
        return {(row["touch_id"] or row["matched_by"] or "organic"): round(row["credit"], 9) for row in rows}

    def revision(self, event_id: str) -> int:
        return self.latest(event_id)[0]["revision"]
