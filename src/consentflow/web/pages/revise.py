"""Publishing a notice revision from the workspace (``/purposes/{key}/revise``), with a preview of
how many people a material revision will ask to re-consent.

The revision is ``purposes.revise``, the function ``POST /api/v1/purposes/{key}/versions`` and
``consentflow purpose revise`` call (it writes the new version and its ``purpose.revised`` audit
entry), here with the signed-in token as the actor (``_staff.staff_actor``). The count is
``sweeps.reconsent.would_ask``: the re-consent flow's own rule for whom it asks, never a second
one. A material revision asks them on the flow's next run; an editorial one asks nobody.

Idempotent: the form carries the version it was made against (``seen``); the revision is published
only if that is still the current version (read under the purpose row's lock), so a form sent
twice publishes once. Failure modes: unknown purpose 404; a missing or wrong CSRF token 403;
nothing changed, a bad number of days or a text the ledger refuses: the form again with one line
naming the field (422), nothing written.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session, select

from consentflow import purposes
from consentflow.errors import ConsentflowError, InvalidInput
from consentflow.models import Purpose, PurposeVersion
from consentflow.sweeps.reconsent import would_ask
from consentflow.tokens import TokenInfo
from consentflow.web.auth import COMPLIANCE, DbSession, ReadSession
from consentflow.web.pages import _staff

router = APIRouter(include_in_schema=False)

PurposeKey = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
FormText = Annotated[str | None, Form(max_length=1000)]
KINDS = {
    "material": "Material: people must re-confirm their consent",
    "editorial": "Editorial: wording only, nobody is asked again",
}


def _url(key: str) -> str:
    return f"/purposes/{key}/revise"


def _current(session: Session, key: str) -> PurposeVersion:
    purposes.get(session, key)  # NotFound for an unknown purpose
    return dict(purposes.list_current(session))[key]


def _form(
    request: Request,
    session: Session,
    caller: TokenInfo,
    key: str,
    *,
    message: str | None = None,
    values: dict[str, str] | None = None,
    published: dict[str, int] | None = None,
    stale: bool = False,
    status_code: int = 200,
) -> HTMLResponse:
    current = _current(session, key)
    context: dict[str, Any] = {
        "key": key,
        "current": current,
        "asks": would_ask(session, key),
        "kinds": KINDS,
        "message": message,
        "values": values or {},
        "published": published,
        "stale": stale,
        "url": _url(key),
    }
    return _staff.page(request, session, caller, "revise.html", context, status_code)


@router.get("/purposes/{key}/revise", response_class=HTMLResponse)
def revise_form(
    request: Request,
    key: PurposeKey,
    session: ReadSession,
    caller: Annotated[TokenInfo, Depends(COMPLIANCE.reading)],
    published: Annotated[int | None, Query(ge=1, le=2**31)] = None,
    asks: Annotated[int, Query(ge=0, le=2**62)] = 0,
    stale: Annotated[int, Query(ge=0, le=1)] = 0,
) -> Response:
    """The current notice, how many a material revision would ask, and the form."""
    done = {"version": published, "asks": asks} if published else None
    return _form(request, session, caller, key, published=done, stale=bool(stale))


def _changes(current: PurposeVersion, title: str, description: str, days: int) -> list[str]:
    """The fields the revision changes (what ``purposes.revise`` would publish)."""
    given = {"title": title.strip(), "description": description, "validity_days": days}
    return [k for k, v in given.items() if v != getattr(current, k)]


def _days(value: str) -> int:
    try:
        days = int(value.strip())
    except ValueError:
        raise InvalidInput("validity_days: a whole number of days, e.g. 365") from None
    if not 1 <= days <= 36500:
        raise InvalidInput("validity_days: between 1 and 36500 days")
    return days


# Long: the checks in the order the module docstring gives them, then the confirm step and the act.
@router.post("/purposes/{key}/revise", response_class=HTMLResponse)
def revise_post(
    request: Request,
    key: PurposeKey,
    session: DbSession,
    caller: Annotated[TokenInfo, Depends(COMPLIANCE)],
    csrf_token: FormText = None,
    title: Annotated[str, Form(max_length=1000)] = "",
    description: Annotated[str, Form(max_length=10000)] = "",
    validity_days: Annotated[str, Form(max_length=16)] = "",
    kind: Annotated[str, Form(max_length=16)] = "",
    seen: Annotated[int, Form(ge=0, le=2**31)] = 0,
    confirm: Annotated[str, Form(max_length=8)] = "",
) -> Response:
    """Confirm (with the re-consent count), then publish the revision; 303 to the page."""
    current = _current(session, key)
    if not _staff.csrf_ok(request, session, csrf_token):
        return _staff.refused(request, session, caller, _url(key))
    if confirm == _staff.CONFIRMED and seen != current.version:
        return RedirectResponse(f"{_url(key)}?stale=1", status_code=303)  # sent again
    description = description.replace("\r\n", "\n")
    values = {"title": title, "description": description, "validity_days": validity_days,
              "kind": kind}  # fmt: skip
    try:
        if kind not in KINDS:
            raise InvalidInput("kind: choose material or editorial")
        days = _days(validity_days)
        changed = _changes(current, title, description, days)
        if not changed:
            raise InvalidInput("nothing to revise: change the title, description or validity")
    except ConsentflowError as exc:
        return _form(request, session, caller, key, message=str(exc), values=values,
                     status_code=422)  # fmt: skip
    material = kind == "material"
    asks = would_ask(session, key) if material else 0
    if confirm != _staff.CONFIRMED:
        who = f"{asks} people, on the re-consent flow's next run" if material else "nobody"
        return _staff.confirm(
            request,
            session,
            caller,
            _staff.Confirmation(
                title=f"Publish version {current.version + 1} of {key}: confirm",
                action=_url(key),
                facts=[
                    ("Purpose", f"{current.title} ({key})"),
                    ("New version", f"{current.version + 1} (now {current.version})"),
                    ("Kind", KINDS[kind]),
                    ("Changes", ", ".join(changed)),
                    ("Asks to re-consent", who),
                    ("Recorded as", caller.name),
                ],
                fields={**values, "seen": str(seen)},
                button=f"Publish version {current.version + 1}",
                back=_url(key),
                danger=material,
            ),
        )
    locked = session.exec(
        select(Purpose.current_version).where(Purpose.key == key).with_for_update()
    ).one()
    if locked != seen:
        return RedirectResponse(f"{_url(key)}?stale=1", status_code=303)
    try:
        new = purposes.revise(
            session,
            key,
            material=material,
            title=title.strip(),
            description=description,
            validity_days=days,
            actor=_staff.staff_actor(caller),
        )
    except ConsentflowError as exc:
        session.rollback()
        return _form(request, session, caller, key, message=str(exc), values=values,
                     status_code=422)  # fmt: skip
    return RedirectResponse(f"{_url(key)}?published={new.version}&asks={asks}", status_code=303)
