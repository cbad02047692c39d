"""Every webhook carries the signed audit head (``consentflow-audit-anchor``), on both databases.

A real receiver on loopback gets the header beside the Standard Webhooks headers (which still
verify with the public ``standardwebhooks`` package); the anchor it keeps verifies against the
chain, and one delivery pass reads the head once, however many requests it sends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from consentflow import anchors, db
from consentflow.delivery import engine as eng
from consentflow.models import AuditEntry
from tests.support.seeding import audit_entries
from tests.support.webhooks import Receiver, ledger, revoke, verify

pytestmark = pytest.mark.usefixtures("allow_loopback")


def test_each_webhook_carries_an_anchor_that_verifies(
    engine: Engine, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = ledger(engine, receiver, {"crm": "/crm", "ads": "/ads"}, subjects_n=2)
    revoke(engine, 2)
    reads: list[str] = []
    real: Callable[[Any], str] = anchors.header_value

    def counted(session: Any) -> str:
        reads.append(value := real(session))
        return value

    monkeypatch.setattr(anchors, "header_value", counted)
    report = eng.deliver_due(engine, options=eng.Options(timeout=5.0))
    assert report.total(eng.DELIVERED) == 4
    assert len(reads) == 1  # once per pass, not per request

    withdrawn: list[AuditEntry] = audit_entries(engine, "consent.revoke")
    for name, secret in secrets.items():
        captured = receiver.at(f"/{name}")
        assert len(captured) == 2
        for cap in captured:
            verify(cap, secret)  # the Standard Webhooks headers are untouched
            kept = anchors.parse(cap.headers[anchors.HEADER])
            assert kept.seq >= max(e.seq for e in withdrawn)  # the head when the pass began
            with db.session_scope(engine, readonly=True) as s:
                assert anchors.verify_against(s, [kept]) == []
