"""E-mail over TLS, for real: STARTTLS and implicit TLS (smtps://) to an aiosmtpd server in the test.

The server's certificate comes from a throwaway CA made here with the ``openssl`` CLI. clicktrail
verifies it like any other: trusted only through ``CLICKTRAIL_SMTP_CA_FILE``; without it (the
system's CAs, the production default) the server gets nothing, and the run is retried with the
reason in its state. A server that cannot start TLS when the URL demands it gets nothing either,
not even the sender's address, and credentials are only ever sent encrypted.
"""

from __future__ import annotations

import ssl
import subprocess
from urllib.parse import quote

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword

from clicktrail import clickhouse, config
from clicktrail.errors import ConfigError
from clicktrail.lifecycle import StopFlag
from reporting.scheduler import Scheduler
from tests.test_schedule_mail import FROM, SmtpServer, api_for, mail_body
from tests.test_schedules import auth, listed

# aiosmtpd's warning for auth_require_tls=False, needed for smtps: there, nothing is ever in clear.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")

USER, PASSWORD = "reports", "s3cret pass:/@"


def _openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A CA and a server certificate it signed for 127.0.0.1 (EC keys: quick to make)."""
    d = tmp_path_factory.mktemp("certs")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=clicktrail test CA", cwd=d)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "server.ext").write_text(
        "subjectAltName = IP:127.0.0.1\nbasicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth\n"
        "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "server.ext", cwd=d)
    return d


def server_context(certs) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs / "server.pem", certs / "server.key")
    return context


def encrypted(server) -> bool:
    """Whether an aiosmtpd session runs over TLS now (after STARTTLS, or from the first byte)."""
    return server.transport.get_extra_info("ssl_object") is not None


class Logins:
    """An aiosmtpd authenticator taking USER/PASSWORD; keeps each login tried and whether it was encrypted."""

    def __init__(self) -> None:
        self.tried: list[tuple[str, str, bool]] = []

    def __call__(self, server, session, envelope, mechanism, auth_data):
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        self.tried.append((login, password, encrypted(server)))
        # handled=False: aiosmtpd answers a refusal itself (535)
        return AuthResult(success=(login, password) == (USER, PASSWORD), handled=False)


def tls_server(kind: str, certs, logins: Logins) -> tuple[SmtpServer, str]:
    """A server needing ``kind`` of TLS and a login, and the URL that reaches it with USER/PASSWORD."""
    credentials = f"{quote(USER, safe='')}:{quote(PASSWORD, safe='')}@"
    if kind == "starttls":
        smtp = SmtpServer(tls_context=server_context(certs), require_starttls=True, authenticator=logins,
                          auth_required=True)
        return smtp, f"smtp://{credentials}127.0.0.1:{smtp.port}?starttls=true"
    # aiosmtpd only counts STARTTLS as TLS for auth_require_tls; this socket is TLS from the first byte.
    smtp = SmtpServer(ssl_context=server_context(certs), authenticator=logins, auth_required=True,
                      auth_require_tls=False)
    return smtp, f"smtps://{credentials}127.0.0.1:{smtp.port}"


def scheduler(settings, r, ch_database, url: str, **mail) -> Scheduler:
    return Scheduler(settings.updated({"SMTP_URL": url, "SMTP_FROM": FROM, **mail}), r,
                     clickhouse.connect(settings.clickhouse.url), ch_database, StopFlag(), name="test-scheduler")


@pytest.mark.parametrize("kind", ["starttls", "smtps"])
def test_delivered_over_tls_with_a_login_when_the_ca_is_trusted(kind, certs, settings, r, ch, ch_database):
    logins = Logins()
    smtp, url = tls_server(kind, certs, logins)
    with smtp:
        api, headers = api_for(settings, url), auth(r, "adv-1")
        assert api.post("/v1/schedules", json=mail_body(), headers=headers).status_code == 201
        worker = scheduler(settings, r, ch_database, url, SMTP_CA_FILE=str(certs / "ca.pem"))
        assert worker.tick() == 1
    assert logins.tried == [(USER, PASSWORD, True)]  # the password went encrypted, once
    assert smtp.mail_over_tls == [True] and len(smtp.received) == 1
    (attachment,) = smtp.received[0][1].iter_attachments()
    assert attachment.get_content().splitlines()[0] == "stat_time_day,clicks,conversions"
    run = listed(api, headers)[0]["last_run"]
    assert run["state"] == "delivered" and run["error"] is None


@pytest.mark.parametrize("kind", ["starttls", "smtps"])
def test_an_untrusted_certificate_gets_nothing_and_the_run_is_retried(kind, certs, settings, r, ch, ch_database):
    logins = Logins()
    smtp, url = tls_server(kind, certs, logins)
    with smtp:
        api, headers = api_for(settings, url), auth(r, "adv-1")
        assert api.post("/v1/schedules", json=mail_body(), headers=headers).status_code == 201
        worker = scheduler(settings, r, ch_database, url)  # no CA file: the system's CAs, which never signed it
        assert worker.tick() == 1
    assert logins.tried == [] and smtp.mail_over_tls == [] and smtp.received == []
    run = listed(api, headers)[0]["last_run"]
    assert run["state"] == "retrying" and run["attempts"] == 1 and run["retry_at"]
    assert "SSLCertVerificationError" in run["error"] and "certificate verify failed" in run["error"]
    assert "@" not in run["error"]


def test_a_server_without_starttls_gets_nothing_when_the_url_demands_it(certs, settings, r, ch, ch_database):
    with SmtpServer() as smtp:  # plain SMTP only: no STARTTLS in its EHLO answer
        url = f"smtp://{USER}:pass@127.0.0.1:{smtp.port}?starttls=true"
        api, headers = api_for(settings, url), auth(r, "adv-1")
        assert api.post("/v1/schedules", json=mail_body(), headers=headers).status_code == 201
        worker = scheduler(settings, r, ch_database, url, SMTP_CA_FILE=str(certs / "ca.pem"))
        assert worker.tick() == 1
        assert smtp.mail_over_tls == [] and smtp.received == []  # not even the envelope went in clear
    run = listed(api, headers)[0]["last_run"]
    assert run["state"] == "retrying" and "STARTTLS" in run["error"] and "@" not in run["error"]


def test_a_wrong_password_is_refused_over_tls_and_retried(certs, settings, r, ch, ch_database):
    logins = Logins()
    smtp, url = tls_server("starttls", certs, logins)
    url = url.replace(quote(PASSWORD, safe=""), "wrong")
    with smtp:
        api, headers = api_for(settings, url), auth(r, "adv-1")
        assert api.post("/v1/schedules", json=mail_body(), headers=headers).status_code == 201
        assert scheduler(settings, r, ch_database, url, SMTP_CA_FILE=str(certs / "ca.pem")).tick() == 1
    assert logins.tried and set(logins.tried) == {(USER, "wrong", True)} and smtp.received == []
    run = listed(api, headers)[0]["last_run"]
    assert run["state"] == "retrying" and "SMTPAuthenticationError" in run["error"]


@pytest.mark.parametrize("content", [None, "not a certificate\n"])
def test_a_ca_file_that_cannot_be_read_fails_at_start_up(content, tmp_path):
    ca_file = tmp_path / "ca.pem"
    if content is not None:
        ca_file.write_text(content)
    environ = {"CLICKTRAIL_DATA_DIR": str(tmp_path), "CLICKTRAIL_SMTP_URL": "smtps://mail.example",
               "CLICKTRAIL_SMTP_CA_FILE": str(ca_file)}
    with pytest.raises(ConfigError, match="CLICKTRAIL_SMTP_CA_FILE"):
        config.load(environ=environ)


def test_the_ca_file_is_the_only_trust_and_verification_stays_on(certs):
    from clicktrail import smtp_url

    context = smtp_url.tls_context(str(certs / "ca.pem"))
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [ca["subject"] for ca in context.get_ca_certs()] == [((("commonName", "clicktrail test CA"),),)]
    assert smtp_url.tls_context().verify_mode == ssl.CERT_REQUIRED


def test_a_certificate_for_another_host_name_gets_nothing(certs, settings, r, ch, ch_database):
    logins = Logins()
    smtp, url = tls_server("smtps", certs, logins)
    url = url.replace("@127.0.0.1:", "@localhost:")  # the certificate names 127.0.0.1 only
    with smtp:
        api, headers = api_for(settings, url), auth(r, "adv-1")
        assert api.post("/v1/schedules", json=mail_body(), headers=headers).status_code == 201
        assert scheduler(settings, r, ch_database, url, SMTP_CA_FILE=str(certs / "ca.pem")).tick() == 1
    assert logins.tried == [] and smtp.received == []
    run = listed(api, headers)[0]["last_run"]
    assert run["state"] == "retrying" and "Hostname mismatch" in run["error"]
