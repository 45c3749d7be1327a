"""Retention by setting: which rows of an advertiser are out, and from which day its data is complete.

An advertiser with ``retention_days`` N keeps today (UTC) and the N whole UTC days before it:
the cutoff is a UTC midnight, so a day is either held whole or gone, and the job gives the same
answer whenever it runs that day. The job (attribution/retention.py) records the cutoff it
applied; reports and diagnostics say from which day the data is complete.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import redis

from clicktrail import keys

DAY_S = 86_400


def cutoff_ms(days: int, now_s: float | None = None) -> int:
    """The start (ms, a UTC midnight) of what ``days`` of retention keep at ``now_s``."""
    now_s = time.time() if now_s is None else now_s
    today = int(now_s) // DAY_S * DAY_S
    return (today - days * DAY_S) * 1000


def applied(r: redis.Redis, advertiser_id: str) -> int | None:
    """The latest cutoff the job applied to the advertiser (ms), or None when it never removed anything."""
    raw = r.hget(keys.RETENTION_APPLIED, advertiser_id)
    return int(raw) if raw else None


def record_applied(r: redis.Redis, cutoffs: dict[str, int]) -> None:
    """Remember each advertiser's cutoff, never moving one back (a longer retention restores nothing)."""
    if not cutoffs:
        return
    known = r.hmget(keys.RETENTION_APPLIED, list(cutoffs))
    later = {adv: cut for (adv, cut), old in zip(cutoffs.items(), known) if not old or int(old) < cut}
    if later:
        r.hset(keys.RETENTION_APPLIED, mapping=later)


def complete_from_ms(r: redis.Redis, advertiser_id: str, settings: dict, now_s: float | None = None) -> int | None:
    """From when (ms) every row of the advertiser is held, and stays held until the next daily run.

    The later of the cutoff already applied (older rows are gone, even if retention was made
    longer since) and the cutoff the setting asks for (older rows go at the next run); None when
    nothing was ever removed and retention is off.
    """
    found = [cut for cut in (applied(r, advertiser_id),) if cut]
    if settings.get("retention_days"):
        found.append(cutoff_ms(settings["retention_days"], now_s))
    return max(found) if found else None


def complete_from(r: redis.Redis, advertiser_id: str, settings: dict, timezone: str,
                  now_s: float | None = None) -> str | None:
    """``data_complete_from``: the first whole day, in ``timezone``, whose data is complete (ISO date)."""
    cut = complete_from_ms(r, advertiser_id, settings, now_s)
    if cut is None:
        return None
    local = datetime.fromtimestamp(cut / 1000, ZoneInfo(timezone))
    day = local.date()
    if (local.hour, local.minute, local.second, local.microsecond) != (0, 0, 0, 0):
        day += timedelta(days=1)  # the cutoff's own local day is cut in two
    return day.isoformat()
