"""Links on demand: a support agent issues a signed link for a person, or a person asks for a
fresh preference link by email.

``issue_for`` (the CLI's ``consentflow link`` and the API's ``POST /subjects/{id}/links``) makes a
link for one subject and action (and purpose) and records who issued it: one ``link.issued``
audit entry with the pseudonymous subject ref, the action, the purpose and the expiry, never the
token. It changes no consent.

``request_by_email`` (the public page ``/link/new``) is the person's side, in two steps so that
nothing slow or observable happens while the page is answered:

1. ``request_by_email`` (in the request's transaction): find the subject whose address is the
   one typed (``match_key``: the typed value goes through the address rule,
   ``addresses.normalise``, so ``ann@xn--bcher-kva.example`` finds ``ann@bücher.example`` and
   the domain's case never matters; the local part is compared case-blind too, as
   ``mail.address_hash`` compares for suppression; a value the rule refuses finds nobody; the
   address is never stored or logged), check it is mailable (not suppressed) and under
   ``CONSENTFLOW_LINK_REQUESTS_PER_ADDRESS`` emails in the last hour, then record a ``claimed``
   ``email_message`` of kind ``preference_link`` with a fresh Message-ID and one
   ``link.requested`` audit entry (subject ref only). Returns a ``Pending`` to send, or None.
2. ``send`` (after the page was answered, in a transaction of its own): build the preference
   link, render the ``preference_link`` templates in the subject's language, send it over SMTP
   (``mail.Mailer``) and record the outcome on the message: ``sent``, ``deferred`` (tried once;
   the person can ask again), ``bounced`` (the address is suppressed, as the sweeps do) or
   ``failed`` with its reason (the message cannot be built: a stored address the rule refuses,
   ``mail.compose``'s ``InvalidInput``; or the server lacks SMTPUTF8 for it), as the sweeps
   record it (``sweeps.claims``): not suppressed, and it never raises out of the background
   task.

No account enumeration: the caller answers the same page whatever step 1 returns (an unknown
address, a suppressed one, one over its limit and a known one look alike), and nothing is sent
for an unknown address. The per-address limit is counted from ``email_message`` rows, so it holds
across processes and restarts; requests that found nobody leave no row and are limited per client
by the web door. Failure modes: ``InvalidInput`` for a bad action or a purpose where none fits
(``issue_for``); ``NotFound`` for an unknown subject or purpose. ``send`` never raises for SMTP
trouble. Privacy: addresses and tokens never reach a log, an audit entry or an error text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, or_
from sqlmodel import Session, col, select

from consentflow import addresses, audit, db, links, mail, purposes, subjects
from consentflow.actors import Actor, audit_fields
from consentflow.errors import InvalidInput
from consentflow.keys import reference_key
from consentflow.links import LinkAction
from consentflow.mail import Kind, SendStatus
from consentflow.models import EmailMessage, EmailSuppression, Subject, utcnow
from consentflow.settings import get_settings

#: The window of the per-address limit.
WINDOW = timedelta(hours=1)
#: How long an emailed preference link works.
EMAILED_LINK_TTL = timedelta(days=7)
CLAIMED = "claimed"
#: Actions that need a purpose, and those that take none.
_NEEDS_PURPOSE = {LinkAction.RENEW, LinkAction.GRANT}
_NO_PURPOSE = {LinkAction.PREFERENCES, LinkAction.ERASE}


@dataclass(frozen=True)
class IssuedLink:
    """A link issued for a subject: ``url`` holds the token; show it once, never log it."""

    subject: str
    action: LinkAction
    purpose: str | None
    url: str = field(repr=False)
    expires_at: datetime


def parse_action(value: str) -> LinkAction:
    """``preferences``, ``renew``, ``revoke``, ``grant`` or ``erase``; ``InvalidInput``
    otherwise."""
    try:
        return LinkAction(value.strip().lower())
    except ValueError:
        choices = ", ".join(a.value for a in LinkAction)
        raise InvalidInput(f"bad link action {value!r}: use one of {choices}") from None


def issue_for(
    session: Session,
    external_id: str,
    action: LinkAction | str,
    purpose: str | None = None,
    *,
    actor: Actor,
    ttl: timedelta = links.DEFAULT_TTL,
) -> IssuedLink:
    """A signed link for one subject, and one ``link.issued`` audit entry naming ``actor``.

    ``renew`` and ``grant`` need a purpose; ``preferences`` takes none; ``revoke`` without a
    purpose withdraws everything."""
    action = parse_action(action) if isinstance(action, str) else action
    purpose = purpose.strip() if purpose else None
    if action in _NEEDS_PURPOSE and not purpose:
        raise InvalidInput(f"a {action.value} link needs a purpose")
    if action in _NO_PURPOSE and purpose:
        raise InvalidInput(f"a {action.value} link is for all purposes: leave the purpose out")
    subject = subjects.require(session, external_id)
    purpose_id = purposes.get(session, purpose).id if purpose else None
    now = utcnow()
    token = links.issue(session, action, subject.id or 0, purpose_id, ttl=ttl, now=now)
    expires_at = now + ttl
    audit.record(
        session,
        "link.issued",
        subject_ref=subject.subject_ref,
        purpose_key=purpose,
        detail={"action": action.value, "expires_at": expires_at.isoformat()},
        **audit_fields(actor),
    )
    return IssuedLink(subject.external_id, action, purpose, links.url(token), expires_at)


# --------------------------------------------------------------------------------------------
# A person asks for a new link
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pending:
    """A preference-link email recorded as ``claimed``, to be sent by ``send``."""

    row_id: int
    subject_id: int
    message_id: str


def normalise_address(address: str) -> str:
    """The typed value trimmed, for the page's first look; ``match_key`` does the real work."""
    return address.strip()


def match_key(address: str) -> str | None:
    """The stored form of a typed address (``addresses.normalise``: the domain lowercased, IDNA
    A-labels as Unicode, NFC), or None if the address rule refuses it (it then matches nobody).

    The local part keeps its case here, as stored; ``_find`` compares it case-blind (see there).
    """
    try:
        return addresses.normalise(address)
    except InvalidInput:
        return None


def _find(session: Session, address: str) -> Subject | None:
    """The subject with this address (one query; the first registered if several share it).

    Equal as stored (``match_key``), or equal lowercased: RFC 5321 lets a server treat the local
    part's case as significant, but no real mailbox does, and the suppression list already
    treats ``Ann@`` and ``ann@`` as one (``mail.address_hash``). Matching case-blind sends
    nothing to the wrong person: the link always goes to the STORED address, never the typed
    one. Limit: on SQLite ``lower()`` folds ASCII letters only, so a non-ASCII local part typed
    in another case than stored matches on PostgreSQL only (typed as stored, it always does).
    """
    wanted = match_key(address)
    if wanted is None:
        return None
    stored = col(Subject.email)
    stmt = (
        select(Subject)
        .where(or_(stored == wanted, func.lower(func.trim(stored)) == wanted.lower()))
        .order_by(col(Subject.id))
        .limit(1)
    )
    return session.exec(stmt).first()


def recent_requests(session: Session, subject_id: int, now: datetime) -> int:
    """Preference-link emails to the subject in the last ``WINDOW`` that went out or may have
    (``deferred`` ones never reached the person and do not count)."""
    stmt = (
        select(func.count())
        .select_from(EmailMessage)
        .where(
            EmailMessage.subject_id == subject_id,
            EmailMessage.kind == Kind.PREFERENCE_LINK.value,
            col(EmailMessage.created_at) > now - WINDOW,
            EmailMessage.status != SendStatus.DEFERRED.value,
        )
    )
    return int(session.exec(stmt).one())


def _suppressed(session: Session, address: str) -> bool:
    key = mail.address_hash(reference_key(session), address)
    return session.get(EmailSuppression, key) is not None


def request_by_email(
    session: Session, address: str, *, now: datetime | None = None
) -> Pending | None:
    """Step 1: record a preference-link email for the subject with ``address``, if there is
    one, it can be mailed and it is under its hourly limit; else None (and nothing written)."""
    now = now or utcnow()
    subject = _find(session, address)
    if subject is None or subject.id is None or not subject.email:
        return None
    if _suppressed(session, subject.email):
        return None
    # Serialise two requests for one subject (a row lock on PostgreSQL; SQLite holds the
    # database), so the count below cannot be passed by racing it.
    session.exec(select(Subject.id).where(Subject.id == subject.id).with_for_update()).one()
    if recent_requests(session, subject.id, now) >= get_settings().link_requests_per_address:
        return None
    message = EmailMessage(
        message_id=mail.new_message_id(),
        subject_id=subject.id,
        kind=Kind.PREFERENCE_LINK.value,
        status=CLAIMED,
        created_at=now,
    )
    session.add(message)
    session.flush()
    audit.record(
        session,
        "link.requested",
        subject_ref=subject.subject_ref,
        channel="web",
        actor_type="subject",
        detail={"message_id": message.message_id},
    )
    return Pending(message.id or 0, subject.id, message.message_id)


def _compose(
    session: Session, pending: Pending, now: datetime
) -> tuple[mail.Outgoing, str] | mail.SendResult:
    """The email of ``pending`` and its address's suppression key; or, when it cannot be built,
    the result to record: ``deferred`` if its subject lost its address meanwhile, ``failed``
    with the reason if the message cannot be composed (``mail.compose`` refuses a stored
    address the address rule refuses with ``InvalidInput``; anything else wrong with this one
    message is treated alike, as ``sweeps.claims`` does). The reason never names the address."""
    subject = session.get(Subject, pending.subject_id)
    if subject is None or not subject.email:
        return mail.SendResult(SendStatus.DEFERRED, None, "the subject has no address")
    token = links.issue(
        session, LinkAction.PREFERENCES, pending.subject_id, ttl=EMAILED_LINK_TTL, now=now
    )
    context = {
        "preferences_url": links.url(token),
        "expires_on": now + EMAILED_LINK_TTL,
    }
    rendered = mail.render(Kind.PREFERENCE_LINK, subject.locale, context)
    try:
        outgoing = mail.compose(rendered, to=subject.email, message_id=pending.message_id)
    except Exception as exc:  # this message alone: recorded failed, never raised (see above)
        why = mail.redact(f"{exc.__class__.__name__}: {exc}")
        return mail.SendResult(SendStatus.FAILED, None, f"not sent: {why}")
    return outgoing, mail.address_hash(reference_key(session), subject.email)


def send(pending: Pending, *, mailer: mail.Mailer | None = None) -> SendStatus:
    """Step 2: send the recorded email and record its outcome (own transactions). A message
    that cannot be built is recorded ``failed`` with its reason, not raised (``_compose``)."""
    now = utcnow()
    with db.session_scope() as session:
        built = _compose(session, pending, now)
    suppression_key = None
    if isinstance(built, mail.SendResult):
        result = built
    else:
        outgoing, suppression_key = built
        if mailer is not None:
            result = mailer.send([outgoing]).results[0]
        else:
            with mail.Mailer() as own:
                result = own.send([outgoing]).results[0]
    with db.session_scope() as session:
        row = session.get(EmailMessage, pending.row_id)
        if row is not None:
            row.status = result.status.value
            row.error = result.error
            row.sent_at = utcnow() if result.status is SendStatus.SENT else None
            session.add(row)
        bounced = suppression_key is not None and result.status is SendStatus.BOUNCED
        if bounced and suppression_key and session.get(EmailSuppression, suppression_key) is None:
            session.add(EmailSuppression(address_hash=suppression_key, reason=result.error or ""))
    return result.status


__all__ = [
    "IssuedLink",
    "Pending",
    "issue_for",
    "match_key",
    "normalise_address",
    "parse_action",
    "recent_requests",
    "request_by_email",
    "send",
]
