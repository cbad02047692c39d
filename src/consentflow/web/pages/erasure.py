"""The erasure page (/l/{token}/erase): a person asks to be forgotten (GDPR Art. 17) through a
signed link, and confirms it.

Two links open it: the person's preference link (the preference page's "Delete my data" leads
here, the same token with ``/erase`` after it) and an ``erase`` link a support agent sent
(``consentflow link ID --action erase``, ``POST /api/v1/subjects/{id}/links``). Any other token,
a tampered, damaged or expired one, or one for a record that no longer exists gets the bad-link
page (``_target.bad_link``) and changes nothing.

- GET (and HEAD, for mail scanners) says what erasure means in plain words: contact data
  deleted, every consent withdrawn and the receiving systems told, a pseudonymous record of past
  consents kept as the law requires, no way back; the consents that will be withdrawn; one
  button; a way back to the preference page (for an ``erase`` link: a fresh preference link,
  valid as long as it, as ``links._preferences_url`` does). It changes nothing.
- POST (the button; its CSRF token is bound to ``erase|TOKEN``, so a form token of the
  preference page never confirms an erasure) calls ``erasure.erase`` in the request's one
  transaction with the subject as the actor, channel ``email_link``, reason ``REASON``, then
  answers 303 to the page with a signed result (``results``, bound to ``erase|TOKEN`` too, so a
  result of the preference page shows nothing here and this one nothing there) and the page's
  language (``?lang=``: the subject's own language is erased with them).
- Erased already (a reload, a second POST, a page left open, the link opened again): the page
  says so ("already erased") and nothing is written.
- Refused (``erasure.erase`` raises ``Conflict`` for anything but "already erased", e.g. the
  audit chain fails to verify, or refuses its input, ``InvalidInput``): a 409 page saying
  nothing changed and to try later or contact the controller; the transaction is rolled back.

Privacy: the token is only in the path (``web.logs`` logs ``/l/{token}/erase``); the page is
sent with ``Referrer-Policy: no-referrer`` and ``Cache-Control: no-store``
(``web.middleware``); the result value carries no personal data and the done page shows none.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session

from consentflow import answers, erasure, i18n, links
from consentflow.actors import Actor
from consentflow.errors import Conflict, InvalidInput, NotFound
from consentflow.links import BadLink, Link, LinkAction
from consentflow.models import ActorType, Channel, Subject, utcnow
from consentflow.web import security
from consentflow.web.auth import DbSession, ReadSession
from consentflow.web.pages import results
from consentflow.web.pages._target import bad_link, problem
from consentflow.web.templating import keep_lang, locale_for, page_locale, render

router = APIRouter(include_in_schema=False)

#: Why the erasure was made, as the audit trail records it.
REASON = "requested by the person"
#: The link actions whose token opens the page.
OPENS = frozenset({LinkAction.ERASE, LinkAction.PREFERENCES})
#: The answer a result value of this page carries.
ANSWER = "erase"

LinkToken = Annotated[str, Path(max_length=1000)]


def binding(token: str) -> str:
    """What this page's CSRF tokens and result values are bound to: the link, for this page."""
    return f"erase|{token}"


def _open(request: Request, session: Session, token: str) -> tuple[Link, Subject]:
    """The verified link (``OPENS``) and its subject, erased or not; ``BadLink``/``NotFound``
    otherwise. The page is then in the subject's language (while they still have one)."""
    claimed = links.peek_action(token)
    if claimed is None:
        raise BadLink("this link is damaged: copy the whole link from the email")
    if claimed not in OPENS:
        raise BadLink("this link is not valid for this action, or it was altered")
    link = links.verify(session, token, claimed)
    subject = session.get(Subject, link.subject_id)
    if subject is None:
        raise NotFound("this link is for a record that no longer exists")
    locale_for(request, subject.locale)
    return link, subject


def _erased(subject: Subject) -> bool:
    return subject.erased_at is not None


def _back_url(request: Request, session: Session, token: str, link: Link) -> str:
    """The preference page: the link itself, or (an ``erase`` link) a preference link valid as
    long as it. That gives the holder nothing an erasure would not outdo; minting changes
    nothing."""
    if link.action is not LinkAction.PREFERENCES:
        ttl = link.expires_at - utcnow()
        token = links.issue(session, LinkAction.PREFERENCES, link.subject_id, ttl=ttl)
    return keep_lang(request, f"/l/{token}")


@router.api_route("/l/{token}/erase", methods=["GET", "HEAD"], response_class=HTMLResponse)
def erase_page(
    request: Request,
    token: LinkToken,
    session: ReadSession,
    r: Annotated[str | None, Query(max_length=500)] = None,
) -> Response:
    """What erasure means and the button, or (with a genuine ``r``, or once erased) what was
    done; changes nothing. HEAD answers with the same status and headers and no body."""
    response = _page(request, session, token, r)
    if request.method == "HEAD":
        response.body = b""  # the headers, Content-Length included, stay those of the GET
    return response


def _page(request: Request, session: Session, token: str, r: str | None) -> Response:
    try:
        link, subject = _open(request, session, token)
    except (BadLink, NotFound) as exc:
        return bad_link(request, exc)
    result = results.read(session, binding(token), r)
    if result is not None and result.answer == ANSWER:
        state = "done" if result.outcome == "done" else "already"
        return render(request, "erase_done.html", {"state": state, "count": result.count})
    if _erased(subject):
        return render(request, "erase_done.html", {"state": "already", "count": 0})
    rows = answers.rows(session, subject, locale=page_locale(request))
    context: dict[str, Any] = {
        "token": token,
        "csrf": security.csrf_token(session, binding(token)),
        "expires_at": link.expires_at,
        "given": [row for row in rows if row.state == "given"],
        "back_url": _back_url(request, session, token, link),
    }
    return render(request, "erase.html", context)


@router.post("/l/{token}/erase", response_class=HTMLResponse)
def erase_post(
    request: Request,
    token: LinkToken,
    session: DbSession,
    csrf_token: Annotated[str | None, Form(max_length=1000)] = None,
) -> Response:
    """Erase the link's subject, then 303 to the page with what happened."""
    try:
        _link, subject = _open(request, session, token)
    except (BadLink, NotFound) as exc:
        return bad_link(request, exc)
    if not security.check_csrf(session, binding(token), csrf_token):
        return problem(request, "csrf", 403)
    if _erased(subject):
        return _to_result(request, session, token, results.Result(ANSWER, None, "unchanged", 0))
    actor = Actor(ActorType.SUBJECT, Channel.EMAIL_LINK)
    subject_id = subject.id
    try:
        done = erasure.erase(session, subject.external_id, actor, reason=REASON)
    except (Conflict, InvalidInput, NotFound):
        # Nothing of a refused erasure may be committed; then: was it erased meanwhile?
        session.rollback()
        again = session.get(Subject, subject_id)
        if again is not None and _erased(again):
            found = results.Result(ANSWER, None, "unchanged", 0)
            return _to_result(request, session, token, found)
        return render(request, "erase_done.html", {"state": "refused"}, status_code=409)
    found = results.Result(ANSWER, None, "done", len(done.withdrawn))
    return _to_result(request, session, token, found)


def _to_result(request: Request, session: Session, token: str, found: results.Result) -> Response:
    """303 to the page with the signed result, in the language the person read it in."""
    value = results.sign(session, binding(token), found)
    query = urlencode({"r": value, i18n.QUERY_PARAM: page_locale(request)})
    return RedirectResponse(f"/l/{quote(token)}/erase?{query}", status_code=303)
