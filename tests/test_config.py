"""Settings: a frozen object in sections, loaded from the ``CLICKTRAIL_*`` variables README documents.

No servers: ``config.load`` is called with an explicit environment (and a throwaway DATA_DIR, where
a key is generated when none is set).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from clicktrail import config
from clicktrail.errors import ConfigError

README = Path(__file__).resolve().parent.parent / "README.md"
KEY = "0123456789abcdef0123456789abcdef"


def load(tmp_path, env: dict | None = None, overrides: dict | None = None) -> config.Settings:
    environ = {"CLICKTRAIL_DATA_DIR": str(tmp_path), "CLICKTRAIL_SECRET_KEY": KEY, **(env or {})}
    return config.load(overrides, environ=environ)


def other_value(name: str, default):
    """A valid value for the setting, different from its default, as the environment spells it."""
    if isinstance(default, bool):
        return ("off" if default else "yes"), (not default)
    if isinstance(default, int):
        return str(default + 7), default + 7
    if isinstance(default, float):
        return str(default + 0.25), default + 0.25
    value = {"SECRET_KEY": "f" * 40, "SMTP_URL": "smtp://mail.example:2525"}.get(name, f"{default}-other" if default else "something")
    return value, value


def documented_variables() -> list[str]:
    """Every variable named in the first column of README's configuration table."""
    section = README.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `CLICKTRAIL_")]
    return [name for row in rows for name in re.findall(r"`CLICKTRAIL_([A-Z_]+)`", row.split(" | ")[0])]


@pytest.mark.parametrize("name", sorted(config.DEFAULTS))
def test_every_variable_sets_its_setting_and_survives_a_round_trip(name, tmp_path):
    raw, value = other_value(name, config.DEFAULTS[name])
    loaded = load(tmp_path, {"CLICKTRAIL_" + name: raw})
    assert loaded.named()[name] == value
    others = {n: v for n, v in loaded.named().items() if n != name}
    assert others == {n: v for n, v in load(tmp_path).named().items() if n != name}  # nothing else moved
    # What a child process is handed loads back to the same settings.
    assert config.load(environ=loaded.environment()) == loaded


def test_every_documented_variable_is_read():
    documented = documented_variables()
    # Each row's variable is one the loader reads (each is set and read back in the test above)...
    assert set(documented) <= set(config.DEFAULTS) and len(documented) == len(set(documented))
    # ...every setting has a row (but the crash tests' fault injection, never set in production)...
    assert set(config.DEFAULTS) - set(documented) <= {"SINK_FAILPOINT"}
    # ...and every deprecated name is still mentioned, beside the name that replaced it.
    table = README.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    for old, new in config.DEPRECATED.items():
        assert re.search(rf"`CLICKTRAIL_{new}`.*`CLICKTRAIL_{old}`, its old name, is deprecated", table), old


def test_defaults_apply_when_nothing_is_set(tmp_path):
    s = load(tmp_path)
    assert s.redis.url == "redis://127.0.0.1:6379/0" and s.sink.batch_size == 50_000
    assert s.privacy.anonymize_ip is True and s.retry.backoff_cap_s == 30.0
    assert s.limits.retry_after_s == 2 and s.stream.claim_idle_ms == 60_000


@pytest.mark.parametrize("old, new, attr", [("SINK_BACKOFF_CAP_S", "RETRY_BACKOFF_CAP_S", ("retry", "backoff_cap_s")),
                                            ("SINK_CLAIM_IDLE_MS", "CLAIM_IDLE_MS", ("stream", "claim_idle_ms"))])
def test_a_deprecated_name_still_works_until_the_new_one_is_set(old, new, attr, tmp_path):
    def read(s):
        return getattr(getattr(s, attr[0]), attr[1])

    assert read(load(tmp_path, {"CLICKTRAIL_" + old: "3"})) == 3
    assert read(load(tmp_path, {"CLICKTRAIL_" + old: "3", "CLICKTRAIL_" + new: "4"})) == 4
    assert read(load(tmp_path, overrides={old: 5})) == 5
    with pytest.raises(ConfigError, match=f"CLICKTRAIL_{old} must be"):
        load(tmp_path, {"CLICKTRAIL_" + old: "soon"})


@pytest.mark.parametrize("name, raw, message", [
    ("REDIS_TIMEOUT_MS", "fast", "CLICKTRAIL_REDIS_TIMEOUT_MS must be an integer; got 'fast'"),
    ("SINK_BATCH_SIZE", "1.5", "CLICKTRAIL_SINK_BATCH_SIZE must be an integer; got '1.5'"),
    ("RETRY_BACKOFF_CAP_S", "long", "CLICKTRAIL_RETRY_BACKOFF_CAP_S must be a number; got 'long'"),
    ("ANONYMIZE_IP", "maybe", "CLICKTRAIL_ANONYMIZE_IP must be one of 1/0, true/false, yes/no, on/off; got 'maybe'"),
])
def test_a_bad_environment_value_fails_naming_the_variable(name, raw, message, tmp_path):
    with pytest.raises(ConfigError) as failure:
        load(tmp_path, {"CLICKTRAIL_" + name: raw})
    assert str(failure.value) == message


def test_an_unknown_override_fails_at_once_with_its_name(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown setting 'SINK_BATCH_SIZ'; known settings: .*SINK_BATCH_SIZE"):
        load(tmp_path, overrides={"SINK_BATCH_SIZ": 10})


@pytest.mark.parametrize("name, value", [("SINK_BATCH_SIZE", 2.5), ("ANONYMIZE_IP", 1), ("REDIS_URL", 6379),
                                         ("SINK_READ_COUNT", True), ("SINK_BATCH_SIZE", "many")])
def test_an_override_of_the_wrong_type_fails_with_its_name(name, value, tmp_path):
    with pytest.raises(ConfigError, match=name):
        load(tmp_path, overrides={name: value})


def test_overrides_are_typed_like_the_environment(tmp_path):
    s = load(tmp_path, overrides={"SINK_BATCH_SIZE": "20", "RETRY_BACKOFF_CAP_S": 1, "ANONYMIZE_IP": "off",
                                  "DATA_DIR": tmp_path / "var"})
    assert (s.sink.batch_size, s.retry.backoff_cap_s, s.privacy.anonymize_ip) == (20, 1.0, False)
    assert isinstance(s.retry.backoff_cap_s, float) and s.paths.data_dir == str(tmp_path / "var")


def test_settings_are_frozen_and_a_mistyped_name_is_an_error(tmp_path):
    s = load(tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.sink = config.SinkSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.sink.batch_size = 1
    with pytest.raises(AttributeError):
        s.sink.batch_sise  # noqa: B018 - the typo is the point
    # No new attributes either (Python 3.11's frozen slotted dataclasses refuse with a TypeError).
    with pytest.raises((AttributeError, TypeError)):
        s.sink.extra = 1
    assert not hasattr(s.sink, "extra")


def test_updated_returns_a_checked_copy(tmp_path):
    s = load(tmp_path)
    t = s.updated({"ATTRIBUTOR_CHUNK": 3, "SINK_CLAIM_IDLE_MS": 0})
    assert (t.attributor.chunk, t.stream.claim_idle_ms) == (3, 0)
    assert (s.attributor.chunk, s.stream.claim_idle_ms) == (10_000, 60_000)
    with pytest.raises(ConfigError, match="unknown setting 'CHUNK'"):
        s.updated({"CHUNK": 3})
    with pytest.raises(ConfigError, match="CLICKTRAIL_SECRET_KEY is a documented placeholder"):
        s.updated({"SECRET_KEY": "dev-insecure-secret-change-me"})


def test_the_secret_key_stays_out_of_repr(tmp_path):
    s = load(tmp_path)
    assert KEY not in repr(s) and s.site.secret_key == KEY


@hsettings(max_examples=200, deadline=None)
@given(raw=st.text(max_size=12))
def test_any_integer_variable_is_an_integer_or_a_clear_error(raw):
    environ = {"CLICKTRAIL_SECRET_KEY": KEY, "CLICKTRAIL_SINK_READ_COUNT": raw}
    try:
        s = config.load(environ=environ)
    except ConfigError as exc:
        assert str(exc).startswith("CLICKTRAIL_SINK_READ_COUNT must be an integer")
    else:
        assert s.sink.read_count == (int(raw) if raw else config.DEFAULTS["SINK_READ_COUNT"])
