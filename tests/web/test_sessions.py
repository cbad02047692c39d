"""Issue 14, defects 4 and 5, through the real web app on a real server, on both databases.

- A database dump is not enough to sign in or to forge a link: the dump holds no instance secret
  and no session id (only the ids' hashes), so nothing in it, presented as a cookie or used as
  the key of a link, is accepted.
- A copied session cookie dies with its session: signing out, revoking the token and reaching
  the session's end each stop it at once, on the server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from consentflow import audit, db, keys, links, settings, subjects, tokens
from consentflow.links import BadLink, LinkAction
from consentflow.models import AuditEntry, WebSession, utcnow
from consentflow.web import security
from tests.support.web import Tokens, seed, served

#: What a signed-in caller (and an attacker with the cookie) reads: the dashboard, every audit
#: entry (the export streams all of them), who the cookie belongs to.
READS = ("/dashboard", "/api/v1/audit/export", "/api/v1/me")


@pytest.fixture
def site(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Tokens]]:
    monkeypatch.setenv("CONSENTFLOW_SESSION_MAX_AGE", "3600")
    made = seed(engine)
    with served(monkeypatch) as base:
        yield base, made


def _sign_in(base: str, token: str) -> httpx.Client:
    browser = httpx.Client(base_url=base, follow_redirects=False, timeout=10)
    page = browser.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf is not None
    answer = browser.post("/login", data={"token": token, "csrf_token": csrf.group(1)})
    assert answer.status_code == 303, answer.text
    return browser


def _copy_of(base: str, browser: httpx.Client) -> httpx.Client:
    """Another client holding only the session cookie, as an attacker who copied it would."""
    thief = httpx.Client(base_url=base, follow_redirects=False, timeout=10)
    thief.cookies.set(security.SESSION_COOKIE, browser.cookies[security.SESSION_COOKIE])
    return thief


def _reads(client: httpx.Client) -> list[int]:
    return [client.get(path).status_code for path in READS]


def _sign_out(browser: httpx.Client) -> None:
    page = browser.get("/dashboard")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf is not None
    assert browser.post("/logout", data={"csrf_token": csrf.group(1)}).status_code == 303


# ----------------------------------------------------------------------------------- defect 5


def test_signing_out_ends_every_copy_of_the_cookie(site: Any, engine: Engine) -> None:
    base, made = site
    browser = _sign_in(base, made.admin)
    thief = _copy_of(base, browser)
    assert _reads(thief) == [200, 200, 200]
    _sign_out(browser)
    assert _reads(thief) == [401, 401, 401]
    assert _reads(browser) == [401, 401, 401]
    with db.session_scope(engine) as s:
        (row,) = s.exec(select(WebSession)).all()
        assert row.revoked_at is not None


def test_signing_in_and_out_is_audited_under_the_tokens_name(site: Any, engine: Engine) -> None:
    """Sign-in and sign-out leave one entry each under the token's name, holding neither the
    token nor the session id; a refused sign-in and a second sign-out leave none."""
    base, made = site
    browser = _sign_in(base, made.compliance)
    session_id = browser.cookies[security.SESSION_COOKIE]
    page = browser.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf is not None
    refused = browser.post("/login", data={"token": "cf_wrong", "csrf_token": csrf.group(1)})
    assert refused.status_code == 401
    _sign_out(browser)
    _sign_in(base, made.admin)
    with db.session_scope(engine) as s:
        entries = s.exec(
            select(AuditEntry)
            .where(col(AuditEntry.action).startswith("session."))
            .order_by(col(AuditEntry.seq))
        ).all()
        seen = [(e.action, e.actor) for e in sorted(entries, key=lambda e: e.seq)]
        assert seen == [
            ("session.started", "carol"),
            ("session.ended", "carol"),
            ("session.started", "root"),
        ]
        dump = json.dumps([e.detail for e in entries])
        assert session_id not in dump and made.compliance not in dump
        assert audit.verify(s).ok
    # That session already ended: ending it again records nothing more.
    with db.session_scope(engine) as s:
        assert tokens.end_session(s, session_id) is False
        n = len(
            s.exec(
                select(AuditEntry)
                .where(AuditEntry.action == "session.ended")
                .order_by(col(AuditEntry.seq))
            ).all()
        )
        assert n == 1


def test_revoking_the_token_ends_its_sessions_at_once(site: Any, engine: Engine) -> None:
    base, made = site
    thieves = [_copy_of(base, _sign_in(base, made.compliance)) for _ in range(2)]
    admin = _copy_of(base, _sign_in(base, made.admin))
    assert [_reads(t) for t in thieves] == [[200, 200, 200]] * 2
    with db.session_scope(engine) as s:
        assert tokens.revoke(s, "carol") == 1
    assert [_reads(t) for t in thieves] == [[401, 401, 401]] * 2
    assert _reads(admin) == [200, 200, 200]  # another token's session lives on
    with db.session_scope(engine) as s:
        rows = s.exec(select(WebSession).order_by(WebSession.id)).all()  # type: ignore[arg-type]
        assert [r.revoked_at is not None for r in rows] == [True, True, False]


def test_the_server_ends_a_session_at_its_expiry(site: Any, engine: Engine) -> None:
    base, made = site
    thief = _copy_of(base, _sign_in(base, made.admin))
    with db.session_scope(engine) as s:
        (row,) = s.exec(select(WebSession)).all()
        assert row.expires_at - row.created_at == timedelta(seconds=3600)
        assert row.expires_at > utcnow()
    assert _reads(thief) == [200, 200, 200]
    # Time moves through the data: the session's hour is over. The cookie itself still says
    # nothing about time, so only the server can end it.
    with db.session_scope(engine) as s:
        row = s.exec(select(WebSession)).one()
        row.expires_at = utcnow() - timedelta(seconds=1)
        s.add(row)
    assert _reads(thief) == [401, 401, 401]


# ----------------------------------------------------------------------------------- defect 4


def _dump(engine: Engine, database_url: str) -> tuple[set[str], bytes]:
    """What an attacker with a copy of the database holds: every text value of every table
    (reflected, so a table the models no longer know is included), and on SQLite the raw bytes
    of the database file and its WAL."""
    values: set[str] = set()
    with engine.connect() as conn:
        for table in inspect(conn).get_table_names():
            for row in conn.execute(text(f'SELECT * FROM "{table}"')):
                for value in row:
                    if isinstance(value, str):
                        values.add(value)
                    elif isinstance(value, dict | list):
                        values.add(json.dumps(value))
    raw = b""
    if database_url.startswith("sqlite"):
        path = Path(database_url.removeprefix("sqlite:///"))
        for part in (path, path.with_name(path.name + "-wal")):
            if part.exists():
                raw += part.read_bytes()
    return values, raw


def _forge_link(secret: bytes, subject_id: int) -> str:
    """A 10-year preference link signed with ``secret``, as links.issue would sign it."""
    expires = int((utcnow() + timedelta(days=3650)).timestamp())
    claims = {"a": "preferences", "s": subject_id, "p": None, "e": expires}
    body = links._b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    sig = keys.derive(links._key(secret, LinkAction.PREFERENCES), body)
    return f"{body}.{links._b64(sig)}"


def test_a_database_dump_signs_nobody_in_and_forges_no_link(
    site: Any, engine: Engine, database_url: str
) -> None:
    base, made = site
    browser = _sign_in(base, made.admin)
    cookie = browser.cookies[security.SESSION_COOKIE]
    with db.session_scope(engine) as s:
        alice = subjects.get(s, "alice")
        assert alice is not None and alice.id is not None
        secret = keys.instance_secret(s)
        genuine = _forge_link(secret, alice.id)  # made with the real key: the control
        links.verify(s, genuine, LinkAction.PREFERENCES)
    values, raw = _dump(engine, database_url)
    # The dump holds neither the key nor a session id; the session is there only as a hash.
    assert not any(secret.decode() in v for v in values) and secret not in raw
    assert not any(cookie in v for v in values) and cookie.encode() not in raw
    assert tokens._session_hash(cookie) in values
    # Nothing in it works as a cookie ...
    candidates = sorted(v for v in values if 16 <= len(v) <= 200)
    assert tokens.hash_token(made.admin) in candidates
    thief = httpx.Client(base_url=base, follow_redirects=False, timeout=10)
    for value in candidates:
        thief.cookies.set(security.SESSION_COOKIE, value)
        assert thief.get("/api/v1/audit/export").status_code == 401, value
    # ... or as the key of a link.
    with db.session_scope(engine) as s:
        for value in candidates:
            with pytest.raises(BadLink):
                links.verify(s, _forge_link(value.encode(), alice.id), LinkAction.PREFERENCES)
    # The key lives in a file only its owner may read (not in the database).
    if not settings.get_settings().secret_key:
        path = keys.key_file_path(engine.url)
        assert path.read_text().strip().encode() == secret
        assert path.stat().st_mode & 0o777 == 0o600
