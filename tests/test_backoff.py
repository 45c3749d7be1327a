"""The one retry loop (clicktrail/backoff.py): what it waits out, what it raises, how a stop ends it."""

from __future__ import annotations

import socket
import time

import pytest

from clicktrail.backoff import Backoff, retry
from clicktrail.lifecycle import StopFlag
from clicktrail.services import free_port


def _refused_then(answer, failures: int, calls: list):
    """An attempt that connects to a port nobody listens on ``failures`` times, then answers."""
    port = free_port()

    def attempt():
        calls.append(len(calls))
        if len(calls) <= failures:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()  # refused: nothing listens
        return answer

    return attempt


def test_it_waits_out_the_listed_errors_and_returns_the_answer():
    calls, said = [], []
    backoff = Backoff(base=0.001, cap=0.01)
    found = retry(_refused_then("up", 3, calls), errors=(ConnectionError,), backoff=backoff,
                  on_failure=lambda exc, delay: said.append((type(exc), delay)))
    assert found == "up" and len(calls) == 4 and backoff.failures == 3
    assert [kind for kind, _ in said] == [ConnectionRefusedError] * 3
    assert all(0 < delay <= 0.01 for _, delay in said)  # each wait capped as the backoff says


def test_an_error_not_listed_is_raised_at_once():
    said = []
    with pytest.raises(ConnectionRefusedError):
        retry(_refused_then("up", 1, []), errors=(TimeoutError,), backoff=Backoff(base=0.001),
              on_failure=lambda exc, delay: said.append(exc))
    assert said == []


def test_when_narrows_the_listed_errors():
    calls = []
    with pytest.raises(ConnectionRefusedError):
        retry(_refused_then("up", 5, calls), errors=(OSError,), backoff=Backoff(base=0.001),
              on_failure=lambda exc, delay: None, when=lambda exc: len(calls) < 3)
    assert len(calls) == 3  # two failures waited out, the third raised


def test_a_stop_ends_the_wait_and_the_loop():
    stop, calls = StopFlag(), []

    def stop_now(exc, delay):
        stop.set()

    started = time.monotonic()
    found = retry(_refused_then("up", 5, calls), errors=(ConnectionError,), stop=stop, on_failure=stop_now,
                  backoff=Backoff(base=120, cap=120))  # two minutes' wait...
    assert found is None and len(calls) == 1
    assert time.monotonic() - started < 60  # ...cut short by the stop


def test_a_stop_asked_for_before_the_first_try_tries_nothing():
    stop, calls = StopFlag(), []
    stop.set()
    assert retry(_refused_then("up", 0, calls), errors=(ConnectionError,), backoff=Backoff(),
                 on_failure=lambda exc, delay: None, stop=stop) is None
    assert calls == []
