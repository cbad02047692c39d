"""People's pages: sign-in, the dashboard, and the email-link pages (/l/{token}).

Email links follow three rules. GET only shows what would happen (mail scanners prefetch links;
HEAD answers the same without a body).
POST acts, with a CSRF token bound to the link; an RFC 8058 one-click POST (form body
``List-Unsubscribe=One-Click``) acts without cookie or CSRF, never redirects and is idempotent. A
tampered, expired or wrong-action token gets a clear page and changes nothing. Changes from a link
are recorded with channel ``email_link``, from the preference page with channel ``web``; the
subject is the actor either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session

from consentflow import lifecycle, links, purposes, tokens
from consentflow.errors import NotFound, TransitionNotAllowed
from consentflow.lifecycle import Actor
from consentflow.links import BadLink, Link, LinkAction
from consentflow.models import ActorType, Channel, Purpose, State, Subject, utcnow
from consentflow.settings import get_settings
from consentflow.tokens import TokenInfo
from consentflow.web import dashboard, security
from consentflow.web.auth import COMPLIANCE, DbSession, ReadSession

router = APIRouter(include_in_schema=False)

LinkToken = Annotated[str, Path(max_length=1000)]
FormText = Annotated[str | None, Form(max_length=1000)]


def _templates() -> Any:
    from consentflow.web.app import templates

    return templates


def _render(
    request: Request, name: str, context: dict[str, Any], status_code: int = 200
) -> HTMLResponse:
    return _templates().TemplateResponse(request, name, context, status_code=status_code)


def _secure() -> bool:
    return get_settings().public_url.lower().startswith("https://")


# ------------------------------------------------------------------------------------ sign-in


def _safe_next(value: str | None) -> str:
    """Only a local path: never an absolute URL (open redirect) or a scheme-relative one."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/dashboard"
    return value


def login_page(
    request: Request,
    *,
    status: int = 200,
    message: str | None = None,
    next_url: str | None = None,
    session: Session | None = None,
) -> Response:
    """The sign-in form, with a CSRF token bound to a fresh or existing CSRF cookie.

    Pass the request's ``session`` when there is one: a second transaction would wait for the
    first on SQLite.
    """
    binding = request.cookies.get(security.CSRF_COOKIE) or security.new_csrf_binding()
    if session is not None:
        csrf = security.csrf_token(session, binding)
    else:
        from consentflow import db

        with db.session_scope() as own:
            csrf = security.csrf_token(own, binding)
    response = _render(
        request,
        "login.html",
        {"message": message, "csrf": csrf, "next": _safe_next(next_url), "signed_in": False},
        status_code=status,
    )
    response.set_cookie(
        security.CSRF_COOKIE,
        binding,
        httponly=True,
        samesite="lax",
        secure=_secure(),
        path="/",
    )
    return response


@router.get("/", response_class=RedirectResponse)
def index() -> RedirectResponse:
    return RedirectResponse("/dashboard", status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_form(
    request: Request,
    session: DbSession,
    next: Annotated[str | None, Query(max_length=1000)] = None,
) -> Response:
    return login_page(request, next_url=next, session=session)


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    session: DbSession,
    token: Annotated[str, Form(max_length=300)] = "",
    csrf_token: FormText = None,
    next: FormText = None,
) -> Response:
    """Exchange a token typed once for a signed, HttpOnly session cookie."""
    binding = request.cookies.get(security.CSRF_COOKIE)
    if not security.check_csrf(session, binding, csrf_token):
        return login_page(
            request,
            status=403,
            message="The form expired; please try again.",
            next_url=next,
            session=session,
        )
    info = tokens.verify(session, token.strip())
    if info is None:
        return login_page(
            request,
            status=401,
            message="That token is unknown or revoked.",
            next_url=next,
            session=session,
        )
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        security.SESSION_COOKIE,
        security.session_cookie(session, info.token_hash),
        max_age=get_settings().session_max_age,
        httponly=True,
        samesite="lax",
        secure=_secure(),
        path="/",
    )
    return response


@router.post("/logout", response_class=RedirectResponse)
def logout(request: Request, session: DbSession, csrf_token: FormText = None) -> Response:
    if not security.check_csrf(session, request.cookies.get(security.CSRF_COOKIE), csrf_token):
        return _render(
            request,
            "message.html",
            {"title": "Not signed out", "message": "The form expired; please try again."},
            status_code=403,
        )
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(security.SESSION_COOKIE, path="/")
    return response


# ---------------------------------------------------------------------------------- dashboard


def _page_csrf(request: Request, session: Session) -> tuple[str | None, str | None]:
    """A CSRF token for the sign-out form when the caller came in through the cookie."""
    if request.cookies.get(security.SESSION_COOKIE) is None:
        return None, None
    binding = request.cookies.get(security.CSRF_COOKIE) or security.new_csrf_binding()
    return binding, security.csrf_token(session, binding)


@dataclass(frozen=True)
class _Cell:
    text: str
    href: str | None = None
    numeric: bool = False


def _cell(value: Any) -> _Cell:
    if value is None:
        return _Cell("-")
    if isinstance(value, dashboard.Link):
        return _Cell(value.text, value.href)
    if isinstance(value, datetime):
        return _Cell(value.strftime("%Y-%m-%d %H:%M"))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _Cell(f"{value:g}" if isinstance(value, float) else str(value), numeric=True)
    return _Cell(str(value))


@router.get("/dashboard", response_class=HTMLResponse)
def dashboard_page(
    request: Request,
    session: ReadSession,
    caller: Annotated[TokenInfo, Depends(COMPLIANCE.reading)],
) -> Response:
    """The state of consent and of its propagation, on one page."""
    data = dashboard.build(session)
    binding, csrf = _page_csrf(request, session)
    response = _render(
        request,
        "dashboard.html",
        {
            "d": data,
            "caller": caller,
            "signed_in": True,
            "csrf": csrf,
            "prefect_ui": get_settings().prefect_ui_url,
            "cell": _cell,
        },
    )
    if binding and not request.cookies.get(security.CSRF_COOKIE):
        response.set_cookie(
            security.CSRF_COOKIE, binding, httponly=True, samesite="lax", secure=_secure()
        )
    return response


@router.get("/dashboard/{name}.csv")
def dashboard_csv(
    name: Annotated[str, Path(max_length=64)],
    session: ReadSession,
    _: Annotated[TokenInfo, Depends(COMPLIANCE.reading)],
) -> Response:
    """One dashboard table as CSV."""
    found = dashboard.table(session, name)
    if found is None:
        raise NotFound(f"no dashboard table {name!r}: use one of {', '.join(dashboard.TABLES)}")
    stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
    return Response(
        found.csv(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="consentflow-{name}-{stamp}.csv"'},
    )


# ---------------------------------------------------------------------------------- link pages


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
    return _render(
        request,
        "message.html",
        {
            "title": title,
            "message": str(exc)[:1].upper() + str(exc)[1:] + ".",
            "hint": "Nothing was changed.",
        },
        status_code=status,
    )


@dataclass
class _Row:
    key: str
    title: str
    description: str
    state: str | None
    valid_until: datetime | None
    version: int | None
    current_version: int
    reconfirm: bool
    #: Given in the ledger (possibly past its validity end, until the sweep records the expiry).
    given: bool


def _rows(session: Session, subject: Subject, only: Purpose | None = None) -> list[_Row]:
    """Each purpose (or just ``only``) with the subject's consent for it, as the check sees it."""
    now = utcnow()
    current = {v.purpose: v for v in lifecycle.current(session, subject.external_id)}
    infos = purposes.info(session)
    rows = []
    for key, notice in purposes.list_current(session):
        if only is not None and key != only.key:
            continue
        view = current.get(key)
        state = view.state.value if view else None
        if view and view.state == State.GIVEN and view.valid_until and view.valid_until <= now:
            state = State.EXPIRED.value  # as the access check reports it
        rows.append(
            _Row(
                key,
                notice.title,
                notice.description,
                state,
                view.valid_until if view else None,
                view.purpose_version if view else None,
                notice.version,
                bool(
                    view
                    and view.state == State.GIVEN
                    and view.purpose_version < infos[key].material_version
                ),
                bool(view and view.state == State.GIVEN),
            )
        )
    return rows


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
    context = {
        "token": token,
        "csrf": security.csrf_token(session, token),
        "action": target.link.action.value,
        "expires_at": target.link.expires_at,
        "done": done,
    }
    if target.link.action is LinkAction.PREFERENCES:
        context["rows"] = _rows(session, target.subject)
        return _render(request, "preferences.html", context)
    rows = _rows(session, target.subject, target.purpose)
    context["rows"] = rows
    context["all_purposes"] = target.purpose is None
    if target.link.action is LinkAction.RENEW and not (rows and _renewable(rows[0])):
        # Renewing needs a consent in force: say so now rather than fail on the button.
        context["preferences_url"] = _preferences_url(session, target)
    return _render(request, "link.html", context)


def _renewable(row: _Row) -> bool:
    """Given and still valid: a consent whose validity has ended can only be given again."""
    return row.state == State.GIVEN.value


def _act(
    session: Session, action: str, subject: Subject, purpose_key: str, channel: Channel
) -> tuple[str, lifecycle.Change | None]:
    """Do what the person asked (revoke, renew or grant; ``LinkAction`` values are these
    strings). The answer says what happened: 'done', or 'unchanged' when it already was so."""
    actor = Actor(ActorType.SUBJECT, channel)
    ext = subject.external_id
    state = next((v for v in lifecycle.current(session, ext) if v.purpose == purpose_key), None)
    try:
        if action == LinkAction.REVOKE:
            if state is None or state.state != State.GIVEN:
                return "unchanged", None
            return "done", lifecycle.revoke(session, ext, purpose_key, actor)
        if action == LinkAction.RENEW:
            return "done", lifecycle.renew(session, ext, purpose_key, actor)
        if action == LinkAction.GRANT:
            # Saying yes confirms the current notice: a fresh grant, or a renewal of a consent
            # given on an older version (re-consent). Already given on the current one: nothing.
            # A consent whose validity has ended is not in force: the grant gives it again.
            info = purposes.get(session, purpose_key)
            lapsed = bool(state and state.valid_until and state.valid_until <= utcnow())
            if state is not None and state.state == State.GIVEN and not lapsed:
                if state.purpose_version >= info.current_version:
                    return "unchanged", None
                return "done", lifecycle.renew(session, ext, purpose_key, actor)
            return "done", lifecycle.grant(session, ext, purpose_key, actor)
    except TransitionNotAllowed:
        if action == LinkAction.REVOKE:
            return "unchanged", None  # a concurrent click got there first
        raise
    raise NotFound(f"unknown action {action!r}")


def _revoke(session: Session, target: _Target) -> int:
    """Withdraw the link's purpose (or, for a link without one, every given consent); returns
    how many changed. Idempotent: what is already withdrawn stays as it is."""
    keys = (
        [target.purpose.key]
        if target.purpose is not None
        else [
            v.purpose
            for v in lifecycle.current(session, target.subject.external_id)
            if v.state == State.GIVEN
        ]
    )
    changed = 0
    for key in keys:
        outcome, _ = _act(session, LinkAction.REVOKE, target.subject, key, Channel.EMAIL_LINK)
        changed += outcome == "done"
    return changed


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
    action = target.link.action

    if list_unsubscribe == "One-Click":
        if action is not LinkAction.REVOKE:
            return _bad_link(request, BadLink("this link cannot unsubscribe"))
        changed = _revoke(session, target)
        return _render(
            request,
            "done.html",
            {"title": "Unsubscribed", "changed": changed, "rows": [], "one_click": True},
        )

    if not security.check_csrf(session, token, csrf_token):
        return _render(
            request,
            "message.html",
            {
                "title": "Please try again",
                "message": "This page was open for too long. Open the link again and confirm.",
                "hint": "Nothing was changed.",
            },
            status_code=403,
        )

    if action is LinkAction.PREFERENCES:
        if op not in ("grant", "renew", "revoke") or not purpose:
            return _render(
                request,
                "message.html",
                {"title": "Nothing was changed", "message": "Choose a purpose and an action."},
                status_code=422,
            )
        try:
            purposes.get(session, purpose)
            outcome, _ = _act(session, op, target.subject, purpose, Channel.WEB)
        except (NotFound, TransitionNotAllowed) as exc:
            return _render(
                request,
                "message.html",
                {"title": "Nothing was changed", "message": str(exc)},
                status_code=404 if isinstance(exc, NotFound) else 409,
            )
        return RedirectResponse(
            f"/l/{quote(token)}?done={quote(f'{op}:{purpose}:{outcome}')}", status_code=303
        )

    if action is LinkAction.REVOKE:
        changed = _revoke(session, target)
        return _render(
            request,
            "done.html",
            {
                "title": "Consent withdrawn" if changed else "Already withdrawn",
                "changed": changed,
                "rows": _rows(session, target.subject, target.purpose),
                "one_click": False,
            },
        )
    if target.purpose is None:
        return _bad_link(request, BadLink("this link does not name a purpose"))
    try:
        outcome, _ = _act(session, action, target.subject, target.purpose.key, Channel.EMAIL_LINK)
    except TransitionNotAllowed:
        return _render(
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
    titles = {
        LinkAction.RENEW: ("Consent renewed", "Already renewed"),
        LinkAction.GRANT: ("Thank you: consent given", "Consent already given"),
    }
    done_title, same_title = titles[action]
    return _render(
        request,
        "done.html",
        {
            "title": done_title if outcome == "done" else same_title,
            "changed": int(outcome == "done"),
            "rows": _rows(session, target.subject, target.purpose),
            "one_click": False,
        },
    )
