"""Set-based reads the attributor needs: conversions, browser click ids, touchpoints, current state.

Each function is one query for a whole batch of keys, sent as an external table, never one
query per conversion.
"""

from __future__ import annotations

from typing import NamedTuple

from clickhouse_driver import Client

from clicktrail.inserts import external_table as _table
from pixel import click_cache
from pixel.touchpoints import Touch
from clicktrail.schema import CANDIDATE_COLUMN_NAMES

DAY_S = 86_400


class Conversion(NamedTuple):
    advertiser_id: str
    pixel_id: str
    event: str
    event_id: str
    conversion_ms: int
    click_id: str
    browser_id: str
    # Every value of each identifier (SHA-256 hex), as stored in emails_sha256... (migration 10).
    emails: list[str]
    phones: list[str]
    external_ids: list[str]
    value: float
    currency: str
    device_type: str
    os: str
    browser: str
    utm_source: str
    utm_campaign: str
    order_id: str
    country: str
    region: str
    is_bot: int  # a bot's event (pixel.bots): counted for nothing, its candidates kept for include_bots

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self[:4]

    def identities(self, kind: str) -> list[str] | tuple[str, ...]:
        """The conversion's values of an identity kind (``browser_id``, ``email``, ``phone``,
        ``external_id``): a touchpoint carrying any one of them is tied to it."""
        if kind == "browser_id":
            return (self.browser_id,) if self.browser_id else ()
        return getattr(self, IDENTITY_LISTS[kind])


#: An identity kind with several values per conversion -> the Conversion field holding them.
IDENTITY_LISTS = {"email": "emails", "phone": "phones", "external_id": "external_ids"}


_KEY_COLUMNS = ["advertiser_id", "pixel_id", "event", "event_id"]


def load_conversions(ch: Client, db: str, keys: dict[tuple, int | None]) -> list[Conversion]:
    """The first copy received of each conversion (as events_unique would give it).

    ``keys`` maps (advertiser, pixel, event, event_id) to the event's time in ms when known: with
    it the lookup uses the whole primary key (the day is part of it).
    """
    if not keys:
        return []
    fields = ["event_ms", "click_id", "browser_id", "emails_sha256", "phones_sha256", "external_ids_sha256", "value",
              "currency", "device_type", "ua_os", "ua_browser", "utm_source", "utm_campaign", "order_id",
              "country", "region", "is_bot", "limited_data_use"]
    picked = ", ".join(f"argMax({f}, dedup_version)" for f in fields)
    dated = {k: ms for k, ms in keys.items() if ms}
    undated = [k for k, ms in keys.items() if not ms]
    conditions, tables = [], []
    if dated:
        conditions.append("(advertiser_id, pixel_id, event, toDate(event_time), event_id) IN "
                          "(SELECT advertiser_id, pixel_id, event, toDate(toDateTime(toUInt32(day))), event_id "
                          "FROM _dated)")
        tables.append(_table("_dated", _KEY_COLUMNS + ["day"],
                             [(*k, str(ms // 1000)) for k, ms in dated.items()]))
    if undated:
        conditions.append(f"(advertiser_id, pixel_id, event, event_id) IN (SELECT {', '.join(_KEY_COLUMNS)} FROM _keys)")
        tables.append(_table("_keys", _KEY_COLUMNS, undated))
    rows = ch.execute(
        f"SELECT advertiser_id, pixel_id, event, event_id, {picked} FROM {db}.events "
        f"WHERE ({' OR '.join(conditions)}) GROUP BY advertiser_id, pixel_id, event, event_id "
        # Test events (sent with a test_event_code) are for checking an integration, never conversions.
        "HAVING argMax(test_event_code, dedup_version) = ''",
        external_tables=tables,
    )
    return [_conversion(row) for row in rows]


def _conversion(row: tuple) -> Conversion:
    """A conversion from its row, whose last column is ``limited_data_use``.

    An event flagged for limited data use is stored and counted, and still tied by its own click
    id and browser id (the same device), but its hashed identifiers never link it to touchpoints
    of other devices: they are left out here, so neither matching nor the touchpoint lookup
    sees them. (Emptied with ``[:0]``, which keeps the field's type.)
    """
    conv = Conversion._make(row[:-1])
    if row[-1]:
        conv = conv._replace(emails=conv.emails[:0], phones=conv.phones[:0], external_ids=conv.external_ids[:0])
    return conv


def _events_with(ch: Client, db: str, identities: set[tuple], kinds: tuple[str, ...], since_s: int) -> list[tuple]:
    """Rows of event_identities for (advertiser, identity) pairs of the given kinds."""
    if not identities:
        return []
    kind_list = ", ".join(f"'{k}'" for k in kinds)
    return ch.execute(
        f"""
        SELECT advertiser_id, pixel_id, event, event_id, any(event_ms), any(browser_id) FROM {db}.event_identities
        WHERE (advertiser_id, identity) IN (SELECT advertiser_id, value FROM _ids)
          AND identity_kind IN ({kind_list}) AND event_time >= toDateTime({max(since_s, 0)})
        GROUP BY advertiser_id, pixel_id, event, event_id""",
        external_tables=[_table("_ids", ["advertiser_id", "value"], identities)],
    )


def conversions_touched_by(ch: Client, db: str, touches: set[tuple]) -> tuple[dict[tuple, int], list[tuple]]:
    """Conversions a newly stored touchpoint may change: those sharing an identity with it, after it.

    Also returns each touchpoint's (advertiser, time in ms, campaign, ad group, ad), for the feed
    (bots' clicks left out).
    """
    if not touches:
        return {}, []
    # Every value any copy of a touchpoint carried (groupUniqArrayArray over the lists): a
    # conversion tied by a value a re-post took away is restated too, and so untied.
    found = ch.execute(
        f"""
        SELECT advertiser_id, kind, touch_id, min(touch_ms), groupUniqArray(browser_id),
               groupUniqArrayArray(arrayConcat(emails_sha256, phones_sha256, external_ids_sha256)),
               argMax(campaign_id, received_ms), argMax(adgroup_id, received_ms), argMax(ad_id, received_ms),
               argMax(is_bot, received_ms)
        FROM {db}.touchpoints
        WHERE (advertiser_id, kind, touch_id) IN (SELECT advertiser_id, kind, touch_id FROM _touches)
        GROUP BY advertiser_id, kind, touch_id""",
        external_tables=[_table("_touches", ["advertiser_id", "kind", "touch_id"], touches)],
    )
    if not found:
        return {}, []
    # A bot's click changes no bucket of the feed (it is counted nowhere), only conversions of bots.
    buckets = [(row[0], row[3], row[6], row[7], row[8]) for row in found if not row[9]]
    since = min(row[3] for row in found) // 1000
    clicks = {(row[0], row[2]) for row in found if row[1] == "click"}
    carried = _events_with(ch, db, clicks, ("click",), since)
    browsers = {(row[0], row[5]) for row in carried if row[5]} | {(row[0], v) for row in found for v in row[4] if v}
    ident = browsers | {(row[0], v) for row in found for v in row[5] if v}
    rows = carried + _events_with(ch, db, ident, ("browser", "email", "phone", "external_id"), since)
    return {tuple(row[:4]): row[4] for row in rows}, buckets


def browser_click_ids(ch: Client, db: str, conversions: list[Conversion]) -> dict[tuple, list[tuple[str, int]]]:
    """Click ids seen on each conversion's browser, with when each was first seen there."""
    browsers = {(c.advertiser_id, c.browser_id) for c in conversions if c.browser_id}
    if not browsers:
        return {}
    rows = ch.execute(
        f"""
        SELECT advertiser_id, identity, click_id, min(event_ms) FROM {db}.event_identities
        WHERE advertiser_id IN (SELECT DISTINCT advertiser_id FROM _browsers)
          AND identity IN (SELECT value FROM _browsers) AND identity_kind = 'browser' AND click_id != ''
        GROUP BY advertiser_id, identity, click_id""",
        external_tables=[_table("_browsers", ["advertiser_id", "value"], browsers)],
    )
    # The query matches advertisers and browsers apart; with several advertisers, keep the pairs asked.
    exact = len({adv for adv, _ in browsers}) > 1
    seen: dict[tuple, list[tuple[str, int]]] = {}
    for advertiser, browser, click, first_ms in rows:
        if exact and (advertiser, browser) not in browsers:
            continue
        seen.setdefault((advertiser, browser), []).append((click, first_ms))
    return seen


def load_touches(ch: Client, db: str, conversions: list[Conversion],
                 browser_clicks: dict[tuple, list[tuple[str, int]]], r=None) -> list[Touch]:
    """Every touchpoint that shares an identity with one of the conversions (latest copy of each).

    Clicks named by click id come from the click cache in Redis (``r``) where it has them.
    """
    if not conversions:
        return []
    clicks = {(c.advertiser_id, c.click_id) for c in conversions if c.click_id}
    clicks |= {(adv, click) for (adv, _), seen in browser_clicks.items() for click, _ in seen}
    cached: list[Touch] = []
    if r is not None and clicks:
        cached, clicks = click_cache.get(r, clicks)
    wanted = {(adv, "click", click) for adv, click in clicks}
    ident = {(c.advertiser_id, v) for c in conversions for v in (c.browser_id, *c.emails, *c.phones, *c.external_ids)
             if v}
    if ident:
        # touch_identities holds every value any copy of a touchpoint was stored with: it says
        # which touchpoints to read; the latest copy's own values (below) say which still tie.
        wanted |= {(adv, kind, touch_id) for adv, identity, kind, touch_id in ch.execute(
            f"SELECT DISTINCT advertiser_id, identity, kind, touch_id FROM {db}.touch_identities "
            "WHERE advertiser_id IN (SELECT DISTINCT advertiser_id FROM _ids) "
            "AND identity IN (SELECT value FROM _ids)",
            external_tables=[_table("_ids", ["advertiser_id", "value"], ident)],
        ) if (adv, identity) in ident}
    known = {(t.advertiser_id, t.kind, t.touch_id) for t in cached}
    wanted -= known
    if not wanted:
        return cached
    fields = ["touch_ms", "campaign_id", "adgroup_id", "ad_id", "browser_id", "email_sha256", "phone_sha256",
              "external_id_sha256", "is_bot", "emails_sha256", "phones_sha256", "external_ids_sha256"]
    picked = ", ".join(f"argMax({f}, received_ms)" for f in fields)
    # Flat IN on each key column, then the exact pairs in Python: ClickHouse 18.16 evaluates a
    # tuple IN several times slower than IN on one column.
    rows = ch.execute(
        f"""
        SELECT advertiser_id, kind, touch_id, {picked} FROM {db}.touchpoints
        WHERE advertiser_id IN (SELECT DISTINCT advertiser_id FROM _wanted) AND kind IN ('click', 'impression')
          AND touch_id IN (SELECT touch_id FROM _wanted)
        GROUP BY advertiser_id, kind, touch_id""",
        external_tables=[_table("_wanted", ["advertiser_id", "kind", "touch_id"], wanted)],
    )
    return cached + [_touch(row) for row in rows if (row[0], row[1], row[2]) in wanted]


def _touch(row: tuple) -> Touch:
    """A touchpoint from its latest copy's row, whose last three columns are its identifier lists
    (migration 14): the values past each single column's become ``Touch.more``."""
    touch = Touch(*row[:-3])
    more = tuple((kind, value) for kind, values in zip(_MULTI_VALUED, row[-3:])
                 for value in values if value != getattr(touch, kind))
    return touch._replace(more=more) if more else touch


#: Identity kinds a touchpoint may hold several values of, in the order of its list columns.
_MULTI_VALUED = ("email", "phone", "external_id")


def same_order(ch: Client, db: str, conversions: list[Conversion]) -> dict[tuple, list[tuple[int, int, str]]]:
    """Every conversion sharing an order id with one of ``conversions``, per order (see ``order_members``)."""
    return order_members(ch, db, {(c.advertiser_id, c.pixel_id, c.event, c.order_id)
                                  for c in conversions if c.order_id})


def order_members(ch: Client, db: str, orders: set[tuple]) -> dict[tuple, list[tuple[int, int, str]]]:
    """The conversions of each (advertiser, pixel, event, order id), as ``models.order_keeper`` ranks them.

    Each is (event ms, first received ms, event id), the event time being that of the first copy
    received (the one ``load_conversions`` reads). Test events are left out: they are never
    conversions, so they never take an order's credit.
    """
    if not orders:
        return {}
    rows = ch.execute(
        f"""
        SELECT advertiser_id, pixel_id, event, order_id, event_id, argMax(event_ms, dedup_version), min(received_ms)
        FROM {db}.events
        WHERE (advertiser_id, pixel_id, event, order_id) IN
              (SELECT advertiser_id, pixel_id, event, order_id FROM _orders)
        GROUP BY advertiser_id, pixel_id, event, order_id, event_id
        HAVING argMax(test_event_code, dedup_version) = ''""",
        external_tables=[_table("_orders", ["advertiser_id", "pixel_id", "event", "order_id"], orders)],
    )
    found: dict[tuple, list[tuple[int, int, str]]] = {}
    for adv, pixel, event, order, event_id, event_ms, received_ms in rows:
        found.setdefault((adv, pixel, event, order), []).append((event_ms, received_ms, event_id))
    return found


def sharing_clicks(ch: Client, db: str, clicks: set[tuple]) -> set[tuple]:
    """Conversions (keys) that have one of the (advertiser, event, click id) among their candidates.

    Any revision's candidates, even a half-written revision's (see ``Attributor._insert``): a key
    too many is only decided again, with the same result, never credited from these rows.
    """
    if not clicks:
        return set()
    rows = ch.execute(
        f"""
        SELECT DISTINCT advertiser_id, pixel_id, event, event_id FROM {db}.attribution_candidates
        WHERE touch_kind = 'click'
          AND (advertiser_id, event, touch_id) IN (SELECT advertiser_id, event, touch_id FROM _clicks)""",
        external_tables=[_table("_clicks", ["advertiser_id", "event", "touch_id"], clicks)],
    )
    return set(rows)


def current_state(ch: Client, db: str, keys: set[tuple]) -> dict[tuple, tuple[int, int]]:
    """The latest (revision, content hash) stored for each conversion."""
    if not keys:
        return {}
    rows = ch.execute(
        f"SELECT advertiser_id, pixel_id, event, event_id, max(revision), argMax(content_hash, revision) "
        f"FROM {db}.credits "
        f"WHERE (advertiser_id, pixel_id, event, event_id) IN (SELECT {', '.join(_KEY_COLUMNS)} FROM _keys) "
        "AND sign = 1 GROUP BY advertiser_id, pixel_id, event, event_id",
        external_tables=[_table("_keys", _KEY_COLUMNS, keys)],
    )
    return {tuple(row[:4]): (row[4], row[5]) for row in rows}


def cancel_rows(ch: Client, db: str, revisions: dict[tuple, int], now_ms: int) -> list[tuple]:
    """Rows of ``credit_input`` cancelling the given revisions: copies of their credited rows with
    sign -1, stamped ``now_ms``."""
    if not revisions:
        return []
    head = CANDIDATE_COLUMN_NAMES  # the conversion and touchpoint columns credits starts with
    stamp = head.index("attributed_ms")
    rows = ch.execute(
        f"SELECT DISTINCT {', '.join(head)}, click_window_days, view_window_days, model, credit FROM {db}.credits "
        f"WHERE (advertiser_id, pixel_id, event, event_id, toString(revision)) IN "
        f"(SELECT {', '.join(_KEY_COLUMNS)}, revision FROM _revisions) AND sign = 1",
        external_tables=[_table("_revisions", _KEY_COLUMNS + ["revision"],
                                [(*key, str(rev)) for key, rev in revisions.items()])],
    )
    n = len(head)
    return [(*row[:stamp], now_ms, *row[stamp + 1:n], row[n], row[n + 1], -1, [row[n + 2]], [row[n + 3]])
            for row in rows]

