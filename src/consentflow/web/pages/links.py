"""The email-link pages (/l/{token}): one link, one answer (the preference page is
``preferences``).

Email links follow these rules. GET only shows what would happen (mail scanners prefetch links;
HEAD answers the same without a body). POST acts, with a CSRF token bound to the link, then
redirects (303) to the link's page with a signed result value (``results``): the confirmation
comes only from that value, so a reload records nothing and a hand-edited URL (the old unsigned
``?done=`` included) confirms nothing. An RFC 8058 one-click POST (form body
``List-Unsubscribe=One-Click``) acts without cookie or CSRF, never redirects and is idempotent.
A tampered, expired or wrong-action token gets a clear page with a way to ask for a new link
and changes nothing.

A grant link (collection request, follow-up, re-consent) asks yes or no, both buttons alike and
neither pre-selected; a POST must say which (``answer``).

A link that would give consent (grant, renew) is bound to the person's latest choice when it was
issued (``links.superseded``): once they have said no since (withdrawn or refused, by any way),
its page explains that their later answer stands and offers the preference page instead of the
buttons, and its "yes" or "renew" (from a page left open) is a 409 that changes nothing. Its
"No, thanks", a revoke link and RFC 8058 one-click are never refused as stale: they give nothing.
Changes from a link are recorded with channel ``email_link``, the subject as the actor. What an
answer means is ``consentflow.answers``; this module handles HTTP around it.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session

from consentflow import answers, links
from consentflow.errors import NotFound, TransitionNotAllowed
from consentflow.links import BadLink, LinkAction
from consentflow.models import Channel, utcnow
from consentflow.web import security
from consentflow.web.auth import DbSession, ReadSession
from consentflow.web.pages import preferences, results
from consentflow.web.pages._target import Target, bad_link, open_link, problem, to_result
from consentflow.web.templating import keep_lang, page_locale, render

router = APIRouter(include_in_schema=False)

LinkToken = Annotated[str, Path(max_length=1000)]
FormText = Annotated[str | None, Form(max_length=1000)]


def _preferences_url(session: Session, target: Target) -> str:
    """The preference page of the link's subject, valid as long as the link itself. It gives
    the holder nothing new: every email with a renew link carries the subject's preference link
    too (``sweeps``). Minting it changes nothing."""
    ttl = target.link.expires_at - utcnow()
    token = links.issue(session, LinkAction.PREFERENCES, target.subject.id or 0, ttl=ttl)
    return f"/l/{token}"


@router.api_route("/l/{token}", methods=["GET", "HEAD"], response_class=HTMLResponse)
def link_page(
    request: Request,
    token: LinkToken,
    session: ReadSession,
    r: Annotated[str | None, Query(max_length=500)] = None,
) -> Response:
    """What the link would do, with its buttons, or (with a genuine ``r``) what was done;
    changes nothing. HEAD (mail scanners check links that way) answers with the same status
    and headers and no body."""
    response = _link_page(request, token, session, r)
    if request.method == "HEAD":
        response.body = b""  # the headers, Content-Length included, stay those of the GET
    return response


def _link_page(request: Request, token: str, session: Session, r: str | None) -> Response:
    try:
        target = open_link(request, session, token)
    except (BadLink, NotFound) as exc:
        return bad_link(request, exc)
    if target.link.action is LinkAction.ERASE:  # its page asks the person to confirm
        return RedirectResponse(keep_lang(request, f"/l/{quote(token)}/erase"), status_code=303)
    result = results.read(session, token, r)
    if target.link.action is LinkAction.PREFERENCES:
        return preferences.page(request, session, token, target, result)
    rows = answers.rows(session, target.subject, target.purpose, page_locale(request))
    if result is not None:
        return render(request, "done.html", {"result": result, "rows": rows, "one_click": False})
    if links.superseded(session, target.link):
        # The person said no after this link was sent: the buttons would act against it.
        preferences_url = keep_lang(request, _preferences_url(session, target))
        context_stale = {"superseded": True, "rows": rows, "preferences_url": preferences_url}
        return render(request, "link.html", {"action": target.link.action.value, **context_stale})
    context: dict[str, Any] = {
        "token": token,
        "csrf": security.csrf_token(session, token),
        "action": target.link.action.value,
        "expires_at": target.link.expires_at,
        "rows": rows,
        "all_purposes": target.purpose is None,
    }
    if target.link.action is LinkAction.RENEW and not (rows and answers.renewable(rows[0])):
        # Renewing needs a consent in force: say so now rather than fail on the button.
        context["preferences_url"] = keep_lang(request, _preferences_url(session, target))
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
    answer: Annotated[str | None, Form(max_length=10)] = None,
) -> Response:
    """Act on the link: the page's buttons, the preference page, or RFC 8058 one-click."""
    try:
        target = open_link(request, session, token)
    except (BadLink, NotFound) as exc:
        return bad_link(request, exc)
    if list_unsubscribe == "One-Click":
        return _one_click(request, session, target)
    if not security.check_csrf(session, token, csrf_token):
        return problem(request, "csrf", 403)
    if target.link.action is LinkAction.PREFERENCES:
        return preferences.post(request, session, token, target, op, purpose)
    return _confirm(request, session, token, target, answer)


def _one_click(request: Request, session: Session, target: Target) -> Response:
    """RFC 8058: unsubscribe without cookie or CSRF; never redirects, idempotent."""
    if target.link.action is not LinkAction.REVOKE:
        return bad_link(request, BadLink("this link cannot unsubscribe"))
    changed = answers.revoke(session, target.subject, target.purpose, Channel.EMAIL_LINK)
    return render(request, "done.html", {"changed": changed, "rows": [], "one_click": True})


def _confirm(
    request: Request, session: Session, token: str, target: Target, answer: str | None
) -> Response:
    """The buttons of a revoke, renew or grant link; then the result page."""
    action = target.link.action
    subject, key = target.subject, target.purpose.key if target.purpose else None
    if action is LinkAction.REVOKE:
        changed = answers.revoke(session, subject, target.purpose, Channel.EMAIL_LINK)
        found = results.Result("revoke", key, "done" if changed else "unchanged", changed)
        return to_result(request, session, token, found)
    if key is None:
        return bad_link(request, BadLink("this link does not name a purpose"))
    if action is LinkAction.GRANT and answer not in ("yes", "no"):
        return problem(request, "choose", 422)
    gives = action is LinkAction.RENEW or answer == "yes"
    if gives and links.superseded(session, target.link, lock=True):
        preferences_url = keep_lang(request, _preferences_url(session, target))
        return problem(request, "superseded", 409, preferences_url=preferences_url)
    try:
        if answer == "no" and action is LinkAction.GRANT:
            said, outcome = answers.say_no(session, subject, key, Channel.EMAIL_LINK)
        else:
            said = action.value
            outcome, _ = answers.act(session, action, subject, key, Channel.EMAIL_LINK)
    except TransitionNotAllowed:
        kind = "not_renewable" if action is LinkAction.RENEW else "not_allowed"
        preferences_url = keep_lang(request, _preferences_url(session, target))
        return problem(request, kind, 409, preferences_url=preferences_url)
    found = results.Result(said, key, outcome, int(outcome == "done"))
    return to_result(request, session, token, found)
