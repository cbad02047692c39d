"""What a person's answer on an email-link page or the preference page means, and what those
pages show them.

A person answers yes (grant), no (refuse), renew or stop (revoke) for one purpose, or stop for
every purpose (a revoke link without one, "withdraw everything" on the preference page). The
rules:

- ``revoke``: withdraws a given consent; anything else (never given, already withdrawn, a
  concurrent click that got there first) is ``unchanged``, never an error. Idempotent.
- ``renew``: renews the consent in force; one that is not (withdrawn, or past its validity end
  and expired) raises ``TransitionNotAllowed``: it can only be given again.
- ``grant``: confirms the current notice. A fresh grant; or a renewal of a consent given on an
  older notice version (re-consent); already given on the current version is ``unchanged``. A
  consent whose validity has ended is not in force: the grant gives it again.
- ``refuse``: records a no (state ``refused``), which answers an open request (the write path
  closes it). Already no (refused, or withdrawn: the person said no last) is ``unchanged``, so
  refusing twice writes one event. A consent in force cannot be refused, only withdrawn:
  ``TransitionNotAllowed``.
- ``say_no`` is the "No, thanks" of a request page (collection follow-up, re-consent, grant
  link): a refusal, except that declining new terms while the earlier consent is still in
  force withdraws it (the rule book allows no refusal of a given consent, and a withdrawal is
  what tells the downstream systems to stop).

The subject is always the actor; the caller names the channel (``email_link`` for a link,
``web`` for the preference page). ``rows`` is what the pages show: each purpose with what it
means (notice, data categories, lawful basis, recipients), the subject's consent as the access
check sees it (a given consent past its validity end is expired) and, where the notice changed
since the person agreed, what changed. ``history`` is that one subject's own events. Nothing here
reads another subject's data. No web dependency: the pages only handle HTTP around these.

Languages: ``rows`` and ``history`` take the page's language (``locale``) and give each purpose's
title and description in it (``purposes.text_for``: the subject's regional variant when it is of
that language, then the language, then the default text), with the language each text is
actually written in (``title_lang``, ``description_lang``), so a page can mark text that fell back
to the default language with a ``lang`` attribute. Recipients are named by display name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from sqlmodel import Session, col, select

from consentflow import i18n, lifecycle, purposes
from consentflow.errors import NotFound, TransitionNotAllowed
from consentflow.lifecycle import Actor, effective_state
from consentflow.links import LinkAction
from consentflow.models import (
    ActorType,
    Channel,
    Purpose,
    PurposeVersion,
    State,
    Subject,
    System,
    SystemPurpose,
    utcnow,
)

#: What an answer did: ``done``, or ``unchanged`` when it already was so.
Outcome = Literal["done", "unchanged"]
#: The answers a person can give on the pages (``LinkAction`` values are the first three).
ANSWERS = ("grant", "renew", "revoke", "refuse")
#: States in which the person's last word was no.
_SAID_NO = frozenset({State.REFUSED, State.WITHDRAWN})
#: States that rest on a notice the person agreed to (given once, under that version).
_AGREED = frozenset({State.GIVEN, State.EXPIRED, State.INVALIDATED, State.WITHDRAWN})
#: The notice fields a person is shown the change of, in this order.
DIFF_FIELDS = ("title", "description", "data_categories", "lawful_basis", "validity_days")


@dataclass(frozen=True)
class Difference:
    """One notice field that changed between the version agreed to and the current one (the
    title and description in the reader's language; ``*_lang``: the language of that text)."""

    field: str
    before: str | int | list[str]
    after: str | int | list[str]
    before_lang: str | None = None
    after_lang: str | None = None


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
    given_at: datetime | None = None
    lawful_basis: str = ""
    data_categories: list[str] = field(default_factory=list)
    #: The systems registered to receive the purpose, by name.
    recipients: list[str] = field(default_factory=list)
    #: The notice version the person agreed to, when it is older than the current one.
    agreed_version: int | None = None
    #: What changed since that version (empty when nothing did, or nothing was agreed).
    changes: list[Difference] = field(default_factory=list)
    #: The language the title and the description are written in.
    title_lang: str = i18n.DEFAULT
    description_lang: str = i18n.DEFAULT

    @property
    def asked(self) -> bool:
        """Whether the page asks this person yes or no for the purpose (not in force now, and
        the last word was not no; or in force on a notice that needs confirming)."""
        if self.state == State.GIVEN.value:
            return self.reconfirm
        return self.state not in {s.value for s in _SAID_NO}


@dataclass(frozen=True)
class HistoryEntry:
    """One of the subject's own consent events, as the preference page lists it."""

    occurred_at: datetime
    purpose: str
    title: str
    action: str
    state: str
    channel: str
    actor_type: str
    title_lang: str = i18n.DEFAULT


def recipients(session: Session, keys: list[str]) -> dict[str, list[str]]:
    """The systems registered for each purpose (by key), by display name (else name), sorted."""
    found: dict[str, list[str]] = {}
    for key, name, display in session.exec(
        select(Purpose.key, System.name, System.display_name)
        .join(SystemPurpose, col(SystemPurpose.purpose_id) == Purpose.id)
        .join(System, col(System.id) == SystemPurpose.system_id)
        .where(col(Purpose.key).in_(keys))
    ).all():
        found.setdefault(key, []).append(display or name)
    return {key: sorted(names, key=str.casefold) for key, names in found.items()}


def text_locale(subject: Subject, locale: str | None) -> str | None:
    """The tag to look notice texts up with: the subject's own (``fr-ca``) when it is of the
    page's language, else the page's language."""
    page = i18n.supported(locale)
    return subject.locale if subject.locale and i18n.supported(subject.locale) == page else page


def _text(version: PurposeVersion, locale: str | None) -> purposes.NoticeText:
    return purposes.text_for(version, locale)


def differences(
    before: PurposeVersion, after: PurposeVersion, locale: str | None = None
) -> list[Difference]:
    """The notice fields that differ between two versions, in ``DIFF_FIELDS`` order; the title
    and description as a reader of ``locale`` sees them."""
    old, new = _text(before, locale), _text(after, locale)
    langs = {
        "title": (old.title_locale, new.title_locale),
        "description": (old.description_locale, new.description_locale),
    }
    found = []
    for name in DIFF_FIELDS:
        was, now = getattr(before, name), getattr(after, name)
        if name in langs:
            was, now = getattr(old, name), getattr(new, name)
        if was != now:
            b, a = langs.get(name, (None, None))
            found.append(
                Difference(
                    name,
                    was,
                    now,
                    (b or i18n.DEFAULT) if name in langs else None,
                    (a or i18n.DEFAULT) if name in langs else None,
                )
            )
    return found


def _changes(
    session: Session, key: str, agreed: int, current: PurposeVersion, locale: str | None
) -> list[Difference]:
    old = next((v for _, v in purposes.versions(session, key) if v.version == agreed), None)
    return differences(old, current, locale) if old is not None else []


def rows(
    session: Session, subject: Subject, only: Purpose | None = None, locale: str | None = None
) -> list[Row]:
    """Each purpose (or just ``only``) with the subject's consent for it, as the check sees it,
    its notice in ``locale`` (see ``text_locale``; default: the default text)."""
    now = utcnow()
    lang = text_locale(subject, locale)
    current = {v.purpose: v for v in lifecycle.current(session, subject.external_id)}
    infos = purposes.info(session)
    notices = [(k, n) for k, n in purposes.list_current(session) if only is None or k == only.key]
    receivers = recipients(session, [k for k, _ in notices])
    found = []
    for key, notice in notices:
        view = current.get(key)
        # As the access check reports it: a given consent past its validity end is expired.
        state = effective_state(view.state, view.valid_until, now) if view else None
        agreed = (
            view.purpose_version
            if view and view.state in _AGREED and view.purpose_version < notice.version
            else None
        )
        text = _text(notice, lang)
        found.append(
            Row(
                key,
                text.title,
                text.description,
                state.value if state else None,
                view.valid_until if view else None,
                view.purpose_version if view else None,
                notice.version,
                bool(
                    view
                    and view.state == State.GIVEN
                    and view.purpose_version < infos[key].material_version
                ),
                bool(view and view.state == State.GIVEN),
                given_at=view.given_at if view else None,
                lawful_basis=notice.lawful_basis,
                data_categories=list(notice.data_categories),
                recipients=receivers.get(key, []),
                agreed_version=agreed,
                changes=_changes(session, key, agreed, notice, lang) if agreed else [],
                title_lang=text.title_locale or i18n.DEFAULT,
                description_lang=text.description_locale or i18n.DEFAULT,
            )
        )
    return found


def renewable(row: Row) -> bool:
    """Given and still valid: a consent whose validity has ended can only be given again."""
    return row.state == State.GIVEN.value


def history(session: Session, subject: Subject, locale: str | None = None) -> list[HistoryEntry]:
    """The subject's own consent events, newest first (read from that subject's history only),
    each purpose named by its current title in ``locale``."""
    lang = text_locale(subject, locale)
    texts = {k: _text(n, lang) for k, n in purposes.list_current(session)}
    found = []
    for key, e in reversed(lifecycle.history(session, subject.external_id)):
        text = texts.get(key)
        found.append(
            HistoryEntry(
                e.occurred_at,
                key,
                text.title if text else key,
                e.action,
                e.state,
                e.channel,
                e.actor_type,
                title_lang=(text.title_locale if text else None) or i18n.DEFAULT,
            )
        )
    return found


def _current(session: Session, subject: Subject, purpose_key: str) -> lifecycle.ConsentView | None:
    views = lifecycle.current(session, subject.external_id)
    return next((v for v in views if v.purpose == purpose_key), None)


def _in_force(view: lifecycle.ConsentView | None) -> bool:
    if view is None:
        return False
    return effective_state(view.state, view.valid_until, utcnow()) is State.GIVEN


# Long: one branch per answer keeps the whole meaning of each answer in one place.
def act(
    session: Session, action: str, subject: Subject, purpose_key: str, channel: Channel
) -> tuple[Outcome, lifecycle.Change | None]:
    """Do what the person asked (revoke, renew, grant or refuse; ``LinkAction`` values are
    the first three). The answer says what happened: 'done', or 'unchanged' when it already
    was so. ``NotFound`` for an unknown purpose or action."""
    actor = Actor(ActorType.SUBJECT, channel)
    ext = subject.external_id
    info = purposes.get(session, purpose_key)
    state = _current(session, subject, purpose_key)
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
            if state is not None and _in_force(state):
                if state.purpose_version >= info.current_version:
                    return "unchanged", None
                return "done", lifecycle.renew(session, ext, purpose_key, actor)
            return "done", lifecycle.grant(session, ext, purpose_key, actor)
        if action == "refuse":
            if state is not None and state.state in _SAID_NO:
                return "unchanged", None
            if _in_force(state):
                raise TransitionNotAllowed("this consent is given: withdraw it instead")
            return "done", lifecycle.refuse(session, ext, purpose_key, actor)
    except TransitionNotAllowed:
        if action == LinkAction.REVOKE:
            return "unchanged", None  # a concurrent click got there first, or it had ended
        after = _current(session, subject, purpose_key) if action == "refuse" else None
        if after is not None and after.state in _SAID_NO:
            return "unchanged", None  # a concurrent click got there first
        raise
    raise NotFound(f"unknown action {action!r}")


def say_no(
    session: Session, subject: Subject, purpose_key: str, channel: Channel
) -> tuple[str, Outcome]:
    """ "No, thanks" on a request page: which answer it was recorded as (``refuse``, or
    ``revoke`` when it declines new terms of a consent still in force) and what it did."""
    if _in_force(_current(session, subject, purpose_key)):
        outcome, _ = act(session, LinkAction.REVOKE, subject, purpose_key, channel)
        return LinkAction.REVOKE.value, outcome
    outcome, _ = act(session, "refuse", subject, purpose_key, channel)
    return "refuse", outcome


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
