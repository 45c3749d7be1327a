"""Where a scheduled report or an alert goes, and how it gets there.

A *delivery* is the part of a schedule or a rule that names its receiver, exactly one of:
``{"webhook": {"url": ...}}``, an HTTPS POST signed with HMAC-SHA256 of the body under the owner's
secret (``X-Clicktrail-Signature``); or ``{"email": {"to": [...]}}``, a short text with the body
attached, through the operator's SMTP server (``CLICKTRAIL_SMTP_URL``, reporting/mail.py).
Schedules (reporting/schedules.py) and alert rules share this module so that both parse, store
and send the same way. Both take the mail settings (``settings.mail``): without them, or with no
SMTP server configured, an e-mail delivery is refused (parse) or fails (send).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from clicktrail.config import MailSettings
from clicktrail.errors import BadRequest
from reporting import mail

log = logging.getLogger("clicktrail.delivery")

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_URL = 2000
POST_TIMEOUT_S = 30.0
#: The body fields a delivery may come in; exactly one of them.
CHANNELS = ("webhook", "email")


@dataclass(frozen=True)
class Message:
    """One thing to deliver: the body as sent, and what tells the receiver what it is."""

    body: bytes
    content_type: str
    subject: str
    #: ``X-Clicktrail-Delivery``: the same for a repeat of the same delivery, for receivers to drop it.
    delivery_id: str
    secret: str
    headers: dict[str, str] = field(default_factory=dict)
    #: For e-mail: the message's text (the body goes as an attachment of this name).
    text: str = ""
    filename: str = "report"


def parse(body: dict, allow_http: bool, mail_settings: MailSettings | None = None) -> dict:
    """The delivery of a create body, as stored: ``{"webhook": {"url": ...}}`` or ``{"email": {"to": [...]}}``.

    Each refusal names its field. E-mail needs ``mail_settings`` with an SMTP server.
    """
    if "email" in body and "webhook" in body:
        raise BadRequest("give one delivery, webhook or email, not both", field="email", code="invalid_field")
    if "email" in body:
        if mail_settings is None or not mail_settings.smtp_url:
            raise BadRequest("e-mail delivery needs an SMTP server, and the operator has not configured one "
                             "(CLICKTRAIL_SMTP_URL); use a webhook", field="email", code="unsupported")
        return {"email": {"to": mail.recipients(body["email"])}}
    return {"webhook": {"url": _webhook_url(body.get("webhook"), allow_http)}}


def _webhook_url(hook: object, allow_http: bool) -> str:
    if not isinstance(hook, dict) or not isinstance(hook.get("url"), str):
        raise BadRequest('is required: {"url": "https://..."}', field="webhook", code="missing_field")
    url = hook["url"]
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - a bad port raises here
    except ValueError:
        raise BadRequest("is not a URL", field="webhook.url", code="invalid_field") from None
    # Plain http only to this machine, and only where the operator allowed it (tests, local receivers).
    local_http = allow_http and parts.scheme == "http" and host in LOCAL_HOSTS
    if len(url) > MAX_URL or not host or not (parts.scheme == "https" or local_http) or parts.username:
        raise BadRequest(f"must be an https:// URL of at most {MAX_URL} characters, without credentials",
                         field="webhook.url", code="invalid_field")
    return url


def public(owner: dict) -> dict:
    """The delivery fields of a stored schedule or rule, as the API shows them."""
    return {name: owner[name] for name in CHANNELS if owner.get(name)}


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A delivery goes only where its owner says: a redirect counts as a failed delivery.
    def redirect_request(self, *args, **kwargs):
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def send(owner: dict, message: Message, mail_settings: MailSettings | None = None) -> None:
    """Deliver ``message`` through the channel ``owner`` (a stored schedule or rule) names; raise on failure.

    A raised error's text names no e-mail address (it is stored as the run's ``error``).
    """
    if owner.get("webhook"):
        _post(owner["webhook"]["url"], message)
    elif owner.get("email"):
        _mail(owner["email"]["to"], message, mail_settings)
    else:
        raise RuntimeError(f"no delivery channel among {', '.join(CHANNELS)}")


def _mail(to: list[str], message: Message, mail_settings: MailSettings | None) -> None:
    if mail_settings is None or not mail_settings.smtp_url:
        raise mail.DeliveryFailed("no SMTP server is configured (CLICKTRAIL_SMTP_URL)")
    msg = mail.compose(to, mail_settings.smtp_from, subject=message.subject, text=message.text or message.subject,
                       attachment=message.body, content_type=message.content_type, filename=message.filename,
                       delivery_id=message.delivery_id,
                       headers={"X-Clicktrail-Signature": signature(message.secret, message.body),
                                **message.headers})
    refused = mail.send(mail_settings.smtp_url, msg, to, mail_settings.smtp_ca_file)
    if refused:
        log.warning("delivery %s: the SMTP server refused %d of %d recipients", message.delivery_id, refused,
                    len(to))


def _post(url: str, message: Message) -> None:
    request = urllib.request.Request(url, data=message.body, method="POST", headers={
        "Content-Type": message.content_type, "User-Agent": "clicktrail-scheduler",
        "X-Clicktrail-Signature": signature(message.secret, message.body),
        "X-Clicktrail-Delivery": message.delivery_id, **message.headers})
    with _opener.open(request, timeout=POST_TIMEOUT_S) as answer:
        if not 200 <= answer.status < 300:
            raise RuntimeError(f"the webhook answered {answer.status}")
