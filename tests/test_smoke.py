from consentflow import db, lifecycle, purposes, subjects
from consentflow.lifecycle import Actor


def test_grant_and_revoke(engine):
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=30)
        subjects.add(s, "alice")
    with db.session_scope(engine) as s:
        c = lifecycle.grant(s, "alice", "news", Actor())
        assert c.seq == 1
    with db.session_scope(engine) as s:
        c = lifecycle.revoke(s, "alice", "news", Actor())
        assert c.seq == 2 and c.state == "withdrawn"
