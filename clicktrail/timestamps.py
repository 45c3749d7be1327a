"""Times as the API writes them: ISO 8601 in UTC, with a ``Z``."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def utc_iso(ms: int, timespec: str = "milliseconds") -> str:
    """Unix time in milliseconds as ``2024-05-01T12:00:00.000Z`` (``timespec`` as datetime.isoformat's).

    Counted in whole milliseconds: ``ms / 1000`` as a float can land a hair below the millisecond
    (22459907236.272 is stored as ...271999), which isoformat would then cut to the one before.
    """
    return (_EPOCH + timedelta(milliseconds=ms)).isoformat(timespec=timespec).replace("+00:00", "Z")
