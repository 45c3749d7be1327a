"""``CLICKTRAIL_SMTP_URL``: the SMTP server scheduled reports and alerts are e-mailed through.

Forms (user and password percent-encoded, both optional)::

    smtp://host[:port]                     plain SMTP, port 25 (a relay on the same host or network)
    smtp://user:pass@host:587?starttls=true  SMTP upgraded with STARTTLS before anything is sent (port 587)
    smtps://user:pass@host[:port]          implicit TLS from the first byte (port 465)

Checked when the settings load, so a typo fails at start-up with the variable's name, not at the
first report. A password is only sent over TLS: plain ``smtp://`` with credentials is refused
unless the server is on this machine.

TLS (both forms) always verifies the server's certificate and host name: against the system's CAs,
or against those of ``CLICKTRAIL_SMTP_CA_FILE`` alone (a private CA). There is no setting that
turns verification off: a server whose certificate cannot be verified gets nothing.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

from clicktrail.errors import ConfigError

NAME = "CLICKTRAIL_SMTP_URL"
CA_FILE_NAME = "CLICKTRAIL_SMTP_CA_FILE"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class SmtpServer:
    host: str
    port: int
    implicit_tls: bool  # smtps://
    starttls: bool
    username: str
    password: str


def parse(url: str) -> SmtpServer:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{NAME} is not a URL ({exc})") from None
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ConfigError(f"{NAME} must be smtp://[user:pass@]host[:port][?starttls=true] or "
                          f"smtps://[user:pass@]host[:port]; got scheme {parts.scheme!r}")
    if parts.path not in ("", "/") or parts.fragment:
        raise ConfigError(f"{NAME} takes no path or fragment")
    starttls = False
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name != "starttls" or value.lower() not in _TRUE + _FALSE:
            raise ConfigError(f"{NAME}: the only query parameter is starttls=true|false; got {name}={value}")
        starttls = value.lower() in _TRUE
    implicit = parts.scheme == "smtps"
    if implicit and starttls:
        raise ConfigError(f"{NAME}: smtps:// is TLS already; starttls=true is for smtp://")
    username, password = unquote(parts.username or ""), unquote(parts.password or "")
    if (username or password) and not (implicit or starttls) and parts.hostname not in LOCAL_HOSTS:
        raise ConfigError(f"{NAME}: a password would cross the network in clear; use smtps:// or ?starttls=true")
    default_port = 465 if implicit else 587 if starttls else 25
    return SmtpServer(parts.hostname, port or default_port, implicit, starttls, username, password)


def tls_context(ca_file: str = "") -> ssl.SSLContext:
    """The TLS settings of every SMTP connection: certificate and host name checked, against
    ``ca_file`` if given (and then only it, so a private CA does not widen what else is trusted)."""
    try:
        return ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{CA_FILE_NAME} must be a readable PEM file of CA certificates; "
                          f"{ca_file!r}: {exc}") from None
