"""The door: the last step of every intake path before its records are queued.

Every path (the pixel's batches and its image fallback, the Events API 2.0 and 1.0, Meta's
Conversions API, the click redirect) queues through ``EventBuffer.append`` (or ``append_click``),
which places each record's client IP (country, region: pixel/geo.py) and then calls
``before_queue``, so no raw e-mail address, phone number or client IP reaches Redis, and so
neither the dead letters nor ClickHouse (pixel/scrub.py says what is scrubbed).
"""

from __future__ import annotations

from clicktrail.config import PrivacySettings
from pixel.scrub import scrub_record


def before_queue(records: list, privacy: PrivacySettings) -> list:
    """Scrub ``records`` in place (and return them) for the queue.

    The client IP is decided here: each record's ``ip`` holds the address it will be stored
    under, raw for the last time (browser events: the connection's, through X-Forwarded-For when
    the proxy is trusted, collector/intake.py; server events: their ``user.ip``). Anything that
    needs the raw address (the country lookup) runs before this, which
    anonymises it (unless CLICKTRAIL_ANONYMIZE_IP=false) and hashes personal data elsewhere.
    """
    anonymize = privacy.anonymize_ip
    for record in records:
        scrub_record(record, anonymize)
    return records
