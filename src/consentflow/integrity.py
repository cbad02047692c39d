"""Is the record still what it was? The audit chain, and everything the ledger keeps against it.

``check`` is what ``consentflow audit verify`` and ``GET /api/v1/audit/verify`` report. It walks:

1. the chain itself (``audit.verify``: edited, deleted, inserted or reordered entries, the head
   row, an anchor). If the chain is broken nothing it says can be trusted, so that one fault is
   the answer;
2. the subjects, ``chunk`` at a time (keyset on id; memory holds one batch and its histories,
   never the whole record), and for each batch:

   - each subject's reference must derive from its external id (``subjects.reference``, with its
     generation) and must have been chained when the subject was created (``subject.created``):
     an edited external id or reference is found. An erased subject's id is a tombstone, so
     instead its erasure must be chained (``subject.erased``), and a subject not erased must
     have none;
   - each consent event must equal its audit entry (``consent.<action>``) on every chained field:
     type, purpose, actor type, actor, channel, run id, recorded at, sequence number, states,
     notice version, effective at, valid until, reason, and (format 2 entries, see ``audit``) the
     keyed hash of its evidence. An entry naming no event, or missing a field, is a finding.
     Evidence removed while its hash stays chained is accepted only where it was removed on
     purpose: the subject is erased, or the event was recorded before the latest
     ``evidence_before`` of a ``retention.swept`` entry (the retention sweep's cut-off);
   - the current state (``consent`` rows) must equal the replay of the history (``ledger.replay``,
     the fold the reads and the property tests use; ``effective_state`` says what a row counts
     as now): an edited, deleted or invented current-state row is found;
   - the subject's sequence number must be its last event's;
3. the totals: every consent and ``subject.created`` entry belongs to a subject seen, every event
   and current-state row to a subject seen;
4. the notice versions: each must match the entry chained when it was published
   (``purposes.notice_digest`` for format 2; format 1 entries chained only some fields), and each
   purpose's current version must be its latest.

Failure modes: every finding is one line (no traceback: a missing or garbled field of an entry
is a finding too); ``MAX_FINDINGS`` lines are kept, then a count of the rest. Findings depend on
the reference key (``keys.reference_key``): run verify with the key the record was made with,
or every reference and evidence hash reads as edited.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from consentflow import audit, keys, subjects
from consentflow.errors import Conflict
from consentflow.ledger import effective_state, replay
from consentflow.models import (
    AuditEntry,
    Consent,
    ConsentEvent,
    Purpose,
    PurposeVersion,
    State,
    Subject,
    utcnow,
)
from consentflow.purposes import notice_digest

#: How many finding lines a report keeps (the rest are counted).
MAX_FINDINGS = 50
_CREATED = "subject.created"
_ERASED = "subject.erased"
_SWEPT = "retention.swept"
_PUBLISHED = ("purpose.created", "purpose.revised")
#: What every consent entry's detail holds (format 1 and 2); format 2 adds ``v`` and ``evidence``.
_CONSENT_DETAIL = (
    "event_id",
    "seq",
    "from",
    "to",
    "purpose_version",
    "occurred_at",
    "valid_until",
    "reason",
)
_EVENT_COLUMNS: list[Any] = [
    *(getattr(ConsentEvent, c) for c in ConsentEvent.model_fields),
    Purpose.key,
]
_ENTRY_COLUMNS: list[Any] = [
    getattr(AuditEntry, c)
    for c in ("seq", "action", "subject_ref", "purpose_key", "detail", "recorded_at")
] + [getattr(AuditEntry, c) for c in ("actor_type", "actor", "channel", "run_id")]
_CONSENT_COLUMNS: list[Any] = [
    Consent.subject_id,
    Purpose.key,
    Consent.state,
    Consent.purpose_version,
    Consent.given_at,
    Consent.valid_until,
    Consent.last_event_id,
]


@dataclass
class _Walk:
    """What a verification has found so far, and its running totals."""

    session: Session
    now: datetime = field(default_factory=utcnow)
    lines: list[str] = field(default_factory=list)
    total: int = 0
    consent_entries: int = 0
    created_entries: int = 0
    events: int = 0
    consents: int = 0
    last_v1: int = 0
    first_v2: int | None = None
    #: Evidence of events recorded before this was pruned by the retention sweep.
    evidence_before: datetime | None = None
    _secret: bytes | None = None

    def add(self, line: str) -> None:
        self.total += 1
        if len(self.lines) < MAX_FINDINGS:
            self.lines.append(line)

    @property
    def secret(self) -> bytes:
        if self._secret is None:
            self._secret = keys.reference_key(self.session)
        return self._secret

    def report(self) -> list[str]:
        more = self.total - len(self.lines)
        return self.lines + ([f"... and {more} more finding(s)"] if more else [])


def check(
    session: Session, *, expect: tuple[int, str] | None = None, chunk: int = 2000
) -> dict[str, Any]:
    """The chain (and an anchor recorded earlier), then the record against it.

    ``findings`` lists every fault, one line each; ``history_problem`` holds the record's
    findings joined by newlines (None when it matches), for the doors that print one field.
    """
    result = audit.verify(session, expect=expect)
    if result.ok:
        findings = verify_record(session, chunk=chunk)
    else:
        findings = [f"audit trail broken at entry {result.first_bad}: {result.problem}"]
    return {
        "ok": result.ok and not findings,
        "entries": result.entries,
        "head": f"{result.head_seq}:{result.head_hash}",
        "first_bad": result.first_bad,
        "problem": result.problem,
        "history_ok": result.ok and not findings,
        "history_problem": "\n".join(findings) if result.ok and findings else None,
        "findings": findings,
    }


def require_intact(session: Session, what: str) -> None:
    """Refuse ``what`` (an erasure, a key rotation, a retention sweep) on a record that fails
    ``audit verify``: a change made on top of a broken chain would bury the evidence of the
    break. Raises ``Conflict`` with one line naming the first finding."""
    findings = check(session)["findings"]
    if findings:
        raise Conflict(
            f"refusing to {what}: audit verify fails: {findings[0]}; run `consentflow audit verify`"
        )


def verify_history(session: Session, *, chunk: int = 2000) -> tuple[bool, str | None]:
    """The record against the chain (steps 2 to 4 of the module docstring): (ok, first finding)."""
    findings = verify_record(session, chunk=chunk)
    return (not findings, findings[0] if findings else None)


def verify_record(session: Session, *, chunk: int = 2000) -> list[str]:
    """Every finding of steps 2 to 4 (the module docstring), one line each; [] if none."""
    walk = _Walk(session, evidence_before=_evidence_cutoff(session))
    last = 0
    while True:
        rows = session.exec(
            select(*_SUBJECT_COLUMNS)
            .where(col(Subject.id) > last)
            .order_by(col(Subject.id))
            .limit(chunk)
        ).all()
        if not rows:
            break
        last = rows[-1][0] or 0
        _check_subjects(walk, rows)
    _check_totals(walk)
    _check_notices(walk, chunk)
    return walk.report()


def _evidence_cutoff(session: Session) -> datetime | None:
    """The latest ``evidence_before`` the retention sweep chained (None if it never pruned)."""
    found = []
    for detail in session.exec(select(AuditEntry.detail).where(AuditEntry.action == _SWEPT)):
        value = detail.get("evidence_before") if isinstance(detail, dict) else None
        try:
            found.append(datetime.fromisoformat(str(value)).astimezone(UTC))
        except ValueError:
            continue  # none, or unreadable: prunes nothing
    return max(found, default=None)


# ------------------------------------------------------------------------ subjects and events

_SUBJECT_COLUMNS: list[Any] = [
    getattr(Subject, c)
    for c in ("id", "external_id", "subject_ref", "last_seq", "generation", "erased_at")
]


def _check_subjects(walk: _Walk, batch: Sequence[Any]) -> None:
    """Step 2 for one batch of subjects."""
    s = walk.session
    ids = [row[0] for row in batch]
    refs = {row[0]: row[2] for row in batch}
    events: dict[int, list[Any]] = defaultdict(list)
    for ev in s.exec(
        select(*_EVENT_COLUMNS)
        .join(Purpose, col(Purpose.id) == ConsentEvent.purpose_id)
        .where(col(ConsentEvent.subject_id).in_(ids))
        .order_by(col(ConsentEvent.subject_id), col(ConsentEvent.seq))
    ):
        events[ev.subject_id].append(ev)
    walk.events += sum(len(v) for v in events.values())
    # By reference alone (its index), the actions filtered here: a filter on the action in SQL
    # lets SQLite's planner prefer the action index and scan every consent entry per batch.
    entries: Sequence[Any] = [
        e
        for e in s.exec(
            select(*_ENTRY_COLUMNS).where(col(AuditEntry.subject_ref).in_(list(refs.values())))
        )
        if e.action in (_CREATED, _ERASED) or e.action.startswith("consent.")
    ]
    anchored = {e.subject_ref for e in entries if e.action == _CREATED}
    erasures = {e.subject_ref for e in entries if e.action == _ERASED}
    entries = [e for e in entries if e.action != _ERASED]
    walk.created_entries += sum(1 for e in entries if e.action == _CREATED)
    by_event = _entries_by_event(walk, [e for e in entries if e.action != _CREATED])
    consents: dict[int, dict[str, Any]] = defaultdict(dict)
    for row in s.exec(
        select(*_CONSENT_COLUMNS)
        .join(Purpose, col(Purpose.id) == Consent.purpose_id)
        .where(col(Consent.subject_id).in_(ids))
    ):
        consents[row.subject_id][row.key] = row
    walk.consents += sum(len(v) for v in consents.values())
    for sid, external_id, ref, last_seq, generation, erased_at in batch:
        erased = erased_at is not None
        if erased and ref not in erasures:
            walk.add(f"subject {ref} is marked erased but no {_ERASED} entry says so (modified)")
        elif not erased and ref in erasures:
            walk.add(f"subject {ref} was erased ({_ERASED} entry) but is not (modified)")
        elif not erased and subjects.reference(walk.secret, external_id, generation) != ref:
            walk.add(
                f"subject {ref}: its external id does not derive its reference (external id "
                "edited, or this is not the key the record was made with)"
            )
        if ref not in anchored:
            walk.add(
                f"subject {ref} has no {_CREATED} entry in the audit trail (inserted, or its "
                "reference edited)"
            )
        history = events.get(sid, [])
        for ev in history:
            _check_event(walk, ref, ev, by_event.pop(ev.id, None), erased=erased)
        _check_current(walk, ref, history, consents.get(sid, {}))
        reached = history[-1].seq if history else 0
        if last_seq != reached:
            walk.add(
                f"subject {ref}: its sequence number is {last_seq} but its last event is "
                f"number {reached} (modified)"
            )
    for event_id, (entry, _problem) in by_event.items():
        walk.add(f"event {event_id} (audit entry {entry.seq}) is missing (deleted or moved)")


def _entries_by_event(walk: _Walk, entries: Sequence[Any]) -> dict[uuid.UUID, tuple[Any, bool]]:
    """Consent entries by the event they name: (entry, whether its detail is complete)."""
    found: dict[uuid.UUID, tuple[Any, bool]] = {}
    for e in entries:
        walk.consent_entries += 1
        d = e.detail if isinstance(e.detail, dict) else {}
        missing = [k for k in _CONSENT_DETAIL if k not in d]
        if "v" in d or "evidence" in d:
            missing += [k for k in ("v", "evidence") if k not in d]
            walk.first_v2 = min(walk.first_v2 or e.seq, e.seq)
        else:
            walk.last_v1 = max(walk.last_v1, e.seq)
        try:
            event_id = uuid.UUID(str(d["event_id"]))
        except (KeyError, ValueError):
            what = "lacks field 'event_id'" if "event_id" not in d else "has a garbled event_id"
            walk.add(f"audit entry {e.seq} ({e.action}) {what}: it names no event")
            continue
        if missing:
            walk.add(f"audit entry {e.seq} ({e.action}) lacks field {missing[0]!r}")
        found[event_id] = (e, not missing)
    return found


def _check_event(
    walk: _Walk, ref: str, ev: Any, found: tuple[Any, bool] | None, *, erased: bool
) -> None:
    if found is None:
        walk.add(f"event {ev.id} of subject {ref} has no audit entry (inserted)")
        return
    entry, complete = found
    if not complete:
        return  # reported with the entry
    d = entry.detail
    pairs: dict[str, tuple[Any, Any]] = {
        "type": (f"consent.{ev.action}", entry.action),
        "purpose": (ev.key, entry.purpose_key),
        "actor_type": (ev.actor_type, entry.actor_type),
        "actor": (ev.actor, entry.actor),
        "channel": (ev.channel, entry.channel),
        "run_id": (ev.run_id, entry.run_id),
        "recorded_at": (ev.recorded_at, entry.recorded_at),
        "seq": (ev.seq, d["seq"]),
        "previous state": (ev.previous_state, d["from"]),
        "state": (ev.state, d["to"]),
        "notice version": (ev.purpose_version, d["purpose_version"]),
        "effective_at": (_iso(ev.occurred_at), _reiso(d["occurred_at"])),
        "valid_until": (_iso(ev.valid_until), _reiso(d["valid_until"])),
        "reason": (ev.reason, d["reason"]),
    }
    if "v" in d:
        evidence = None if ev.evidence is None else audit.evidence_digest(walk.secret, ev.evidence)
        pruned = walk.evidence_before is not None and ev.recorded_at < walk.evidence_before
        if evidence is not None or not (erased or pruned):  # else removed on purpose
            pairs["evidence"] = (evidence, d["evidence"])
    differ = [name for name, (ours, chained) in pairs.items() if ours != chained]
    if differ:
        walk.add(
            f"event {ev.id} of subject {ref} differs from audit entry {entry.seq} in "
            f"{', '.join(differ)} (modified)"
        )


def _check_current(walk: _Walk, ref: str, history: list[Any], rows: dict[str, Any]) -> None:
    """The current-state rows against the replay of the subject's history."""
    replayed = replay((ev.key, ev) for ev in history)
    for key in sorted(replayed.keys() | rows.keys()):
        view, row = replayed.get(key), rows.get(key)
        where = f"consent of subject {ref} for {key}"
        if row is None:
            assert view is not None
            walk.add(f"{where}: its history says {view.state} but it has no current-state row")
            continue
        if view is None:
            walk.add(f"{where} is stored as {row.state} but has no history (inserted)")
            continue
        differ = [
            name
            for name, stored, history_says in (
                ("state", row.state, view.state),
                ("notice version", row.purpose_version, view.purpose_version),
                ("given_at", row.given_at, view.given_at),
                ("valid_until", row.valid_until, view.valid_until),
                ("last event", row.last_event_id, view.event_id),
            )
            if stored != history_says
        ]
        if differ:
            stored = _counts_as(row.state, row.valid_until, walk.now)
            says = _counts_as(view.state, view.valid_until, walk.now)
            walk.add(
                f"{where} is stored as {stored} but its history says {says} "
                f"({', '.join(differ)} {'differs' if len(differ) == 1 else 'differ'}: modified)"
            )


def _counts_as(state: str, valid_until: datetime | None, now: datetime) -> str:
    """A state as written, and what access checks count it as now if that differs."""
    counted = effective_state(State(state), valid_until, now)
    return state if counted == state else f"{state} (counting as {counted})"


def _check_totals(walk: _Walk) -> None:
    """Step 3: what the batches did not reach belongs to no subject of the record."""
    s = walk.session
    consent_entries = s.exec(
        select(func.count())
        .select_from(AuditEntry)
        .where(col(AuditEntry.action).startswith("consent."))
    ).one()
    if consent_entries != walk.consent_entries:
        walk.add(
            f"{consent_entries - walk.consent_entries} consent audit entries name no subject of "
            "the record (subject deleted, or its reference edited)"
        )
    created = s.exec(
        select(func.count()).select_from(AuditEntry).where(AuditEntry.action == _CREATED)
    ).one()
    if created != walk.created_entries:
        walk.add(
            f"{created - walk.created_entries} {_CREATED} entries name no subject of the record "
            "(subject deleted, or its reference edited)"
        )
    for table, seen in ((ConsentEvent, walk.events), (Consent, walk.consents)):
        total = s.exec(select(func.count()).select_from(table)).one()
        if total != seen:
            walk.add(f"{total - seen} {table.__tablename__} row(s) belong to no subject")
    if walk.first_v2 is not None and walk.last_v1 > walk.first_v2:
        walk.add(
            f"audit entry {walk.last_v1} is a consent entry of format 1 after entry "
            f"{walk.first_v2} of format 2 (its evidence hash removed)"
        )


# -------------------------------------------------------------------------------- the notices


def _check_notices(walk: _Walk, chunk: int) -> None:
    """Step 4: each notice version against the entry chained when it was published."""
    s, last, matched = walk.session, 0, 0
    while True:
        rows = s.exec(
            select(PurposeVersion, Purpose.key)
            .join(Purpose, col(Purpose.id) == PurposeVersion.purpose_id)
            .where(col(PurposeVersion.id) > last)
            .order_by(col(PurposeVersion.id))
            .limit(chunk)
        ).all()
        if not rows:
            break
        last = rows[-1][0].id or 0
        published: dict[tuple[str | None, Any], tuple[int, dict[str, Any]]] = {}
        for seq, key, detail in s.exec(
            select(AuditEntry.seq, AuditEntry.purpose_key, AuditEntry.detail).where(
                col(AuditEntry.action).in_(_PUBLISHED),
                col(AuditEntry.purpose_key).in_({k for _, k in rows}),
            )
        ):
            d = detail if isinstance(detail, dict) else {}
            published.setdefault((key, d.get("version")), (seq, d))
        for version, key in rows:
            where = f"notice {key} version {version.version}"
            found = published.get((key, version.version))
            if found is None:
                walk.add(f"{where} has no entry in the audit trail (inserted, or its key edited)")
                continue
            matched += 1
            differ = _notice_differences(version, found[1])
            if differ:
                walk.add(f"{where} differs from audit entry {found[0]} in {differ} (modified)")
        s.expunge_all()
    chained = s.exec(
        select(func.count()).select_from(AuditEntry).where(col(AuditEntry.action).in_(_PUBLISHED))
    ).one()
    if chained != matched:
        walk.add(f"{chained - matched} published notice version(s) are missing (deleted)")
    latest = (
        select(Purpose.key, Purpose.current_version, func.max(PurposeVersion.version))
        .join(PurposeVersion, col(PurposeVersion.purpose_id) == Purpose.id)
        .group_by(col(Purpose.id), col(Purpose.key), col(Purpose.current_version))
    )
    for key, current, newest in s.exec(latest):
        if current != newest:
            walk.add(f"purpose {key} shows version {current}, its latest is {newest} (modified)")


def _notice_differences(version: PurposeVersion, d: dict[str, Any]) -> str | None:
    if "v" in d:
        if "notice" not in d:
            return "field 'notice' (missing from the entry)"
        return "its text" if d["notice"] != notice_digest(version) else None
    # Format 1: only these were chained.
    pairs = {
        "title": version.title,
        "lawful_basis": version.lawful_basis,
        "data_categories": version.data_categories,
        "validity_days": version.validity_days,
        "material": version.material,
        "locales": sorted(version.texts or {}),
    }
    differ = [name for name, value in pairs.items() if d.get(name) != value]
    return ", ".join(differ) or None


def _reiso(value: Any) -> str | None:
    """A chained instant in the one form compared (an unreadable one compares unequal)."""
    if value is None:
        return None
    try:
        return _iso(datetime.fromisoformat(str(value)))
    except ValueError:
        return f"unreadable {value!r}"


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value else None
