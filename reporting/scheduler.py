"""``clicktrail scheduler``: builds due scheduled reports and delivers them (webhook or e-mail), and
evaluates alert rules (reporting/rule_runner.py).

One scheduler leads at a time (a lease in Redis, like the attributor's); others stand by and take
over once the leader's lease lapses. Each run is a *period* of a schedule (reporting/schedules.py)
whose state is kept in Redis: a period is marked ``pending`` before its delivery and ``delivered``
once the receiver answered 2xx, and a delivered period is never posted again, across restarts. A
crash between the receiver's answer and the mark (a window of one Redis write) posts the period
once more on the next run: each post carries ``X-Clicktrail-Delivery`` (schedule and period) for a
receiver to drop such a repeat (an e-mail's Message-ID is derived from the same id). A failed
delivery is retried with backoff, up to ``MAX_ATTEMPTS``. Periods missed while no scheduler ran
are delivered too, oldest first (``schedules.to_run``); one still retrying when it leaves the
catch-up window is marked ``failed`` with that reason, so no period waits forever.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import redis

from clicktrail import keys
from clicktrail.backoff import Backoff, retry
from clicktrail.config import Settings
from clicktrail.lifecycle import Heartbeat, StopFlag
from pixel.registry import advertiser_settings
from reporting import delivery, mail, schedules
from reporting.reports import Report, csv_text
from reporting.rule_runner import RuleRunner

log = logging.getLogger("clicktrail.scheduler")

#: Take the lease when free, renew it when ours: 1 if we lead now.
_LEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
TICK_S = 1.0
#: Delays between attempts at one period: from 30 s up to 10 minutes.
RETRY_BASE_S, RETRY_CAP_S = 30.0, 600.0


class Scheduler:
    def __init__(self, settings: Settings, r, ch, database: str, stop: StopFlag, name: str | None = None) -> None:
        self.settings = settings
        self.redis = r
        self.ch = ch
        self.db = database
        self.stop = stop
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.heartbeat = Heartbeat(settings.paths.heartbeat_file)
        self.lease_ms = int(settings.scheduler.lease_s * 1000)
        self.retry_base_s = RETRY_BASE_S
        self.rules = RuleRunner(r, ch, database, stop, settings.scheduler.rule_interval_s, settings.mail)

    def run(self) -> None:
        log.info("scheduler %s started", self.name)
        try:
            while not self.stop.is_set:
                self.heartbeat.beat()
                retry(self.tick, errors=(redis.ConnectionError, redis.TimeoutError), stop=self.stop,
                      backoff=Backoff(cap=self.settings.retry.backoff_cap_s), on_failure=_redis_failed)
                self.stop.wait(TICK_S)
        finally:
            try:
                self.redis.eval(_RELEASE, 1, keys.SCHEDULER_LEASE, self.name)
            except redis.RedisError:
                pass  # it lapses by itself
        log.info("scheduler %s stopped", self.name)

    def tick(self, now: datetime | None = None) -> int:
        """Run every due period once and the alert rules due, if this process leads; return how many
        posts (reports and notifications) it made."""
        if not self._lead():
            return 0
        now = now or datetime.now(timezone.utc)
        posted = 0
        for schedule in schedules.every(self.redis):
            if self.stop.is_set:
                break
            if schedule["paused"]:
                continue
            states = schedules.period_states(self.redis, schedule["id"])
            due_now, stranded = schedules.to_run(schedule, now, states)
            for period in stranded:
                self._give_up(schedule, period, states[period])
            for due in due_now:
                # Renewed before each run: slow reports or webhooks must not let a standby take over
                # (and post the same period) while this one still works.
                if self.stop.is_set or not self._lead():
                    return posted
                posted += self._run_period(schedule, due)
        posted += self.rules.tick(now, self._lead)
        self.redis.set(keys.SCHEDULER_TICK, int(now.timestamp() * 1000))
        return posted

    def _lead(self) -> bool:
        return bool(self.redis.eval(_LEASE, 1, keys.SCHEDULER_LEASE, self.name, self.lease_ms))

    def _run_period(self, schedule: dict, due: datetime) -> int:
        period = due.date().isoformat()
        state = schedules.period_state(self.redis, schedule["id"], period) or {"state": schedules.PENDING,
                                                                                "attempts": 0}
        if state["state"] in (schedules.DELIVERED, schedules.FAILED):
            return 0
        now_ms = int(time.time() * 1000)
        if (state.get("retry_at") or 0) > now_ms:
            return 0
        schedules.set_period_state(self.redis, schedule["id"], period, {**state, "state": schedules.PENDING})
        try:
            self._deliver(schedule, due, period)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the period is retried, the worker goes on
            self._failed(schedule, period, state["attempts"] + 1, exc)
            return 1
        schedules.set_period_state(self.redis, schedule["id"], period, {
            "state": schedules.DELIVERED, "attempts": state["attempts"] + 1, "error": None, "at": now_ms})
        log.info("schedule %s: period %s delivered", schedule["id"], period)
        return 1

    def _failed(self, schedule: dict, period: str, attempts: int, exc: Exception) -> None:
        backoff = Backoff(base=self.retry_base_s, cap=RETRY_CAP_S)
        backoff.failures = attempts - 1
        gave_up = attempts >= schedules.MAX_ATTEMPTS
        # Stored and logged: an SMTP server's answer often quotes the recipient, which stays out of both.
        error = mail.redacted(f"{type(exc).__name__}: {exc}")[:500]
        now_ms = int(time.time() * 1000)
        schedules.set_period_state(self.redis, schedule["id"], period, {
            "state": schedules.FAILED if gave_up else schedules.RETRYING, "attempts": attempts, "error": error,
            "at": now_ms, "retry_at": None if gave_up else now_ms + int(backoff.next_delay() * 1000)})
        log.warning("schedule %s: period %s attempt %d failed (%s)%s", schedule["id"], period, attempts, error,
                    "; given up" if gave_up else "; retrying later")

    def _give_up(self, schedule: dict, period: str, state: dict) -> None:
        final = schedules.outside_window(state)
        schedules.set_period_state(self.redis, schedule["id"], period, final)
        log.warning("schedule %s: period %s given up after %d attempts: %s", schedule["id"], period,
                    final.get("attempts", 0), final["error"])

    def _deliver(self, schedule: dict, due: datetime, period: str) -> None:
        body, content_type, query = self._build(schedule, due)
        extension = "csv" if query.format == "csv" else "json"
        text = (f"The clicktrail report of schedule {schedule['id']} for the period {period} "
                f"({schedule['range']}: {query.start.isoformat()} to {query.end.isoformat()}, "
                f"time zone {query.timezone}) is attached as {extension.upper()}.\n")
        delivery.send(schedule, delivery.Message(
            body=body, content_type=content_type, subject=f"clicktrail report {schedule['id']} for {period}",
            delivery_id=f"{schedule['id']}:{period}", secret=schedule["secret"],
            headers={"X-Clicktrail-Schedule": schedule["id"], "X-Clicktrail-Period": period},
            text=text, filename=f"clicktrail-{schedule['id']}-{period}.{extension}"), self.settings.mail)

    def _build(self, schedule: dict, due: datetime):
        adv = schedule["advertiser_id"]
        settings = advertiser_settings(self.redis, adv)
        zone = ZoneInfo(schedule["report"].get("timezone") or settings["timezone"])
        query = schedules.query_for(schedule["report"], schedule["range"], schedule["format"], settings,
                                    due.astimezone(zone).date())
        built = Report(self.ch, self.db, adv, settings, query).build()
        if query.format == "csv":
            return csv_text(query, built["rows"], settings["currency"]).encode(), "text/csv; charset=utf-8", query
        return json.dumps(built, default=str).encode(), "application/json", query


def _redis_failed(exc: BaseException, delay: float) -> None:
    log.warning("Redis unreachable (%s); retrying in %.1fs", exc, delay)
