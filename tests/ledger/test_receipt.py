"""Receipts that validate: the ISO/IEC TS 27560 form against a schema written from the W3C DPV
guide's table of mandatory fields, its JSON-LD expanded by pyld with no network (every key an IRI,
every DPV term a real one), and the Kantara v1.1 form against Kantara's published schema (kept
verbatim in ``receipt_schemas/``, see its README). Both databases.

The scenario gives one person every state and every action: requested then given then renewed
(``news``, received by an enabled and a disabled system), refused (``offers``, by a support
agent), withdrawn (``letters``), expired (``research``), invalidated after a material notice
change (``terms``) and imported (``health``, a category configured as sensitive).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pyld import jsonld
from sqlalchemy.engine import Engine

from consentflow import db, lifecycle, purposes, receipt, settings, subjects, systems
from consentflow.delivery import ops
from consentflow.errors import InvalidInput, NotFound
from consentflow.lifecycle import Actor, ImportRow
from consentflow.models import Action, ActorType, Channel, State, utcnow
from tests.support.web import bearer, client, seed

SCHEMAS = Path(__file__).parent / "receipt_schemas"
DAY = timedelta(days=1)
CONTROLLER = {
    "CONSENTFLOW_CONTROLLER_NAME": "Acme Bakery SA",
    "CONSENTFLOW_CONTROLLER_PRIVACY_URL": "https://acme.example/privacy",
    "CONSENTFLOW_CONTROLLER_CONTACT": "privacy@acme.example",
    "CONSENTFLOW_CONTROLLER_ADDRESS": "1 Rue du Pain, Paris",
    "CONSENTFLOW_CONTROLLER_DPO": "https://acme.example/dpo",
    "CONSENTFLOW_CONTROLLER_PHONE": "+33 1 23 45 67 89",
    "CONSENTFLOW_RECEIPT_JURISDICTION": "fr",
    "CONSENTFLOW_RECEIPT_STORAGE_LOCATIONS": "FR, DE",
    "CONSENTFLOW_RECEIPT_RETENTION": "P2Y",
    "CONSENTFLOW_RECEIPT_SENSITIVE_CATEGORIES": "Health data",
    "CONSENTFLOW_PUBLIC_URL": "https://consent.acme.example/",
}
#: Per purpose: (action, DPV ConsentStatus term) of each event, in history order.
EXPECTED = {
    "health": [("import", "dpv:ConsentGiven")],
    "letters": [("grant", "dpv:ConsentGiven"), ("revoke", "dpv:ConsentWithdrawn")],
    "news": [
        ("request", "dpv:ConsentRequested"),
        ("grant", "dpv:ConsentGiven"),
        ("renew", "dpv:RenewedConsentGiven"),
    ],
    "offers": [("refuse", "dpv:ConsentRefused")],
    "research": [("grant", "dpv:ConsentGiven"), ("expire", "dpv:ConsentExpired")],
    "survey": [("request", "dpv:ConsentRequested")],
    "terms": [("grant", "dpv:ConsentGiven"), ("invalidate", "dpv:ConsentInvalidated")],
}
EMAIL = "alice.person@example.org"


def _schema(name: str) -> jsonschema.protocols.Validator:
    text = (SCHEMAS / name).read_text(encoding="utf-8")
    # Kantara's published file opens with whole-line // comments, which JSON does not allow.
    schema = json.loads("\n".join(x for x in text.splitlines() if not x.strip().startswith("//")))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


ISO = _schema("iso-27560-dpv-receipt.schema.json")
KANTARA = _schema("kantara-consent-receipt-v1_1-schema.json")
DPV_TERMS = {
    line.split("#")[0].strip()
    for line in (SCHEMAS / "dpv-terms.txt").read_text(encoding="utf-8").splitlines()
    if line.split("#")[0].strip()
}


def _errors(validator: jsonschema.protocols.Validator, document: dict[str, Any]) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]


@pytest.fixture
def configured(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in CONTROLLER.items():
        monkeypatch.setenv(name, value)
    settings.get_settings.cache_clear()
    yield
    settings.get_settings.cache_clear()  # the next test reads its own environment


@pytest.fixture
def scenario(engine: Engine, configured: None) -> Engine:
    """Alice in every state, through every action (see the module docstring)."""
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=365, data_categories=["email", "name"])
        for key in ("offers", "letters", "research", "survey", "terms"):
            purposes.add(s, key, title=key.title(), validity_days=30, data_categories=["email"])
        purposes.add(
            s, "health", title="Care plan", validity_days=90, data_categories=["Health data"]
        )
        subjects.add(s, "alice", email=EMAIL, locale="fr")
        subjects.add(s, "bob", email="bob@example.org")
        systems.add(s, "crm", ["news", "letters"], display_name="Customer CRM")
        systems.add(s, "ads", ["news"], display_name="Ad partner")
        ops.set_status(s, "ads", "disable", reason="410 Gone")
    support = Actor(type=ActorType.AGENT, channel=Channel.SUPPORT, name="sam", reason="by phone")
    with db.session_scope(engine) as s:
        lifecycle.request(s, "alice", "news", Actor(channel=Channel.EMAIL_LINK))
        lifecycle.request(s, "alice", "survey", Actor(channel=Channel.EMAIL_LINK))
        lifecycle.refuse(s, "alice", "offers", support)
        lifecycle._single(s, Action.GRANT, "alice", "research", Actor(), now=utcnow() - 40 * DAY)
        for key in ("news", "letters", "terms"):
            lifecycle.grant(s, "alice", key, Actor(channel=Channel.WEB))
        lifecycle.grant(s, "bob", "news", Actor())
        alice = subjects.require(s, "alice").id
        assert alice is not None
        now = utcnow()
        row = ImportRow(
            alice, "health", State.GIVEN, given_at=now - DAY, valid_until=now + 89 * DAY
        )
        lifecycle.import_consents(s, [row], Actor(type=ActorType.IMPORT, channel=Channel.IMPORT))
    with db.session_scope(engine) as s:
        lifecycle.renew(s, "alice", "news", Actor(channel=Channel.WEB))
        lifecycle.revoke(s, "alice", "letters", Actor(channel=Channel.EMAIL_LINK))
        assert [c.external_id for c in lifecycle.expire_due(s)] == ["alice"]
        purposes.revise(s, "terms", material=True, title="Terms v2")
    with db.session_scope(engine) as s:
        assert [c.external_id for c in lifecycle.invalidate_stale(s, "terms")] == ["alice"]
    return engine


def _build(engine: Engine, fmt: str = "iso", who: str = "alice") -> dict[str, Any]:
    with db.session_scope(engine, readonly=True) as s:
        return receipt.build(s, who, fmt)


def _blocks(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {b["purposes"][0]["purpose"]: b for b in document["consent_record"]["processing"]}


# ------------------------------------------------------------------------ ISO/IEC TS 27560


def test_the_iso_receipt_validates_and_says_what_happened(scenario: Engine) -> None:
    doc = _build(scenario)
    assert _errors(ISO, doc) == []
    assert EMAIL not in json.dumps(doc) and "@example.org" not in json.dumps(doc)
    record = doc["consent_record"]
    assert doc["pii_principal_id"] == record["pii_principal_id"] == "alice"
    assert doc["language"] == "fr"
    blocks = _blocks(doc)
    assert {
        k: [(e["action"], e["event_state"]) for e in b["events"]] for k, b in blocks.items()
    } == (EXPECTED)
    assert {k: b["consent_status"] for k, b in blocks.items()} == {
        k: events[-1][1] for k, events in EXPECTED.items()
    }
    # The controller as configured, the same party on the record and on every block.
    (party,) = record["pii_controllers"]
    assert party == {
        "party_type": "dpv:DataController",
        "party_id": "https://acme.example/privacy",
        "party_name": "Acme Bakery SA",
        "party_address": "1 Rue du Pain, Paris",
        "party_contact": "privacy@acme.example",
        "party_url": "https://acme.example/privacy",
        "party_phone": "+33 1 23 45 67 89",
        "data_protection_officer": {
            "party_type": "dpv:DataProtectionOfficer",
            "party_contact": "https://acme.example/dpo",
        },
    }
    assert all(b["pii_controllers"] == [party] for b in blocks.values())
    # Recipients: only the enabled system, as a party with its display name.
    news = blocks["news"]
    assert [(r["party_id"], r["party_name"]) for r in news["recipient_third_parties"]] == [
        ("crm", "Customer CRM")
    ]
    assert news["recipient_third_parties"][0]["party_type"] == "dpv:Recipient"
    assert blocks["offers"]["recipient_third_parties"] == []
    # Where and how long, from configuration; the notice shown and its data categories.
    assert [x["location"] for x in news["storage_locations"]] == ["loc:FR", "loc:DE"]
    assert news["jurisdiction"] == "loc:FR"
    assert news["retention_period"]["duration"] == {"@type": "dpv:TemporalDuration", "value": "P2Y"}
    assert [p["pii_type"] for p in news["pii_information"]] == ["email", "name"]
    assert blocks["health"]["pii_information"] == [
        {
            "@type": ["dpv:PersonalData", "dpv:SpecialCategoryPersonalData"],
            "pii_type": "Health data",
            "special_pii_category": True,
        }
    ]
    assert news["withdrawal_method"]["exercised_at"] == "https://consent.acme.example/link/new"
    terms = blocks["terms"]
    assert terms["privacy_notice"]["notice_id"] == "terms:v1"  # the notice alice said yes to
    # Each event: who performed it, how long it stands, the consent type.
    by_action = {e["action"]: e for b in blocks.values() for e in b["events"]}
    assert by_action["grant"]["entity_id"] == "alice"
    assert by_action["refuse"]["entity_id"] == "https://acme.example/privacy"  # support, for her
    assert by_action["refuse"]["event_by"] == "delegated-agent"
    assert by_action["refuse"]["reason"] == "by phone" and "sam" not in json.dumps(by_action)
    assert by_action["import"]["entity_id"] == "https://acme.example/privacy"
    assert by_action["expire"]["entity_id"] == "https://acme.example/privacy"
    assert [e["validity_duration"] for e in news["events"]][1:] == [
        {"@type": "dpv:TemporalDuration", "value": "P365D"}
    ] * 2
    assert by_action["import"]["validity_duration"] == {
        "@type": "dpv:TemporalDuration",
        "value": "P90D",
    }
    assert by_action["refuse"]["validity_duration"]["@type"] == "dpv:UntilEventDuration"
    assert {e["event_type"] for b in blocks.values() for e in b["events"]} == {
        "dpv:ExpressedConsent"
    }
    # A fresh receipt id each time; the record id is the subject's for good.
    again = _build(scenario)
    assert again["receipt_id"] != doc["receipt_id"]
    assert again["consent_record"]["record_id"] == record["record_id"]
    assert _build(scenario, who="bob")["consent_record"]["record_id"] != record["record_id"]


def test_a_receipt_missing_a_mandatory_field_fails_the_schema(scenario: Engine) -> None:
    doc = _build(scenario)
    block = doc["consent_record"]["processing"][0]
    for field in ("retention_period", "jurisdiction", "recipient_third_parties"):
        broken = json.loads(json.dumps(doc))
        del broken["consent_record"]["processing"][0][field]
        assert any(field in e for e in _errors(ISO, broken)), field
    block["events"][0]["event_state"] = "given"  # not a DPV term
    del block["events"][-1]["entity_id"]
    block["recipient_third_parties"] = ["crm"]  # names, not party objects
    errors = "\n".join(_errors(ISO, doc))
    assert "'given' is not one of" in errors and "'entity_id' is a required property" in errors
    assert "'crm' is not of type 'object'" in errors


def _refuse_network(url: str, options: dict[str, Any] | None = None) -> Any:
    raise AssertionError(f"the receipt made the JSON-LD processor fetch {url}")


def _leaves(node: Any) -> int:
    """Scalar values of a compact document (each item of a list; ``@context`` aside)."""
    if isinstance(node, list):
        return sum(_leaves(x) for x in node)
    if isinstance(node, dict):
        return sum(_leaves(v) for k, v in node.items() if k != "@context")
    return 1


def _expanded_leaves(node: Any) -> int:
    """The same count on the expanded form: node ids, types, values and IRI references."""
    if isinstance(node, list):
        return sum(_expanded_leaves(x) for x in node)
    if "@value" in node:
        return 1
    count = (1 if "@id" in node else 0) + len(node.get("@type", []))
    return count + sum(_expanded_leaves(v) for k, v in node.items() if not k.startswith("@"))


def _keys(node: Any) -> set[str]:
    if isinstance(node, list):
        return set().union(*(_keys(x) for x in node)) if node else set()
    if isinstance(node, dict):
        return set(node).union(*(_keys(v) for k, v in node.items() if k != "@context"))
    return set()


def _iris(node: Any) -> set[str]:
    """Every property, type and IRI value of an expanded document."""
    if isinstance(node, list):
        return set().union(*(_iris(x) for x in node)) if node else set()
    if not isinstance(node, dict) or "@value" in node:
        return set()
    found = {k for k in node if not k.startswith("@")} | set(node.get("@type", []))
    found |= {node["@id"]} if "@id" in node else set()
    return found.union(*(_iris(v) for k, v in node.items() if not k.startswith("@")))


def test_the_iso_receipt_expands_with_every_term_a_dpv_or_dcmi_iri(scenario: Engine) -> None:
    doc = _build(scenario)
    assert "null" not in json.dumps(doc)  # JSON-LD would drop a null: the receipt has none
    keys = _keys(doc) - {"@context", "@id", "@type"}
    assert keys <= set(receipt.CONTEXT), f"keys without a term: {keys - set(receipt.CONTEXT)}"
    expanded = jsonld.expand(doc, {"documentLoader": _refuse_network})
    # Nothing dropped: every scalar of the receipt is in the expanded graph.
    assert _expanded_leaves(expanded) == _leaves(doc)
    iris = _iris(expanded)
    properties = {k for node in _nodes(expanded) for k in node if not k.startswith("@")}
    assert all(re.match(r"^(https?|urn):", p) for p in properties), properties
    dpv = {
        i.removeprefix("https://w3id.org/dpv#")
        for i in iris
        if i.startswith("https://w3id.org/dpv#")
    }
    assert dpv - DPV_TERMS == set(), "terms DPV does not define"
    assert {"RenewedConsentGiven", "ConsentRefused", "hasRecipient", "hasDataController"} <= dpv
    assert "https://w3id.org/dpv/loc#FR" in iris and "http://purl.org/dc/terms/conformsTo" in {
        k for node in _nodes(expanded) for k in node
    }
    # The mandatory fields land on the properties the guide's table names.
    (root,) = expanded
    record = root["https://w3id.org/dpv#hasRecordOfActivity"][0]
    assert record["@type"] == ["https://w3id.org/dpv#ConsentRecord"]
    process = record["https://w3id.org/dpv#hasProcess"][0]
    for prop in (
        "hasNotice",
        "hasPurpose",
        "hasPersonalData",
        "hasDataController",
        "hasStorageCondition",
        "hasJurisdiction",
        "hasRecipient",
        "hasConsentControl",
    ):
        assert f"https://w3id.org/dpv#{prop}" in process, prop
    event = process["http://purl.org/dc/terms/hasPart"][0]
    for prop in (
        "isIndicatedAtTime",
        "hasDuration",
        "isIndicatedBy",
        "hasLegalBasis",
        "hasConsentStatus",
    ):
        assert f"https://w3id.org/dpv#{prop}" in event, prop


def _nodes(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, list):
        for x in node:
            yield from _nodes(x)
    elif isinstance(node, dict) and "@value" not in node:
        yield node
        for k, v in node.items():
            if not k.startswith("@"):
                yield from _nodes(v)


def test_every_state_and_action_has_its_dpv_status_term() -> None:
    for state in State:
        assert receipt.status_term(None, state) in {f"dpv:{t}" for t in DPV_TERMS}
    for action, rule in lifecycle.RULES.items():
        for state in [rule.to] if rule.to else list(lifecycle.IMPORTABLE_STATES):
            term = receipt.status_term(action, state)
            assert term.removeprefix("dpv:") in DPV_TERMS, (action, state)
    assert receipt.status_term(Action.RENEW, State.GIVEN) == "dpv:RenewedConsentGiven"
    assert receipt.status_term(Action.GRANT, State.GIVEN) == "dpv:ConsentGiven"
    assert receipt.status_term(Action.REFUSE, State.REFUSED) == "dpv:ConsentRefused"
    assert set(receipt.LAWFUL_BASES.values()) <= {f"dpv:{t}" for t in DPV_TERMS}
    assert [receipt.iso_duration(d) for d in (365 * DAY, DAY / 2, timedelta(0), -DAY)] == [
        "P365D",
        "PT12H",
        "PT0S",
        "PT0S",
    ]


# ---------------------------------------------------------------------------- Kantara v1.1


def test_the_kantara_receipt_validates_and_lists_the_consents_given(scenario: Engine) -> None:
    doc = _build(scenario, "kantara")
    assert _errors(KANTARA, doc) == []
    assert doc["version"] == "KI-CR-v1.1.0" and doc["jurisdiction"] == "FR"
    assert doc["piiPrincipalId"] == "alice" and EMAIL not in json.dumps(doc)
    (controller,) = doc["piiControllers"]
    assert controller["piiController"] == "Acme Bakery SA"
    assert controller["address"] == {"streetAddress": "1 Rue du Pain, Paris"}
    assert controller["phone"] == "+33 1 23 45 67 89"
    assert doc["policyUrl"] == "https://acme.example/privacy"
    (service,) = doc["services"]
    given = {p["purposeCategory"][0]: p for p in service["purposes"]}
    assert sorted(given) == ["health", "news"]  # refused, withdrawn, expired... are not consents
    assert given["news"]["thirdPartyDisclosure"] is True
    assert given["news"]["thirdPartyName"] == "Customer CRM"  # the disabled system is not named
    assert (
        given["health"]["thirdPartyDisclosure"] is False and "thirdPartyName" not in given["health"]
    )
    assert doc["sensitive"] is True and doc["spiCat"] == ["Health data"]
    assert isinstance(doc["consentTimestamp"], int)
    with db.session_scope(scenario, readonly=True) as s:
        renewed = [e for k, e in lifecycle.history(s, "alice") if e.action == Action.RENEW]
    assert doc["consentTimestamp"] >= int(renewed[0].occurred_at.timestamp())
    broken = dict(doc, consentTimestamp="2026-01-01")
    del broken["spiCat"]
    assert len(_errors(KANTARA, broken)) == 2


def test_a_fresh_checkout_gives_receipts_that_validate(engine: Engine) -> None:
    settings.get_settings.cache_clear()
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=365, data_categories=["email"])
        subjects.add(s, "alice", email=EMAIL)
    with db.session_scope(engine) as s:
        lifecycle.grant(s, "alice", "news", Actor())
    iso, kantara = _build(engine), _build(engine, "kantara")
    assert _errors(ISO, iso) == [] and _errors(KANTARA, kantara) == []
    (party,) = iso["consent_record"]["pii_controllers"]
    assert (
        party["party_name"] == "consentflow" and party["party_address"] == "http://127.0.0.1:8000"
    )
    block = iso["consent_record"]["processing"][0]
    assert block["jurisdiction"] == "loc:EU"
    assert block["retention_period"]["duration"]["@type"] == "dpv:UntilEventDuration"
    assert kantara["jurisdiction"] == "EU" and kantara["sensitive"] is False
    assert EMAIL not in json.dumps(iso) + json.dumps(kantara)
    with db.session_scope(engine, readonly=True) as s:
        with pytest.raises(NotFound):
            receipt.build(s, "nobody")
        with pytest.raises(InvalidInput, match="format"):
            receipt.build(s, "alice", "pdf")


# ---------------------------------------------------------------------------------- the doors


def test_both_forms_through_the_api_and_the_cli(engine: Engine, cli: Any) -> None:
    toks = seed(engine)
    with client() as c:
        h = bearer(toks.compliance)
        assert (
            c.post(
                "/api/v1/subjects/alice/consents/news/grant", headers=bearer(toks.admin)
            ).status_code
            == 200
        )
        iso = c.get("/api/v1/subjects/alice/receipt", headers=h)
        kantara = c.get("/api/v1/subjects/alice/receipt?format=kantara", headers=h)
        assert iso.status_code == kantara.status_code == 200
        assert _errors(ISO, iso.json()) == [] and _errors(KANTARA, kantara.json()) == []
        bad = c.get("/api/v1/subjects/alice/receipt?format=pdf", headers=h)
        assert bad.status_code == 422 and "format" in json.dumps(bad.json()["errors"])
        spec = c.get("/openapi.json").json()["paths"]["/api/v1/subjects/{subject}/receipt"]["get"]
        (param,) = [p for p in spec["parameters"] if p["name"] == "format"]
        assert param["in"] == "query" and param["schema"]["enum"] == ["iso", "kantara"]
    out = cli("consent", "receipt", "alice", "--format", "kantara")
    assert out.code == 0 and _errors(KANTARA, json.loads(out.out)) == []
    out = cli("consent", "receipt", "alice")
    assert out.code == 0 and json.loads(out.out)["@type"] == "dpv:ConsentReceipt"
    out = cli("consent", "receipt", "alice", "--format", "pdf")
    assert (
        out.code == 2 and out.err.strip() == "consentflow: bad --format 'pdf': use iso or kantara"
    )
