"""The API's one time format: ISO 8601 in UTC with a Z, to the millisecond or the second."""

from __future__ import annotations

from datetime import datetime

from hypothesis import given, strategies as st

from clicktrail.timestamps import utc_iso


def test_known_times():
    assert utc_iso(0) == "1970-01-01T00:00:00.000Z"
    assert utc_iso(1_700_000_000_123) == "2023-11-14T22:13:20.123Z"
    assert utc_iso(1_700_000_000_999, "seconds") == "2023-11-14T22:13:20Z"  # cut, not rounded


@given(st.integers(0, 253_402_300_799_999))  # through 9999-12-31T23:59:59.999Z
def test_it_reads_back_to_the_same_millisecond(ms):
    text = utc_iso(ms)
    assert text.endswith("Z") and len(text) == 24
    assert round(datetime.fromisoformat(text).timestamp() * 1000) == ms
    assert utc_iso(ms, "seconds") == text[:19] + "Z"
