"""Graceful stop for workers: the first SIGTERM or SIGINT finishes the current batch, a second exits."""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger(__name__)

# os.getpid() is a system call, and per-request code asks it several times to notice a fork
# (the Redis line, every Prometheus update): keep the answer, refreshed in each forked child.
_pid = os.getpid()


def _after_fork() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork)


def pid() -> int:
    """This process's id, without a system call."""
    return _pid


class ForcedStop(BaseException):
    """Raised by the second signal. A BaseException, so ``except Exception`` blocks cannot swallow it."""


class StopFlag:
    """Set by the first signal; the worker checks it between batches and while waiting."""

    def __init__(self) -> None:
        self._event = threading.Event()

    @property
    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; return True early if a stop was asked for."""
        return self._event.wait(seconds)

    def install(self, name: str) -> None:
        def handle(signum, _frame):
            if self._event.is_set():
                log.warning("%s: second signal, exiting now", name)
                raise ForcedStop()
            log.info("%s: %s received, finishing the current batch (signal again to exit now)",
                     name, signal.Signals(signum).name)
            self._event.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
