"""Scheduled reports by e-mail, through a real SMTP server (aiosmtpd) in the test.

A schedule due this minute must reach the SMTP server exactly once, with its report attached,
even when the real `clicktrail scheduler` is killed after the delivery and started again; while
the SMTP server is down the period is retried, and delivered once when it is back. Recipients are
checked on the way in, each refusal naming ``email.to[i]``, and no address reaches a run's state.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import signal
import time
from datetime import datetime, timedelta, timezone

import pytest
from aiosmtpd.controller import Controller
from hypothesis import given, settings as hsettings, strategies as st

from clicktrail import clickhouse, keys, services
from clicktrail.errors import BadRequest
from clicktrail.lifecycle import StopFlag
from reporting import mail
from reporting.api import create_app
from reporting.scheduler import Scheduler
from tests.conftest import where
from tests.test_chaos import wait_for
from tests.test_schedules import auth, listed

FROM = "Reports <reports@shop.example>"
TEAM = ["ana@shop.example", "marketing.team+daily@shop.example"]


class SmtpServer:
    """A local SMTP server that keeps every message it accepts; ``refuse`` answers RCPT with that reply.

    ``options`` go to aiosmtpd's Controller (``tls_context``, ``ssl_context``, ``authenticator``...).
    ``mail_over_tls`` has, for each MAIL command received, whether the session was encrypted then.
    """

    def __init__(self, port: int | None = None, refuse: str = "", **options) -> None:
        self.port = port or services.free_port()
        self.url = f"smtp://127.0.0.1:{self.port}"
        self.received: list[tuple[list[str], email.message.EmailMessage]] = []
        self.mail_over_tls: list[bool] = []
        outer = self

        class Handler:
            async def handle_MAIL(self, server, session, envelope, address, mail_options):
                outer.mail_over_tls.append(server.transport.get_extra_info("ssl_object") is not None)
                envelope.mail_from = address
                return "250 OK"

            async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
                if refuse:
                    return refuse
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, server, session, envelope):
                parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
                outer.received.append((list(envelope.rcpt_tos), parsed))
                return "250 Message accepted for delivery"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, **options)

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()


def mail_body(**changes) -> dict:
    return {"report": {"dimensions": "stat_time_day", "metrics": "clicks,conversions"}, "range": "today",
            "format": "csv", "at": datetime.now(timezone.utc).strftime("%H:%M"), "timezone": "UTC",
            "email": {"to": TEAM}, **changes}


def api_for(settings, smtp_url: str):
    return create_app({**where(settings), "SMTP_URL": smtp_url, "SMTP_FROM": FROM}).test_client()


def test_emailed_once_with_the_report_attached_across_a_scheduler_kill(settings, r, ch, spawn):
    with SmtpServer() as smtp:
        api, headers = api_for(settings, smtp.url), auth(r, "adv-1")
        today = datetime.now(timezone.utc).date().isoformat()
        reply = api.post("/v1/schedules", json=mail_body(), headers=headers)
        assert reply.status_code == 201, reply.get_json()
        sid = reply.get_json()["id"]
        assert reply.get_json()["email"] == {"to": TEAM} and "webhook" not in reply.get_json()

        first = spawn.start("scheduler", "--log-level", "WARNING", SMTP_URL=smtp.url, SMTP_FROM=FROM,
                            SCHEDULER_LEASE_S=2)
        wait_for("an e-mail", lambda: smtp.received)
        wait_for("the run recorded as delivered",
                 lambda: (listed(api, headers)[0]["last_run"] or {}).get("state") == "delivered")
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()

        restarted = time.time() * 1000
        spawn.start("scheduler", "--log-level", "WARNING", SMTP_URL=smtp.url, SMTP_FROM=FROM, SCHEDULER_LEASE_S=2)
        wait_for("ticks of the new scheduler", lambda: int(r.get(keys.SCHEDULER_TICK) or 0) > restarted + 3000)

        assert len(smtp.received) == 1
        to, msg = smtp.received[0]
        assert sorted(to) == sorted(TEAM) and msg["From"] == FROM
        assert msg["Message-ID"] == f"<{sid}.{today}@shop.example>"
        assert msg["X-Clicktrail-Delivery"] == f"{sid}:{today}" and msg["Subject"] == f"clicktrail report {sid} for {today}"
        text = msg.get_body(("plain",)).get_content()
        assert sid in text and f"period {today}" in text and f"today: {today} to {today}" in text
        (attachment,) = msg.iter_attachments()
        assert attachment.get_filename() == f"clicktrail-{sid}-{today}.csv"
        assert attachment.get_content_type() == "text/csv"
        assert attachment.get_content().splitlines()[0] == "stat_time_day,clicks,conversions"


def test_smtp_down_then_up_the_period_is_retried_and_delivered_once(settings, r, ch, ch_database):
    port = services.free_port()
    url = f"smtp://127.0.0.1:{port}"
    api, headers = api_for(settings, url), auth(r, "adv-1")
    assert api.post("/v1/schedules", json=mail_body(format="json"), headers=headers).status_code == 201
    worker = Scheduler(settings.updated({"SMTP_URL": url, "SMTP_FROM": FROM}), r,
                       clickhouse.connect(settings.clickhouse.url), ch_database, StopFlag(), name="test-scheduler")
    worker.retry_base_s = 0.2

    assert worker.tick() == 1  # nobody listens on the port
    down = listed(api, headers)[0]["last_run"]
    assert down["state"] == "retrying" and down["attempts"] == 1 and "SMTP ConnectionRefusedError" in down["error"]
    with SmtpServer(port) as smtp:
        wait_for("the retry", lambda: worker.tick() == 1)
        for _ in range(3):
            assert worker.tick() == 0
        assert len(smtp.received) == 1
        (attachment,) = smtp.received[0][1].iter_attachments()
        assert attachment.get_content_type() == "application/json"
    done = listed(api, headers)[0]["last_run"]
    assert done["state"] == "delivered" and done["attempts"] == 2 and done["error"] is None


def test_a_refusal_quoting_the_address_is_stored_without_it(settings, r, ch, ch_database):
    with SmtpServer(refuse="550 5.1.1 <ana@shop.example>: Recipient address rejected") as smtp:
        api, headers = api_for(settings, smtp.url), auth(r, "adv-1")
        api.post("/v1/schedules", json=mail_body(email={"to": ["ana@shop.example"]}), headers=headers)
        worker = Scheduler(settings.updated({"SMTP_URL": smtp.url}), r, clickhouse.connect(settings.clickhouse.url),
                           ch_database, StopFlag(), name="test-scheduler")
        assert worker.tick() == 1 and smtp.received == []
    failed = listed(api, headers)[0]["last_run"]
    assert failed["state"] == "retrying" and "Recipient address rejected" in failed["error"]
    assert "@" not in failed["error"] and "<address>" in failed["error"]


def test_email_is_refused_while_no_smtp_server_is_configured(settings, r):
    strict = create_app(where(settings)).test_client()
    reply = strict.post("/v1/schedules", json=mail_body(), headers=auth(r, "adv-1"))
    assert reply.status_code == 400
    error = reply.get_json()["error"]
    assert error["field"] == "email" and "CLICKTRAIL_SMTP_URL" in error["message"]
    assert listed(strict, auth(r, "adv-1")) == []


@pytest.mark.parametrize("delivery, field", [
    ({"email": {"to": ["ana@shop.example", "not an address"]}}, "email.to[1]"),
    ({"email": {"to": ["Ana <ana@shop.example>"]}}, "email.to[0]"),
    ({"email": {"to": ["ana@shop.example\r\nBcc: x@evil.example"]}}, "email.to[0]"),
    ({"email": {"to": ["ana@localhost"]}}, "email.to[0]"),
    ({"email": {"to": ["ana@shop.example", "ANA@shop.example"]}}, "email.to[1]"),
    ({"email": {"to": [7]}}, "email.to[0]"),
    ({"email": {"to": []}}, "email"),
    ({"email": {"to": "ana@shop.example"}}, "email"),
    ({"email": {"to": [f"a{i}@shop.example" for i in range(mail.MAX_RECIPIENTS + 1)]}}, "email.to"),
    ({"email": {"to": ["ana@shop.example"], "cc": ["b@shop.example"]}}, "email.cc"),
    ({"email": {"to": ["ana@shop.example"]}, "webhook": {"url": "https://x.example/h"}}, "email"),
])
def test_bad_recipients_are_refused_naming_the_field(settings, r, delivery, field):
    api = api_for(settings, "smtp://127.0.0.1:9")
    body = {k: v for k, v in mail_body().items() if k != "email"}
    reply = api.post("/v1/schedules", json={**body, **delivery}, headers=auth(r, "adv-1"))
    assert reply.status_code == 400, reply.get_json()
    assert reply.get_json()["error"]["field"] == field
    assert listed(api, auth(r, "adv-1")) == []


@given(to=st.lists(st.text(max_size=40) | st.emails(), max_size=12) | st.none() | st.integers() | st.text())
@hsettings(max_examples=120, deadline=None)
def test_any_recipient_list_is_accepted_whole_or_refused_naming_a_field(to):
    try:
        accepted = mail.recipients({"to": to})
    except BadRequest as exc:
        assert exc.status == 400 and exc.field.startswith("email")
        return
    assert accepted == to and 1 <= len(to) <= mail.MAX_RECIPIENTS
    for address in accepted:
        # Whatever passes goes into a header as one address and comes back unchanged.
        msg = mail.compose([address], FROM, subject="s", text="t", attachment=b"x", content_type="text/csv",
                           filename="r.csv", delivery_id="sch_1:2026-01-01", headers={})
        parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
        assert [a.addr_spec for a in parsed["To"].addresses] == [address]
        assert mail.redacted(f"550 <{address}> no") == "550 <<address>> no"


def test_the_readmes_email_example_is_accepted(settings, r):
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("By e-mail instead", 1)[1]
    example = section.split("```json\n", 1)[1].split("```", 1)[0]
    api = api_for(settings, "smtp://127.0.0.1:25")
    reply = api.post("/v1/schedules", data=example, content_type="application/json", headers=auth(r, "adv-1"))
    assert reply.status_code == 201, reply.get_json()
    assert reply.get_json()["email"] == {"to": ["ana@shop.example", "growth@shop.example"]}


def test_an_alert_rule_emails_each_transition_once(settings, r, ch, ch_database, tenant):
    """A rule delivered by e-mail: one message when it fires (the notification attached), none while it holds."""
    with SmtpServer() as smtp:
        api, headers = api_for(settings, smtp.url), auth(r, tenant.advertiser)
        reply = api.post("/v1/rules", headers=headers, json={
            "name": "shop pixel silent", "metric": "event_count", "event": "PageView", "window": "1h",
            "scope": {"pixel_id": tenant.pixel_id}, "condition": {"op": "==", "threshold": 0},
            "email": {"to": TEAM}})
        assert reply.status_code == 201, reply.get_json()
        rule = reply.get_json()
        assert rule["email"] == {"to": TEAM} and "webhook" not in rule
        worker = Scheduler(settings.updated({"SMTP_URL": smtp.url, "SMTP_FROM": FROM}), r,
                           clickhouse.connect(settings.clickhouse.url), ch_database, StopFlag(), name="test-scheduler")
        t0 = datetime.now(timezone.utc)
        assert worker.tick(t0) == 1
        assert worker.tick(t0 + timedelta(seconds=61)) == 0  # still silent: no second message
        ((rcpts, msg),) = smtp.received
        assert sorted(rcpts) == sorted(TEAM)
        assert "shop pixel silent" in msg["Subject"] and "firing" in msg["Subject"]
        assert msg["X-Clicktrail-Delivery"] == f"{rule['id']}:1"
        assert "is firing" in msg.get_body(("plain",)).get_content()
        (attachment,) = msg.iter_attachments()
        notice = json.loads(attachment.get_content())
        assert notice["rule_id"] == rule["id"] and notice["state"] == "firing" and notice["value"] == 0
    shown_ = api.get(f"/v1/rules/{rule['id']}", headers=headers).get_json()
    assert shown_["state"] == "firing" and shown_["last_notification"]["status"] == "delivered"


def test_an_emailed_rule_is_refused_while_no_smtp_server_is_configured(settings, r, tenant):
    api = create_app(where(settings)).test_client()
    reply = api.post("/v1/rules", headers=auth(r, tenant.advertiser), json={
        "metric": "conversions", "window": "24h", "condition": {"op": "<", "threshold": 1},
        "email": {"to": TEAM}})
    assert reply.status_code == 400
    error = reply.get_json()["error"]
    assert error["field"] == "email" and "CLICKTRAIL_SMTP_URL" in error["message"]
