"""Alert rules in the leading ``clicktrail scheduler``: each rule evaluated about once a minute, one
notification per transition, delivered until it is.

Where a rule stands (``ok`` or ``firing``) and the notifications of its transitions not yet
delivered (its *outbox*) are one JSON value in ``keys.RULE_STATES``, written by compare-and-set.
A transition and its notification are recorded in that one write *before* anything is sent, and a
notification leaves the outbox only once its receiver answered 2xx. So a scheduler killed at any
point, or a standby taking over, neither loses a transition (it is in the outbox, or it was never
recorded and the next evaluation finds it again) nor repeats one (the state already says
``firing``), except in the one-write window between a receiver's 2xx and the outbox's update:
that repeat carries the same ``X-Clicktrail-Delivery`` (``<rule id>:<transition number>``) and
the same body for the receiver to drop it. Notifications go out in order; a failed one is retried
with backoff (30 s doubling to 10 min) for as long as the rule exists.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime, timezone

import redis

from clicktrail.backoff import Backoff
from pixel.registry import advertiser_settings
from reporting import delivery, mail, rule_eval, rules

log = logging.getLogger("clicktrail.rules")

RETRY_BASE_S, RETRY_CAP_S = 30.0, 600.0
#: Undelivered notifications kept per rule; beyond that the oldest are dropped (a receiver down for
#: days wants the latest transitions, and the state in the API says where the rule stands anyway).
MAX_OUTBOX = 20


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat()


class RuleRunner:
    def __init__(self, r, ch, database: str, stop, every_s: int = 60, mail_settings=None) -> None:
        # CLICKTRAIL_RULE_INTERVAL_S: the scheduler ticks every second, a rule's queries run this often.
        self.every_s = every_s
        self.redis = r
        self.ch = ch
        self.db = database
        self.stop = stop
        self.retry_base_s = RETRY_BASE_S
        self.mail_settings = mail_settings  # CLICKTRAIL_SMTP_URL, for rules delivered by e-mail

    def tick(self, now: datetime, leading: Callable[[], bool]) -> int:
        """Evaluate the rules due, deliver the notifications due; return how many posts were made.

        ``leading()`` renews the lease: called before each rule's work, so slow queries or webhooks
        never let a standby take over while this process still works."""
        now_ms = int(now.timestamp() * 1000)
        posted = 0
        for rule in rules.every(self.redis):
            if self.stop.is_set:
                break
            if rule["paused"]:
                continue
            raw = rules.raw_state(self.redis, rule["id"])
            state = json.loads(raw) if raw else rules.initial_state(rule)
            if (state.get("next_at") or 0) <= now_ms:
                if not leading():
                    return posted
                raw, state = self._evaluate(rule, raw, state, now_ms)
            outbox = state["outbox"]
            if outbox and (outbox[0]["retry_at"] or 0) <= now_ms:
                if not leading():
                    return posted
                posted += self._deliver(rule, raw, state, now_ms)
        return posted

    # -- evaluation -----------------------------------------------------------------------------

    def _evaluate(self, rule: dict, raw: str | None, state: dict, now_ms: int) -> tuple[str | None, dict]:
        hi = now_ms // 1000
        lo = hi - rule["window_s"]
        try:
            settings = advertiser_settings(self.redis, rule["advertiser_id"])
            now = rule_eval.measure(self.ch, self.db, rule, settings, lo, hi)
            before = (rule_eval.measure(self.ch, self.db, rule, settings, lo - rule["window_s"], lo)
                      if "change" in rule["condition"] else None)
        except redis.RedisError:
            raise  # the scheduler's loop waits Redis out
        except Exception as exc:  # noqa: BLE001 - ClickHouse down, or one bad rule: the others go on
            # Not evaluated is not "ok": the state stays as it was, tried again next minute.
            log.warning("rule %s: not evaluated (%s)", rule["id"], exc)
            return self._write(rule, raw, {**state, "next_at": now_ms + self.every_s * 1000,
                                           "error": f"{type(exc).__name__}: {exc}"[:300]})
        new = {**state, "value": now.shown, "note": now.note, "previous": before.shown if before else None,
               "previous_note": before.note if before else None, "evaluated_at": now_ms,
               "next_at": now_ms + self.every_s * 1000, "window_start": lo * 1000, "window_end": hi * 1000,
               "error": None}
        firing = rule_eval.holds(rule["condition"], now, before)
        if firing != (state["state"] == rules.FIRING):
            new.update(self._transition(rule, state, firing, now, before, lo, hi, now_ms))
        return self._write(rule, raw, new)

    def _transition(self, rule: dict, state: dict, firing: bool, now, before, lo: int, hi: int,
                    now_ms: int) -> dict:
        number = state["transitions"] + 1
        name = "firing" if firing else "resolved"
        body = {"rule_id": rule["id"], "name": rule["name"], "state": name, "metric": rule["metric"],
                "event": rule["event"], "scope": rule["scope"], "condition": rule["condition"],
                "threshold": rule["condition"].get("threshold", rule["condition"].get("percent")),
                "value": now.shown, "value_note": now.note,
                "previous": before.shown if before else None, "previous_note": before.note if before else None,
                "window_start": _iso(lo * 1000), "window_end": _iso(hi * 1000), "evaluated_at": _iso(now_ms)}
        entry = {"delivery_id": f"{rule['id']}:{number}", "state": name, "body": json.dumps(body),
                 "attempts": 0, "retry_at": None, "error": None}
        dropped = state["outbox"][:max(0, len(state["outbox"]) + 1 - MAX_OUTBOX)]
        for old in dropped:
            log.warning("rule %s: notification %s dropped undelivered", rule["id"], old["delivery_id"])
        log.info("rule %s: %s (value %s)", rule["id"], name, now.shown)
        return {"state": rules.FIRING if firing else rules.OK, "since": now_ms, "transitions": number,
                "outbox": state["outbox"][len(dropped):] + [entry],
                "last_notification": {"delivery_id": entry["delivery_id"], "state": name, "status": "pending",
                                      "attempts": 0, "error": None, "at": now_ms}}

    # -- delivery -------------------------------------------------------------------------------

    def _deliver(self, rule: dict, raw: str | None, state: dict, now_ms: int) -> int:
        head = state["outbox"][0]
        attempts = head["attempts"] + 1
        try:
            delivery.send(rule, delivery.Message(
                body=head["body"].encode(), content_type="application/json",
                subject=f"clicktrail alert: {rule['name']} is {head['state']}", delivery_id=head["delivery_id"],
                secret=rule["secret"], headers={"X-Clicktrail-Rule": rule["id"]}, text=_mail_text(rule, head),
                filename="alert.json"), self.mail_settings)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the notification is retried, the worker goes on
            backoff = Backoff(base=self.retry_base_s, cap=RETRY_CAP_S)
            backoff.failures = attempts - 1
            error = mail.redacted(f"{type(exc).__name__}: {exc}")[:500]
            retry_at = now_ms + int(backoff.next_delay() * 1000)
            log.warning("rule %s: notification %s attempt %d failed (%s)", rule["id"], head["delivery_id"],
                        attempts, error)
            failed = {**head, "attempts": attempts, "retry_at": retry_at, "error": error}
            self._write(rule, raw, self._noted({**state, "outbox": [failed] + state["outbox"][1:]}, failed,
                                               "retrying", now_ms))
            return 1
        done = {**head, "attempts": attempts, "error": None}
        self._write(rule, raw, self._noted({**state, "outbox": state["outbox"][1:]}, done, "delivered", now_ms))
        return 1

    @staticmethod
    def _noted(state: dict, entry: dict, status: str, now_ms: int) -> dict:
        """``last_notification`` is the latest transition's: an older one's outcome does not replace it."""
        last = state["last_notification"]
        if last and last["delivery_id"] == entry["delivery_id"]:
            state["last_notification"] = {**last, "status": status, "attempts": entry["attempts"],
                                          "error": entry["error"], "at": now_ms}
        return state

    def _write(self, rule: dict, raw: str | None, new: dict) -> tuple[str | None, dict]:
        if rules.replace_state(self.redis, rule["id"], raw, new):
            return json.dumps(new), new
        # Deleted meanwhile, or another scheduler wrote first: what is stored now stands.
        log.info("rule %s: state changed under this scheduler; left as stored", rule["id"])
        fresh = rules.raw_state(self.redis, rule["id"])
        return fresh, json.loads(fresh) if fresh else {**new, "outbox": []}


def _mail_text(rule: dict, head: dict) -> str:
    """The body of an alert e-mail: what a person reads first; the JSON notification is attached."""
    notice = json.loads(head["body"])
    lines = [f"Alert rule {rule['name']!r} ({rule['id']}) is {head['state']}.",
             f"{notice.get('metric')} over {notice.get('window_start')} to {notice.get('window_end')}: "
             f"{notice.get('value')}" + (f" (the window before: {notice['previous']})"
                                          if notice.get("previous") is not None else ""),
             f"Evaluated at {notice.get('evaluated_at')}. The notification is attached as JSON."]
    return "\n".join(lines) + "\n"
