"""Why a conversion got no credit, for the explanations: each reason a code and a sentence.

Codes (docs/attribution.md, "Explanations"): ``bot``, ``duplicate_order``, ``repeat_click``,
``click_id_not_found``, ``outside_windows``, ``no_touchpoint``. The facts come from what the
attributor stored (candidates, credits) and from the converting event itself (its click id,
order id and bot flag), read with the rules of ``attribution.models``.
"""

from __future__ import annotations

from typing import NamedTuple

from clickhouse_driver import Client

from attribution import models, store


class Event(NamedTuple):
    """What the converting event (its first copy received) says about itself."""

    click_id: str
    order_id: str
    is_bot: int


def events(ch: Client, db: str, advertiser_id: str, event_id: str) -> dict[tuple, Event]:
    """(pixel, event) -> the event with this id, as the attributor reads it (first copy received)."""
    rows = ch.execute(
        f"""
        SELECT pixel_id, event, argMax(click_id, dedup_version), argMax(order_id, dedup_version),
               argMax(is_bot, dedup_version)
        FROM {db}.events WHERE advertiser_id = %(adv)s AND event_id = %(eid)s
        GROUP BY pixel_id, event""",
        {"adv": advertiser_id, "eid": event_id},
    )
    return {(pixel, event): Event(click, order, bot) for pixel, event, click, order, bot in rows}


def reason(code: str, message: str) -> dict:
    return {"code": code, "message": message}


def bot() -> dict:
    return reason("bot", "the event was sent by a bot (crawler, headless browser or HTTP library: is_bot = 1)")


def duplicate_order(ch: Client, db: str, key: tuple, order_id: str) -> dict:
    """Which conversion of the order keeps the credit (the same rule the attributor applies)."""
    adv, pixel, event, event_id = key
    seen = store.order_members(ch, db, {(adv, pixel, event, order_id)}).get((adv, pixel, event, order_id))
    keeper = models.order_keeper(seen) if seen else ""
    return reason("duplicate_order", f"duplicate of order {order_id}: conversion {keeper} keeps the credit "
                                     "(the earliest event time; at the same time, the first received)")


def repeat_click(ch: Client, db: str, key: tuple, click: models.Candidate | None) -> dict:
    """Which conversion of the same event already counted for this conversion's last click."""
    adv, _, event, event_id = key
    counted = _counted_for(ch, db, adv, event, click.touch_id, event_id) if click else ""
    what = f"click {click.touch_id}" if click else "its click"
    return reason("repeat_click", f"counted once already: conversion {counted or 'another'} of {event} is "
                                  f"counted for {what} (counting once per click)")


def _counted_for(ch: Client, db: str, advertiser_id: str, event: str, click_id: str, event_id: str) -> str:
    rows = ch.execute(
        f"""
        SELECT event_id FROM {db}.credits
        WHERE advertiser_id = %(adv)s AND event = %(event)s AND model = %(model)s AND touch_kind = 'click'
          AND touch_id = %(click)s AND event_id != %(eid)s
        GROUP BY pixel_id, event_id HAVING sum(credit * sign) > 0
        ORDER BY min(conversion_ms), event_id LIMIT 1""",
        {"adv": advertiser_id, "event": event, "model": models.DEFAULT_MODEL, "click": click_id, "eid": event_id},
    )
    return rows[0][0] if rows else ""


def click_id_not_found(ch: Client, db: str, advertiser_id: str, click_id: str, conversion_ms: int) -> dict:
    """The conversion's own click id tied it to nothing: no such click, or one beyond every window."""
    rows = ch.execute(
        f"SELECT argMax(touch_ms, received_ms) FROM {db}.touchpoints "
        "WHERE advertiser_id = %(adv)s AND kind = 'click' AND touch_id = %(click)s HAVING count() > 0",
        {"adv": advertiser_id, "click": click_id},
    )
    if not rows:
        return reason("click_id_not_found", f"its click id {click_id} matches no click of this advertiser")
    age = conversion_ms - rows[0][0]
    if age < 0:
        where = f"{-age / models.DAY_MS:.2f} days after the conversion"
    else:
        where = (f"{age / models.DAY_MS:.2f} days before the conversion, beyond the longest "
                 f"({models.MAX_CLICK_WINDOW_MS // models.DAY_MS}-day) click window")
    return reason("click_id_not_found", f"its click id {click_id} matches a click {where}")


def outside_windows(candidates: list[models.Candidate], conversion_ms: int, windows: models.Windows) -> dict:
    """Every candidate lies outside the windows: list them with their ages."""
    parts = []
    for t in candidates:
        age = f"{(conversion_ms - t.touch_ms) / models.DAY_MS:.2f} days before"
        if t.kind == "click":
            parts.append(f"click {t.touch_id} {age} ({windows.click_days}-day click window)")
        elif windows.view_days:
            parts.append(f"impression {t.touch_id} {age} ({windows.view_days}-day view window)")
        else:
            parts.append(f"impression {t.touch_id} {age} (view-through off)")
    return reason("outside_windows", "every touchpoint is outside the windows: " + "; ".join(parts))


def no_touchpoint() -> dict:
    days = models.MAX_CLICK_WINDOW_MS // models.DAY_MS, models.MAX_VIEW_WINDOW_MS // models.DAY_MS
    return reason("no_touchpoint", "no click or impression shares an identity with it (click id, browser id, "
                                   f"external id, email, phone) within the longest windows ({days[0]} days for "
                                   f"clicks, {days[1]} for impressions)")
