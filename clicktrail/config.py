"""Settings: documented defaults, overridden by ``CLICKTRAIL_*`` environment variables.

Layering, lowest first: ``DEFAULTS`` below, then the environment, then an explicit mapping
(tests and the CLI pass one). Every value is parsed to the type of its default, so a bad
environment variable fails at start-up with its name in the message, not later on a request.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clicktrail.errors import ConfigError

ENV_PREFIX = "CLICKTRAIL_"

DEFAULTS: dict[str, Any] = {
    # Where things live.
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "CLICKHOUSE_URL": "clickhouse://127.0.0.1:9000/clicktrail",
    "PUBLIC_URL": "http://127.0.0.1:8080",
    # Signs click URLs. Unset: a random key generated once and kept in DATA_DIR/secret_key.
    "SECRET_KEY": "",
    # Folder for local data (Redis and ClickHouse started by `clicktrail up`, metrics files).
    "DATA_DIR": "var",
    # Collector request path.
    "REDIS_TIMEOUT_MS": 100,  # a slow Redis answers 503 after this, never hangs a worker
    "MAX_BODY_BYTES": 1_048_576,  # 1 MB, after which 413
    "MAX_INFLATED_BYTES": 8_388_608,  # gzip bodies may not inflate past 8 MB (decompression bombs)
    "MAX_BROWSER_EVENTS": 100,  # events per browser body
    "MAX_SERVER_EVENTS": 1000,  # events per Events API body (TikTok's limit)
    "MAX_EVENT_AGE_S": 7 * 86400,  # older events are rejected
    "MAX_FUTURE_S": 86400,  # events further in the future are rejected
    "STREAM_MAX_LEN": 1_000_000,  # entries (one per request); past this the collector sheds load with 503
    "RETRY_AFTER_S": 2,
    # Privacy.
    "ANONYMIZE_IP": True,  # /24 for IPv4, /48 for IPv6
    "TRUST_PROXY_HEADERS": False,  # read the client IP from X-Forwarded-For
    # Sink.
    "SINK_BATCH_SIZE": 50_000,  # rows per ClickHouse insert at most (fewer parts to merge)
    "SINK_BATCH_WAIT_MS": 500,  # a batch is flushed after this even when not full
    "SINK_READ_COUNT": 5000,  # entries per XREADGROUP call
    "SINK_CLAIM_IDLE_MS": 60_000,  # pending this long: its consumer is presumed dead
    "SINK_MAX_DELIVERIES": 5,  # then the entry goes to the dead-letter stream
    "SINK_BACKOFF_CAP_S": 30.0,
    "UA_CACHE_SIZE": 20_000,
    # Attributor.
    "ATTRIBUTOR_BATCH": 10,  # notices per tick; each names up to a sink batch (20,000) of conversions
    "ATTRIBUTOR_LEASE_S": 10,  # a dead attributor's standby takes over after this
    "ATTRIBUTOR_CHUNK": 10_000,  # conversions written (and published to the feed) at a time within a tick
}

#: The API's body limit (bulk imports carry up to 10,000 rows): fixed, not a setting; the API
#: refuses a larger body with 413, and so does nginx in front of it (clicktrail/proxy.py).
MAX_API_BODY_BYTES = 16 * 1024 * 1024


def _parse(name: str, raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{ENV_PREFIX}{name} must be one of 1/0, true/false, yes/no, on/off; got {raw!r}")
    if isinstance(default, (int, float)):
        try:
            return type(default)(raw)
        except ValueError:
            kind = "an integer" if isinstance(default, int) else "a number"
            raise ConfigError(f"{ENV_PREFIX}{name} must be {kind}; got {raw!r}") from None
    return raw


def load(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Return the effective settings: defaults, then environment, then ``overrides``."""
    environ = os.environ if environ is None else environ
    settings = dict(DEFAULTS)
    for name, default in DEFAULTS.items():
        raw = environ.get(ENV_PREFIX + name)
        if raw is not None and raw != "":
            settings[name] = _parse(name, raw, default)
    for name, value in (overrides or {}).items():
        if name not in DEFAULTS:
            raise ConfigError(f"unknown setting {name!r}; known settings: {', '.join(sorted(DEFAULTS))}")
        settings[name] = value
    settings["SECRET_KEY"] = _secret_key(settings["SECRET_KEY"], settings["DATA_DIR"])
    return settings


# -- the secret key --------------------------------------------------------------------------------

SECRET_FILE = "secret_key"
MIN_SECRET_CHARS = 16
#: Strings that were ever printed in clicktrail's docs or defaults: anyone can sign URLs with them.
DOCUMENTED_SECRETS = frozenset({"dev-insecure-secret-change-me"})
_PLACEHOLDER_WORDS = ("change-me", "changeme", "change_me")


def secret_path(data_dir: str) -> Path:
    return Path(data_dir) / SECRET_FILE


def _secret_key(configured: str, data_dir: str) -> str:
    """The configured key, checked; without one, the key kept in DATA_DIR (made on first use)."""
    if configured:
        return _checked(configured, f"{ENV_PREFIX}SECRET_KEY")
    path = secret_path(data_dir)
    try:
        return _checked(_read_secret(path) or _create_secret(path), str(path))
    except OSError as exc:
        raise ConfigError(f"{ENV_PREFIX}SECRET_KEY is unset and its generated key at {path} cannot be "
                          f"used ({exc.strerror or exc}); set {ENV_PREFIX}SECRET_KEY or make "
                          f"{ENV_PREFIX}DATA_DIR writable") from None


def _checked(key: str, where: str) -> str:
    lowered = key.strip().lower()
    if key in DOCUMENTED_SECRETS or any(word in lowered for word in _PLACEHOLDER_WORDS):
        raise ConfigError(f"{where} is a documented placeholder, so anyone could sign click URLs with it; "
                          "use a long random value (openssl rand -hex 32), or unset it to use a generated one")
    if len(key) < MIN_SECRET_CHARS:
        raise ConfigError(f"{where} must be at least {MIN_SECRET_CHARS} characters; use a long random value "
                          "(openssl rand -hex 32)")
    return key


def _read_secret(path: Path) -> str | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path} is readable by other users (mode {stat.S_IMODE(info.st_mode):04o}); "
                          f"chmod 600 {path}")
    return path.read_text("ascii").strip()


def _create_secret(path: Path) -> str:
    """Write a new random key to ``path`` unless another process got there first; return the key kept.

    Written whole to a private temporary file, then hard-linked into place: the link fails if the
    file exists, so processes starting together all end up with the first one's key, and nobody
    ever reads a half-written file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(secrets.token_hex(32) + "\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
    finally:
        temp.unlink(missing_ok=True)
    return _read_secret(path) or ""
