"""``consentflow serve`` as operators run it: what its access log keeps, what it refuses to start,
and what ``create_app`` installs."""

from __future__ import annotations

import httpx
import pytest
from sqlmodel import select

from consentflow import db, lifecycle, links, subjects
from consentflow.lifecycle import Actor
from consentflow.links import LinkAction
from consentflow.models import Subject
from consentflow.web.logs import redact_path
from tests.support.web import bearer, seed, serve_process


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/l/eyJhIjoicmV2b2tlIn0.c2lnbmF0dXJl", "/l/{token}"),
        ("/l/eyJhIjoicmV2b2tlIn0.c2ln?done=revoke%3Anews%3Adone", "/l/{token}"),
        ("/api/v1/check?subject=ann%40example.com&purpose=news", "/api/v1/check"),
        ("/api/v1/subjects/ann%40example.com", "/api/v1/subjects/{subject}"),
        (
            "/api/v1/subjects/ann@example.com/consents/news/grant",
            "/api/v1/subjects/{subject}/consents/news/grant",
        ),
        ("/api/v1/purposes/news", "/api/v1/purposes/news"),
        ("/dashboard/runs.csv", "/dashboard/runs.csv"),
    ],
)
def test_redacted_paths(path, logged):
    assert redact_path(path) == logged


def test_access_log_keeps_no_link_token_subject_id_or_query(engine, database_url):
    t = seed(engine)
    person = "ann.person"  # an id in the path; an address only in a query, which is dropped
    with db.session_scope(engine) as s:
        subjects.add(s, person, email="ann.person@example.com")
        lifecycle.grant(s, "alice", "news", Actor())
        alice = s.exec(select(Subject.id).where(Subject.external_id == "alice")).one()
        token = links.issue(s, LinkAction.REVOKE, alice)
    with serve_process(database_url) as served, httpx.Client(base_url=served.base) as http:
        assert http.get(f"/l/{token}").status_code == 200
        assert http.head(f"/l/{token}").status_code == 200
        r = http.get(
            "/api/v1/check",
            params={"subject": person, "purpose": "news", "email": "ann.person@example.com"},
            headers=bearer(t.system),
        )
        assert r.status_code == 200 and r.json()["reason"] == "no_consent"
        assert http.get(f"/api/v1/subjects/{person}", headers=bearer(t.admin)).status_code == 200
    log = served.stdout
    for line in (
        '"GET /l/{token} HTTP/1.1" 200',
        '"HEAD /l/{token} HTTP/1.1" 200',
        '"GET /api/v1/check HTTP/1.1" 200',
        '"GET /api/v1/subjects/{subject} HTTP/1.1" 200',
    ):
        assert line in log, log
    everything = served.stdout + served.stderr
    for secret in (
        token.partition(".")[0],
        token.partition(".")[2],
        person,
        "example.com",
        "alice",
    ):
        assert secret not in everything, secret
    access = [line for line in log.splitlines() if " HTTP/1.1" in line]
    assert len(access) == 4 and not [line for line in access if "?" in line]


def test_runs_are_refused_without_a_prefect_server(engine, database_url):
    """The web process never starts a temporary Prefect server of its own: 409, one line."""
    t = seed(engine)
    with serve_process(database_url) as served, httpx.Client(base_url=served.base) as http:
        r = http.post(
            "/api/v1/runs/expiry-sweep", json={"dry_run": True}, headers=bearer(t.compliance)
        )
        assert r.status_code == 409, r.text
        assert r.json() == {
            "detail": "no Prefect server is configured (PREFECT_API_URL): a run on a worker "
            "needs one"
        }
        # Bad parameters are still named first.
        r = http.post("/api/v1/runs/expiry-sweep", json={"limit": 0}, headers=bearer(t.admin))
        assert r.status_code == 422 and "limit" in r.json()["detail"]
    assert "temporary server" not in served.stderr.lower()
    # The access log outlives the first use of Prefect in the process.
    assert '"POST /api/v1/runs/expiry-sweep HTTP/1.1" 409' in served.stdout
    assert '"POST /api/v1/runs/expiry-sweep HTTP/1.1" 422' in served.stdout
