"""What the people's pages share: opening a signed link, the page for a link that does not work,
and the redirect to a result page.

A link that is damaged, altered, expired, for another action, or for a subject or purpose that no
longer exists gets ``bad_link.html`` (400, 410 or 404) with a way to ask for a new link
(``/link/new``) and changes nothing. The words of every page are in its template.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from sqlmodel import Session

from consentflow import links
from consentflow.errors import NotFound
from consentflow.links import BadLink, Link, LinkAction
from consentflow.models import Purpose, Subject
from consentflow.web.pages import results
from consentflow.web.templating import locale_for, render

#: The public page where a person asks for a new link (by email address).
NEW_LINK_URL = "/link/new"


@dataclass
class Target:
    link: Link
    subject: Subject
    purpose: Purpose | None


def open_link(
    request: Request, session: Session, token: str, action: LinkAction | None = None
) -> Target:
    """The verified link (for ``action``, or the one it claims), its subject and purpose;
    ``BadLink``/``NotFound`` otherwise. The page is then in the subject's language
    (``locale_for``)."""
    claimed = links.peek_action(token)
    if claimed is None:
        raise BadLink("this link is damaged: copy the whole link from the email")
    link = links.verify(session, token, action or claimed)
    subject = session.get(Subject, link.subject_id)
    if subject is None:
        raise NotFound("this link is for a record that no longer exists")
    purpose = session.get(Purpose, link.purpose_id) if link.purpose_id is not None else None
    if link.purpose_id is not None and purpose is None:
        raise NotFound("this link is for a purpose that no longer exists")
    locale_for(request, subject.locale)
    return Target(link, subject, purpose)


def bad_link(request: Request, exc: Exception) -> Response:
    """The page of a link that does not work: what is wrong, and where to get a new one."""
    if isinstance(exc, NotFound):
        status, kind = 404, "gone"
    elif "expired" in str(exc):
        status, kind = 410, "expired"
    else:
        status, kind = 400, "broken"
    context: dict[str, Any] = {
        "kind": kind,
        "reason": str(exc)[:1].upper() + str(exc)[1:] + ".",
        "new_link_url": NEW_LINK_URL,
    }
    return render(request, "bad_link.html", context, status_code=status)


def problem(request: Request, kind: str, status: int, **context: Any) -> Response:
    """A request that changed nothing (``kind`` chooses the words in ``problem.html``)."""
    return render(request, "problem.html", {"kind": kind, **context}, status_code=status)


def to_result(session: Session, token: str, result: results.Result) -> Response:
    """303 to the link's page carrying what happened, signed (``results``)."""
    value = results.sign(session, token, result)
    return RedirectResponse(f"/l/{quote(token)}?r={value}", status_code=303)
