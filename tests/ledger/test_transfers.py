"""The transfer gate: the batch check and the export clear exactly whom the access check allows,
with its evidence; a system not registered for the purpose gets nothing; every answer is audited
with its count and the hash of the ids it cleared."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from consentflow import access, audit, db, lifecycle, purposes, subjects, systems, transfers
from consentflow.access import Reason
from consentflow.actors import Actor
from consentflow.delivery import ops
from consentflow.errors import Conflict, InvalidInput, NotFound
from consentflow.models import Action, ActorType, AuditEntry, AuditHead, Channel, utcnow

WHO = Actor(ActorType.AGENT, Channel.API, name="api:carol")
#: The subjects of the ``ledger`` fixture and what the access check answers for news/crm.
EXPECTED = {
    "g1": Reason.GIVEN,
    "withdrawn": Reason.WITHDRAWN,
    "lapsed": Reason.EXPIRED,  # validity passed, not yet swept: stored state still "given"
    "refused": Reason.REFUSED,
    "asked": Reason.REQUESTED,
    "never": Reason.NO_CONSENT,  # a subject never asked about news (only about offers)
    "g2": Reason.GIVEN,
    "g3": Reason.GIVEN,
    "nobody": Reason.UNKNOWN_SUBJECT,
}
CLEARED = ["g1", "g2", "g3"]  # in subject id order (the order they were added)


@pytest.fixture
def ledger(engine: Engine) -> Engine:
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=30)
        purposes.add(s, "offers", title="Offers", validity_days=30)
        for ext in EXPECTED:
            if ext != "nobody":
                subjects.add(s, ext, email=f"{ext}@example.com")
        systems.add(s, "crm", ["news"])
        systems.add(s, "ads", ["offers"])
        systems.add(s, "archive", ["news"], webhook_url="https://archive.example.com/h")
    with db.session_scope(engine) as s:
        for ext in ("g1", "g2", "g3", "withdrawn"):
            lifecycle.grant(s, ext, "news", Actor())
        lifecycle.revoke(s, "withdrawn", "news", Actor())
        lifecycle._single(
            s, Action.GRANT, "lapsed", "news", Actor(), now=utcnow() - timedelta(days=40)
        )
        lifecycle.request(s, "refused", "news", Actor())
        lifecycle.refuse(s, "refused", "news", Actor())
        lifecycle.request(s, "asked", "news", Actor())
        lifecycle.grant(s, "never", "offers", Actor())
        ops.set_status(s, "archive", "pause", reason="maintenance", actor="ops")
    return engine


def entries(engine: Engine, action: str) -> list[AuditEntry]:
    with Session(engine) as s:
        return list(
            s.exec(
                select(AuditEntry).where(AuditEntry.action == action).order_by(col(AuditEntry.seq))
            )
        )


def head(engine: Engine) -> int:
    with Session(engine) as s:
        return s.exec(select(AuditHead.seq)).one()


def sha(ids: list[str]) -> str:
    return hashlib.sha256("".join(f"{i}\n" for i in ids).encode()).hexdigest()


@pytest.mark.parametrize("system", ["crm", "archive"])  # archive: a paused system
def test_batch_answers_each_subject_as_the_access_check_does(ledger: Engine, system: str) -> None:
    asked = [*EXPECTED, "g1"]  # a repeated id is answered again
    result = transfers.check_batch("news", system, asked, WHO, engine=ledger)

    assert [d.subject for d in result.decisions] == asked
    assert {d.subject: d.reason for d in result.decisions} == EXPECTED
    with Session(ledger) as s:
        for d in result.decisions:
            one = access.check(s, d.subject, "news", system, at=result.checked_at)
            assert d == one
    assert (result.checked, result.allowed) == (len(asked), 4)
    assert result.sha256 == sha(["g1", "g2", "g3", "g1"])
    (entry,) = entries(ledger, transfers.CHECKED)
    assert entry.seq == result.audit_seq
    assert (entry.purpose_key, entry.actor, entry.actor_type, entry.channel) == (
        "news",
        "api:carol",
        "agent",
        "api",
    )
    assert entry.detail["system"] == system
    assert (entry.detail["checked"], entry.detail["count"]) == (len(asked), 4)
    assert entry.detail["sha256"] == result.sha256
    assert "@" not in str(entry.detail)
    with Session(ledger) as s:
        assert audit.verify(s).ok


def test_export_streams_the_cleared_in_pages_and_audits_the_whole(ledger: Engine) -> None:
    export = transfers.open_export("news", "crm", WHO, engine=ledger)
    export.page_size = 2  # pages of 2 subjects over the 8 subjects
    pages = list(export.pages())

    rows = [r for page in pages for r in page]
    assert [r.subject for r in rows] == CLEARED
    with Session(ledger) as s:
        for r in rows:
            d = access.check(s, r.subject, "news", "crm")
            assert (r.event_id, r.purpose_version, r.valid_until) == (
                d.event_id,
                d.purpose_version,
                d.valid_until,
            )
    assert export.pages_read == 5  # 4 full pages, and an empty one that says there is no more
    assert export.complete and export.count == 3
    assert entries(ledger, transfers.EXPORTED) == []  # written when the export ends

    seq = export.finish()
    assert export.finish() == seq  # once
    (entry,) = entries(ledger, transfers.EXPORTED)
    assert (entry.seq, entry.purpose_key, entry.actor) == (seq, "news", "api:carol")
    assert entry.detail["count"] == 3
    assert entry.detail["sha256"] == sha(CLEARED) == export.sha256
    assert entry.detail["complete"] is True
    assert entry.detail["system"] == "crm"
    assert "@" not in str(entry.detail)


def test_an_export_cut_short_records_what_was_handed_out(ledger: Engine) -> None:
    export = transfers.open_export("news", "crm", WHO, engine=ledger)
    export.page_size = 1
    pages = export.pages()
    assert [r.subject for r in next(pages)] == ["g1"]
    assert [r.subject for r in next(pages)] == ["g2"]  # g1 is counted once g2 is asked for
    pages.close()  # the reader went away while holding g2
    export.finish()
    (entry,) = entries(ledger, transfers.EXPORTED)
    assert (entry.detail["count"], entry.detail["complete"]) == (1, False)
    assert entry.detail["sha256"] == sha(["g1"])


def test_a_system_not_registered_for_the_purpose_gets_nothing(ledger: Engine) -> None:
    before = head(ledger)
    for attempt in (
        lambda: transfers.check_batch("news", "ads", ["g1"], WHO, engine=ledger),
        lambda: transfers.open_export("news", "ads", WHO, engine=ledger),
    ):
        with pytest.raises(Conflict) as refused:
            attempt()
        message = str(refused.value)
        assert "\n" not in message
        assert "'ads' is not registered for purpose 'news'" in message
        assert "system_not_authorised" in message
    with pytest.raises(NotFound, match="unknown system 'nope'"):
        transfers.check_batch("news", "nope", ["g1"], WHO, engine=ledger)
    with pytest.raises(NotFound, match="unknown purpose 'nope'"):
        transfers.open_export("nope", "crm", WHO, engine=ledger)
    assert head(ledger) == before  # nothing written


def test_a_batch_holds_one_to_ten_thousand_ids(ledger: Engine) -> None:
    before = head(ledger)
    for asked, got in (([], "0"), (["g1"] * (transfers.MAX_BATCH + 1), "10,001")):
        with pytest.raises(InvalidInput) as refused:
            transfers.check_batch("news", "crm", asked, WHO, engine=ledger)
        assert str(refused.value) == (
            f"subjects: give 1 to 10,000 subject ids in one batch (got {got})"
        )
    assert head(ledger) == before
    full = transfers.check_batch("news", "crm", ["g2"] * transfers.MAX_BATCH, WHO, engine=ledger)
    assert full.allowed == transfers.MAX_BATCH
    with Session(ledger) as s:
        (entry,) = s.exec(
            select(AuditEntry)
            .where(col(AuditEntry.action) == transfers.CHECKED)
            .order_by(col(AuditEntry.seq))
        ).all()
    assert entry.detail["count"] == transfers.MAX_BATCH


def test_each_page_is_judged_when_it_is_read(ledger: Engine) -> None:
    export = transfers.open_export("news", "crm", WHO, engine=ledger)
    export.page_size = 1
    pages = export.pages()
    assert [r.subject for r in next(pages)] == ["g1"]
    with db.session_scope(ledger) as s:  # withdrawn while the export is under way
        lifecycle.revoke(s, "g3", "news", Actor())
        subjects.add(s, "late")  # after the export started, after the last id read: in it
        lifecycle.grant(s, "late", "news", Actor())
    assert [r.subject for page in pages for r in page] == ["g2", "late"]
    assert export.complete and export.count == 3
