"""Witnessed audit: signed chain heads (``anchors``) on both databases.

What a compliance officer relies on: an anchor taken today still verifies tomorrow; one signed
with any other key, or edited after signing, is refused; and a chain rewritten consistently
end to end (every hash recomputed after editing an old entry, head included), which plain
``audit verify`` cannot catch by construction, fails against an anchor taken before the rewrite.
Tampering is done as an attacker with database access would: SQL on ``audit_entry`` and
``audit_head``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from consentflow import anchors, audit, db, lifecycle, purposes, settings, subjects
from consentflow.errors import InvalidInput
from consentflow.lifecycle import Actor
from consentflow.models import AuditEntry, AuditHead, utcnow


@pytest.fixture
def chain(engine: Engine) -> Engine:
    """A small record: a purpose, a subject, a grant and a run's end entry."""
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=365)
        subjects.add(s, "subject-1")
    with db.session_scope(engine) as s:
        lifecycle.grant(s, "subject-1", "news", Actor())
        audit.record(s, "flow.run", actor_type="system", actor="t", detail={"expired": 3})
    return engine


def take(engine: Engine) -> anchors.Anchor:
    with db.session_scope(engine, readonly=True) as s:
        return anchors.sign_head(s)


def check(engine: Engine, *items: anchors.Anchor) -> list[str]:
    with db.session_scope(engine, readonly=True) as s:
        return anchors.verify_against(s, items)


def hash_of(engine: Engine, seq: int) -> str:
    with Session(engine) as s:
        return s.exec(select(AuditEntry.hash).where(AuditEntry.seq == seq)).one()


def rechain(engine: Engine, seq: int, detail: dict[str, Any]) -> None:
    """Replace entry ``seq``'s detail and re-hash every entry from there, and the head."""
    with Session(engine) as s:
        rows = list(s.exec(select(AuditEntry).order_by(col(AuditEntry.seq))).all())
    prev, statements = audit.GENESIS, []
    for entry in rows:
        row = {name: getattr(entry, name) for name in audit._FIELDS}
        if entry.seq == seq:
            row["detail"] = detail
        new = audit.digest(prev, row)
        statements.append(
            update(AuditEntry)
            .where(col(AuditEntry.seq) == entry.seq)
            .values(detail=row["detail"], prev_hash=prev, hash=new)
        )
        prev = new
    statements.append(update(AuditHead).values(hash=prev))
    with engine.begin() as conn:
        for stmt in statements:
            conn.execute(stmt)


def test_an_anchor_names_the_head_and_verifies_after_a_round_trip(chain: Engine) -> None:
    anchor = take(chain)
    with Session(chain) as s:
        head = s.exec(select(AuditHead)).one()
    assert (anchor.seq, anchor.hash) == (head.seq, head.hash) and anchor.seq >= 4
    line = anchor.compact()
    assert "\n" not in line and " " not in line
    (read,) = anchors.load(["", line, "  "])
    assert read == dataclasses.replace(anchor, line=2)
    assert check(chain, read) == []
    # the chain grows: the old anchor still holds, beside a new one
    with db.session_scope(chain) as s:
        lifecycle.revoke(s, "subject-1", "news", Actor())
    assert take(chain).seq > anchor.seq
    assert check(chain, anchor, take(chain)) == []


def test_a_forged_or_edited_anchor_is_refused(chain: Engine) -> None:
    anchor = take(chain)
    n = anchor.seq
    other_key = anchors.sign(b"not-this-instance-key-" * 2, n, anchor.hash, utcnow())
    borrowed_kid = dataclasses.replace(other_key, kid=anchor.kid)
    moved = dataclasses.replace(anchor, seq=n - 1, hash=hash_of(chain, n - 1))
    edited_hash = dataclasses.replace(anchor, hash="0" * 64)
    edited_at = dataclasses.replace(anchor, at="2020-01-01T00:00:00Z")
    findings = check(chain, other_key, borrowed_kid, moved, edited_hash, edited_at)
    assert len(findings) == 5
    assert f"anchor at entry {n}: signed by key {other_key.kid}" in findings[0]
    assert "not derived from any key in this instance's key list" in findings[0]
    assert findings[1] == f"anchor at entry {n}: " + (
        "its signature does not verify (forged, or seq, hash or at edited)"
    )
    assert findings[2].startswith(f"anchor at entry {n - 1}: its signature does not verify")
    assert all("its signature does not verify" in f for f in findings[3:])
    assert check(chain, anchor) == []


def test_a_rewritten_chain_passes_plain_verify_but_not_an_earlier_anchor(
    chain: Engine, cli: Any, tmp_path: Path
) -> None:
    file = tmp_path / "anchors.jsonl"
    early = take(chain)
    with db.session_scope(chain) as s:
        lifecycle.revoke(s, "subject-1", "news", Actor())
    file.write_text(early.compact() + "\n" + take(chain).compact() + "\n", encoding="utf-8")
    ok = cli("audit", "verify", "--anchors", str(file))
    assert ok.code == 0, ok.err
    assert "2 anchors match" in ok.out

    with Session(chain) as s:
        run_entry = s.exec(select(AuditEntry.seq).where(AuditEntry.action == "flow.run")).one()
    assert run_entry <= early.seq
    rechain(chain, run_entry, {"expired": 0})  # an old run said to have expired nothing
    plain = cli("audit", "verify")
    assert plain.code == 0, plain.err  # undetectable without an anchor, by construction

    caught = cli("audit", "verify", "--anchors", str(file))
    assert caught.code == 1
    lines = caught.err.strip().splitlines()
    assert (
        f"line 1: anchor at entry {early.seq}: entry {early.seq} no longer has the hash"
        in (lines[0])
    )
    assert "line 2: anchor at entry" in lines[1]
    assert lines[-1].startswith("consentflow: 2 of 2 anchors do not match")
    assert "Traceback" not in caught.err


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("not json", "line 2: not JSON"),
        ("[1, 2]", "line 2: not a JSON object"),
        ('{"v": 1, "seq": 3}', "line 2: not an anchor: no hash, at, kid, sig"),
        ("SEQ", "line 2: seq: expected a whole number"),
        ("HASH", "line 2: hash: expected 64 lowercase hex digits"),
        ("SIG", "line 2: sig: expected an Ed25519 signature"),
    ],
)
def test_a_malformed_line_is_named_by_its_number(bad: str, says: str) -> None:
    good = anchors.sign(b"k" * 40, 7, "a" * 64, utcnow())
    bad = {
        "SEQ": good.compact().replace('"seq":7', '"seq":"x"'),
        "HASH": good.compact().replace(good.hash, good.hash.upper()),
        "SIG": good.compact().replace(good.sig, good.sig[:-4]),
    }.get(bad, bad)
    with pytest.raises(InvalidInput, match=f"^anchors {says}"):
        anchors.load([good.compact(), bad])


def test_cli_refuses_a_malformed_or_missing_anchors_file_in_one_line(
    chain: Engine, cli: Any, tmp_path: Path
) -> None:
    file = tmp_path / "anchors.jsonl"
    file.write_text(take(chain).compact() + "\n\n{oops\n", encoding="utf-8")
    result = cli("audit", "verify", "--anchors", str(file))
    assert result.code == 2
    assert result.err.strip().splitlines() == [
        f"consentflow: {file} line 3: not JSON: expected one anchor object per line"
    ]
    missing = cli("audit", "verify", "--anchors", str(tmp_path / "nowhere.jsonl"))
    assert missing.code == 2
    assert missing.err.strip().splitlines() == [
        f"consentflow: cannot read {tmp_path / 'nowhere.jsonl'}: No such file or directory"
    ]


def test_old_anchors_verify_while_their_key_stays_in_the_list(
    chain: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = "o" * 40, "n" * 40

    def use(value: str) -> None:
        monkeypatch.setenv("CONSENTFLOW_SECRET_KEY", value)
        monkeypatch.setenv("CONSENTFLOW_REFERENCE_KEY", old)
        settings.get_settings.cache_clear()

    use(old)
    before = take(chain)
    use(f"{new},{old}")  # rotated: the new key signs, the old one still verifies
    after = take(chain)
    assert after.kid != before.kid
    assert check(chain, before, after) == []
    use(new)  # the old key retired: its anchors can no longer be told from forgeries
    (finding,) = check(chain, before, after)
    assert finding.startswith(f"anchor at entry {before.seq}: signed by key {before.kid}")
    settings.get_settings.cache_clear()
