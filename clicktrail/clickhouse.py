"""ClickHouse connections and the server's version, which gates newer schema features."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors

from clicktrail.errors import ConfigError, StorageError

#: Errors that mean "the server is not there right now": retry, never give up on the data.
NETWORK_ERRORS = (ch_errors.NetworkError, ch_errors.SocketTimeoutError, EOFError, ConnectionError, OSError)


def database_of(url: str) -> str:
    name = urlsplit(url).path.strip("/") or "default"
    if not name.replace("_", "").isalnum():
        raise ConfigError(f"ClickHouse database name {name!r} must be letters, digits and '_'")
    return name


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def connect(url: str, *, database: str | None = None, **settings) -> Client:
    """Return a client for ``url`` (``clickhouse://host:port/db``); one client per thread."""
    if not url.startswith(("clickhouse://", "clickhouses://")):
        raise ConfigError(f"CLICKTRAIL_CLICKHOUSE_URL must start with clickhouse://; got {url!r}")
    if database is not None:
        url = with_database(url, database)
    client = Client.from_url(url)
    client.settings.update(settings)
    return client


@dataclass(frozen=True)
class Features:
    """What the connected server supports, from its version."""

    version: tuple[int, ...]

    @property
    def low_cardinality(self) -> bool:
        # Experimental before 19.x; safe and default-enabled on every LTS since 20.3.
        return self.version >= (20, 3)

    def lc(self, inner: str = "String") -> str:
        return f"LowCardinality({inner})" if self.low_cardinality else inner


def server_features(client: Client) -> Features:
    try:
        (version,), = client.execute("SELECT version()")
    except NETWORK_ERRORS as exc:
        raise StorageError(f"cannot reach ClickHouse: {exc}") from exc
    return Features(tuple(int(p) for p in version.split(".") if p.isdigit()))


class ThreadClients:
    """One ClickHouse client per thread (a client is not safe to share), made on first use."""

    def __init__(self, url: str) -> None:
        import threading

        self._url = url
        self._local = threading.local()

    def get(self) -> Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = connect(self._url)
        return client
