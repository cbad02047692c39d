"""Key rotation on SQLite and PostgreSQL, with live links and deliveries in flight.

Two rotations of a key file: links issued before each keep verifying after it (until a key is
retired: then links it signed are refused), pending withdrawals of a system whose webhook secret
is sealed still arrive verified at a real receiver, subject references and the suppression list
keep matching (the reference key never moves), and the audit trail holds one ``keys.rotated``
entry per rotation, with fingerprints only. A rotation interrupted halfway (the key file written,
only some values re-sealed) is finished by running it again, with no new key.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import text, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from consentflow import db, integrity, keys, links, mail, rotation, secretbox, settings, subjects
from consentflow.actors import agent_actor
from consentflow.delivery import engine as eng
from consentflow.delivery import ops
from consentflow.links import BadLink, LinkAction
from consentflow.models import AuditEntry, EmailSuppression, Subject, SubjectKey, System, utcnow
from consentflow.sweeps import claims
from tests.support.webhooks import ledger, revoke, verify

pytestmark = pytest.mark.usefixtures("allow_loopback")

K0 = "original-key-of-this-instance-0000"
FAST = eng.Options(timeout=5.0)
ACTOR = agent_actor("ops")


@pytest.fixture
def key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The instance's key file, holding ``K0`` alone (as every instance had before rotation)."""
    path = tmp_path / "instance.key"
    path.write_text(K0 + "\n")
    path.chmod(0o600)
    monkeypatch.delenv("CONSENTFLOW_SECRET_KEY", raising=False)
    monkeypatch.setenv("CONSENTFLOW_KEY_FILE", str(path))
    settings.get_settings.cache_clear()
    yield path
    settings.get_settings.cache_clear()


def file_keys(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln and not ln.startswith(("#", "ref"))]


def issue(engine: Engine, external_id: str) -> str:
    with db.session_scope(engine) as s:
        sid = s.exec(select(Subject.id).where(Subject.external_id == external_id)).one()
        return links.issue(s, LinkAction.PREFERENCES, sid)


def ref_of(s: Session, external_id: str) -> str:
    return s.exec(select(Subject.subject_ref).where(Subject.external_id == external_id)).one()


def accepted(engine: Engine, token: str) -> bool:
    with db.session_scope(engine, readonly=True) as s:
        try:
            links.verify(s, token, LinkAction.PREFERENCES)
        except BadLink:
            return False
        return True


def deliver_and_check(engine: Engine, receiver, secret: str, expected: int) -> None:
    """Deliver what is due; every request the receiver got verifies with the plain secret."""
    eng.deliver_due(engine, options=FAST)
    got = receiver.at("/hook")
    assert len(got) == expected
    for request in got:
        verify(request, secret)  # raises unless signed with the system's secret


def audit_text(engine: Engine) -> str:
    with db.session_scope(engine, readonly=True) as s:
        return "\n".join(repr(tuple(r)) for r in s.execute(AuditEntry.__table__.select()))


def test_two_rotations_keep_links_deliveries_references_and_suppression(
    engine: Engine, key_file: Path, receiver
) -> None:
    secret = ledger(engine, receiver, {"crm": "/hook"}, subjects_n=3)["crm"]
    with db.session_scope(engine) as s:
        ref_before = ref_of(s, "subject-0")
        hashed = mail.address_hash(K0.encode(), "Ana@Example.org")  # a bounce before rotating
        s.add(EmailSuppression(address_hash=hashed, reason="bounced"))
    link0 = issue(engine, "subject-0")
    revoke(engine, 1, start=0)  # a withdrawal in flight across the first rotation

    first = rotation.rotate(engine, ACTOR)
    assert first.generated and first.recorded and first.resealed == 1
    k1, old = file_keys(key_file)
    assert old == K0 and "reference: " + K0 in key_file.read_text()
    assert accepted(engine, link0)
    deliver_and_check(engine, receiver, secret, 1)

    link1 = issue(engine, "subject-1")
    revoke(engine, 1, start=1)  # in flight across the second rotation
    second = rotation.rotate(engine, ACTOR)
    assert second.generated and second.resealed == 1 and second.keys[1:] == first.keys
    assert file_keys(key_file)[1:] == [k1, K0]
    assert accepted(engine, link0) and accepted(engine, link1)
    deliver_and_check(engine, receiver, secret, 2)

    with db.session_scope(engine) as s:
        assert keys.reference_key(s) == K0.encode()
        new = subjects.add(s, "subject-new").subject_ref
        assert new == keys.subject_ref(K0.encode(), "subject-new")
        assert ref_of(s, "subject-0") == ref_before == keys.subject_ref(K0.encode(), "subject-0")
        row = SimpleNamespace(email="ana@example.ORG")
        assert claims.suppression(s, [row])("ana@example.ORG")
        assert integrity.check(s)["findings"] == []
        rotated = s.exec(
            select(AuditEntry)
            .where(AuditEntry.action == "keys.rotated")
            .order_by(col(AuditEntry.seq))
        ).all()
    assert [e.detail["signing"] for e in rotated] == [first.signing, second.signing]
    assert rotated[1].detail["reference"] == first.reference == second.reference
    dump = audit_text(engine)
    for key in (K0, k1, file_keys(key_file)[0]):
        assert key not in dump and key not in repr(first) + repr(second)

    # Retire K0 (the links' TTL has passed): links it signed are refused, the rest holds.
    k2 = file_keys(key_file)[0]
    keys.write_key_file(key_file, [k2.encode(), k1.encode()], K0.encode())
    assert not accepted(engine, link0) and accepted(engine, link1)
    revoke(engine, 1, start=2)
    deliver_and_check(engine, receiver, secret, 3)
    with db.session_scope(engine, readonly=True) as s:
        assert integrity.check(s)["findings"] == []
    assert rotation.status(engine).model_dump(include={"sealed_older", "rotation_pending"}) == {
        "sealed_older": 0,
        "rotation_pending": False,
    }


def test_an_interrupted_rotation_is_finished_by_running_it_again(
    engine: Engine, key_file: Path, receiver
) -> None:
    secrets = ledger(engine, receiver, {"crm": "/hook", "ads": "/ads"}, subjects_n=1)
    with db.session_scope(engine) as s:  # ads in a grace period: a previous secret sealed too
        old_ads, secrets["ads"] = secrets["ads"], ops.rotate_secret(s, "ads", grace=timedelta(1))
        sid = s.exec(select(Subject.id)).first()
        sealed = secretbox.seal(s, "a-data-key")
        s.add(SubjectKey(subject_id=sid, sealed_key=sealed, created_at=utcnow()))
    # What a rotation killed halfway leaves: the key file written, one secret re-sealed.
    k1 = keys.new_key()
    keys.write_key_file(key_file, [k1.encode(), K0.encode()], K0.encode())
    with db.session_scope(engine) as s:
        crm = s.exec(select(System).where(System.name == "crm")).one()
        resealed = secretbox.Box([k1.encode(), K0.encode()]).reseal(crm.webhook_secret)
        s.execute(update(System).where(col(System.id) == crm.id).values(webhook_secret=resealed))
    before = rotation.status(engine)
    assert before.rotation_pending and before.sealed_current == 1 and before.sealed_older == 3

    finished = rotation.rotate(engine, ACTOR)
    assert not finished.generated and finished.recorded and finished.resealed == 3
    assert file_keys(key_file) == [k1, K0]  # no new key: the begun rotation was finished
    after = rotation.status(engine)
    assert not after.rotation_pending and (after.sealed_current, after.sealed_older) == (4, 0)
    with db.session_scope(engine, readonly=True) as s:
        sealed = s.execute(text("SELECT sealed_key FROM subject_key")).scalar_one()
        assert secretbox.Box(k1.encode()).open(sealed) == "a-data-key"  # the newest alone opens it
        for name, plain in secrets.items():
            stored = s.exec(select(System.webhook_secret).where(System.name == name)).one()
            assert secretbox.Box(k1.encode()).open(stored) == plain

    again = rotation.rotate(engine, ACTOR)  # nothing pending: a real rotation now
    assert again.generated and again.resealed == 4 and len(file_keys(key_file)) == 3
    revoke(engine)  # both of ads's secrets still sign, each opened from its re-sealed form
    eng.deliver_due(engine, options=FAST)
    [request] = receiver.at("/ads")
    verify(request, secrets["ads"])
    verify(request, old_ads)
    with db.session_scope(engine, readonly=True) as s:
        count = s.exec(select(AuditEntry.seq).where(AuditEntry.action == "keys.rotated")).all()
    assert len(count) == 2
