"""Where the flows' alerts go: every Apprise URL of ``CONSENTFLOW_ALERT_URLS`` and the email
address ``CONSENTFLOW_COMPLIANCE_EMAIL``. One place, used by ``operator-alerts`` and
``compliance-digest``.

``deliver(title, body)`` sends one message to every configured channel, each on its own (one
Prefect task run per channel), so a broken channel does not hide the others; it returns the
outcome per channel, named ``apprise:<scheme>#<n>`` (the n-th URL) or ``email``.

Invariants: an Apprise URL (which may carry a token) is never logged or recorded, only its
scheme; the email address is never recorded either. Failure modes: a channel that refuses is
retried twice (the tasks' ``retries``), then counted ``failed`` and logged with its name; what to
do when every channel failed is the caller's decision. ``only`` limits a send to some channels
(a re-run that completes what an earlier run could not deliver).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

import apprise
from prefect import Task, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from consentflow import mail
from consentflow.settings import get_settings

#: The channel name of the compliance email.
EMAIL = "email"


def alert_urls() -> list[str]:
    """The Apprise URLs of ``CONSENTFLOW_ALERT_URLS`` (comma- or space-separated)."""
    return [u for u in re.split(r"[,\s]+", get_settings().alert_urls) if u]


def scheme(url: str) -> str:
    """What may be said about an Apprise URL: its scheme (``slack``, ``json``), never the rest."""
    return url.split("://", 1)[0].lower() if "://" in url else "unknown"


def configured() -> list[str]:
    """The names of the channels configured now, in the order ``deliver`` uses them."""
    names = [f"apprise:{scheme(url)}#{n}" for n, url in enumerate(alert_urls(), start=1)]
    return names + ([EMAIL] if get_settings().compliance_email else [])


@task(name="send-apprise", retries=2, retry_delay_seconds=[5, 30], cache_policy=NO_CACHE)
def send_apprise(url: str, title: str, body: str) -> None:
    """Send the alert to one Apprise URL; raises (so the task retries) if it was refused."""
    notifier = apprise.Apprise()
    if not notifier.add(url):
        raise ValueError(f"not an Apprise URL we can use (scheme {scheme(url)!r})")
    if not notifier.notify(title=title, body=body):
        raise RuntimeError(f"the {scheme(url)} channel refused the alert")


@task(name="send-alert-email", retries=2, retry_delay_seconds=[5, 30], cache_policy=NO_CACHE)
def send_email(to: str, title: str, body: str) -> str:
    """Email the alert (``consentflow.mail.send_alert``); its Message-ID."""
    return mail.send_alert(to, title, body)


def deliver(
    title: str,
    body: str,
    *,
    apprise_task: Task[..., Any] = send_apprise,
    email_task: Task[..., Any] = send_email,
    only: Collection[str] | None = None,
) -> dict[str, str]:
    """Send to every channel configured (or only those named in ``only``); the outcome per
    channel (``sent`` / ``failed``). ``apprise_task`` / ``email_task``: the tasks to send with
    (a flow may pass copies with other retry delays)."""
    log = get_run_logger()
    outcomes: dict[str, str] = {}
    for n, url in enumerate(alert_urls(), start=1):
        name = f"apprise:{scheme(url)}#{n}"
        if only is not None and name not in only:
            continue
        try:
            apprise_task(url, title, body)
            outcomes[name] = "sent"
        except Exception as exc:
            log.error("alert not sent through %s: %s", name, exc)
            outcomes[name] = "failed"
    to = get_settings().compliance_email
    if to and (only is None or EMAIL in only):
        try:
            email_task(to, title, body)
            outcomes[EMAIL] = "sent"
        except Exception as exc:
            log.error("alert email not sent: %s", type(exc).__name__)
            outcomes[EMAIL] = "failed"
    return outcomes


def outcome(channels: dict[str, str]) -> str:
    """One word for a send: ``unconfigured`` (no channel), ``sent`` (at least one took it),
    ``failed``."""
    if not channels:
        return "unconfigured"
    return "sent" if "sent" in channels.values() else "failed"
