"""No constant secret: without CLICKTRAIL_SECRET_KEY a random key is made once and kept in DATA_DIR,
so a click URL signed with any documented string is refused; documented strings are refused as keys."""

from __future__ import annotations

import http.client
import json
import stat
import subprocess
import sys
from urllib.parse import urlsplit

from clicktrail import services
from pixel import registry
from pixel.click_urls import make_token
from tests.servers import env_for, wait_http

DOCUMENTED_DEFAULT = "dev-insecure-secret-change-me"  # the default README documented until now


def get_no_redirect(port: int, path: str) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        return reply.status, dict(reply.getheaders()), reply.read()
    finally:
        conn.close()


def env_without_secret(settings, data_dir) -> dict:
    env = env_for(settings, DATA_DIR=str(data_dir))
    env.pop("CLICKTRAIL_SECRET_KEY")
    return env


def test_processes_starting_together_share_one_generated_key_file(settings, tmp_path):
    data = tmp_path / "var"
    code = "from clicktrail import config; print(config.load().site.secret_key)"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env_without_secret(settings, data),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
    keys = [proc.communicate(timeout=60)[0].strip() for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 8
    assert len(set(keys)) == 1 and len(keys[0]) == 64 and keys[0] != DOCUMENTED_DEFAULT
    assert sorted(p.name for p in data.iterdir()) == ["secret_key"]  # no temporary file left behind
    key_file = data / "secret_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().strip() == keys[0]
    again = subprocess.run([sys.executable, "-c", code], env=env_without_secret(settings, data),
                           capture_output=True, text=True, timeout=60)
    assert again.stdout.strip() == keys[0]  # kept, not regenerated


def test_a_documented_string_is_refused_as_the_key(settings):
    for value in (DOCUMENTED_DEFAULT, "please-change-me-0123456789", "short"):
        out = subprocess.run([sys.executable, "-m", "clicktrail.cli", "click-url", "--advertiser", "adv-1",
                              "--campaign", "c", "--adgroup", "g", "--ad", "d", "--landing", "https://shop.example/"],
                             env=env_for(settings, SECRET_KEY=value), capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and out.stdout == "", value
        assert "CLICKTRAIL_SECRET_KEY" in out.stderr, out.stderr


def test_a_key_file_others_can_read_is_refused(settings, tmp_path):
    (tmp_path / "secret_key").write_text("0123456789abcdef0123456789abcdef\n")
    (tmp_path / "secret_key").chmod(0o644)
    out = subprocess.run([sys.executable, "-m", "clicktrail.cli", "migrate"],
                         env=env_without_secret(settings, tmp_path), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "readable by other users" in out.stderr and "chmod 600" in out.stderr


def test_the_collector_refuses_urls_signed_with_the_documented_default(settings, r, tmp_path):
    registry.create_pixel(r, "adv-1", ["shop.example"])
    env = env_without_secret(settings, tmp_path / "var")
    port = services.free_port()
    collector = subprocess.Popen([sys.executable, "-m", "clicktrail.cli", "collector", "--bind",
                                  f"127.0.0.1:{port}", "--workers", "1"], env=env, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60)
        assert stat.S_IMODE((tmp_path / "var" / "secret_key").stat().st_mode) == 0o600
        forged = make_token(DOCUMENTED_DEFAULT, "adv-1", "cmp-1", "grp-1", "ad-1", "https://shop.example/")
        status, headers, body = get_no_redirect(port, f"/r/{forged}")
        assert status == 400 and json.loads(body)["error"]["code"] == "bad_signature"
        assert "Location" not in headers
        # The CLI signs with the same generated key (same DATA_DIR), and the collector follows it.
        printed = subprocess.run([sys.executable, "-m", "clicktrail.cli", "click-url", "--advertiser", "adv-1",
                                  "--campaign", "cmp-1", "--adgroup", "grp-1", "--ad", "ad-1",
                                  "--landing", "https://shop.example/p"], env=env, capture_output=True, text=True,
                                 timeout=60)
        assert printed.returncode == 0, printed.stderr
        status, headers, _ = get_no_redirect(port, urlsplit(printed.stdout.strip()).path)
        assert status == 302 and headers["Location"].startswith("https://shop.example/p?ttclid=")
    finally:
        collector.terminate()
        collector.wait(timeout=30)
