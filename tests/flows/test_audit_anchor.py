"""The audit-anchor flow, run for real: Prefect's test harness, both databases, a file path, an
fsspec ``memory://`` URL and a real SMTP server (aiosmtpd).

What compliance relies on: every target gets the same signed head, which ``consentflow audit
verify --anchors`` accepts; the run's audit entry names where it went (no credentials, no
address); a refusing target does not stop the others and fails the run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fsspec
import pytest
from sqlalchemy.engine import Engine

import flows.audit_anchor as anchor_flow
from consentflow import anchors, db, purposes, settings, subjects
from tests.support.seeding import audit_entries, verify_audit
from tests.support.smtp import SmtpSink

pytestmark = pytest.mark.usefixtures("prefect_harness")

OPS = "ops@example.org"


@pytest.fixture
def record(engine: Engine, smtp_sink: SmtpSink, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """A small record, the compliance email set, and the write task without retry delays."""
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=365)
        subjects.add(s, "subject-1")
    monkeypatch.setenv("CONSENTFLOW_COMPLIANCE_EMAIL", OPS)
    monkeypatch.setattr(anchor_flow, "write_task", anchor_flow.write_anchor.with_options(retries=0))
    return engine


def targets(monkeypatch: pytest.MonkeyPatch, *items: str) -> None:
    monkeypatch.setenv("CONSENTFLOW_ANCHOR_TARGETS", ", ".join(items))
    settings.get_settings.cache_clear()


def test_the_signed_head_reaches_a_file_a_url_and_compliance(
    record: Engine, smtp_sink: SmtpSink, cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "anchors.jsonl"
    url = f"memory://anchors/{tmp_path.name}.jsonl"
    targets(monkeypatch, str(file), url, "email")
    summary = anchor_flow.audit_anchor()
    summary2 = anchor_flow.audit_anchor()  # a second run appends
    assert summary.total("written") == summary2.total("written") == 3

    first, second = file.read_text(encoding="utf-8").splitlines()
    assert anchors.parse(second).seq > anchors.parse(first).seq  # the first run's entries
    with fsspec.open(url, "rt") as fh:
        assert fh.read().splitlines() == [first, second]
    mails = smtp_sink.to(OPS)
    assert [m.message["Subject"] for m in mails] == [
        f"consentflow: audit anchor at entry {anchors.parse(line).seq}" for line in (first, second)
    ]
    assert first in mails[0].part("plain")

    entry = audit_entries(record, "audit.anchored")[0]
    assert entry.detail["targets"] == {str(file): "written", url: "written", "email": "written"}
    assert entry.detail["seq"] == anchors.parse(first).seq
    assert OPS not in json.dumps([e.detail for e in audit_entries(record)])
    secret_url = "s3://AKIA:s3cr3t@bucket/anchors.jsonl?X-Amz-Signature=abc#x"
    assert anchor_flow.shown(secret_url) == "s3://bucket/anchors.jsonl"
    verify_audit(record)
    done = cli("audit", "verify", "--anchors", str(file))
    assert done.code == 0 and "2 anchors match" in done.out, done.err


def test_a_refusing_target_fails_the_run_after_the_others_are_written(
    record: Engine, smtp_sink: SmtpSink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "no-such-dir" / "anchors.jsonl"
    targets(monkeypatch, str(missing), "email")
    with pytest.raises(RuntimeError, match=f"anchor not written to {missing}"):
        anchor_flow.audit_anchor()
    assert len(smtp_sink.to(OPS)) == 1
    (entry,) = audit_entries(record, "audit.anchored")
    assert entry.detail["targets"] == {str(missing): "failed", "email": "written"}
    (end,) = audit_entries(record, "flow.run")
    assert end.detail["outcome"] == "failed"
