"""A subject's consent receipt in two standard forms: ISO/IEC TS 27560 as the W3C DPV guide
publishes it ("Consent Records and Receipts as per ISO/IEC TS 27560:2023 using DPV": JSON-LD with
the DPV vocabulary), and the Kantara Initiative Consent Receipt v1.1.

``build(session, external_id, fmt)``: ``iso`` (the default) is a ``dpv:ConsentReceipt`` wrapping
the subject's whole consent record (``consent_record``): one processing block per purpose the
subject ever had a change on (notice shown, language, purpose, ``pii_information``,
``pii_controllers``, storage locations, retention period, jurisdiction,
``recipient_third_parties``: the enabled systems subscribed to the purpose as party objects,
withdrawal method, current state) with every event in history order (time,
``validity_duration``, ``entity_id``, consent type, the DPV ``ConsentStatus`` term). ``CONTEXT``,
embedded as ``@context`` (so it expands with no network), maps every key to the IRI the guide
names, or to an extension under ``urn:consentflow:receipt:``. ``kantara`` is the v1.1 receipt of
the consents given at issue time (that form has no state; the ISO form has the whole history).

Invariants: the subject is named by its external id (what the person knows), never by email;
controller, jurisdiction, storage and retention come from configuration (the controller the
people's pages show); a fresh receipt id per call, a record id stable per subject (UUIDv5 of the
subject ref); times ISO 8601 UTC with ``Z`` (Kantara: Unix seconds). Read-only; the API, the
people's download and the CLI build the same document. Failure modes: ``NotFound`` (unknown
subject), ``InvalidInput`` (unknown format); nothing else for a consistent database.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlmodel import Session, col, select

from consentflow import lifecycle, purposes, subjects
from consentflow.errors import InvalidInput
from consentflow.models import (
    Action,
    ActorType,
    ConsentEvent,
    Purpose,
    PurposeVersion,
    State,
    Subject,
    System,
    SystemPurpose,
    SystemStatus,
    utcnow,
)
from consentflow.settings import Settings, get_settings, parse_places
from consentflow.timeutil import as_utc

FORMATS = ("iso", "kantara")
RECEIPT_PROFILE = "https://w3id.org/dpv/schema/dpv-27560#receipt"
RECORD_PROFILE = "https://w3id.org/dpv/schema/dpv-27560#record"
KANTARA_VERSION = "KI-CR-v1.1.0"
#: A namespace for record ids, so one subject's record id is the same on every receipt.
_NAMESPACE = uuid.UUID("1b1d9a1e-6f0c-5a7e-9d43-27560c0a5e11")
#: The receipt's language when the subject has none recorded.
DEFAULT_LANGUAGE = "en"
_ISO_DURATION = re.compile(r"^P(?=\d|T\d)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(\d+H)?(\d+M)?(\d+S)?)?$")

#: The JSON-LD context's terms: ``key IRI [type]`` (type ``@id``: the value is an IRI; ``dt``: an
#: ``xsd:dateTime``), three to a line. The IRIs are those the DPV guide's field table (section
#: 8.2) and field sections (9, 10) name; ``cf:`` marks consentflow's extensions. Prefixes first.
_TERMS = """
dpv https://w3id.org/dpv# | dct http://purl.org/dc/terms/ | loc https://w3id.org/dpv/loc#
xsd http://www.w3.org/2001/XMLSchema# | rdf http://www.w3.org/1999/02/22-rdf-syntax-ns#
skos http://www.w3.org/2004/02/skos/core# | schema https://schema.org/ | cf urn:consentflow:receipt:
schema_version dct:conformsTo @id | receipt_id dct:identifier | receipt_issued_at dct:created dt
consent_record dpv:hasRecordOfActivity | record_id dct:identifier | record_created_at dct:created dt
pii_principal_id dpv:hasDataSubject | pii_principal_ref cf:subjectRef | language dct:language
processing dpv:hasProcess | purposes dpv:hasPurpose | purpose dct:identifier
title dct:title | description dct:description | privacy_notice dpv:hasNotice
notice_id dct:identifier | version schema:version | published_at dct:issued dt
material_change cf:materialChange | lawful_basis dpv:hasLegalBasis @id
pii_information dpv:hasPersonalData | pii_type skos:prefLabel | special_pii_category cf:special
pii_controllers dpv:hasDataController | recipient_third_parties dpv:hasRecipient
storage_locations dpv:hasStorageCondition | retention_period dpv:hasStorageCondition
location dpv:hasLocation @id | duration dpv:hasDuration | value rdf:value
jurisdiction dpv:hasJurisdiction @id | withdrawal_method dpv:hasConsentControl
exercised_at dpv:isExercisedAt @id | consent_status dpv:hasConsentStatus @id | state cf:state
given_at cf:givenAt dt | valid_until dct:valid dt | events dct:hasPart | party_url schema:url @id
event_id dct:identifier | sequence cf:sequence | event_time dpv:isIndicatedAtTime dt
recorded_at cf:recordedAt dt | validity_duration dpv:hasDuration | entity_id dpv:isIndicatedBy
event_by cf:eventBy | event_type dpv:hasLegalBasis @id | event_state dpv:hasConsentStatus @id
action cf:action | previous_state cf:previousState | expression_method dpv:hasIndicationMethod
reason dpv:hasJustification | party_type @type | party_id dct:identifier
party_name dpv:hasName | party_address dpv:hasAddress | party_contact dpv:hasContact
party_phone schema:telephone | data_protection_officer dpv:hasDataProtectionOfficer
"""


def _context() -> dict[str, Any]:
    terms: dict[str, Any] = {}
    for entry in _TERMS.replace("\n", "|").split("|"):
        if entry.strip():
            key, iri, *kind = entry.split()
            typed = {"@id": "@id", "dt": "xsd:dateTime"}.get(kind[0]) if kind else None
            terms[key] = {"@id": iri, "@type": typed} if typed else iri
    return terms


#: The JSON-LD context, embedded in every ISO receipt as ``@context``.
CONTEXT: dict[str, Any] = _context()

#: Each consent state as a DPV ConsentStatus term (a renewal: ``RENEWED``).
STATUS: dict[State, str] = {
    State.REQUESTED: "dpv:ConsentRequested",
    State.GIVEN: "dpv:ConsentGiven",
    State.REFUSED: "dpv:ConsentRefused",
    State.WITHDRAWN: "dpv:ConsentWithdrawn",
    State.EXPIRED: "dpv:ConsentExpired",
    State.INVALIDATED: "dpv:ConsentInvalidated",
}
RENEWED = "dpv:RenewedConsentGiven"
#: GDPR Art. 6(1) lawful bases (``models.LawfulBasis``) as DPV legal basis terms.
LAWFUL_BASES = {
    "consent": "dpv:Consent",
    "contract": "dpv:Contract",
    "legal_obligation": "dpv:LegalObligation",
    "vital_interests": "dpv:VitalInterest",
    "public_task": "dpv:PublicInterest",
    "legitimate_interests": "dpv:LegitimateInterest",
}
#: What a purpose without declared data categories processes: the id the person is known by,
#: which consentflow gives every receiving system (webhooks, access checks).
IDENTIFIER = "identifier"
#: The consent type of every event: a person's direct action for one purpose (a yes or no
#: button, a link, a request to support), never inferred.
CONSENT_TYPE = "dpv:ExpressedConsent"
WITHDRAWAL = (
    "The link in any consent email (one click), the preference page reached from it (a new "
    "link is sent on request), or a request to the controller."
)
_EVENT_BY = {ActorType.SUBJECT: "data-subject", ActorType.AGENT: "delegated-agent"}
_CHANNELS = {
    "web": "the preference page",
    "email_link": "a link in a consent email",
    "support": "a request to support",
    "api": "the controller's systems (API)",
    "import": "imported from an earlier consent platform",
    "system": "consentflow (expiry, invalidation)",
}


def status_term(action: Action | str | None, state: State | str) -> str:
    """The DPV ConsentStatus term of a change (or a current state): its state's term, but a
    renewal that leaves the consent given is ``dpv:RenewedConsentGiven``."""
    state = State(state)
    if state is State.GIVEN and action == Action.RENEW:
        return RENEWED
    return STATUS[state]


def language(locale: str | None) -> str:
    """The receipt's language: the subject's locale as recorded, or ``DEFAULT_LANGUAGE``."""
    return locale.strip() if locale and locale.strip() else DEFAULT_LANGUAGE


def iso_duration(span: timedelta) -> str:
    """``timedelta(days=365)`` -> ``P365D``; seconds as ``T..H..M..S``; never negative."""
    seconds = max(int(span.total_seconds()), 0)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    time = "".join(f"{n}{u}" for n, u in ((hours, "H"), (minutes, "M"), (secs, "S")) if n)
    if not days and not time:
        return "PT0S"
    return "P" + (f"{days}D" if days else "") + (f"T{time}" if time else "")


def _z(ts: datetime) -> str:
    return as_utc(ts).isoformat().replace("+00:00", "Z")


def _clean(value: Any) -> Any:
    """The document without ``None`` values (JSON-LD drops them; the receipt leaves them out)."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


class Recipient(NamedTuple):
    """A system that receives a purpose: its registered name and the name people see."""

    name: str
    display_name: str


@dataclass
class Facts:
    """Everything a receipt says, read once (both forms are built from it)."""

    subject: Subject
    issued_at: datetime
    settings: Settings
    events: list[tuple[str, ConsentEvent]]
    current: dict[str, lifecycle.ConsentView]
    shown: dict[str, PurposeVersion]
    recipients: dict[str, list[Recipient]]

    @property
    def public_url(self) -> str:
        return self.settings.public_url.rstrip("/")

    @property
    def sensitive(self) -> frozenset[str]:
        raw = self.settings.receipt_sensitive_categories.split(",")
        return frozenset(c.strip().casefold() for c in raw if c.strip())

    def categories(self, key: str) -> list[str]:
        """The notice's data categories; none declared: the identifier every system is told."""
        return list(self.shown[key].data_categories) or [IDENTIFIER]

    def status(self, key: str) -> str | None:
        """The DPV term of the purpose's consent at issue time (None: no consent row)."""
        view = self.current.get(key)
        if view is None:
            return None
        last = next((e.action for k, e in reversed(self.events) if k == key), None)
        return status_term(last if view.state is State.GIVEN else None, view.state)


def gather(session: Session, external_id: str) -> Facts:
    """The facts of one subject's receipt; ``NotFound`` if there is no such subject."""
    subject = subjects.require(session, external_id)
    issued_at = utcnow()
    events = lifecycle.history(session, external_id)
    # The current state as the access check sees it when the receipt is issued: a given consent
    # past its validity end reads as expired (``lifecycle.effective_state``), sweep or no sweep.
    current = {
        v.purpose: replace(v, state=lifecycle.effective_state(v.state, v.valid_until, issued_at))
        for v in lifecycle.current(session, external_id)
    }
    keys = sorted({k for k, _ in events})
    notices: dict[tuple[str, int], PurposeVersion] = {}
    recipients: dict[str, list[Recipient]] = {}
    if keys:
        for key, notice in session.exec(
            select(Purpose.key, PurposeVersion)
            .join(PurposeVersion, col(PurposeVersion.purpose_id) == Purpose.id)
            .where(col(Purpose.key).in_(keys))
        ).all():
            notices[(key, notice.version)] = notice
        for key, system in session.exec(
            select(Purpose.key, System)
            .join(SystemPurpose, col(SystemPurpose.purpose_id) == Purpose.id)
            .join(System, col(System.id) == SystemPurpose.system_id)
            .where(col(Purpose.key).in_(keys), col(System.status) != SystemStatus.DISABLED)
            .order_by(col(System.name))
        ).all():
            shown_name = system.display_name or system.name
            recipients.setdefault(key, []).append(Recipient(system.name, shown_name))
    infos = purposes.info(session, keys) if keys else {}
    shown = {}
    for key in keys:
        # The notice the current state was given under, or the latest one without a state.
        view = current.get(key)
        version = view.purpose_version if view else infos[key].current_version
        shown[key] = notices[(key, version)]
    return Facts(subject, issued_at, get_settings(), events, current, shown, recipients)


def build(session: Session, external_id: str, fmt: str = "iso") -> dict[str, Any]:
    """The receipt for one subject in ``fmt`` (``iso`` or ``kantara``)."""
    if fmt not in FORMATS:
        raise InvalidInput(f"format: use one of {', '.join(FORMATS)}, not {fmt[:20]!r}")
    facts = gather(session, external_id)
    return iso(facts) if fmt == "iso" else kantara(facts)


# -- the ISO/IEC TS 27560 form -----------------------------------------------------------------


def controller_party(facts: Facts) -> dict[str, Any]:
    """The controller as an ISO/IEC TS 27560 party (id, name, address, contact, type, and its
    privacy notice, telephone and DPO when configured). Address and contact are mandatory: an
    unset address is the web app's public URL, an unset contact the privacy notice or that URL.
    """
    c = facts.settings.controller
    return {
        "party_type": "dpv:DataController",
        "party_id": c.privacy_url or c.name,
        "party_name": c.name,
        "party_address": c.address or facts.public_url,
        "party_contact": c.contact or c.privacy_url or facts.public_url,
        "party_url": c.privacy_url,
        "party_phone": c.phone,
        "data_protection_officer": (
            {"party_type": "dpv:DataProtectionOfficer", "party_contact": c.dpo} if c.dpo else None
        ),
    }


def recipient_party(facts: Facts, system: Recipient) -> dict[str, Any]:
    """A receiving system as a party: its registered name and display name; the controller
    answers for it, so its address and contact are the controller's."""
    controller = controller_party(facts)
    return {
        "party_type": "dpv:Recipient",
        "party_id": system.name,
        "party_name": system.display_name,
        "party_address": controller["party_address"],
        "party_contact": controller["party_contact"],
    }


def _entity(facts: Facts, e: ConsentEvent) -> str:
    """Who performed the event (``entity_id``): the person themselves, else the controller
    (its support agent on the person's behalf, an import, or consentflow's own sweeps)."""
    if e.actor_type == ActorType.SUBJECT:
        return facts.subject.external_id
    return str(controller_party(facts)["party_id"])


def _validity(e: ConsentEvent) -> dict[str, Any]:
    """How long what the event recorded stands (``validity_duration``)."""
    if e.state == State.GIVEN and e.valid_until is not None:
        span = as_utc(e.valid_until) - as_utc(e.occurred_at)
        return {"@type": "dpv:TemporalDuration", "value": iso_duration(span)}
    if e.state == State.GIVEN:
        return {"@type": "dpv:EndlessDuration"}
    return {"@type": "dpv:UntilEventDuration", "value": "until this consent next changes"}


def _event(facts: Facts, key: str, e: ConsentEvent) -> dict[str, Any]:
    return {
        "event_id": str(e.id),
        "sequence": e.seq,
        "event_time": _z(e.occurred_at),
        "recorded_at": _z(e.recorded_at),
        "validity_duration": _validity(e),
        "valid_until": _z(e.valid_until) if e.valid_until else None,
        "entity_id": _entity(facts, e),
        "event_by": _EVENT_BY.get(ActorType(e.actor_type), e.actor_type),
        "event_type": CONSENT_TYPE,
        "event_state": status_term(e.action, e.state),
        "action": e.action,
        "previous_state": e.previous_state,
        "privacy_notice": f"{key}:v{e.purpose_version}",
        "expression_method": e.channel,
        "reason": e.reason,
    }


def _notice(key: str, v: PurposeVersion, lang: str) -> dict[str, Any]:
    return {
        "@type": "dpv:ConsentNotice",
        "notice_id": f"{key}:v{v.version}",
        "version": v.version,
        "title": v.title,
        "description": v.description or None,
        "language": lang,
        "published_at": _z(v.created_at),
        "material_change": v.material,
    }


def _pii(facts: Facts, category: str) -> dict[str, Any]:
    special = category.casefold() in facts.sensitive
    kind = ["dpv:PersonalData", "dpv:SpecialCategoryPersonalData"] if special else None
    return {
        "@type": kind or "dpv:PersonalData",
        "pii_type": category,
        "special_pii_category": special,
    }


def _storage(facts: Facts) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The storage locations and the retention period (``dpv:StorageCondition``s)."""
    s = facts.settings
    places = parse_places(s.receipt_storage_locations) or (s.receipt_jurisdiction,)
    locations = [{"@type": "dpv:StorageLocation", "location": f"loc:{p}"} for p in places]
    kind = "dpv:TemporalDuration" if _ISO_DURATION.match(s.receipt_retention) else None
    duration = {"@type": kind or "dpv:UntilEventDuration", "value": s.receipt_retention}
    return locations, {"@type": "dpv:StorageDuration", "duration": duration}


def _processing(facts: Facts, key: str, lang: str) -> dict[str, Any]:
    """One processing block: the notice shown, the current state and the purpose's events."""
    shown = facts.shown[key]
    view = facts.current.get(key)
    locations, retention = _storage(facts)
    return {
        "@type": "dpv:Process",
        "purposes": [{"@type": "dpv:Purpose", "purpose": key, "title": shown.title}],
        "privacy_notice": _notice(key, shown, lang),
        "language": lang,
        "lawful_basis": LAWFUL_BASES.get(shown.lawful_basis, "dpv:LegalBasis"),
        "pii_information": [_pii(facts, c) for c in facts.categories(key)],
        "pii_controllers": [controller_party(facts)],
        "storage_locations": locations,
        "retention_period": retention,
        "jurisdiction": f"loc:{facts.settings.receipt_jurisdiction}",
        "recipient_third_parties": [
            recipient_party(facts, r) for r in facts.recipients.get(key, [])
        ],
        "withdrawal_method": {
            "@type": "dpv:WithdrawConsent",
            "description": WITHDRAWAL,
            "exercised_at": f"{facts.public_url}/link/new",
        },
        "consent_status": facts.status(key),
        "state": view.state.value if view else None,
        "given_at": _z(view.given_at) if view and view.given_at else None,
        "valid_until": _z(view.valid_until) if view and view.valid_until else None,
        "events": [_event(facts, key, e) for k, e in facts.events if k == key],
    }


def iso(facts: Facts) -> dict[str, Any]:
    """The ISO/IEC TS 27560 receipt (JSON-LD) of the gathered facts."""
    subject = facts.subject
    lang = language(subject.locale)
    record_id = str(uuid.uuid5(_NAMESPACE, subject.subject_ref))
    return _clean(
        {
            "@context": CONTEXT,
            "@type": "dpv:ConsentReceipt",
            "schema_version": RECEIPT_PROFILE,
            "receipt_id": str(uuid.uuid4()),
            "receipt_issued_at": _z(facts.issued_at),
            "language": lang,
            "pii_principal_id": subject.external_id,
            "consent_record": {
                "@id": f"urn:uuid:{record_id}",
                "@type": "dpv:ConsentRecord",
                "schema_version": RECORD_PROFILE,
                "record_id": record_id,
                "record_created_at": _z(subject.created_at),
                "pii_principal_id": subject.external_id,
                "pii_principal_ref": subject.subject_ref,
                "pii_controllers": [controller_party(facts)],
                "processing": [_processing(facts, key, lang) for key in facts.shown],
            },
        }
    )


# -- the Kantara Consent Receipt v1.1 form ------------------------------------------------------


def _given(facts: Facts) -> list[str]:
    """The purposes whose consent is valid for processing at issue time."""
    return [k for k in facts.shown if facts.status(k) in (STATUS[State.GIVEN], RENEWED)]


def _kantara_purpose(facts: Facts, key: str) -> dict[str, Any]:
    shown, view = facts.shown[key], facts.current[key]
    until = f"valid until {_z(view.valid_until)}" if view.valid_until else "valid until withdrawn"
    systems = facts.recipients.get(key, [])
    purpose: dict[str, Any] = {
        "purpose": shown.title,
        "purposeCategory": [key],
        "consentType": "EXPLICIT" if shown.lawful_basis == "consent" else "N/A",
        "piiCategory": facts.categories(key),
        "termination": f"{until}; withdraw at any time at {facts.public_url}/link/new",
        "thirdPartyDisclosure": bool(systems),
    }
    if systems:
        purpose["thirdPartyName"] = ", ".join(r.display_name for r in systems)
    return purpose


def kantara(facts: Facts) -> dict[str, Any]:
    """The Kantara Consent Receipt v1.1 of the consents given at issue time."""
    c, s = facts.settings.controller, facts.settings
    given = _given(facts)
    latest = {k: e for k, e in facts.events}  # each purpose's last event, history order
    moments = [latest[k].occurred_at for k in given] or [e.occurred_at for _, e in facts.events]
    channels = [latest[k].channel for k in given] or [e.channel for _, e in facts.events]
    method = ", ".join(_CHANNELS.get(ch, ch) for ch in dict.fromkeys(channels))
    categories = {cat for k in given for cat in facts.categories(k)}
    spi = sorted(cat for cat in categories if cat.casefold() in facts.sensitive)
    controller: dict[str, Any] = {
        "piiController": c.name,
        "onBehalf": False,
        "contact": c.dpo or c.contact or c.name,
        "address": {"streetAddress": c.address} if c.address else {},
        "email": c.contact or "",
        "phone": c.phone or "",
    }
    if c.privacy_url:
        controller["piiControllerUrl"] = c.privacy_url
    return {
        "version": KANTARA_VERSION,
        "jurisdiction": s.receipt_jurisdiction,
        "consentTimestamp": int(as_utc(max(moments, default=facts.issued_at)).timestamp()),
        "collectionMethod": method or "none recorded",
        "consentReceiptID": str(uuid.uuid4()),
        "language": language(facts.subject.locale),
        "piiPrincipalId": facts.subject.external_id,
        "piiControllers": [controller],
        "policyUrl": c.privacy_url or facts.public_url,
        "services": [{"service": c.name, "purposes": [_kantara_purpose(facts, k) for k in given]}],
        "sensitive": bool(spi),
        "spiCat": spi,
    }
