"""Settings: documented defaults, overridden by ``CLICKTRAIL_*`` environment variables.

Layering, lowest first: ``DEFAULTS`` below, then the environment, then an explicit mapping
(tests and the CLI pass one). Every value is parsed to the type of its default, so a bad
environment variable fails at start-up with its name in the message, not later on a request.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from clicktrail.errors import ConfigError

ENV_PREFIX = "CLICKTRAIL_"

DEFAULTS: dict[str, Any] = {
    # Where things live.
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "CLICKHOUSE_URL": "clickhouse://127.0.0.1:9000/clicktrail",
    "PUBLIC_URL": "http://127.0.0.1:8080",
    # Signs click URLs; set a long random value in production.
    "SECRET_KEY": "dev-insecure-secret-change-me",
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
    # Fault injection for crash-safety tests: "after_insert" makes a sink SIGKILL itself between
    # a successful insert and the acknowledgement. Never set it in production.
    "SINK_FAILPOINT": "",
}


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
    return settings
