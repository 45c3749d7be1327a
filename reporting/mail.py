"""E-mail deliveries: the recipients a schedule or rule names, and sending through the operator's SMTP server.

Recipients are the advertiser's own staff, configured by its operator, not tracked people: they are
kept as given (the scheduler must send to them) at ``email.to`` of the schedule or rule, and nowhere
else. Nothing the scheduler stores or logs about a delivery names them: SMTP errors, which often
quote an address back, are stored with every address replaced (``redacted``).
"""

from __future__ import annotations

import re
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, parseaddr

from clicktrail import smtp_url
from clicktrail.errors import BadRequest

#: Recipients of one delivery at most: a report goes to a team, not to a mailing list.
MAX_RECIPIENTS = 10
MAX_ADDRESS = 254  # RFC 5321's path limit, less the brackets
SEND_TIMEOUT_S = 30.0
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
#: A plain ASCII addr-spec: dot-atom local part, a domain with a dot and a letters-only top level.
_ADDRESS = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@(?:{_LABEL}\.)+[A-Za-z]{{2,63}}")
#: Anything that looks like an address, in text that came back from a server.
_ANY_ADDRESS = re.compile(r"[^\s<>\",;:()\[\]]+@[^\s<>\",;:()\[\]]+")


class DeliveryFailed(RuntimeError):
    """A message was not accepted; the text names no address, so it may be stored and shown."""


def recipients(email: object) -> list[str]:
    """The ``to`` list of an ``email`` delivery, checked; each refusal names ``email.to[i]``."""
    if not isinstance(email, dict) or not isinstance(email.get("to"), list) or not email["to"]:
        raise BadRequest('must be {"to": ["someone@example.com", ...]}', field="email", code="invalid_field")
    extra = sorted(set(email) - {"to"})
    if extra:
        raise BadRequest("unknown field; an e-mail delivery has only to", field=f"email.{extra[0]}",
                         code="invalid_field")
    to = email["to"]
    if len(to) > MAX_RECIPIENTS:
        raise BadRequest(f"at most {MAX_RECIPIENTS} recipients", field="email.to", code="invalid_field")
    seen: set[str] = set()
    for i, address in enumerate(to):
        if not (isinstance(address, str) and valid_address(address)):
            raise BadRequest(f"must be an e-mail address such as name@example.com (ASCII, at most {MAX_ADDRESS} "
                             "characters, no display name)", field=f"email.to[{i}]", code="invalid_field")
        if address.lower() in seen:
            raise BadRequest("is listed twice", field=f"email.to[{i}]", code="invalid_field")
        seen.add(address.lower())
    return list(to)


def valid_address(address: str) -> bool:
    # parseaddr agreeing that the whole string is the address rules out display names, comments
    # and anything a header could be smuggled through; the pattern rules out the rest.
    return (len(address) <= MAX_ADDRESS and _ADDRESS.fullmatch(address) is not None
            and parseaddr(address) == ("", address))


def redacted(text: str) -> str:
    return _ANY_ADDRESS.sub("<address>", text)


def message_id(delivery_id: str, sender: str) -> str:
    """The same Message-ID for every attempt at one delivery, so a repeat is recognisable (and dropped by many)."""
    domain = parseaddr(sender)[1].rpartition("@")[2] or "clicktrail.invalid"
    return "<" + re.sub(r"[^A-Za-z0-9._-]", ".", delivery_id) + "@" + domain + ">"


def compose(to: list[str], sender: str, *, subject: str, text: str, attachment: bytes, content_type: str,
            filename: str, delivery_id: str, headers: dict[str, str]) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = message_id(delivery_id, sender)
    msg["X-Clicktrail-Delivery"] = delivery_id
    for name, value in headers.items():
        msg[name] = value
    msg.set_content(text)
    maintype, _, subtype = content_type.split(";")[0].strip().partition("/")
    msg.add_attachment(attachment, maintype=maintype, subtype=subtype, filename=filename)
    return msg


def send(url: str, msg: EmailMessage, to: list[str], ca_file: str = "") -> int:
    """Hand ``msg`` to the SMTP server; raise ``DeliveryFailed`` unless it took it for some recipient.

    Returns how many recipients it refused: with some accepted, the message counts as delivered,
    since a retry would send those a second copy. ``ca_file``: CLICKTRAIL_SMTP_CA_FILE.
    """
    server = smtp_url.parse(url)
    try:
        return _send(server, msg, to, smtp_url.tls_context(ca_file))
    except (smtplib.SMTPException, OSError) as exc:
        raise DeliveryFailed(redacted(f"SMTP {type(exc).__name__}: {exc}")[:500]) from None


def _send(server: smtp_url.SmtpServer, msg: EmailMessage, to: list[str], tls: ssl.SSLContext) -> int:
    if server.implicit_tls:
        client: smtplib.SMTP = smtplib.SMTP_SSL(server.host, server.port, timeout=SEND_TIMEOUT_S, context=tls)
    else:
        client = smtplib.SMTP(server.host, server.port, timeout=SEND_TIMEOUT_S)
    with client:
        if server.starttls:
            client.starttls(context=tls)  # raises when the server cannot: never fall back to clear text
        if server.username:
            client.login(server.username, server.password)
        refused = client.send_message(msg, to_addrs=to)
    return len(refused)
