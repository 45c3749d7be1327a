"""Settings: documented defaults, overridden by ``CLICKTRAIL_*`` environment variables.

Layering, lowest first: the defaults below, then the environment, then an explicit mapping
(tests and the CLI pass one, keyed by the variable's name without the prefix). Every value is
parsed to the type of its default, so a bad environment variable fails at start-up with its name
in the message, not later on a request. The result is a frozen ``Settings`` object in sections
(``settings.sink.batch_size``): a mistyped name is an ``AttributeError`` where it is written (and
a type checker sees it), and an unknown name in the override mapping fails at once.

Each field names its environment variable; a setting more than one stage reads has a neutral
name, and the stage-specific name it had before still works as a deprecated alias (deployments
set it), read only when the new name is unset.
"""

from __future__ import annotations

import dataclasses
import email.utils
import os
import secrets
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clicktrail import smtp_url
from clicktrail.errors import ConfigError

ENV_PREFIX = "CLICKTRAIL_"


def _setting(name: str, default: Any, *, deprecated: tuple[str, ...] = (), secret: bool = False) -> Any:
    """A field read from ``CLICKTRAIL_<name>`` (or, when that is unset, a deprecated alias)."""
    return field(default=default, repr=not secret, metadata={"name": name, "deprecated": deprecated})


@dataclass(frozen=True, slots=True)
class RedisSettings:
    # A single Redis (redis://, rediss://, unix://) or a Redis Cluster named by some of its nodes:
    # redis+cluster://host:port,host:port/ (rediss+cluster:// with TLS); see docs/scaling.md.
    url: str = _setting("REDIS_URL", "redis://127.0.0.1:6379/0")
    timeout_ms: int = _setting("REDIS_TIMEOUT_MS", 100)  # a slow Redis answers 503 after this, never hangs a worker
    # With N > 0 the collector answers 2xx only once N replicas of the master that took the
    # events confirm them (Redis WAIT), else 503 with Retry-After: an acknowledged event survives
    # a master's crash (docs/scaling.md). Keep the timeout below REDIS_TIMEOUT_MS.
    wait_replicas: int = _setting("REDIS_WAIT_REPLICAS", 0)
    wait_timeout_ms: int = _setting("REDIS_WAIT_TIMEOUT_MS", 50)


@dataclass(frozen=True, slots=True)
class ClickHouseSettings:
    url: str = _setting("CLICKHOUSE_URL", "clickhouse://127.0.0.1:9000/clicktrail")


@dataclass(frozen=True, slots=True)
class SiteSettings:
    public_url: str = _setting("PUBLIC_URL", "http://127.0.0.1:8080")
    # Signs click URLs. Unset: a random key generated once and kept in DATA_DIR/secret_key.
    secret_key: str = _setting("SECRET_KEY", "", secret=True)  # kept out of repr (and so of logs)


@dataclass(frozen=True, slots=True)
class PathSettings:
    # Folder for local data (Redis and ClickHouse started by `clicktrail up`, metrics files).
    data_dir: str = _setting("DATA_DIR", "var")
    # A file the sink and the attributor touch while their loop turns (unset: none); a container's
    # healthcheck (`clicktrail alive`) calls a worker stuck or dead when it grows old.
    heartbeat_file: str = _setting("HEARTBEAT_FILE", "")


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """What a request may carry (the collector's intake; the feed reuses the event age)."""

    max_body_bytes: int = _setting("MAX_BODY_BYTES", 1_048_576)  # 1 MB, after which 413
    max_inflated_bytes: int = _setting("MAX_INFLATED_BYTES", 8_388_608)  # gzip bodies may not inflate past 8 MB
    max_browser_events: int = _setting("MAX_BROWSER_EVENTS", 100)  # events per browser body
    max_server_events: int = _setting("MAX_SERVER_EVENTS", 1000)  # events per Events API body (TikTok's limit)
    max_event_age_s: int = _setting("MAX_EVENT_AGE_S", 7 * 86400)  # older events are rejected
    max_future_s: int = _setting("MAX_FUTURE_S", 86400)  # events further in the future are rejected
    retry_after_s: int = _setting("RETRY_AFTER_S", 2)  # Retry-After on every 503 (collector, API, nginx)


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """The Redis streams between stages: how long they may grow, when a reader is presumed dead."""

    # Entries (one per request); past this the collector sheds load with 503.
    max_len: int = _setting("STREAM_MAX_LEN", 1_000_000)
    # Pending this long: the consumer (a sink, or an attributor) that read it is presumed dead.
    claim_idle_ms: int = _setting("CLAIM_IDLE_MS", 60_000, deprecated=("SINK_CLAIM_IDLE_MS",))
    # Streams the events are split over (docs/scaling.md); every collector and sink of a
    # deployment must agree. 1 on a single Redis is the one stream ct:events.
    shards: int = _setting("STREAM_SHARDS", 1)
    # Days an entry may stay in the event stream or the dead letters (they hold personal data, and
    # a dead letter waits for an operator); older ones are dropped, counted and logged as lost.
    buffer_max_age_days: int = _setting("BUFFER_MAX_AGE_DAYS", 30)

    def __post_init__(self) -> None:
        if self.buffer_max_age_days < 1:
            raise ConfigError(f"{ENV_PREFIX}BUFFER_MAX_AGE_DAYS must be at least 1 (days); "
                              f"got {self.buffer_max_age_days}")


@dataclass(frozen=True, slots=True)
class PrivacySettings:
    anonymize_ip: bool = _setting("ANONYMIZE_IP", True)  # /24 for IPv4, /48 for IPv6
    trust_proxy_headers: bool = _setting("TRUST_PROXY_HEADERS", False)  # read the client IP from X-Forwarded-For


@dataclass(frozen=True, slots=True)
class GeoSettings:
    # Where client IPs are placed (country, region), offline: "" the packaged registry data
    # (iptocc, countries), a MaxMind DB file's path (countries and regions), or "off".
    database: str = _setting("GEOIP_DB", "")


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """Waiting out an outage (sink and attributor alike)."""

    backoff_cap_s: float = _setting("RETRY_BACKOFF_CAP_S", 30.0, deprecated=("SINK_BACKOFF_CAP_S",))


@dataclass(frozen=True, slots=True)
class SinkSettings:
    batch_size: int = _setting("SINK_BATCH_SIZE", 50_000)  # rows per ClickHouse insert at most (fewer parts to merge)
    batch_wait_ms: int = _setting("SINK_BATCH_WAIT_MS", 500)  # a batch is flushed after this even when not full
    read_count: int = _setting("SINK_READ_COUNT", 5000)  # entries per XREADGROUP call
    max_deliveries: int = _setting("SINK_MAX_DELIVERIES", 5)  # then the entry goes to the dead-letter stream
    ua_cache_size: int = _setting("UA_CACHE_SIZE", 20_000)


@dataclass(frozen=True, slots=True)
class AttributorSettings:
    batch: int = _setting("ATTRIBUTOR_BATCH", 10)  # notices per tick; each names up to a sink batch of conversions
    lease_s: int = _setting("ATTRIBUTOR_LEASE_S", 10)  # a dead attributor's standby takes over after this
    chunk: int = _setting("ATTRIBUTOR_CHUNK", 10_000)  # conversions written (and published to the feed) at a time
    # Advertisers are split into this many partitions of notices, each attributed by one attributor
    # at a time; live attributors share them. The sink, imports and the feed read it too.
    partitions: int = _setting("ATTRIBUTION_PARTITIONS", 1)

    def __post_init__(self) -> None:
        if not 1 <= self.partitions <= 1024:
            raise ConfigError(f"{ENV_PREFIX}ATTRIBUTION_PARTITIONS must be between 1 and 1024; got {self.partitions}")


@dataclass(frozen=True, slots=True)
class SchedulerSettings:
    lease_s: int = _setting("SCHEDULER_LEASE_S", 10)  # a dead scheduler's standby takes over after this
    # Plain-HTTP webhooks to 127.0.0.1 / localhost only (tests, a receiver on the same host); never elsewhere.
    allow_http_webhooks: bool = _setting("ALLOW_HTTP_WEBHOOKS", False)
    # Each alert rule is evaluated this often (its queries run then; the scheduler itself ticks every second).
    rule_interval_s: int = _setting("RULE_INTERVAL_S", 60)


@dataclass(frozen=True, slots=True)
class MailSettings:
    """The SMTP server that e-mails scheduled reports and alerts (clicktrail/smtp_url.py has the forms)."""

    # Unset: e-mail delivery is off (a schedule asking for it is refused). Holds a password: kept out of repr.
    smtp_url: str = _setting("SMTP_URL", "", secret=True)
    smtp_from: str = _setting("SMTP_FROM", "clicktrail@localhost")  # the From address of every message
    # Unset: the SMTP server's certificate is verified against the system's CAs. Set: a PEM file of
    # the CA(s) trusted instead (a private CA). Verification itself is never off.
    smtp_ca_file: str = _setting("SMTP_CA_FILE", "")

    def __post_init__(self) -> None:
        if self.smtp_url:
            smtp_url.parse(self.smtp_url)
            if self.smtp_ca_file:
                smtp_url.tls_context(self.smtp_ca_file)  # a wrong path fails at start-up, not at the first report
        _, address = email.utils.parseaddr(self.smtp_from)
        if "@" not in address or any(c in self.smtp_from for c in "\r\n"):
            raise ConfigError(f"{ENV_PREFIX}SMTP_FROM must be an e-mail address (Name <a@b.example> or a@b.example); "
                              f"got {self.smtp_from!r}")


@dataclass(frozen=True, slots=True)
class Settings:
    redis: RedisSettings = RedisSettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    site: SiteSettings = SiteSettings()
    paths: PathSettings = PathSettings()
    limits: LimitSettings = LimitSettings()
    stream: StreamSettings = StreamSettings()
    privacy: PrivacySettings = PrivacySettings()
    geo: GeoSettings = GeoSettings()
    retry: RetrySettings = RetrySettings()
    sink: SinkSettings = SinkSettings()
    attributor: AttributorSettings = AttributorSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    mail: MailSettings = MailSettings()

    def updated(self, overrides: Mapping[str, Any]) -> Settings:
        """A copy with ``overrides`` (keyed by name, as for ``load``) applied and checked the same way."""
        values = _values(self)
        _apply_overrides(values, overrides)
        if "SECRET_KEY" in overrides:
            values[_SPECS["SECRET_KEY"].where] = _secret_key(values[_SPECS["SECRET_KEY"].where],
                                                             values[_SPECS["DATA_DIR"].where])
        return _build(values)

    def named(self) -> dict[str, Any]:
        """Every setting by its name (``REDIS_URL``...), e.g. to hand to a child process's environment."""
        values = _values(self)
        return {name: values[spec.where] for name, spec in _SPECS.items()}

    def environment(self) -> dict[str, str]:
        """The ``CLICKTRAIL_*`` variables that make a child process load these same settings."""
        return {ENV_PREFIX + name: _unparse(value) for name, value in self.named().items()}


# -- the name <-> field mapping --------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Spec:
    name: str
    where: tuple[str, str]  # (section, field)
    default: Any
    deprecated: tuple[str, ...]


def _specs() -> Iterator[_Spec]:
    for section in dataclasses.fields(Settings):
        for item in dataclasses.fields(section.default):
            yield _Spec(item.metadata["name"], (section.name, item.name), item.default, item.metadata["deprecated"])


#: Every setting by its name (the environment variable without ``CLICKTRAIL_``).
_SPECS: dict[str, _Spec] = {spec.name: spec for spec in _specs()}
#: Deprecated names, still read (environment and overrides), each pointing at its current setting.
DEPRECATED: dict[str, str] = {old: spec.name for spec in _SPECS.values() for old in spec.deprecated}
#: Every setting's documented default, by name.
DEFAULTS: dict[str, Any] = {name: spec.default for name, spec in _SPECS.items()}

#: The API's body limit (bulk imports carry up to 10,000 rows): fixed, not a setting; the API
#: refuses a larger body with 413, and so does nginx in front of it (clicktrail/proxy.py).
MAX_API_BODY_BYTES = 16 * 1024 * 1024


def _values(settings: Settings) -> dict[tuple[str, str], Any]:
    return {spec.where: getattr(getattr(settings, spec.where[0]), spec.where[1]) for spec in _SPECS.values()}


def _build(values: Mapping[tuple[str, str], Any]) -> Settings:
    sections: dict[str, dict[str, Any]] = {}
    for (section, name), value in values.items():
        sections.setdefault(section, {})[name] = value
    return Settings(**{f.name: type(f.default)(**sections[f.name]) for f in dataclasses.fields(Settings)})


# -- parsing ---------------------------------------------------------------------------------------

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


def _unparse(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _checked_override(name: str, value: Any, default: Any) -> Any:
    """An override as its setting's type: a string is parsed as the environment would be; a value
    of another type must already be one (an int stands for a float), so a typo cannot slip in."""
    if isinstance(value, str):
        return _parse(name, value, default)
    if isinstance(value, os.PathLike) and isinstance(default, str):
        return os.fspath(value)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
            isinstance(default, float) or isinstance(value, int))
    else:
        ok = False
    if not ok:
        raise ConfigError(f"setting {name} must be {type(default).__name__}; got {value!r}")
    return type(default)(value)


def _spec_of(name: str) -> _Spec:
    spec = _SPECS.get(DEPRECATED.get(name, name))
    if spec is None:
        raise ConfigError(f"unknown setting {name!r}; known settings: {', '.join(sorted(_SPECS))}")
    return spec


def _apply_overrides(values: dict[tuple[str, str], Any], overrides: Mapping[str, Any]) -> None:
    for name, value in overrides.items():
        spec = _spec_of(name)
        values[spec.where] = _checked_override(name, value, spec.default)


def _from_environment(spec: _Spec, environ: Mapping[str, str]) -> Any:
    for name in (spec.name, *spec.deprecated):
        raw = environ.get(ENV_PREFIX + name)
        if raw is not None and raw != "":
            return _parse(name, raw, spec.default)
    return spec.default


def load(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Return the effective settings: defaults, then environment, then ``overrides``."""
    environ = os.environ if environ is None else environ
    values = {spec.where: _from_environment(spec, environ) for spec in _SPECS.values()}
    _apply_overrides(values, overrides or {})
    secret, data_dir = _SPECS["SECRET_KEY"].where, _SPECS["DATA_DIR"].where
    values[secret] = _secret_key(values[secret], values[data_dir])
    shards = _SPECS["STREAM_SHARDS"].where
    if not 1 <= values[shards] <= 1024:
        raise ConfigError(f"{ENV_PREFIX}STREAM_SHARDS must be between 1 and 1024, not {values[shards]}")
    interval = _SPECS["RULE_INTERVAL_S"].where
    if not 1 <= values[interval] <= 3600:
        raise ConfigError(f"{ENV_PREFIX}RULE_INTERVAL_S must be between 1 and 3600, not {values[interval]}")
    return _build(values)


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
