"""Graceful stop for workers: the first SIGTERM or SIGINT finishes the current batch, a second exits."""

from __future__ import annotations

import logging
import os
import signal
import time

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
    """Set by the first signal; the worker checks it between batches and while waiting.

    A plain attribute, polled, rather than a threading.Event: the signal handler sets it, and an
    Event's set() takes a lock that the interrupted code may be holding (a deadlock).
    """

    def __init__(self) -> None:
        self._set = False

    @property
    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; return True early if a stop was asked for."""
        deadline = time.monotonic() + seconds
        while not self._set:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(remaining, 0.05))
        return True

    def install(self, name: str) -> None:
        def handle(signum, _frame):
            if self._set:
                log.warning("%s: second signal, exiting now", name)
                raise ForcedStop()
            log.info("%s: %s received, finishing the current batch (signal again to exit now)",
                     name, signal.Signals(signum).name)
            self._set = True

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)


def connection_errors() -> tuple[type[BaseException], ...]:
    """What a server that is not there (yet) raises: Redis's and ClickHouse's connection errors."""
    import redis

    from clicktrail.clickhouse import NETWORK_ERRORS

    return (redis.ConnectionError, redis.TimeoutError, *NETWORK_ERRORS)


def retry_until_stopped(what: str, attempt, stop: StopFlag, cap: float = 10.0):
    """Call ``attempt`` until it gets through to ``what``, waiting with backoff; None if stopped first.

    For a worker's start-up: a server that is down (or still starting) is waited for, with one log
    line per try, rather than ending the process; a stop signal ends the wait at once.
    """
    from clicktrail.backoff import Backoff, retry

    backoff = Backoff(base=0.5, cap=cap)

    def attempt_and_say():
        result = attempt()
        if backoff.failures:
            log.info("%s is reachable", what)
        return result

    def say(exc: BaseException, delay: float) -> None:
        log.warning("waiting for %s (%s: %s); retrying in %.1fs", what, type(exc).__name__,
                    str(exc).splitlines()[0][:200] if str(exc) else "", delay)

    return retry(attempt_and_say, errors=connection_errors(), backoff=backoff, on_failure=say, stop=stop)


class Heartbeat:
    """Touches a file while a worker's loop turns, at most once per ``every_s``.

    A worker can be alive as a process yet stuck (waiting on a server forever, a deadlock): only
    its loop turning proves it works. `clicktrail alive` reads the file's age for a healthcheck.
    """

    def __init__(self, path: str, every_s: float = 5.0) -> None:
        self._path = path
        self._every = every_s
        self._last = float("-inf")

    def beat(self) -> None:
        if not self._path or time.monotonic() - self._last < self._every:
            return
        self._last = time.monotonic()
        try:
            with open(self._path, "a"):
                pass
            os.utime(self._path)
        except OSError as exc:  # a full or read-only disk must not stop the work itself
            log.warning("cannot touch heartbeat file %s: %s", self._path, exc)


def heartbeat_age(path: str) -> float | None:
    """Seconds since the heartbeat file was touched, or None when there is none."""
    try:
        return max(0.0, time.time() - os.stat(path).st_mtime)
    except FileNotFoundError:
        return None
