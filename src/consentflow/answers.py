"""What a person's answer on an email-link page or the preference page means.

A person answers yes (grant), renew or stop (revoke) for one purpose, or stop for every purpose
(a revoke link without one). The rules:

- ``revoke``: withdraws a given consent; anything else (never given, already withdrawn, a
  concurrent click that got there first) is ``unchanged``, never an error. Idempotent.
- ``renew``: renews the consent in force; one that is not (withdrawn, or past its validity end
  and expired) raises ``TransitionNotAllowed``: it can only be given again.
- ``grant``: confirms the current notice. A fresh grant; or a renewal of a consent given on an
  older notice version (re-consent); already given on the current version is ``unchanged``. A
  consent whose validity has ended is not in force: the grant gives it again.

The subject is always the actor; the caller names the channel (``email_link`` for a link,
``web`` for the preference page). ``rows`` is what the pages show: each purpose with the
subject's consent as the access check sees it (a given consent past its validity end is
expired). No web dependency: the pages only handle HTTP around these.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlmodel import Session

from consentflow import lifecycle, purposes
from consentflow.errors import NotFound, TransitionNotAllowed
from consentflow.lifecycle import Actor, effective_state
from consentflow.links import LinkAction
from consentflow.models import ActorType, Channel, Purpose, State, Subject, utcnow

#: What an answer did: ``done``, or ``unchanged`` when it already was so.
Outcome = Literal["done", "unchanged"]


@dataclass
class Row:
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


def rows(session: Session, subject: Subject, only: Purpose | None = None) -> list[Row]:
    """Each purpose (or just ``only``) with the subject's consent for it, as the check sees it."""
    now = utcnow()
    current = {v.purpose: v for v in lifecycle.current(session, subject.external_id)}
    infos = purposes.info(session)
    found = []
    for key, notice in purposes.list_current(session):
        if only is not None and key != only.key:
            continue
        view = current.get(key)
        # As the access check reports it: a given consent past its validity end is expired.
        state = effective_state(view.state, view.valid_until, now).value if view else None
        found.append(
            Row(
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
    return found


def renewable(row: Row) -> bool:
    """Given and still valid: a consent whose validity has ended can only be given again."""
    return row.state == State.GIVEN.value


def act(
    session: Session, action: str, subject: Subject, purpose_key: str, channel: Channel
) -> tuple[Outcome, lifecycle.Change | None]:
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
            in_force = state is not None and (
                effective_state(state.state, state.valid_until, utcnow()) == State.GIVEN
            )
            if state is not None and in_force:
                if state.purpose_version >= info.current_version:
                    return "unchanged", None
                return "done", lifecycle.renew(session, ext, purpose_key, actor)
            return "done", lifecycle.grant(session, ext, purpose_key, actor)
    except TransitionNotAllowed:
        if action == LinkAction.REVOKE:
            return "unchanged", None  # a concurrent click got there first
        raise
    raise NotFound(f"unknown action {action!r}")


def revoke(session: Session, subject: Subject, purpose: Purpose | None, channel: Channel) -> int:
    """Withdraw ``purpose`` (or, without one, every given consent); returns how many changed.
    Idempotent: what is already withdrawn stays as it is."""
    keys = (
        [purpose.key]
        if purpose is not None
        else [
            v.purpose
            for v in lifecycle.current(session, subject.external_id)
            if v.state == State.GIVEN
        ]
    )
    changed = 0
    for key in keys:
        outcome, _ = act(session, LinkAction.REVOKE, subject, key, channel)
        changed += outcome == "done"
    return changed
