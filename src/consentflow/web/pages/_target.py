"""What the people's pages share: opening a signed link, the page for a link that does not work,
and the redirect to a result page.

A link that is damaged, altered, expired, for another action, or for a subject or purpose that no
longer exists gets ``bad_link.html`` (400, 410 or 404) with a way to ask for a new link
(``/link/new``) and changes nothing. A link of a person who was erased (``erasure``) gets the
erasure page's "already deleted" words instead (``erase_done.html``, 410): there is nothing
left to show or change, and no new link to ask for. The words of every page are in its
template: the one-line reason (the exception's English text, for logs and the API) is mapped to
a ``reason`` code the template words in the page's language (``REASONS``; anything else: a
general "does not work").
The switcher's ``?lang=`` travels to the result page and the new-link page (``keep_lang``).
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
from consentflow.web.templating import keep_lang, locale_for, render

#: The public page where a person asks for a new link (by email address).
NEW_LINK_URL = "/link/new"
#: What a bad link's message says (a phrase in it), as a code ``bad_link.html`` words.
REASONS = (
    ("incomplete", "incomplete"),
    ("damaged", "damaged"),
    ("not valid for this action", "altered"),
    ("expired", "expired"),
    ("record that no longer exists", "no_record"),
    ("purpose that no longer exists", "no_purpose"),
    ("cannot unsubscribe", "cannot_unsubscribe"),
    ("does not name a purpose", "no_purpose_named"),
)


class Erased(NotFound):
    """The link's person was erased: nothing of theirs may be shown or changed."""


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
    if subject.erased_at is not None:
        raise Erased("this link is for a person whose data was erased")
    purpose = session.get(Purpose, link.purpose_id) if link.purpose_id is not None else None
    if link.purpose_id is not None and purpose is None:
        raise NotFound("this link is for a purpose that no longer exists")
    locale_for(request, subject.locale)
    return Target(link, subject, purpose)


def bad_link(request: Request, exc: Exception) -> Response:
    """The page of a link that does not work: what is wrong, and where to get a new one."""
    if isinstance(exc, Erased):
        return render(request, "erase_done.html", {"state": "already", "count": 0}, status_code=410)
    if isinstance(exc, NotFound):
        status, kind = 404, "gone"
    elif "expired" in str(exc):
        status, kind = 410, "expired"
    else:
        status, kind = 400, "broken"
    message = str(exc)
    context: dict[str, Any] = {
        "kind": kind,
        "reason": next((code for phrase, code in REASONS if phrase in message), "other"),
        "new_link_url": keep_lang(request, NEW_LINK_URL),
    }
    return render(request, "bad_link.html", context, status_code=status)


def problem(request: Request, kind: str, status: int, **context: Any) -> Response:
    """A request that changed nothing (``kind`` chooses the words in ``problem.html``)."""
    return render(request, "problem.html", {"kind": kind, **context}, status_code=status)


def to_result(request: Request, session: Session, token: str, result: results.Result) -> Response:
    """303 to the link's page carrying what happened, signed (``results``), in the language the
    person chose on the page (its ``?lang=``, if any)."""
    value = results.sign(session, token, result)
    url = keep_lang(request, f"/l/{quote(token)}?r={value}")
    return RedirectResponse(url, status_code=303)
