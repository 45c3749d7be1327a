"""Capped exponential backoff with full jitter, and the one loop that retries a server that is down."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

T = TypeVar("T")


class Stoppable(Protocol):
    """What ``retry`` needs of a stop flag (clicktrail.lifecycle.StopFlag is one): backoff stays
    below lifecycle, which retries with it."""

    @property
    def is_set(self) -> bool: ...

    def wait(self, seconds: float) -> bool: ...


class Backoff:
    """Delays of ``base * 2**n`` seconds, capped, each drawn between half and all of that."""

    def __init__(self, base: float = 0.2, cap: float = 30.0) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * (2 ** min(self.failures, 32)))
        self.failures += 1
        # Jitter spreads the retries of many sinks so a recovering server is not hit at once.
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.failures = 0


def retry(attempt: Callable[[], T], *, errors: tuple[type[BaseException], ...], backoff: Backoff,
          on_failure: Callable[[BaseException, float], None], stop: Stoppable | None = None,
          when: Callable[[BaseException], bool] | None = None) -> T | None:
    """Call ``attempt`` until it returns, waiting with ``backoff`` after each failure; return its result.

    ``errors`` (narrowed by ``when``, if given) are the failures worth waiting out; anything else is
    raised at once. ``on_failure(exc, delay)`` runs before each wait: it logs in the caller's words
    and drops what the failure broke (a connection). With a ``stop`` flag the wait ends when a stop
    is asked for, and ``retry`` returns None; without one the wait is a plain sleep, for a caller
    that must finish what it holds before it may exit (a second signal still ends the process).
    """
    while stop is None or not stop.is_set:
        try:
            return attempt()
        except errors as exc:
            if when is not None and not when(exc):
                raise
            delay = backoff.next_delay()
            on_failure(exc, delay)
            if stop is None:
                time.sleep(delay)
            else:
                stop.wait(delay)
    return None
