"""Telling compliance that deliveries were dead-lettered.

Every dead letter already has its own audit entry (``delivery.dead_lettered``, written in the
same transaction as the state change), so the alert is a notification, not the record. It goes by
email to ``CONSENTFLOW_COMPLIANCE_EMAIL`` (``consentflow.mail.send_alert``), one per run; when no
address is configured or sending fails, it is logged as an error, through the run's logger inside
a Prefect run (``runlog``) so that it shows in the flow run's logs. The alert names systems,
webhook ids and delivery ids only: never a person.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from consentflow.delivery import runlog
from consentflow.settings import get_settings


def render(dead: Sequence[dict[str, Any]], run_id: str | None) -> tuple[str, str]:
    systems = sorted({d["system"] for d in dead})
    subject = f"consentflow: {len(dead)} webhook deliveries dead-lettered ({', '.join(systems)})"
    lines = [
        "These withdrawal notifications could not be delivered after the whole retry schedule.",
        "The systems below have not been told; act before they process data without consent.",
        "",
        *(f"- {d['system']}: delivery {d['id']} ({d['webhook_id']}): {d['error']}" for d in dead),
        "",
        "Fix the endpoint, then: consentflow deliveries redeliver --since <when it broke> "
        "--system <name>",
        "Receivers can also reconcile from: consentflow deliveries feed <system>",
    ]
    if run_id:
        lines.append(f"Flow run: {run_id}")
    return subject, "\n".join(lines) + "\n"


def dead_lettered(
    dead: Sequence[dict[str, Any]],
    *,
    run_id: str | None = None,
    logger: runlog.Logger | None = None,
) -> bool:
    """Send (or log) the alert; True if an email was handed to the mail module."""
    if not dead:
        return False
    log = logger or runlog.logger()
    subject, text = render(dead, run_id)
    to = get_settings().compliance_email
    if to:
        from consentflow import mail

        try:
            mail.send_alert(to, subject, text)
            return True
        except Exception as exc:  # the audit entries stand; the alert must not break the run
            log.error("could not email the dead-letter alert: %s", type(exc).__name__)
    else:
        log.error("CONSENTFLOW_COMPLIANCE_EMAIL is not set: dead-letter alert only logged")
    log.error("%s\n%s", subject, text)
    return False
