"""Recording a consent on a caller's behalf (``/subjects/{subject}/record``): a support agent on
the phone records a grant, a refusal or a withdrawal, with a reason.

The change goes through the ledger's one write path (``lifecycle.grant``/``refuse``/``revoke``)
with the actor the API records for a support token (``_staff.staff_actor``: an agent named after
the signed-in token, channel ``support``, the token in the evidence), so the history, the outbox
and the audit entry are exactly those of ``POST /api/v1/subjects/{id}/consents/{purpose}/{action}``.

Idempotent: the form carries the subject's sequence number when it was shown (``seq``); the change
is written only if it is still that, under the subject's row lock. A form sent twice (a reload of
the POST, a double click) finds the sequence moved on and records nothing; the page says so.
Failure modes: unknown subject or purpose 404; a missing or wrong CSRF token 403; no reason, or an
action the rules refuse (withdrawing what was never given): the form again with one line saying
why (422, 409), nothing written.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session, select

from consentflow import lifecycle, purposes, subjects
from consentflow.actors import Actor, check_reason
from consentflow.errors import ConsentflowError, InvalidInput, NotFound
from consentflow.models import ConsentEvent, Purpose, Subject
from consentflow.tokens import Scope, TokenInfo
from consentflow.web.auth import DbSession, ReadSession, Require
from consentflow.web.pages import _staff

router = APIRouter(include_in_schema=False)

Change = Callable[[Session, str, str, Actor], lifecycle.Change]

#: Support agents record for callers; compliance (and admin) may too.
RECORD = Require(Scope.SUPPORT, Scope.COMPLIANCE)

#: The changes an agent records for a caller: form value -> (label, ledger function).
ACTIONS: dict[str, tuple[str, Change]] = {
    "grant": ("Give consent", lifecycle.grant),
    "refuse": ("Refuse", lifecycle.refuse),
    "revoke": ("Withdraw consent", lifecycle.revoke),
}

SubjectPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=subjects.MAX_EXTERNAL_ID,
        pattern=subjects.EXTERNAL_ID_PATTERN,
    ),
]
FormText = Annotated[str | None, Form(max_length=1000)]


def _subject(session: Session, external_id: str) -> Subject:
    found = subjects.get(session, external_id)
    if found is None or found.erased_at is not None:
        raise NotFound(f"no such subject {external_id!r}")
    return found


def _url(external_id: str) -> str:
    return f"/subjects/{external_id}/record"


def _form(
    request: Request,
    session: Session,
    caller: TokenInfo,
    subject: Subject,
    *,
    message: str | None = None,
    values: dict[str, str] | None = None,
    done: ConsentEvent | None = None,
    stale: bool = False,
    status_code: int = 200,
) -> HTMLResponse:
    current = {c.purpose: c for c in lifecycle.current(session, subject.external_id)}
    rows = [
        (key, version.title, current.get(key)) for key, version in purposes.list_current(session)
    ]
    return _staff.page(
        request,
        session,
        caller,
        "record.html",
        {
            "subject": subject,
            "rows": rows,
            "actions": {k: label for k, (label, _) in ACTIONS.items()},
            "message": message,
            "values": values or {},
            "done": done,
            "done_purpose": _purpose_key(session, done),
            "stale": stale,
            "url": _url(subject.external_id),
        },
        status_code=status_code,
    )


def _purpose_key(session: Session, event: ConsentEvent | None) -> str | None:
    if event is None:
        return None
    found = session.get(Purpose, event.purpose_id)
    return found.key if found is not None else None


@router.get("/subjects/{subject}/record", response_class=HTMLResponse)
def record_form(
    request: Request,
    subject: SubjectPath,
    session: ReadSession,
    caller: Annotated[TokenInfo, Depends(RECORD.reading)],
    event: Annotated[str | None, Query(max_length=64)] = None,
    stale: Annotated[int, Query(ge=0, le=1)] = 0,
) -> Response:
    """The subject's consents and the form to record a change for them (changes nothing)."""
    found = _subject(session, subject)
    return _form(
        request, session, caller, found, done=_event(session, found, event), stale=bool(stale)
    )


def _event(session: Session, subject: Subject, value: str | None) -> ConsentEvent | None:
    """The recorded change the page reports after a POST (only one of this subject's)."""
    if not value:
        return None
    try:
        event_id = uuid.UUID(value)
    except ValueError:
        return None
    found = session.get(ConsentEvent, event_id)
    return found if found is not None and found.subject_id == subject.id else None


# Long: the checks in the order the module docstring gives them, then the confirm step and the act.
@router.post("/subjects/{subject}/record", response_class=HTMLResponse)
def record_post(
    request: Request,
    subject: SubjectPath,
    session: DbSession,
    caller: Annotated[TokenInfo, Depends(RECORD)],
    csrf_token: FormText = None,
    purpose: Annotated[str, Form(max_length=64)] = "",
    action: Annotated[str, Form(max_length=16)] = "",
    reason: Annotated[str, Form(max_length=1000)] = "",
    seq: Annotated[int, Form(ge=0, le=2**62)] = -1,
    confirm: Annotated[str, Form(max_length=8)] = "",
) -> Response:
    """Confirm, then record the change on the caller's behalf; 303 to the page with the event."""
    found = _subject(session, subject)
    if not _staff.csrf_ok(request, session, csrf_token):
        return _staff.refused(request, session, caller, _url(subject))
    values = {"purpose": purpose, "action": action, "reason": reason}
    try:
        label, change = _checked(session, purpose, action, reason)
    except ConsentflowError as exc:
        status = 404 if isinstance(exc, NotFound) else 422
        return _form(request, session, caller, found, message=str(exc), values=values,
                     status_code=status)  # fmt: skip
    if confirm != _staff.CONFIRMED:
        title = dict(purposes.list_current(session))[purpose].title
        return _staff.confirm(
            request,
            session,
            caller,
            _staff.Confirmation(
                title=f"{label}: confirm",
                action=_url(subject),
                facts=[
                    ("Person", subject),
                    ("Purpose", f"{title} ({purpose})"),
                    ("Change", label),
                    ("Reason", reason.strip()),
                    ("Recorded as", f"{caller.name}, support channel"),
                ],
                fields={**values, "seq": str(seq)},
                button=f"Record: {label.lower()}",
                back=_url(subject),
            ),
        )
    # The subject's row lock first, so the sequence compared is the one the write will move on.
    locked = session.exec(
        select(Subject.last_seq).where(Subject.id == found.id).with_for_update()
    ).one()
    if locked != seq:
        return RedirectResponse(f"{_url(subject)}?stale=1", status_code=303)
    try:
        done = change(session, subject, purpose, _staff.staff_actor(caller, reason.strip()))
    except ConsentflowError as exc:
        session.rollback()
        return _form(request, session, caller, _subject(session, subject), message=str(exc),
                     values=values, status_code=409)  # fmt: skip
    return RedirectResponse(f"{_url(subject)}?event={done.event_id}", status_code=303)


def _checked(session: Session, purpose: str, action: str, reason: str) -> tuple[str, Change]:
    """The action's label and ledger function; ``InvalidInput``/``NotFound`` naming the field."""
    if action not in ACTIONS:
        raise InvalidInput("action: choose give consent, refuse or withdraw consent")
    if not purpose:
        raise InvalidInput("purpose: choose a purpose")
    purposes.get(session, purpose)  # NotFound for an unknown one
    if not reason.strip():
        raise InvalidInput("reason: say why you record this for the person (e.g. 'by phone')")
    check_reason(reason.strip())  # printable, within its column: a 422 here, not later
    return ACTIONS[action]
