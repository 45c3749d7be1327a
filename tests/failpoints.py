"""Crash injection for the crash-safety tests, kept out of the product.

``python -m tests.failpoints NAME ARGS...`` runs ``clicktrail ARGS...`` with the failpoint NAME
armed: every ClickHouse client the process connects is wrapped so that the process SIGKILLs itself
just before or just after one INSERT, the instant a real crash (power, OOM killer) could strike.
Nothing in the product knows of it: no setting, no branch on the hot path.
"""

from __future__ import annotations

import os
import signal
import sys

from clicktrail import clickhouse

#: name: (table of the INSERT, "before" or "after" it)
FAILPOINTS = {
    # The sink has stored a batch in ClickHouse but not yet acknowledged it in Redis.
    "sink_after_insert": ("events", "after"),
    # The attributor has written a revision's candidates but not its credits.
    "attributor_between_inserts": ("credit_input", "before"),
    # An insert into credit_input has happened but whatever follows it has not (an erasure's
    # cancel rows stored, its step not yet recorded).
    "attributor_after_credit_input": ("credit_input", "after"),
}


class _Dying:
    """A ClickHouse client that kills its process around INSERTs into one table."""

    def __init__(self, client, table: str, when: str) -> None:
        self._client, self._table, self._when = client, table, when

    def execute(self, query, *args, **kwargs):
        hit = isinstance(query, str) and _inserts_into(query, self._table)
        if hit and self._when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = self._client.execute(query, *args, **kwargs)
        if hit and self._when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    def __getattr__(self, name):
        return getattr(self._client, name)


def _inserts_into(query: str, table: str) -> bool:
    words = query.split(maxsplit=3)
    return words[:2] == ["INSERT", "INTO"] and len(words) > 2 and words[2].rsplit(".", 1)[-1] == table


def arm(name: str) -> None:
    table, when = FAILPOINTS[name]
    connect = clickhouse.connect
    clickhouse.connect = lambda *args, **kwargs: _Dying(connect(*args, **kwargs), table, when)


if __name__ == "__main__":
    arm(sys.argv[1])
    from clicktrail.cli import main

    sys.argv = ["clicktrail", *sys.argv[2:]]
    main()
