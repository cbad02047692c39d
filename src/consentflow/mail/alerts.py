"""Operator alerts by email (dead letters and the like): plain text with an escaped HTML copy.

Alerts name systems and ids, never people. ``send_alert`` raises ``MailUnavailable`` unless the
server accepted the message.
"""

from __future__ import annotations

import markupsafe

from consentflow.mail.message import compose, new_message_id
from consentflow.mail.rendering import DEFAULT_LOCALE, Rendered
from consentflow.mail.sending import Mailer, MailUnavailable, SendStatus, SmtpConfig


def send_alert(to: str, subject: str, text: str) -> str:
    """Email an operational alert (plain text, with an escaped HTML copy) to an operator address,
    e.g. ``CONSENTFLOW_COMPLIANCE_EMAIL``; returns its Message-ID. Raises ``MailUnavailable``
    if the server did not accept it. Alerts name systems and ids, never people."""
    html = (
        '<!DOCTYPE html><html><body><pre style="white-space:pre-wrap">'
        f"{markupsafe.escape(text)}</pre></body></html>\n"
    )
    message_id = new_message_id()
    outgoing = compose(Rendered(subject, text, html, DEFAULT_LOCALE), to=to, message_id=message_id)
    with Mailer(SmtpConfig.from_settings()) as mailer:
        report = mailer.send([outgoing])
    result = report.results[0]
    if result.status is not SendStatus.SENT:
        raise MailUnavailable(result.error or result.status.value)
    return message_id
