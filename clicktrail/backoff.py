"""Capped exponential backoff with full jitter, for retrying a server that is down."""

from __future__ import annotations

import random


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
