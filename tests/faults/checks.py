"""What must hold after the scenario, whatever struck: each check returns its failures (empty:
holds), so the test reports every broken promise at once, and the tally counts lost items."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from tests.faults.malformed import cli

if TYPE_CHECKING:
    from tests.faults.scenario import Scenario

#: Consent events that tell subscribed systems to stop using the data.
WITHDRAWING = ("revoke", "expire", "invalidate")


def _rows(sc: Scenario, sql: str) -> list[Any]:
    with sc.engine.connect() as conn:
        return list(conn.execute(text(sql)).all())


def withdrawals_reached(sc: Scenario) -> tuple[list[str], int]:
    """Every withdrawing event has one delivery per system subscribed to its purpose, and each
    delivery was acknowledged by its receiver, is held (system disabled), or is dead-lettered
    with its reason. Returns the failures and the number of items lost."""
    failures: list[str] = []
    missing = _rows(
        sc,
        "SELECT e.id, s.name FROM consent_event e "
        "JOIN system_purpose sp ON sp.purpose_id = e.purpose_id "
        "JOIN system s ON s.id = sp.system_id "
        f"WHERE e.state IN ('withdrawn', 'expired', 'invalidated') AND e.action IN {WITHDRAWING} "
        "AND NOT EXISTS (SELECT 1 FROM delivery d WHERE d.event_id = e.id "
        "AND d.system_id = s.id)",
    )
    lost = len(missing)
    if missing:
        failures.append(f"{len(missing)} withdrawals never queued for a subscribed system")
    receivers = {"crm": sc.crm, "ads": sc.ads, "legacy": sc.legacy}
    acked = {name: r.acked_ids() for name, r in receivers.items()}
    for webhook_id, system, state, active, last_error in _rows(
        sc,
        "SELECT d.webhook_id, s.name, d.state, s.status = 'active', "
        "coalesce(d.last_error, s.status_reason) FROM delivery d "
        "JOIN system s ON s.id = d.system_id",
    ):
        if state == "delivered" and webhook_id not in acked[system]:
            failures.append(f"{system}: {webhook_id} recorded delivered, never acknowledged")
            lost += 1
        elif state == "pending" and active:
            failures.append(f"{system}: {webhook_id} still pending on an active system")
            lost += 1
        elif state in ("dead", "pending") and not last_error:
            failures.append(f"{system}: {webhook_id} {state} without a visible reason")
    return failures, lost


def no_consent_changed_twice(sc: Scenario) -> list[str]:
    """No consent took the same transition twice in a row (a re-run redoing committed work),
    and no sweep expired or invalidated a consent twice."""
    failures = []
    events = _rows(
        sc,
        "SELECT subject_id, purpose_id, action, state, previous_state FROM consent_event "
        "ORDER BY subject_id, purpose_id, seq",
    )
    last: dict[tuple[int, int], tuple[str, str]] = {}
    swept: Counter[tuple[int, int, str]] = Counter()
    for subject, purpose, action, state, previous in events:
        key = (subject, purpose)
        if action in ("expire", "invalidate"):
            swept[(subject, purpose, action)] += 1
        if last.get(key) == (action, state) and previous == state:
            failures.append(f"consent {key}: {action} -> {state} recorded twice")
        last[key] = (action, state)
    failures += [f"consent {k[:2]}: {k[2]} {n} times" for k, n in swept.items() if n > 1]
    return failures


def no_email_twice(sc: Scenario) -> list[str]:
    """Each message the SMTP server accepted is one (subject, purpose, kind, stage) once."""
    by_message_id = {
        mid: (subject, purpose, kind, stage)
        for mid, subject, purpose, kind, stage in _rows(
            sc, "SELECT message_id, subject_id, purpose_id, kind, stage FROM email_message"
        )
    }
    seen: Counter[Any] = Counter()
    failures = []
    for received in sc.smtp.received:
        mid = str(received.message.get("Message-ID", "")).strip()
        key = by_message_id.get(mid)
        if key is None:
            failures.append(f"an email the ledger has no record of: {mid!r}")
            continue
        seen[key] += 1
    failures += [f"email {k} sent {n} times" for k, n in seen.items() if n > 1]
    return failures


def duplicates_bounded(sc: Scenario) -> list[str]:
    """Webhooks acknowledged more than once: at most the requests in flight at the kills."""
    extra = sum(n - 1 for r in (sc.crm, sc.ads, sc.legacy) for n in r.acked_ids().values())
    if extra > sc.tally.in_flight_bound:
        return [f"{extra} acknowledged webhooks sent again (bound {sc.tally.in_flight_bound})"]
    return []


def audit_accounts(sc: Scenario) -> list[str]:
    """``consentflow audit verify`` passes, and every consent event has its audit entry."""
    failures = []
    code, output = cli("audit", "verify")
    if code != 0:
        failures.append(f"audit verify: exit {code}: {output.strip()[-500:]}")
    events = _rows(sc, "SELECT count(*) FROM consent_event")[0][0]
    entries = _rows(sc, "SELECT count(*) FROM audit_entry WHERE action LIKE 'consent.%'")[0][0]
    if entries < events:
        failures.append(f"{events} consent events but {entries} consent audit entries")
    return failures


TOKEN_IN_LINK = re.compile(r"/l/([A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+)")


def leaks(sc: Scenario, texts: dict[str, str]) -> list[str]:
    """No email address, secret or link token in any log, audit entry or artifact."""
    tokens = set(sc.link_tokens)
    for received in sc.smtp.received:
        for part in received.message.walk():
            if part.get_content_maintype() == "text":
                tokens.update(TOKEN_IN_LINK.findall(str(part.get_content())))
    texts = dict(texts)
    texts["audit trail"] = "\n".join(
        json.dumps([str(c) for c in row]) for row in _rows(sc, "SELECT * FROM audit_entry")
    )
    needles = {"email": sc.emails, "secret": sc.secrets, "link token": sorted(tokens)}
    failures = []
    for where, blob in texts.items():
        for kind, values in needles.items():
            hits = [v for v in values if v and v in blob]
            if hits:
                failures.append(f"{kind} in {where} ({len(hits)} found)")
    return failures
