"""The supervisor behind `clicktrail up`, on plain real processes: what dies is restarted with backoff and
logged, the others keep running, and a stop ends them all."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager

from clicktrail.supervisor import Child, Supervisor

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
CRASHER = [sys.executable, "-c", "import sys; sys.exit(3)"]


@contextmanager
def watching(supervisor: Supervisor):
    """Run the supervisor's watch loop in a thread; stop it and every child however the test ends."""
    watcher = threading.Thread(target=supervisor.watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        supervisor.stop_flag.set()
        watcher.join(timeout=10)
        supervisor.stop_all()
    assert not watcher.is_alive()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too; the supervisor reaps its children, so this is rare.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_crash_looping_child_is_retried_with_growing_delays_and_the_others_keep_running(caplog):
    supervisor = Supervisor([Child("steady", argv=SLEEPER), Child("broken", argv=CRASHER)])
    supervisor.start_all()
    steady_pid = supervisor.children[0].proc.pid
    with caplog.at_level(logging.INFO, logger="clicktrail.up"), watching(supervisor):
        time.sleep(8)  # delays of 0.25-0.5, 0.5-1, 1-2, 2-4 s: about four restarts
    deaths = [r.getMessage() for r in caplog.records if r.getMessage().startswith("broken exited with status 3")]
    assert 3 <= len(deaths) <= 6, deaths
    delays = [float(re.search(r"restarting in ([0-9.]+)s", line).group(1)) for line in deaths]
    assert delays == sorted(delays) and delays[-1] > delays[0], delays  # backoff, not a hot loop
    assert "failures in a row" in deaths[-1]
    assert supervisor.children[0].proc.pid == steady_pid  # never restarted, never stopped by the other
    assert not any("steady" in r.getMessage() for r in caplog.records)
    assert not alive(steady_pid)  # and the stop ended it


def test_any_death_is_restarted_including_sigkill_and_a_clean_exit(caplog):
    once = [sys.executable, "-c", "import time; time.sleep(0.5)"]  # exits 0 by itself
    supervisor = Supervisor([Child("killed", argv=SLEEPER), Child("finished", argv=once)])
    supervisor.start_all()
    first = supervisor.children[0].proc.pid
    with caplog.at_level(logging.INFO, logger="clicktrail.up"), watching(supervisor):
        os.kill(first, 9)
        deadline = time.monotonic() + 10

        def both_seen() -> bool:  # the clean exit comes 0.5 s after its start, however slow that start
            said = [r.getMessage() for r in caplog.records]
            return supervisor.children[0].proc.pid != first and any(m.startswith("finished exited") for m in said)

        while not both_seen() and time.monotonic() < deadline:
            time.sleep(0.1)
    messages = [r.getMessage() for r in caplog.records]
    assert supervisor.children[0].proc.pid != first
    assert any(m.startswith("killed was killed by SIGKILL") for m in messages), messages
    assert any(m.startswith("finished exited with status 0") for m in messages), messages


def test_a_child_that_ignores_sigterm_is_killed_within_the_bound(monkeypatch):
    from clicktrail import supervisor as module

    monkeypatch.setattr(module, "CHILD_STOP_S", 1.0)
    stubborn = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('ready', flush=True); time.sleep(600)"]
    supervisor = Supervisor([Child("stubborn", argv=stubborn), Child("plain", argv=SLEEPER)])
    supervisor.start_all()
    pids = [child.proc.pid for child in supervisor.children]
    try:
        time.sleep(1)  # let it install its handler
    finally:
        started = time.monotonic()
        supervisor.stop_all()
    assert time.monotonic() - started < 20  # a guard against a hang, not a measurement
    assert not any(alive(pid) for pid in pids)


def test_a_child_that_cannot_even_be_started_is_retried_and_the_others_run(caplog, tmp_path):
    supervisor = Supervisor([Child("missing", argv=[str(tmp_path / "no-such-program")]),
                             Child("steady", argv=SLEEPER)])
    supervisor.start_all()
    steady = supervisor.children[1].proc
    with caplog.at_level(logging.INFO, logger="clicktrail.up"), watching(supervisor):
        time.sleep(3)
        assert steady.poll() is None
    failures = [r.getMessage() for r in caplog.records if r.getMessage().startswith("missing could not be started")]
    assert len(failures) >= 2, failures
    assert steady.poll() is not None


def test_up_runs_n_attributors_that_share_the_partitions_and_restarts_a_killed_one(settings, r, ch_database):
    """`clicktrail up --attributors 2`: two real attributor processes hold the partitions between them
    (attribution/partitions.py); one SIGKILLed is restarted by the supervisor and takes its share again."""
    from clicktrail import keys, services
    from tests.conftest import ROOT
    from tests.servers import env_for

    port, api_port = services.free_port(), services.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "clicktrail.cli", "up", "--bind", f"127.0.0.1:{port}",
                             "--api-bind", f"127.0.0.1:{api_port}", "--attributors", "2"], cwd=ROOT,
                            env=env_for(settings, ATTRIBUTION_PARTITIONS=4), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)

    def holders() -> dict[int, str]:
        return {n: (r.get(keys.attributor_lease(n)) or b"").decode() for n in range(4)}

    def attributor_pids() -> set[int]:
        return {int(name.decode().rsplit("-", 1)[1]) for name in r.hkeys(keys.ATTRIBUTORS)}

    def wait(what: str, check, seconds: float = 60):
        deadline = time.monotonic() + seconds
        while not check():
            assert time.monotonic() < deadline, what
            time.sleep(0.1)

    try:
        lines = []
        while not lines or not (lines[-1].startswith("Press Ctrl-C") or not lines[-1]):
            lines.append(proc.stdout.readline())
        assert "attributors 2 sharing 4 partitions (attributor-1 to attributor-2)\n" in lines
        wait("two attributors holding two partitions each",
             lambda: len(attributor_pids()) == 2 and sorted(Counter(holders().values()).values()) == [2, 2])
        first = attributor_pids()
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        # Restarted (a new process); once the dead one's entry lapses, the live two share again.
        wait("the killed attributor restarted", lambda: len(attributor_pids() - first) == 1)
        wait("the partitions shared by the live two again",
             lambda: victim not in attributor_pids() and len(attributor_pids()) == 2
             and set(holders().values()) == {n.decode() for n in r.hkeys(keys.ATTRIBUTORS)}
             and sorted(Counter(holders().values()).values()) == [2, 2])
        assert victim not in attributor_pids()
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0
    assert "stopped attributor-1" in rest and "stopped attributor-2" in rest


def test_up_refuses_more_attributors_than_partitions(settings):
    from tests.conftest import ROOT
    from tests.servers import env_for

    done = subprocess.run([sys.executable, "-m", "clicktrail.cli", "up", "--attributors", "3", "--no-services"],
                          cwd=ROOT, env=env_for(settings, ATTRIBUTION_PARTITIONS=2), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert "--attributors 3 needs CLICKTRAIL_ATTRIBUTION_PARTITIONS of at least 3 (it is 2)" in done.stderr
