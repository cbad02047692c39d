"""The email-link pages (/l/{token}): one link, one answer, and the preference page.

Email links follow three rules. GET only shows what would happen (mail scanners prefetch links;
HEAD answers the same without a body).
POST acts, with a CSRF token bound to the link; an RFC 8058 one-click POST (form body
``List-Unsubscribe=One-Click``) acts without cookie or CSRF, never redirects and is idempotent. A
tampered, expired or wrong-action token gets a clear page and changes nothing. Changes from a link
are recorded with channel ``email_link``, from the preference page with channel ``web``; the
subject is the actor either way. What an answer means is ``consentflow.answers``; this module
handles HTTP around it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session

from consentflow import answers, links, purposes
from consentflow.errors import NotFound, TransitionNotAllowed
from consentflow.links import BadLink, Link, LinkAction
from consentflow.models import Channel, Purpose, Subject, utcnow
from consentflow.web import security
from consentflow.web.auth import DbSession, ReadSession
from consentflow.web.templating import render

router = APIRouter(include_in_schema=False)

LinkToken = Annotated[str, Path(max_length=1000)]
FormText = Annotated[str | None, Form(max_length=1000)]


@dataclass
class _Target:
    link: Link
    subject: Subject
    purpose: Purpose | None


def _open_link(session: Session, token: str) -> _Target:
    """The verified link, its subject and purpose; ``BadLink``/``NotFound`` otherwise."""
    action = links.peek_action(token)
    if action is None:
        raise BadLink("this link is damaged: copy the whole link from the email")
    link = links.verify(session, token, action)
    subject = session.get(Subject, link.subject_id)
    if subject is None:
        raise NotFound("this link is for a record that no longer exists")
    purpose = session.get(Purpose, link.purpose_id) if link.purpose_id is not None else None
    if link.purpose_id is not None and purpose is None:
        raise NotFound("this link is for a purpose that no longer exists")
    return _Target(link, subject, purpose)


def _bad_link(request: Request, exc: Exception) -> Response:
    status = 410 if "expired" in str(exc) else 400
    if isinstance(exc, NotFound):
        status = 404
    title = "This link has expired" if status == 410 else "This link does not work"
    return render(
        request,
        "message.html",
        {
            "title": title,
            "message": str(exc)[:1].upper() + str(exc)[1:] + ".",
            "hint": "Nothing was changed.",
        },
        status_code=status,
    )


def _preferences_url(session: Session, target: _Target) -> str:
    """The preference page of the link's subject, valid as long as the link itself. It gives
    the holder nothing new: every email with a renew link carries the subject's preference link
    too (``sweeps``). Minting it changes nothing."""
    ttl = target.link.expires_at - utcnow()
    token = links.issue(session, LinkAction.PREFERENCES, target.subject.id or 0, ttl=ttl)
    return f"/l/{quote(token)}"


@router.api_route("/l/{token}", methods=["GET", "HEAD"], response_class=HTMLResponse)
def link_page(
    request: Request,
    token: LinkToken,
    session: ReadSession,
    done: Annotated[str | None, Query(max_length=100)] = None,
) -> Response:
    """What the link would do, with one button; changes nothing. HEAD (mail scanners check
    links that way) answers with the same status and headers and no body."""
    response = _link_page(request, token, session, done)
    if request.method == "HEAD":
        response.body = b""  # the headers, Content-Length included, stay those of the GET
    return response


def _link_page(request: Request, token: str, session: Session, done: str | None) -> Response:
    try:
        target = _open_link(session, token)
    except (BadLink, NotFound) as exc:
        return _bad_link(request, exc)
    context: dict[str, Any] = {
        "token": token,
        "csrf": security.csrf_token(session, token),
        "action": target.link.action.value,
        "expires_at": target.link.expires_at,
        "done": done,
    }
    if target.link.action is LinkAction.PREFERENCES:
        context["rows"] = answers.rows(session, target.subject)
        return render(request, "preferences.html", context)
    rows = answers.rows(session, target.subject, target.purpose)
    context["rows"] = rows
    context["all_purposes"] = target.purpose is None
    if target.link.action is LinkAction.RENEW and not (rows and answers.renewable(rows[0])):
        # Renewing needs a consent in force: say so now rather than fail on the button.
        context["preferences_url"] = _preferences_url(session, target)
    return render(request, "link.html", context)


@router.post("/l/{token}", response_class=HTMLResponse)
def link_post(
    request: Request,
    token: LinkToken,
    session: DbSession,
    list_unsubscribe: Annotated[str | None, Form(alias="List-Unsubscribe", max_length=100)] = None,
    csrf_token: FormText = None,
    op: Annotated[str | None, Form(max_length=20)] = None,
    purpose: Annotated[str | None, Form(max_length=64)] = None,
) -> Response:
    """Act on the link: the confirmation button, the preference page, or RFC 8058 one-click."""
    try:
        target = _open_link(session, token)
    except (BadLink, NotFound) as exc:
        return _bad_link(request, exc)
    if list_unsubscribe == "One-Click":
        return _one_click(request, session, target)
    if not security.check_csrf(session, token, csrf_token):
        return render(
            request,
            "message.html",
            {
                "title": "Please try again",
                "message": "This page was open for too long. Open the link again and confirm.",
                "hint": "Nothing was changed.",
            },
            status_code=403,
        )
    if target.link.action is LinkAction.PREFERENCES:
        return _preference_post(request, session, token, target, op, purpose)
    return _confirm(request, session, target)


def _one_click(request: Request, session: Session, target: _Target) -> Response:
    """RFC 8058: unsubscribe without cookie or CSRF; never redirects, idempotent."""
    if target.link.action is not LinkAction.REVOKE:
        return _bad_link(request, BadLink("this link cannot unsubscribe"))
    changed = answers.revoke(session, target.subject, target.purpose, Channel.EMAIL_LINK)
    return render(
        request,
        "done.html",
        {"title": "Unsubscribed", "changed": changed, "rows": [], "one_click": True},
    )


def _preference_post(
    request: Request,
    session: Session,
    token: str,
    target: _Target,
    op: str | None,
    purpose: str | None,
) -> Response:
    """One change on the preference page, then back to it with what happened."""
    if op not in ("grant", "renew", "revoke") or not purpose:
        return render(
            request,
            "message.html",
            {"title": "Nothing was changed", "message": "Choose a purpose and an action."},
            status_code=422,
        )
    try:
        purposes.get(session, purpose)
        outcome, _ = answers.act(session, op, target.subject, purpose, Channel.WEB)
    except (NotFound, TransitionNotAllowed) as exc:
        return render(
            request,
            "message.html",
            {"title": "Nothing was changed", "message": str(exc)},
            status_code=404 if isinstance(exc, NotFound) else 409,
        )
    return RedirectResponse(
        f"/l/{quote(token)}?done={quote(f'{op}:{purpose}:{outcome}')}", status_code=303
    )


_TITLES = {
    LinkAction.RENEW: ("Consent renewed", "Already renewed"),
    LinkAction.GRANT: ("Thank you: consent given", "Consent already given"),
}


def _confirm(request: Request, session: Session, target: _Target) -> Response:
    """The confirmation button of a revoke, renew or grant link."""
    action = target.link.action
    if action is LinkAction.REVOKE:
        changed = answers.revoke(session, target.subject, target.purpose, Channel.EMAIL_LINK)
        return render(
            request,
            "done.html",
            {
                "title": "Consent withdrawn" if changed else "Already withdrawn",
                "changed": changed,
                "rows": answers.rows(session, target.subject, target.purpose),
                "one_click": False,
            },
        )
    if target.purpose is None:
        return _bad_link(request, BadLink("this link does not name a purpose"))
    try:
        outcome, _ = answers.act(
            session, action, target.subject, target.purpose.key, Channel.EMAIL_LINK
        )
    except TransitionNotAllowed:
        return render(
            request,
            "message.html",
            {
                "title": "Nothing was changed",
                "message": "This consent is no longer active, so it cannot be renewed. "
                "You can give it again on your preference page.",
                "link": (_preferences_url(session, target), "Open your preference page"),
            },
            status_code=409,
        )
    done_title, same_title = _TITLES[action]
    return render(
        request,
        "done.html",
        {
            "title": done_title if outcome == "done" else same_title,
            "changed": int(outcome == "done"),
            "rows": answers.rows(session, target.subject, target.purpose),
            "one_click": False,
        },
    )
