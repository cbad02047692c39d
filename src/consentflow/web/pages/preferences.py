"""The preference page (a ``preferences`` link, /l/{token}) and the receipt download
(/l/{token}/receipt).

The page shows, per purpose, what it means (description, data categories, lawful basis, the
systems that receive it), the person's state in plain words with yes / no, withdraw and renew
buttons, "withdraw everything", the person's own history of choices and a link to download
their receipt. Every change is a POST (CSRF bound to the link) recorded with channel ``web`` and
the subject as the actor, answered by a 303 to the page with a signed result (``results``).

The receipt is the API's (``receipt.build``: ISO/IEC TS 27560, or Kantara v1.1 with
``?format=kantara``), for the link's subject only, reached only through a
genuine, unexpired preference link: any other token gets the bad-link page. GET never changes
anything. Bad input (unknown operation or purpose, a change the rules refuse) gets a 4xx page and
changes nothing.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlmodel import Session

from consentflow import answers, receipt
from consentflow.errors import NotFound, TransitionNotAllowed
from consentflow.links import BadLink, LinkAction
from consentflow.models import Channel
from consentflow.web import security
from consentflow.web.auth import ReadSession
from consentflow.web.pages import results
from consentflow.web.pages._target import Target, bad_link, open_link, problem, to_result
from consentflow.web.templating import page_locale, render

router = APIRouter(include_in_schema=False)

#: The operations of the page's forms.
OPERATIONS = (*answers.ANSWERS, "withdraw_all")


def page(
    request: Request,
    session: Session,
    token: str,
    target: Target,
    result: results.Result | None,
) -> Response:
    """The preference page of the link's subject, with what was just done if ``result``."""
    locale = page_locale(request)
    rows = answers.rows(session, target.subject, locale=locale)
    context = {
        "token": token,
        "csrf": security.csrf_token(session, token),
        "expires_at": target.link.expires_at,
        "rows": rows,
        "history": answers.history(session, target.subject, locale),
        "titles": {row.key: row.title for row in rows},
        "result": result,
        "any_given": any(row.given for row in rows),
    }
    return render(request, "preferences.html", context)


def post(
    request: Request,
    session: Session,
    token: str,
    target: Target,
    op: str | None,
    purpose: str | None,
) -> Response:
    """One change on the preference page, then back to it with what happened."""
    if op == "withdraw_all":
        changed = answers.revoke(session, target.subject, None, Channel.WEB)
        found = results.Result(op, None, "done" if changed else "unchanged", changed)
        return to_result(request, session, token, found)
    if op not in OPERATIONS or not purpose:
        return problem(request, "choose_purpose", 422)
    try:
        outcome, _ = answers.act(session, op, target.subject, purpose, Channel.WEB)
    except NotFound:
        return problem(request, "unknown_purpose", 404)
    except TransitionNotAllowed:
        return problem(request, "not_allowed", 409)
    found = results.Result(op, purpose, outcome, int(outcome == "done"))
    return to_result(request, session, token, found)


@router.get("/l/{token}/receipt")
def receipt_download(
    request: Request,
    token: Annotated[str, Path(max_length=1000)],
    session: ReadSession,
    format: Annotated[Literal["iso", "kantara"], Query()] = "iso",
) -> Response:
    """The person's consent receipt (JSON, the API's: ISO/IEC TS 27560, or the Kantara v1.1
    form with ``?format=kantara``), through their preference link only."""
    try:
        target = open_link(request, session, token, LinkAction.PREFERENCES)
    except (BadLink, NotFound) as exc:
        return bad_link(request, exc)
    name = "consent-receipt.json" if format == "iso" else "consent-receipt-kantara.json"
    return JSONResponse(
        receipt.build(session, target.subject.external_id, format),
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
