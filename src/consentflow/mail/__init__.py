"""Consent emails: render them (Jinja2), build them (``EmailMessage``), send them (aiosmtplib).

Every name is importable as ``consentflow.mail.X``; the modules, one concept each:

- ``rendering``: ``Kind``, ``render`` (one template set per kind, translated through the
  ``email`` gettext domain into the recipient's language, English as the fallback);
- ``message``: ``compose`` builds one message with the standard library's ``email.policy.SMTP``
  (or ``SMTPUTF8`` for a non-ASCII address), ``Outgoing``, ``new_message_id``;
- ``sending``: ``Mailer`` (pooled connections) and the per-message outcome, ``sent``,
  ``deferred``, ``bounced`` or ``failed`` (see its docstring for what each means to the caller);
- ``privacy``: ``address_hash`` (suppression key) and ``redact`` (no address in stored text);
- ``alerts``: ``send_alert`` for operators.

Addresses are validated and normalised by ``consentflow.addresses`` on the way in; ``compose``
asks it for the wire form. Addresses never appear in logs, audit details or error texts.
"""

from __future__ import annotations

from consentflow.mail.alerts import send_alert
from consentflow.mail.message import Outgoing, compose, mail_domain, new_message_id
from consentflow.mail.privacy import address_hash, redact
from consentflow.mail.rendering import (
    DEFAULT_LOCALE,
    Kind,
    Rendered,
    environment,
    locale_chain,
    render,
)
from consentflow.mail.sending import (
    NEEDS_SMTPUTF8,
    Mailer,
    MailUnavailable,
    SendReport,
    SendResult,
    SendStatus,
    SmtpConfig,
    log,
)

__all__ = [
    "DEFAULT_LOCALE",
    "NEEDS_SMTPUTF8",
    "Kind",
    "MailUnavailable",
    "Mailer",
    "Outgoing",
    "Rendered",
    "SendReport",
    "SendResult",
    "SendStatus",
    "SmtpConfig",
    "address_hash",
    "compose",
    "environment",
    "locale_chain",
    "log",
    "mail_domain",
    "new_message_id",
    "redact",
    "render",
    "send_alert",
]
