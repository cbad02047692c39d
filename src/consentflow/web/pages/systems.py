"""Downstream systems from the workspace (``/systems``): their delivery health, and compliance
pausing, resuming and replaying a system's dead letters.

Each action is the delivery engine's own audited operation, as the API and the CLI call it:
``delivery.ops.set_status`` (``system.paused``/``system.resumed``: pausing holds deliveries, never
drops them; resuming makes the held ones due at once) and ``web.delivery_ops.replay`` over
``dead_ids`` (one ``delivery.replay`` entry per delivery, as ``POST
/api/v1/systems/{name}/replay``), with the signed-in token's name as the actor.

Idempotent: every form carries the system's revision it was shown with (``seen``;
``System.revision`` counts each status change and each replay) and acts only if the system still
has it (read under the row's lock), so a form sent again after it acted, or after any later
change (the pause form after the resume that followed it, the replay form after a dead letter
died again), writes nothing; a replay form also carries the newest dead letter it counted
(``upto``) and replays none after it. Failure modes: unknown system 404; a missing or wrong CSRF
token 403; a reason the ledger refuses 422; nothing is written then.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session, select

from consentflow import systems
from consentflow.actors import check_reason
from consentflow.delivery import ops
from consentflow.errors import ConsentflowError
from consentflow.models import System
from consentflow.tokens import TokenInfo
from consentflow.web import delivery_ops
from consentflow.web.auth import COMPLIANCE, DbSession, ReadSession
from consentflow.web.pages import _staff

router = APIRouter(include_in_schema=False)

SystemName = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")]
FormText = Annotated[str | None, Form(max_length=1000)]
#: What a replay form sends again at most (the API's limit).
REPLAY_LIMIT = 10000
#: What the page says after an action (``?did=``).
DONE = {
    "pause": "Paused {system}: its deliveries are held until it is resumed.",
    "resume": "Resumed {system}: its held deliveries are due now.",
    "replay": "Sent {n} dead letter(s) of {system} again.",
    "unchanged": "Nothing was changed for {system}: it had changed since the form was shown "
    "(or the form was sent twice). Its state is shown below.",
}


def _rows(session: Session) -> list[dict[str, Any]]:
    health = {h.system: h for h in delivery_ops.health(session)}
    revisions = dict(session.exec(select(System.name, System.revision)).all())
    rows: list[dict[str, Any]] = []
    for view in systems.list_all(session):
        found = health.get(view.name)
        dead = delivery_ops.dead_ids(session, view.name, REPLAY_LIMIT) if found else []
        rows.append(
            {
                "view": view,
                "health": found,
                "dead": len(dead),
                "upto": max(dead or [0]),
                "revision": revisions[view.name],
            }
        )
    return rows


def _unchanged(session: Session, name: str, seen: str) -> bool:
    """Whether the system is still at the revision the form was shown with (the row locked
    until the end of the request's transaction, so the action below acts on that revision)."""
    query = select(System.revision).where(System.name == name).with_for_update()
    return str(session.exec(query).one()) == seen


def _page(
    request: Request,
    session: Session,
    caller: TokenInfo,
    *,
    message: str | None = None,
    error: bool = False,
    status_code: int = 200,
) -> HTMLResponse:
    context = {"rows": _rows(session), "message": message, "error": error}
    return _staff.page(request, session, caller, "systems.html", context, status_code)


@router.get("/systems", response_class=HTMLResponse)
def systems_page(
    request: Request,
    session: ReadSession,
    caller: Annotated[TokenInfo, Depends(COMPLIANCE.reading)],
    did: Annotated[Literal["pause", "resume", "replay", "unchanged"] | None, Query()] = None,
    system: Annotated[str | None, Query(max_length=100)] = None,
    n: Annotated[int, Query(ge=0, le=REPLAY_LIMIT)] = 0,
) -> Response:
    """Every downstream system, its delivery health and what may be done (changes nothing)."""
    message = DONE[did].format(system=system or "the system", n=n) if did else None
    return _page(request, session, caller, message=message)


def _done(system: str, did: str, n: int = 0) -> RedirectResponse:
    query = urlencode({"did": did, "system": system, **({"n": n} if n else {})})
    return RedirectResponse(f"/systems?{query}#system-{system}", status_code=303)


Seen = Annotated[str, Form(max_length=16)]
Reason = Annotated[str, Form(max_length=1000)]
Confirm = Annotated[str, Form(max_length=8)]


# Long: the checks, the confirm step, then the act under the system row's lock.
def _set_status(
    request: Request,
    session: Session,
    caller: TokenInfo,
    name: str,
    verb: str,
    csrf_token: str | None,
    seen: str,
    reason: str,
    confirm: str,
) -> Response:
    system = systems.get(session, name)  # NotFound: 404
    if not _staff.csrf_ok(request, session, csrf_token):
        return _staff.refused(request, session, caller, "/systems")
    given = reason.strip() or None
    try:
        if given is not None:
            check_reason(given)
    except ConsentflowError as exc:
        return _page(request, session, caller, message=f"reason: {exc}", error=True,
                     status_code=422)  # fmt: skip
    if confirm != _staff.CONFIRMED:
        pending = "held until it is resumed" if verb == "pause" else "due at once"
        facts = [
            ("System", name),
            ("Now", system.status),
            ("Change", f"{verb} (its pending deliveries are {pending})"),
            ("Recorded as", caller.name),
        ]
        if given:
            facts.append(("Reason", given))
        return _staff.confirm(
            request,
            session,
            caller,
            _staff.Confirmation(
                title=f"{verb.title()} {name}: confirm",
                action=f"/systems/{name}/{verb}",
                facts=facts,
                fields={"seen": seen, "reason": reason},
                button=f"{verb.title()} {name}",
                back="/systems",
                danger=verb == "pause",
            ),
        )
    if not _unchanged(session, name, seen):
        return _done(name, "unchanged")
    try:
        ops.set_status(session, name, verb, reason=given, actor=caller.name)
    except ConsentflowError as exc:
        session.rollback()
        return _page(request, session, caller, message=str(exc), error=True, status_code=409)
    return _done(name, verb)


@router.post("/systems/{name}/replay", response_class=HTMLResponse)
def replay(
    request: Request,
    name: SystemName,
    session: DbSession,
    caller: Annotated[TokenInfo, Depends(COMPLIANCE)],
    csrf_token: FormText = None,
    upto: Annotated[int, Form(ge=0, le=2**62)] = 0,
    seen: Seen = "",
    confirm: Confirm = "",
) -> Response:
    """Send a system's dead letters again (those up to ``upto``), after a confirmation step."""
    systems.get(session, name)  # NotFound: 404
    if not _staff.csrf_ok(request, session, csrf_token):
        return _staff.refused(request, session, caller, "/systems")
    ids = [i for i in delivery_ops.dead_ids(session, name, REPLAY_LIMIT) if i <= upto]
    if confirm != _staff.CONFIRMED:
        return _staff.confirm(
            request,
            session,
            caller,
            _staff.Confirmation(
                title=f"Replay the dead letters of {name}: confirm",
                action=f"/systems/{name}/replay",
                facts=[
                    ("System", name),
                    ("Dead letters to send again", str(len(ids))),
                    ("Recorded as", caller.name),
                ],
                fields={"upto": str(upto), "seen": seen},
                button=f"Replay {len(ids)} dead letter(s)",
                back="/systems",
            ),
        )
    if not ids or not _unchanged(session, name, seen):
        return _done(name, "unchanged")
    delivery_ops.replay(session, ids, actor=caller.name)
    return _done(name, "replay", len(ids))


# After the replay route: a path of this shape would match /replay too (and refuse it).
@router.post("/systems/{name}/{verb}", response_class=HTMLResponse)
def set_status(
    request: Request,
    name: SystemName,
    verb: Literal["pause", "resume"],
    session: DbSession,
    caller: Annotated[TokenInfo, Depends(COMPLIANCE)],
    csrf_token: FormText = None,
    seen: Seen = "",
    reason: Reason = "",
    confirm: Confirm = "",
) -> Response:
    """Pause a system (hold its deliveries) or resume it (its held deliveries are due at once),
    after a confirmation step."""
    args = (csrf_token, seen, reason, confirm)
    return _set_status(request, session, caller, name, verb, *args)
