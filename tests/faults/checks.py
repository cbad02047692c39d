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
    """Each message the SMTP server accepted is one (subject, purpose, kind, stage) once, except
    what a killed or cut-off reminder run had in flight: a message the server accepted whose
    outcome the run could not record (its claim expired: "outcome unknown") is sent again by a
    later run, at least once and never lost. Those repeats are bounded by one per SMTP connection
    per such fault (``Tally.emails_in_flight_bound``); any other repeat is a failure."""
    rows = _rows(
        sc,
        "SELECT message_id, subject_id, purpose_id, kind, stage, status, run_id, error "
        "FROM email_message ORDER BY id",
    )
    by_message_id = {r[0]: tuple(r[1:5]) for r in rows}
    seen: Counter[Any] = Counter()
    failures = []
    for received in sc.smtp.received:
        mid = str(received.message.get("Message-ID", "")).strip()
        key = by_message_id.get(mid)
        if key is None:
            failures.append(f"an email the ledger has no record of: {mid!r}")
            continue
        seen[key] += 1
    again, repeats = [], 0
    for key, n in seen.items():
        if n == 1:
            continue
        messages = [r for r in rows if tuple(r[1:5]) == key]
        log = "; ".join(f"{r[5]} run {r[6]} ({r[7]})" for r in messages)
        unknown = sum(1 for r in messages if r[5] == "deferred" and "unknown" in (r[7] or ""))
        if n - 1 > unknown:  # a repeat that no lost outcome explains
            failures.append(f"email {key} sent {n} times; its messages: {log}")
        else:
            repeats += n - 1
            again.append(f"email {key} sent {n} times after an unrecorded outcome: {log}")
    sc.tally.emails_again = repeats
    sc.tally.notes += again
    if repeats > sc.tally.emails_in_flight_bound:
        failures.append(
            f"{repeats} accepted emails sent again "
            f"(bound {sc.tally.emails_in_flight_bound}): " + "; ".join(again)
        )
    return failures


def duplicates_bounded(sc: Scenario) -> list[str]:
    """Webhooks acknowledged more than once: at most the batches in flight at the kills."""
    receivers = {"crm": sc.crm, "ads": sc.ads, "legacy": sc.legacy}
    again = {
        (name, webhook_id): n - 1
        for name, r in receivers.items()
        for webhook_id, n in r.acked_ids().items()
        if n > 1
    }
    sc.tally.webhooks_again = sum(again.values())
    detail = []
    for (name, webhook_id), n in sorted(again.items()):
        attempts = _rows(
            sc,
            "SELECT a.attempt, a.status_code, a.error_class, d.state FROM delivery_attempt a "
            "JOIN delivery d ON d.id = a.delivery_id "
            f"WHERE d.webhook_id = '{webhook_id}' ORDER BY a.id",
        )
        detail.append(f"{name} {webhook_id} +{n}: attempts recorded {attempts}")
    sc.tally.notes += detail
    if sum(again.values()) <= sc.tally.in_flight_bound:
        return []
    return [
        f"{sum(again.values())} acknowledged webhooks sent again "
        f"(bound {sc.tally.in_flight_bound}): " + "; ".join(detail)
    ]


def audit_accounts(sc: Scenario) -> list[str]:
    """``consentflow audit verify`` passes, and every consent event has its audit entry."""
    failures = []
    code, output = cli("audit", "verify")
    if code != 0:
        failures.append(f"audit verify: exit {code}: {output.strip()[-500:]}")
    events = {str(r[0]) for r in _rows(sc, "SELECT id FROM consent_event")}
    entries = Counter(
        str(r[0])
        for r in _rows(
            sc,
            "SELECT detail->>'event_id' FROM audit_entry "
            "WHERE action LIKE 'consent.%' AND detail->>'event_id' IS NOT NULL",
        )
    )
    unaccounted = events - set(entries)
    if unaccounted:
        failures.append(f"{len(unaccounted)} consent events with no audit entry")
    twice = [e for e, n in entries.items() if n > 1]
    if twice:
        failures.append(f"{len(twice)} consent events audited more than once")
    if set(entries) - events:
        failures.append(f"{len(set(entries) - events)} audit entries for events that do not exist")
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


def prefect_texts() -> dict[str, str]:
    """Every log line and artifact the Prefect server holds."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        logs, offset = [], 0
        while batch := client.read_logs(limit=200, offset=offset):
            logs += [f"{log.name} {log.message}" for log in batch]
            offset += len(batch)
        artifacts = [f"{a.key} {a.data} {a.description}" for a in client.read_artifacts()]
    return {"Prefect logs": "\n".join(logs), "Prefect artifacts": "\n".join(artifacts)}


def run_all(sc: Scenario, web_output: str) -> tuple[list[str], int]:
    """Every check; the failures and the number of items lost."""
    failures, lost = withdrawals_reached(sc)
    failures += no_consent_changed_twice(sc)
    failures += no_email_twice(sc)
    failures += duplicates_bounded(sc)
    failures += audit_accounts(sc)
    texts = {}
    for proc in sc.runs:
        done = proc.wait(60)
        texts[f"flow process {proc.out_path.name}"] = done.out + done.err
    texts |= prefect_texts()
    texts["web server output"] = web_output
    failures += leaks(sc, texts)
    return failures, lost
