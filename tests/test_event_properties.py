"""Property tests: whatever JSON a client sends, validation answers a record or a Rejection, and
every record it accepts can be built into a row and stored by the sink (issue 11).

Each known field gets either a plausible value or any JSON value at all (deeply nested ones
included), so that examples reach both the accepting and the refusing branches.
"""

from __future__ import annotations

import time

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pixel.events import Context, Rejection, parse_event
from sink.rows import RowBuilder

NOW_MS = int(time.time() * 1000)

SCALARS = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=10)


def _nest(levels: int, as_list: bool) -> object:
    value: object = "leaf"
    for _ in range(levels):
        value = [value] if as_list else {"k": value}
    return value


#: Nesting from none to past orjson's own limit for writing (254 levels).
DEEP = st.builds(_nest, st.integers(0, 300), st.booleans())
ANY = JSON | DEEP
NUMERIC_TEXT = st.from_regex(r"-?[0-9]{1,14}(\.[0-9]{1,4})?", fullmatch=True)


def either(plausible):
    """Mostly a plausible value, else anything: a single bad field then refuses the event often
    enough, and whole events still get accepted often enough, to test both."""
    return st.sampled_from(range(8)).flatmap(lambda i: ANY if i == 7 else plausible)


TEXT = st.text(max_size=40)
URL = st.sampled_from(["https://shop.example/p?utm_source=tt&ttclid=E.C.1", "https://shop.example/",
                       "http://[::1]:99999/x", "not a url", ""]) | TEXT
CONTENT = st.fixed_dictionaries({}, optional={
    "content_id": either(TEXT | st.integers(0, 10**6)), "content_name": either(TEXT),
    "content_category": either(TEXT), "quantity": either(st.integers(-5, 10**10)),
    "price": either(st.floats(-1e13, 1e13) | NUMERIC_TEXT)})
PROPERTIES = st.fixed_dictionaries({}, optional={
    "value": either(st.floats(-1e13, 1e13) | NUMERIC_TEXT | st.just("")),
    "currency": either(st.sampled_from(["EUR", "usd", "ÄÖÜ", "EURO"])),
    "order_id": either(TEXT), "content_type": either(st.sampled_from(["product", "product_group"])),
    "content_id": either(TEXT), "content_ids": either(st.lists(TEXT | st.integers(), max_size=3)),
    "contents": either(st.lists(CONTENT, max_size=3)), "query": either(TEXT), "search_string": either(TEXT),
    "custom": ANY})
USER = st.dictionaries(
    st.sampled_from(["email", "sha256_email", "phone", "phone_number", "external_id", "ttclid", "ttp", "ip",
                     "user_agent", "locale", "lead_id", "first_name", "zip_code"]),
    either(TEXT | st.sampled_from(["203.0.113.9", "::1", "a" * 64]) | st.lists(TEXT, max_size=2)), max_size=5)
COMMON = {
    "event_id": either(TEXT), "page": either(st.fixed_dictionaries({}, optional={"url": either(URL),
                                                                                   "referrer": either(URL)})),
    "properties": either(PROPERTIES), "user": either(USER), "limited_data_use": either(st.booleans()),
    "custom_top_level": ANY,
}
BROWSER = st.fixed_dictionaries({"event": either(st.sampled_from(["PageView", "Search", "CompletePayment"]))},
                                optional={**COMMON, "timestamp": either(st.integers(NOW_MS - 10**9, NOW_MS + 10**6)),
                                          "ttp": either(TEXT), "ttclid": either(TEXT),
                                          "test_event_code": either(TEXT)})
SERVER = st.fixed_dictionaries({"event": either(st.sampled_from(["Lead", "Purchase"])),
                                "event_time": either(st.integers(NOW_MS // 1000 - 10**5, NOW_MS // 1000)
                                                     | NUMERIC_TEXT)}, optional=COMMON)
EVENTS = st.tuples(st.just("browser"), BROWSER) | st.tuples(st.just("image"), BROWSER) \
    | st.tuples(st.just("server"), SERVER) | st.tuples(st.sampled_from(["browser", "server"]), ANY)


def context(source: str) -> Context:
    return Context(pixel_id="CPIXEL", source=source, received_ms=NOW_MS, skew_ms=0, ip="198.51.100.7",
                   user_agent="Mozilla/5.0", max_age_ms=7 * 86_400_000, max_future_ms=3_600_000)


BUILDER = RowBuilder(anonymize_ip=True, ua_cache_size=64)


def check(source: str, raw: object) -> dict | None:
    """Validate one event as the collector does; for an accepted one, queue and build it as the sink does."""
    result = parse_event(raw, 0, context(source))
    if isinstance(result, Rejection):
        assert isinstance(result.field, str) and result.rule and len(result.reason) < 200
        return None
    assert isinstance(result, dict)
    data = orjson.dumps([result])  # what the collector's buffer writes to the stream
    rows, indexes, failures = BUILDER.rows(b"1-0", {b"a": b"adv-1", b"n": b"1", b"d": data})
    assert failures == [] and indexes == [0] and len(rows) == 1
    return result


@settings(max_examples=600, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EVENTS)
def test_any_json_gives_a_record_or_a_rejection_and_every_record_builds(event):
    source, raw = event
    check(source, raw)


def test_every_accepted_record_is_stored_by_the_sink(tenant, sink, r, ch, ch_database):
    """Accepted records, queued as the collector queues them, are all stored; nothing is dead-lettered."""
    accepted: list[dict] = []

    @settings(max_examples=400, database=None, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(EVENTS)
    def collect(event):
        source, raw = event
        record = check(source, raw)
        if record is not None:
            accepted.append(dict(record, pixel_id=tenant.pixel_id))

    collect()
    assert len(accepted) >= 50  # the strategies must reach the accepting branch, or this proves little
    for start in range(0, len(accepted), 40):
        chunk = accepted[start : start + 40]
        r.xadd("ct:events", {"a": tenant.advertiser, "n": len(chunk), "d": orjson.dumps(chunk)})
    sink.drain(timeout=60)
    assert r.xlen("ct:events:dead") == 0
    keys = {(rec["event"], rec["event_id"]) for rec in accepted}
    stored = ch.execute(f"SELECT event, event_id FROM {ch_database}.events_unique")
    assert {tuple(row) for row in stored} == keys
