"""What a person's answer means (``consentflow.answers``), on both databases: refusing, saying
no to a request, withdrawing everything, and what the pages are given to show (rows, history)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import Session, select, update

from consentflow import answers, db, lifecycle, purposes, subjects, systems
from consentflow.errors import NotFound, TransitionNotAllowed
from consentflow.lifecycle import Actor
from consentflow.models import (
    Channel,
    Consent,
    ConsentEvent,
    ConsentRequest,
    RequestStatus,
    Subject,
    utcnow,
)

WEB, LINK = Channel.WEB, Channel.EMAIL_LINK


@pytest.fixture
def ledger(engine):
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="Newsletter", validity_days=365, data_categories=["email"])
        purposes.add(s, "ads", title="Ads", validity_days=30, description="Tailored ads")
        subjects.add(s, "ann")
        subjects.add(s, "ben")
        systems.add(s, "crm", ["news"])
        systems.add(s, "adtech", ["ads", "news"])
    return engine


def _subject(s: Session, ext: str = "ann") -> Subject:
    return s.exec(select(Subject).where(Subject.external_id == ext)).one()


def _events(s: Session, ext: str = "ann", action: str | None = None) -> list[ConsentEvent]:
    stmt = select(ConsentEvent).where(ConsentEvent.subject_id == _subject(s, ext).id)
    if action:
        stmt = stmt.where(ConsentEvent.action == action)
    return list(s.exec(stmt).all())


def _state(s: Session, key: str, ext: str = "ann") -> str | None:
    views = {v.purpose: v.state.value for v in lifecycle.current(s, ext)}
    return views.get(key)


@pytest.mark.parametrize("start", [None, "requested", "expired", "invalidated", "lapsed"])
def test_refuse_records_one_refusal_from_every_state_not_in_force(ledger, start):
    with db.session_scope(ledger) as s:
        if start == "requested":
            lifecycle.request(s, "ann", "news", Actor())
        elif start in ("expired", "lapsed", "invalidated"):
            lifecycle.grant(s, "ann", "news", Actor())
    with db.session_scope(ledger) as s:
        if start in ("expired", "lapsed"):
            s.execute(update(Consent).values(valid_until=utcnow() - timedelta(days=1)))
        if start == "expired":
            lifecycle.expire(s, "ann", "news")
        if start == "invalidated":
            purposes.revise(s, "news", material=True, title="Weekly")
            lifecycle.invalidate(s, "ann", "news", Actor())
    with db.session_scope(ledger) as s:
        assert answers.act(s, "refuse", _subject(s), "news", WEB)[0] == "done"
    with db.session_scope(ledger) as s:
        # Twice: already recorded, nothing written, no error.
        assert answers.act(s, "refuse", _subject(s), "news", WEB) == ("unchanged", None)
        (refusal,) = _events(s, action="refuse")
        assert (refusal.channel, refusal.actor_type, refusal.state) == ("web", "subject", "refused")
        open_requests = s.exec(
            select(ConsentRequest).where(ConsentRequest.status == RequestStatus.OPEN.value)
        ).all()
        assert open_requests == []  # a refusal answers the request


def test_refuse_after_a_withdrawal_is_already_recorded(ledger):
    with db.session_scope(ledger) as s:
        lifecycle.grant(s, "ann", "news", Actor())
        lifecycle.revoke(s, "ann", "news", Actor())
    with db.session_scope(ledger) as s:
        assert answers.act(s, "refuse", _subject(s), "news", LINK) == ("unchanged", None)
        assert _events(s, action="refuse") == []


def test_a_consent_in_force_is_withdrawn_not_refused(ledger):
    with db.session_scope(ledger) as s:
        lifecycle.grant(s, "ann", "news", Actor())
    with db.session_scope(ledger) as s, pytest.raises(TransitionNotAllowed):
        answers.act(s, "refuse", _subject(s), "news", WEB)
    with db.session_scope(ledger) as s:
        assert _state(s, "news") == "given" and _events(s, action="refuse") == []


def test_say_no_refuses_a_request_and_withdraws_a_consent_in_force(ledger):
    with db.session_scope(ledger) as s:
        lifecycle.request(s, "ann", "ads", Actor())
        lifecycle.grant(s, "ann", "news", Actor())
        purposes.revise(s, "news", material=True, title="Weekly")
    with db.session_scope(ledger) as s:
        assert answers.say_no(s, _subject(s), "ads", LINK) == ("refuse", "done")
        assert answers.say_no(s, _subject(s), "news", LINK) == ("revoke", "done")
    with db.session_scope(ledger) as s:
        assert answers.say_no(s, _subject(s), "ads", LINK) == ("refuse", "unchanged")
        assert answers.say_no(s, _subject(s), "news", LINK) == ("refuse", "unchanged")
        assert (_state(s, "ads"), _state(s, "news")) == ("refused", "withdrawn")
        answered = [(e.action, e.channel) for e in _events(s) if e.action in ("refuse", "revoke")]
        assert sorted(answered) == [("refuse", "email_link"), ("revoke", "email_link")]


def test_unknown_purpose_or_answer_is_not_found_and_writes_nothing(ledger):
    with db.session_scope(ledger) as s:
        for action, key in (("refuse", "nope"), ("delete", "news")):
            with pytest.raises(NotFound):
                answers.act(s, action, _subject(s), key, WEB)
        assert _events(s) == []


def test_withdraw_everything_withdraws_each_given_consent_once(ledger):
    with db.session_scope(ledger) as s:
        lifecycle.grant(s, "ann", "news", Actor())
        lifecycle.grant(s, "ann", "ads", Actor())
        lifecycle.grant(s, "ben", "ads", Actor())
    with db.session_scope(ledger) as s:
        assert answers.revoke(s, _subject(s), None, WEB) == 2
        assert answers.revoke(s, _subject(s), None, WEB) == 0
        assert len(_events(s, action="revoke")) == 2
        assert _state(s, "ads", "ben") == "given"


def test_rows_say_what_each_purpose_means_and_what_changed(ledger):
    with db.session_scope(ledger) as s:
        lifecycle.grant(s, "ann", "news", Actor())
        purposes.revise(
            s, "news", material=True, title="Weekly", data_categories=["email", "name"],
            lawful_basis="contract", validity_days=90,
        )  # fmt: skip
    with db.session_scope(ledger) as s:
        rows = {r.key: r for r in answers.rows(s, _subject(s))}
    news, ads = rows["news"], rows["ads"]
    assert news.recipients == ["adtech", "crm"] and ads.recipients == ["adtech"]
    assert (news.lawful_basis, news.data_categories) == ("contract", ["email", "name"])
    assert news.reconfirm and news.agreed_version == 1 and news.given_at is not None
    assert [(c.field, c.before, c.after) for c in news.changes] == [
        ("title", "Newsletter", "Weekly"),
        ("data_categories", ["email"], ["email", "name"]),
        ("lawful_basis", "consent", "contract"),
        ("validity_days", 365, 90),
    ]
    assert ads.changes == [] and ads.agreed_version is None and ads.state is None
    assert ads.asked and news.asked  # not in force; in force on terms that need confirming


def test_history_is_the_subjects_own_newest_first(ledger):
    with db.session_scope(ledger) as s:
        lifecycle.grant(s, "ann", "news", Actor())
        lifecycle.refuse(s, "ben", "ads", Actor(channel=Channel.SUPPORT))
        lifecycle.revoke(s, "ann", "news", Actor(channel=WEB))
    with db.session_scope(ledger) as s:
        mine = answers.history(s, _subject(s))
        theirs = answers.history(s, _subject(s, "ben"))
    assert [(h.purpose, h.action) for h in mine] == [("news", "revoke"), ("news", "grant")]
    assert mine[0].channel == "web" and mine[0].title == "Newsletter"
    assert [(h.purpose, h.action, h.channel) for h in theirs] == [("ads", "refuse", "support")]
