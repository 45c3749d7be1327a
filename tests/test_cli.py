"""The clicktrail command: results alone on stdout, clear errors, `up` running everything."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from clicktrail import services
from pixel import registry
from tests.http import call
from tests.servers import env_for

ROOT = Path(__file__).resolve().parent.parent


def run(settings, *args, **overrides):
    return subprocess.run([sys.executable, "-m", "clicktrail.cli", *args], env=env_for(settings, **overrides),
                          capture_output=True, text=True, timeout=60)


def test_migrate_is_idempotent_and_prints_the_version(settings, ch):
    from clicktrail.schema import MIGRATIONS

    first, second = run(settings, "migrate"), run(settings, "migrate")
    assert first.returncode == second.returncode == 0
    assert first.stdout == second.stdout == f"{MIGRATIONS[-1].version}\n"


def test_pixel_and_token_create_print_only_the_id(settings, r):
    pixel = run(settings, "pixel", "create", "--advertiser", "acme", "--domain", "Shop.Example.com",
                "--domain", "https://m.shop.example.com:8443/x")
    assert pixel.returncode == 0
    pixel_id = pixel.stdout.strip()
    assert pixel.stdout == pixel_id + "\n" and len(pixel_id) == 20
    assert registry.get_pixel(r, pixel_id)["domains"] == ["m.shop.example.com", "shop.example.com"]
    token = run(settings, "token", "create", "--advertiser", "acme", "--scope", "events,reports")
    assert token.returncode == 0 and token.stdout.startswith("ctk_")
    assert registry.lookup_token(r, token.stdout.strip())["scopes"] == ["events", "reports"]
    assert token.stdout.strip().encode() not in b"".join(v for v in r.hvals("ct:tokens"))  # only its hash


def test_bad_arguments_fail_with_one_clear_line(settings, r):
    scope = run(settings, "token", "create", "--advertiser", "acme", "--scope", "events,admin")
    assert scope.returncode == 2 and scope.stdout == ""
    assert "unknown scope admin" in scope.stderr and "events, reports, optimizer, adserver" in scope.stderr
    domain = run(settings, "pixel", "create", "--advertiser", "acme", "--domain", "not a domain!")
    assert domain.returncode == 2 and "is not a valid host name" in domain.stderr
    advertiser = run(settings, "pixel", "create", "--advertiser", "a b", "--domain", "x.example")
    assert advertiser.returncode == 2 and "advertiser 'a b' must be" in advertiser.stderr
    config = run(settings, "migrate", REDIS_TIMEOUT_MS="fast")
    assert config.returncode == 2 and "CLICKTRAIL_REDIS_TIMEOUT_MS must be an integer" in config.stderr


def test_up_runs_everything_until_interrupted(settings, r, ch, ch_database, attributor):
    port, api_port = services.free_port(), services.free_port()
    # As scripts/up runs it: the venv's own `clicktrail`, which a newcomer's PATH does not hold.
    script = Path(sys.executable).parent / "clicktrail"
    proc = subprocess.Popen([os.path.relpath(script, ROOT), "up", "--bind", f"127.0.0.1:{port}",
                             "--api-bind", f"127.0.0.1:{api_port}"], cwd=ROOT,
                            env=env_for(settings), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if line.startswith("Press Ctrl-C") or not line:
                break
        out = "".join(lines)
        assert f"collector   http://127.0.0.1:{port}" in out
        assert f"api         http://127.0.0.1:{api_port}" in out
        assert "redis       127.0.0.1:6379 (already running)" in out
        assert "schema      version" in out
        # The commands it suggests run as printed, from where it was started; the dashboard answers.
        hint = next(line for line in lines if line.startswith("Ready. Register a pixel: "))
        suggested = shlex.split(hint.split(": ", 1)[1])
        assert suggested[1:3] == ["pixel", "create"]
        assert subprocess.run([suggested[0], "pixel", "create", "--help"], cwd=ROOT, env=env_for(settings),
                              capture_output=True, timeout=60).returncode == 0
        dashboard = f"http://127.0.0.1:{api_port}/dashboard"
        assert f"dashboard   {dashboard} " in out
        assert call("GET", dashboard).status == 200
        pixel_id = registry.create_pixel(r, "acme", ["shop.example"])
        body = {"events": [{"event": "PageView", "event_id": "up-1", "page": {"url": "https://shop.example/"}}]}
        deadline = time.monotonic() + 20
        reply = None
        while time.monotonic() < deadline:
            reply = call("POST", f"http://127.0.0.1:{port}/e/{pixel_id}", json.dumps(body).encode())
            if reply.status == 200:
                break
            time.sleep(0.2)
        assert reply.status == 200
        while time.monotonic() < deadline:
            if ch.execute(f"SELECT count() FROM {ch_database}.events_unique")[0][0] == 1:
                break
            time.sleep(0.2)
        assert ch.execute(f"SELECT event_id FROM {ch_database}.events_unique") == [("up-1",)]
        while time.monotonic() < deadline:  # the attributor ran too: the page view is organic
            if ch.execute(f"SELECT count() FROM {ch_database}.credits WHERE event_id = 'up-1'")[0][0]:
                break
            time.sleep(0.2)
        assert ch.execute(f"SELECT DISTINCT touch_kind, credit FROM {ch_database}.credits "
                          "WHERE event_id = 'up-1'") == [("", 1.0)]
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert "stopped collector" in rest and "stopped sink-1" in rest
    assert "stopped attributor" in rest and "stopped api" in rest


def test_pixel_snippet_prints_the_html_to_paste(settings, r):
    pixel_id = registry.create_pixel(r, "acme", ["shop.example"])
    out = run(settings, "pixel", "snippet", pixel_id, PUBLIC_URL="https://t.shop.example")
    assert out.returncode == 0, out.stderr
    html = out.stdout
    assert html.startswith("<script") and f"ttq.load('{pixel_id}'" in html
    assert "https://t.shop.example" in html
    assert f'src="https://t.shop.example/e/{pixel_id}.gif?ev=PageView&amp;noscript=1"' in html
    unknown = run(settings, "pixel", "snippet", "CNOTREGISTERED")
    assert unknown.returncode != 0 and "is not registered" in unknown.stderr


def test_alive_tells_a_working_worker_from_a_stuck_one(settings, r, ch, tmp_path):
    beat = tmp_path / "sink.alive"
    unset = run(settings, "alive")
    assert unset.returncode == 2 and "CLICKTRAIL_HEARTBEAT_FILE is not set" in unset.stderr
    assert run(settings, "alive", HEARTBEAT_FILE=str(beat)).returncode == 1  # no worker yet
    sink = subprocess.Popen([sys.executable, "-m", "clicktrail.cli", "sink"],
                            env=env_for(settings, HEARTBEAT_FILE=str(beat)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def alive_within(max_age: int, expect: int) -> subprocess.CompletedProcess:
        deadline = time.monotonic() + 30
        while True:
            done = run(settings, "alive", "--max-age", str(max_age), HEARTBEAT_FILE=str(beat))
            if done.returncode == expect or time.monotonic() > deadline:
                return done
            time.sleep(0.3)

    try:
        working = alive_within(60, 0)
        assert working.returncode == 0 and working.stdout.startswith("alive: last heartbeat")
        sink.send_signal(signal.SIGSTOP)  # a worker that no longer turns its loop (stuck)
        stuck = alive_within(3, 1)
        assert stuck.returncode == 1 and "stuck or stopped" in stuck.stderr
        sink.send_signal(signal.SIGCONT)
        assert alive_within(7, 0).returncode == 0  # it beats again within its 5 s period
    finally:
        sink.send_signal(signal.SIGCONT)
        sink.terminate()
        sink.wait(timeout=60)
