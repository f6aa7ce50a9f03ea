"""Email alerts: one message per alert, over SMTP with STARTTLS (or implicit TLS), standard library only.

The server's certificate is checked against the system's trust store (``ssl.create_default_context``;
``SSL_CERT_FILE`` names another bundle) and its name; a password is sent only inside TLS (the policy
refuses ``security = "none"`` with a username). The server's answer maps onto the outbox's rules:
a 2yz accepts, a 5yz reply is final (the address or the message is wrong: retrying will not
change it), a 4yz reply, a timeout or a refused connection is tried again.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate

from agent.alerts.transport import Answer
from agent.policy.model import AlertChannel

TIMEOUT_S = 10.0


def message(
    channel: AlertChannel, recipients: tuple[str, ...], subject: str, text: str, message_id: str
) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = str(channel.sender)
    mail["To"] = ", ".join(recipients)
    mail["Subject"] = subject
    mail["Date"] = formatdate(localtime=False, usegmt=True)
    # The same alert tried again has the same Message-ID: mail systems drop the repeat.
    mail["Message-ID"] = message_id
    mail["Auto-Submitted"] = "auto-generated"  # RFC 3834: no out-of-office replies to it
    mail.set_content(text)
    return mail


def send(channel: AlertChannel, mail: EmailMessage, password: str | None, *, timeout_s: float = TIMEOUT_S) -> Answer:
    """Send ``mail`` through the channel's server; how it went as the outbox's ``Answer``."""
    host, port = str(channel.smtp_host), channel.port
    context = ssl.create_default_context()
    try:
        smtp: smtplib.SMTP
        if channel.security == "tls":
            smtp = smtplib.SMTP_SSL(host, port, timeout=timeout_s, context=context)
        else:
            smtp = smtplib.SMTP(host, port, timeout=timeout_s)
        with smtp:
            smtp.ehlo()
            if channel.security == "starttls":
                if not smtp.has_extn("starttls"):
                    return Answer.refused(f"the SMTP server {host}:{port} does not offer STARTTLS")
                smtp.starttls(context=context)
                smtp.ehlo()
            if channel.username is not None and password is not None:
                smtp.login(channel.username, password)
            refused = smtp.send_message(mail)
    except smtplib.SMTPRecipientsRefused as e:
        return _from_reply("every recipient was refused", *_first_reply(e.recipients))
    except smtplib.SMTPResponseException as e:  # a reply code: 4yz try again, 5yz final
        return _from_reply(type(e).__name__, e.smtp_code, e.smtp_error)
    except ssl.SSLCertVerificationError as e:  # the server is not who it says: retrying will not fix it
        return Answer.refused(f"the SMTP server's certificate was refused: {e.verify_message}")
    except (smtplib.SMTPException, OSError) as e:  # dropped, refused, timed out, unresolvable
        return Answer.retry(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
    if refused:  # some recipients took it: delivered, and the rest said
        names = ", ".join(f"{address} ({code})" for address, (code, _) in sorted(refused.items()))
        return Answer.delivered(f"refused by the server for {names}")
    return Answer.delivered()


def _first_reply(recipients: dict[str, tuple[int, bytes]]) -> tuple[int, bytes]:
    """The reply that decides: a temporary one when any was temporary (a retry may deliver)."""
    replies = sorted(recipients.values(), key=lambda reply: reply[0])
    return replies[0] if replies else (550, b"")


def _from_reply(what: str, code: int, text: bytes | str) -> Answer:
    said = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    error = f"SMTP {code} {said.strip()[:200]} ({what})"
    return Answer.refused(error) if 500 <= code < 600 else Answer.retry(error)
