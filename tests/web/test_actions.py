"""Acting from the workspace (web/pages/actions.py): recording on a caller's behalf, pausing,
resuming and replaying a system, previewing and starting a flow, publishing a notice revision.

Each action on both databases, through the real app signed in with the real login form: who may
(scopes), the confirmation step (which changes nothing), the CSRF check (missing or wrong: 403,
nothing changed), a form sent twice (one change), the audit entry naming the signed-in token (the
same entry as the API's), bad input (one line, nothing changed) and unknown things (404).
"""

from __future__ import annotations

import html
import re
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import col, select

from consentflow import db, lifecycle, tokens
from consentflow.lifecycle import Actor
from consentflow.models import (
    AuditEntry,
    ConsentEvent,
    Delivery,
    DeliveryState,
    Purpose,
    PurposeVersion,
    System,
    utcnow,
)
from consentflow.sweeps import SweepContext, reconsent_open_batch
from tests.support import deployments
from tests.support.seeding import audit_entries, count, row_counts
from tests.support.web import Tokens, bearer, client, seed

ALL_PAGES = ["/subjects/alice/record", "/systems", "/flows", "/purposes/news/revise"]
#: Every action route, with a form body (no CSRF token: scope is checked before it).
ACTIONS = [
    ("/subjects/alice/record", {"purpose": "news", "action": "grant", "reason": "phone"}),
    ("/systems/crm/pause", {"seen": "0"}),
    ("/systems/crm/resume", {"seen": "0"}),
    ("/systems/crm/replay", {"upto": "1", "seen": "0"}),
    ("/flows/expiry-sweep/preview", {"nonce": "n" * 20}),
    ("/flows/expiry-sweep/start", {"nonce": "n" * 20}),
    ("/purposes/news/revise", {"title": "New", "validity_days": "365", "kind": "editorial"}),
]


@pytest.fixture
def made(engine) -> Tokens:  # type: ignore[no-untyped-def]
    """The web seed (alice and bob; news to crm with a webhook, invoices to billing), alice's
    news consent given, and a metrics token."""
    found = seed(engine)
    with db.session_scope(engine) as s:
        lifecycle.grant(s, "alice", "news", Actor())
        tokens.create(s, "scraper", "metrics")
    return found


def metrics_token(engine) -> str:  # type: ignore[no-untyped-def]
    with db.session_scope(engine) as s:
        return tokens.create(s, "scraper-2", "metrics")[1]


def signed_in(token: str) -> Any:
    """A browser-like client signed in through the login form (session and CSRF cookies)."""
    app = client()
    page = app.get("/login")
    answer = app.post("/login", data={"token": token, "csrf_token": csrf_of(page.text)})
    assert answer.status_code == 303, answer.text
    return app


def csrf_of(text: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', text)
    assert found is not None, "no CSRF token on the page"
    return found.group(1)


def hidden(text: str, form_id: str) -> dict[str, str]:
    """The hidden inputs of one form on a page."""
    start = text.index(f'id="{form_id}"')
    form = text[start : text.index("</form>", start)]
    pairs = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form)
    return {name: html.unescape(value) for name, value in pairs}


def confirmed(app: Any, url: str, fields: dict[str, str]) -> tuple[Any, dict[str, str]]:
    """Send a form without ``confirm`` (the confirmation step), then what that step sends."""
    step = app.post(url, data=fields)
    assert step.status_code == 200, step.text
    assert 'name="confirm" value="yes"' in step.text
    sent = hidden(step.text, "confirm-form")
    assert sent["confirm"] == "yes"
    return app.post(url, data=sent), sent


# ------------------------------------------------------------------------------------- scopes


def test_pages_need_signed_in_staff(engine, made) -> None:  # type: ignore[no-untyped-def]
    app, metrics = client(), metrics_token(engine)
    for path in ALL_PAGES:
        answer = app.get(path)
        assert answer.status_code == 401 and 'action="/login"' in answer.text  # the sign-in form
        assert app.get(path, headers=bearer(made.system)).status_code == 403
        assert app.get(path, headers=bearer(metrics)).status_code == 403
        assert app.get(path, headers=bearer(made.compliance)).status_code == 200
        assert app.get(path, headers=bearer(made.admin)).status_code == 200
        support = app.get(path, headers=bearer(made.support)).status_code
        assert support == (200 if path.endswith("/record") else 403), path


def test_only_the_right_scopes_may_act(engine, made) -> None:  # type: ignore[no-untyped-def]
    metrics = metrics_token(engine)
    before = row_counts(engine)
    app = client()
    for path, body in ACTIONS:
        assert app.post(path, data=body).status_code == 401
        refused = [made.system, metrics] + ([] if path.endswith("/record") else [made.support])
        for token in refused:
            answer = app.post(path, data=body, headers=bearer(token))
            assert answer.status_code == 403, (path, answer.text)
        # Allowed scopes get past the scope check (a script's bearer header needs no CSRF
        # token: no browser sends one by itself); without ``confirm`` nothing changes.
        for token in (made.compliance, made.admin):
            answer = app.post(path, data=body, headers=bearer(token))
            assert answer.status_code not in (401, 403), (path, answer.text)
    assert row_counts(engine) == before


def test_a_form_without_a_valid_csrf_token_changes_nothing(engine, made) -> None:  # type: ignore[no-untyped-def]
    app = signed_in(made.compliance)
    app.get("/systems")  # the CSRF cookie
    before = row_counts(engine)
    other_browser = csrf_of(client().get("/login").text)  # valid, but bound to another cookie
    for path, body in ACTIONS:
        for token in (None, "123.forged", other_browser):
            data = {**body, "confirm": "yes", **({"csrf_token": token} if token else {})}
            answer = app.post(path, data=data)
            assert answer.status_code == 403, (path, answer.text)
            assert "nothing was changed" in answer.text.lower()
    assert row_counts(engine) == before


def test_unknown_things_are_a_404_page(engine, made) -> None:  # type: ignore[no-untyped-def]
    app = signed_in(made.admin)
    csrf = csrf_of(app.get("/systems").text)
    before = row_counts(engine)
    for path, says in [
        ("/subjects/nobody/record", "no such subject 'nobody'"),
        ("/systems/nowhere/pause", "unknown system 'nowhere'"),
        ("/systems/nowhere/resume", "unknown system 'nowhere'"),
        ("/systems/nowhere/replay", "unknown system 'nowhere'"),
        ("/flows/no-such-flow/preview", "no such flow 'no-such-flow'"),
        ("/flows/no-such-flow/start", "no such flow 'no-such-flow'"),
        ("/purposes/nothing/revise", "unknown purpose 'nothing'"),
    ]:
        answer = app.post(path, data={"csrf_token": csrf, "confirm": "yes"})
        assert answer.status_code == 404, answer.text
        assert "text/html" in answer.headers["content-type"]
        assert says in html.unescape(answer.text), path
        if path.endswith(("/record", "/revise")):
            assert app.get(path).status_code == 404
    assert row_counts(engine) == before


def test_an_unknown_subject_says_no_such_subject(engine, made) -> None:  # type: ignore[no-untyped-def]
    answer = signed_in(made.support).get("/subjects/nobody/record")
    assert answer.status_code == 404 and "no such subject" in answer.text


# ------------------------------------------------------------------------------ record on behalf


def _events(engine, subject: str = "alice") -> list[ConsentEvent]:  # type: ignore[no-untyped-def]
    from consentflow.models import Subject

    with db.session_scope(engine) as s:
        sid = s.exec(select(Subject.id).where(Subject.external_id == subject)).one()
        found = s.exec(
            select(ConsentEvent)
            .where(ConsentEvent.subject_id == sid)
            .order_by(col(ConsentEvent.seq))
        ).all()
        s.expunge_all()
        return list(found)


def test_support_records_a_withdrawal_on_a_callers_behalf(engine, made) -> None:  # type: ignore[no-untyped-def]
    app = signed_in(made.support)
    page = app.get("/subjects/alice/record")
    assert page.status_code == 200 and "Monthly newsletter" in page.text
    form = hidden(page.text, "record-form")
    fields = {**form, "purpose": "news", "action": "revoke", "reason": "caller asked by phone"}
    before = row_counts(engine)
    step = app.post("/subjects/alice/record", data=fields)
    assert step.status_code == 200 and "Withdraw consent" in step.text
    assert row_counts(engine) == before  # the confirmation step changes nothing
    done, sent = confirmed(app, "/subjects/alice/record", fields)
    assert done.status_code == 303
    assert done.headers["location"].startswith("/subjects/alice/record?event=")
    shown = app.get(done.headers["location"])
    assert "Recorded: revoke for news" in shown.text and "caller asked by phone" in shown.text

    last = _events(engine)[-1]
    assert (last.action, last.state, last.actor, last.channel, last.actor_type) == (
        "revoke", "withdrawn", "sam", "support", "agent",
    )  # fmt: skip
    assert last.reason == "caller asked by phone" and last.evidence == {"via_token": "sam"}
    assert count(engine, Delivery) == 1  # crm (news, webhook) is told
    [entry] = [e for e in audit_entries(engine) if e.action == "consent.revoke"]
    assert entry.actor == "sam" and entry.channel == "support"

    # The same form again (a reload of the POST, a double click): nothing more is recorded.
    again = app.post("/subjects/alice/record", data=sent)
    assert again.status_code == 303 and again.headers["location"].endswith("?stale=1")
    assert "Nothing was recorded" in app.get(again.headers["location"]).text
    assert len(_events(engine)) == 2 and count(engine, Delivery) == 1


def test_the_page_records_what_the_api_records(engine, made) -> None:  # type: ignore[no-untyped-def]
    app = signed_in(made.support)
    form = hidden(app.get("/subjects/alice/record").text, "record-form")
    fields = {**form, "purpose": "invoices", "action": "refuse", "reason": "by letter"}
    assert confirmed(app, "/subjects/alice/record", fields)[0].status_code == 303
    api = client().post(
        "/api/v1/subjects/bob/consents/invoices/refuse",
        json={"reason": "by letter"},
        headers=bearer(made.support),
    )
    assert api.status_code == 200, api.text
    page_event, api_event = _events(engine, "alice")[-1], _events(engine, "bob")[-1]
    fields_of = ("action", "state", "actor", "actor_type", "channel", "reason", "evidence")
    assert [getattr(page_event, f) for f in fields_of] == [getattr(api_event, f) for f in fields_of]
    entries = [e for e in audit_entries(engine) if e.action == "consent.refuse"]
    assert [(e.actor, e.channel, e.actor_type) for e in entries] == [
        ("sam", "support", "agent")
    ] * 2


def test_bad_input_is_one_line_and_records_nothing(engine, made) -> None:  # type: ignore[no-untyped-def]
    app = signed_in(made.compliance)
    form = hidden(app.get("/subjects/alice/record").text, "record-form")
    before = row_counts(engine)
    for change, status, says in [
        ({"reason": ""}, 422, "reason: say why"),
        ({"reason": "x" * 600}, 422, "the reason must be at most 500 characters"),
        ({"reason": "bad\x01"}, 422, "printable"),
        ({"action": "delete"}, 422, "action: choose"),
        ({"purpose": ""}, 422, "purpose: choose"),
        ({"purpose": "nothing"}, 404, "unknown purpose"),
        ({"purpose": "invoices", "action": "revoke"}, 409, "nothing to withdraw"),
    ]:
        fields = {**form, "purpose": "news", "action": "grant", "reason": "phone", **change}
        answer = app.post("/subjects/alice/record", data={**fields, "confirm": "yes"})
        assert answer.status_code == status, answer.text
        assert says in html.unescape(answer.text), change
    assert row_counts(engine) == before


# ----------------------------------------------------------------------------------- systems


def _status(engine, name: str = "crm") -> str:  # type: ignore[no-untyped-def]
    with db.session_scope(engine) as s:
        return s.exec(select(System.status).where(System.name == name)).one()


def test_compliance_pauses_then_resumes_a_system(engine, made) -> None:  # type: ignore[no-untyped-def]
    app = signed_in(made.compliance)
    page = app.get("/systems")
    assert page.status_code == 200 and 'id="pause-crm"' in page.text
    fields = {**hidden(page.text, "pause-crm-form"), "reason": "receiver upgrade"}
    assert fields["seen"] == "0"  # the system's revision
    done, sent = confirmed(app, "/systems/crm/pause", fields)
    pause_form = sent
    assert done.status_code == 303 and "did=pause" in done.headers["location"]
    assert _status(engine) == "paused"
    assert "Paused crm" in app.get(done.headers["location"]).text
    [entry] = audit_entries(engine, "system.paused")
    assert entry.actor == "carol" and entry.detail["reason"] == "receiver upgrade"

    again = app.post("/systems/crm/pause", data=sent)  # the same form again
    assert "did=unchanged" in again.headers["location"]
    assert len(audit_entries(engine, "system.paused")) == 1

    page = app.get("/systems")
    assert 'id="resume-crm"' in page.text
    fields = hidden(page.text, "resume-crm-form")
    done, sent = confirmed(app, "/systems/crm/resume", fields)
    assert done.status_code == 303 and _status(engine) == "active"
    [entry] = audit_entries(engine, "system.resumed")
    assert entry.actor == "carol" and entry.detail["from"] == "paused"
    # The resume form again, and the old pause form after the resume (the system is active
    # again, as it was when that form was shown): its revision moved on; nothing happens.
    assert "did=unchanged" in app.post("/systems/crm/resume", data=sent).headers["location"]
    assert "did=unchanged" in app.post("/systems/crm/pause", data=pause_form).headers["location"]
    assert _status(engine) == "active" and len(audit_entries(engine, "system.resumed")) == 1
    assert len(audit_entries(engine, "system.paused")) == 1


def test_a_reason_the_ledger_refuses_pauses_nothing(engine, made) -> None:  # type: ignore[no-untyped-def]
    app = signed_in(made.compliance)
    csrf = csrf_of(app.get("/systems").text)
    before = row_counts(engine)
    data = {"csrf_token": csrf, "seen": "active", "reason": "x" * 600, "confirm": "yes"}
    answer = app.post("/systems/crm/pause", data=data)
    assert answer.status_code == 422 and "reason: the reason must be at most" in answer.text
    assert row_counts(engine) == before and _status(engine) == "active"


def _dead_letters(engine, n: int) -> list[int]:  # type: ignore[no-untyped-def]
    """``n`` withdrawals of news whose crm delivery is dead."""
    from consentflow import subjects

    with db.session_scope(engine) as s:
        for i in range(n):
            subjects.add(s, f"d{i}")
            lifecycle.grant(s, f"d{i}", "news", Actor())
            lifecycle.revoke(s, f"d{i}", "news", Actor())
    with db.session_scope(engine) as s:
        s.execute(update(Delivery).values(state=DeliveryState.DEAD.value, attempts=8))
        return sorted(i for i in s.exec(select(Delivery.id)).all() if i is not None)


def test_compliance_replays_dead_letters_once(engine, made) -> None:  # type: ignore[no-untyped-def]
    ids = _dead_letters(engine, 2)
    app = signed_in(made.compliance)
    page = app.get("/systems")
    assert "Replay 2 dead letter(s)" in page.text
    fields = hidden(page.text, "replay-crm-form")
    assert fields["upto"] == str(max(ids))
    step = app.post("/systems/crm/replay", data=fields)
    assert (
        "Dead letters to send again" in step.text
        and count(engine, Delivery, col(Delivery.state) == "dead") == 2
    )
    done, sent = confirmed(app, "/systems/crm/replay", fields)
    assert done.status_code == 303 and "did=replay" in done.headers["location"]
    assert "Sent 2 dead letter(s) of crm again" in app.get(done.headers["location"]).text
    assert count(engine, Delivery, col(Delivery.state) == "pending") == 2
    entries = audit_entries(engine, "delivery.replay")
    assert sorted(e.detail["delivery_id"] for e in entries) == ids
    assert {(e.actor, e.channel) for e in entries} == {("carol", "support")}
    # The form again: nothing is dead any more; nothing is replayed or audited.
    assert "did=unchanged" in app.post("/systems/crm/replay", data=sent).headers["location"]
    assert len(audit_entries(engine, "delivery.replay")) == 2
    # The same letters die again: the old form still does nothing (the revision moved on).
    with db.session_scope(engine) as s:
        s.execute(update(Delivery).values(state=DeliveryState.DEAD.value, attempts=8))
    assert "did=unchanged" in app.post("/systems/crm/replay", data=sent).headers["location"]
    assert len(audit_entries(engine, "delivery.replay")) == 2


# ------------------------------------------------------------------------------------- flows


def test_a_flow_without_a_prefect_server_starts_nothing(engine, made) -> None:  # type: ignore[no-untyped-def]
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # No server configured, whatever an earlier module of this process started (the session's
    # Prefect harness sets PREFECT_API_URL for the rest of the session).
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        app = signed_in(made.compliance)
        page = app.get("/flows")
        assert page.status_code == 200 and 'id="no-server"' in page.text
        assert 'id="preview-expiry-sweep"' in page.text and 'id="start-expiry-sweep"' in page.text
        before = row_counts(engine)
        for mode in ("preview", "start"):
            fields = hidden(page.text, f"{mode}-expiry-sweep-form")
            answer, _ = confirmed(app, f"/flows/expiry-sweep/{mode}", fields)
            assert answer.status_code == 409, answer.text
            assert "Nothing was started" in answer.text and "no Prefect server" in answer.text
        assert row_counts(engine) == before


def test_a_flow_form_needs_its_one_time_value(engine, made) -> None:  # type: ignore[no-untyped-def]
    app = signed_in(made.compliance)
    csrf = csrf_of(app.get("/flows").text)
    data = {"csrf_token": csrf, "nonce": "short", "confirm": "yes"}
    answer = app.post("/flows/expiry-sweep/start", data=data)
    assert answer.status_code == 422 and "nonce:" in answer.text


@pytest.fixture(scope="module")
def deployed(prefect_harness) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return deployments.deploy()


def test_compliance_previews_and_starts_a_flow_on_a_worker(engine, made, deployed) -> None:  # type: ignore[no-untyped-def]
    app = signed_in(made.compliance)
    page = app.get("/flows")
    assert 'id="no-server"' not in page.text
    runs_before = deployments.flow_run_count()
    done, sent = confirmed(
        app, "/flows/expiry-sweep/preview", hidden(page.text, "preview-expiry-sweep-form")
    )
    assert done.status_code == 303, done.text
    run_id = done.headers["location"].removeprefix("/flows?run=")
    created = deployments.flow_run(run_id)
    assert created.deployment_id == deployed["expiry-sweep/adhoc"]
    assert created.parameters == {"dry_run": True} and "requested-by:web:carol" in created.tags
    assert created.state.is_scheduled()  # no worker here: created, not run in the web process
    shown = app.get(done.headers["location"])
    assert "Dry run of expiry-sweep created" in shown.text and run_id in shown.text
    [entry] = audit_entries(engine, "flow.requested")
    assert (entry.run_id, entry.actor, entry.channel) == (run_id, "web:carol", "support")

    # The same form again: Prefect answers with the same run, which is audited once.
    again = app.post("/flows/expiry-sweep/preview", data=sent)
    assert again.headers["location"] == done.headers["location"]
    assert deployments.flow_run_count() == runs_before + 1
    assert len(audit_entries(engine, "flow.requested")) == 1

    started, _ = confirmed(
        app, "/flows/expiry-sweep/start", hidden(page.text, "start-expiry-sweep-form")
    )
    real = deployments.flow_run(started.headers["location"].removeprefix("/flows?run="))
    assert real.id != created.id and real.parameters == {}
    assert len(audit_entries(engine, "flow.requested")) == 2

    before = row_counts(engine)
    form = hidden(page.text, "start-collection-followups-form")
    refused, _ = confirmed(app, "/flows/collection-followups/start", form)
    assert refused.status_code == 409 and "no deployment of collection-followups" in refused.text
    assert row_counts(engine) == before


# ----------------------------------------------------------------------------------- revise


def _version(engine, key: str = "news") -> tuple[int, bool]:  # type: ignore[no-untyped-def]
    with db.session_scope(engine) as s:
        purpose = s.exec(select(Purpose).where(Purpose.key == key)).one()
        latest = s.exec(
            select(PurposeVersion).where(
                PurposeVersion.purpose_id == purpose.id,
                PurposeVersion.version == purpose.current_version,
            )
        ).one()
        return purpose.current_version, latest.material


def test_compliance_publishes_a_material_revision_with_the_reconsent_count(engine, made) -> None:  # type: ignore[no-untyped-def]
    from consentflow import subjects

    with db.session_scope(engine) as s:  # three given, one of them withdrawn: two are asked
        for name in ("c1", "c2"):
            subjects.add(s, name)
            lifecycle.grant(s, name, "news", Actor())
        lifecycle.revoke(s, "c2", "news", Actor())
        lifecycle.grant(s, "bob", "news", Actor())
    app = signed_in(made.compliance)
    page = app.get("/purposes/news/revise")
    assert re.search(r'id="asks">3 people', page.text), page.text
    form = hidden(page.text, "revise-form")
    fields = {**form, "title": "Monthly newsletter and offers", "description": "",
              "validity_days": "365", "kind": "material"}  # fmt: skip
    step = app.post("/purposes/news/revise", data=fields)
    assert "3 people, on the re-consent flow" in step.text and _version(engine) == (1, False)
    done, sent = confirmed(app, "/purposes/news/revise", fields)
    assert done.status_code == 303 and done.headers["location"].endswith("published=2&asks=3")
    assert "ask 3 people" in app.get(done.headers["location"]).text
    assert _version(engine) == (2, True)
    [entry] = audit_entries(engine, "purpose.revised")
    assert entry.actor == "carol" and entry.channel == "support" and entry.detail["material"]

    # The re-consent flow's own sweep asks exactly those the preview counted.
    ctx = SweepContext(as_of=utcnow(), dry_run=True, engine=engine)
    assert reconsent_open_batch(ctx, 100).counts[("news", "requested")] == 3

    again = app.post("/purposes/news/revise", data=sent)  # the same form again
    assert again.headers["location"].endswith("?stale=1")
    assert _version(engine) == (2, True) and len(audit_entries(engine, "purpose.revised")) == 1


def test_an_editorial_revision_asks_nobody(engine, made) -> None:  # type: ignore[no-untyped-def]
    app = signed_in(made.admin)
    form = hidden(app.get("/purposes/news/revise").text, "revise-form")
    fields = {**form, "title": "Monthly newsletter", "description": "Once a month.",
              "validity_days": "365", "kind": "editorial"}  # fmt: skip
    step = app.post("/purposes/news/revise", data=fields)
    assert "Asks to re-consent</dt><dd>nobody" in step.text
    done, _ = confirmed(app, "/purposes/news/revise", fields)
    assert done.headers["location"].endswith("published=2&asks=0")
    assert _version(engine) == (2, False)
    assert audit_entries(engine, "purpose.revised")[0].actor == "root"


def test_a_bad_revision_publishes_nothing(engine, made) -> None:  # type: ignore[no-untyped-def]
    app = signed_in(made.compliance)
    form = hidden(app.get("/purposes/news/revise").text, "revise-form")
    before = row_counts(engine)
    for change, says in [
        ({}, "nothing to revise"),
        ({"validity_days": "soon"}, "validity_days: a whole number"),
        ({"validity_days": "0"}, "validity_days: between 1"),
        ({"kind": "big"}, "kind: choose material or editorial"),
        ({"title": "T" * 300}, "title"),
    ]:
        base = {"title": "Monthly newsletter", "description": "", "validity_days": "365"}
        fields = {**form, **base, "kind": "material", **change, "confirm": "yes"}
        answer = app.post("/purposes/news/revise", data=fields)
        assert answer.status_code == 422, answer.text
        assert says in html.unescape(answer.text), change
    assert row_counts(engine) == before and _version(engine) == (1, False)


def test_audit_chain_still_verifies(engine, made) -> None:  # type: ignore[no-untyped-def]
    from tests.support.seeding import verify_audit

    app = signed_in(made.compliance)
    form = hidden(app.get("/subjects/alice/record").text, "record-form")
    fields = {**form, "purpose": "news", "action": "revoke", "reason": "phone"}
    assert confirmed(app, "/subjects/alice/record", fields)[0].status_code == 303
    assert count(engine, AuditEntry) > 0
    verify_audit(engine)
