"""Signed, expiring, single-purpose link tokens."""

from __future__ import annotations

import base64
import json
import string
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from consentflow import db, links, purposes, settings, subjects
from consentflow.links import BadLink, LinkAction
from consentflow.models import utcnow

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ALPHABET = string.ascii_letters + string.digits + "-_"


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture
def ids(engine: Engine) -> tuple[int, int]:
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=30)
        subject = subjects.add(s, "alice-ext-77", email="alice.links@example.com")
        assert subject.id is not None
        return subject.id, 1


def issue(engine: Engine, action: LinkAction, ids: tuple[int, int], **kw: object) -> str:
    with Session(engine) as s:
        return links.issue(s, action, ids[0], ids[1], now=NOW, **kw)  # type: ignore[arg-type]


def verify(engine: Engine, token: str, action: LinkAction, now: datetime = NOW) -> links.Link:
    with Session(engine) as s:
        return links.verify(s, token, action, now=now)


@pytest.mark.parametrize("action", list(LinkAction))
def test_roundtrip(engine: Engine, ids: tuple[int, int], action: LinkAction) -> None:
    token = issue(engine, action, ids)
    link = verify(engine, token, action, NOW + timedelta(days=44))
    choice = 0 if action in links.BOUND else None  # nothing chosen yet
    assert link == links.Link(action, ids[0], ids[1], NOW + links.DEFAULT_TTL, choice)
    assert links.peek_action(token) is action
    without_purpose = None
    with Session(engine) as s:
        without_purpose = links.issue(s, action, ids[0], now=NOW)
    assert verify(engine, without_purpose, action).purpose_id is None


def test_token_holds_no_identity(engine: Engine, ids: tuple[int, int]) -> None:
    token = issue(engine, LinkAction.REVOKE, ids)
    body = token.split(".")[0]
    claims = json.loads(unb64(body))
    assert set(claims) == {"a", "s", "p", "e"}
    assert (claims["s"], claims["p"]) == ids
    for secret in ("alice-ext-77", "alice.links@example.com", "alice"):
        assert secret not in token
        assert secret not in unb64(body).decode()
    assert links.url(token).endswith(f"/l/{token}")


def test_url_uses_the_public_url(
    engine: Engine, ids: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSENTFLOW_PUBLIC_URL", "https://consent.example.com/")
    settings.get_settings.cache_clear()
    try:
        token = issue(engine, LinkAction.RENEW, ids)
        assert links.url(token) == f"https://consent.example.com/l/{token}"
    finally:
        monkeypatch.delenv("CONSENTFLOW_PUBLIC_URL")
        settings.get_settings.cache_clear()


def test_tampered_claims_are_rejected(engine: Engine, ids: tuple[int, int]) -> None:
    token = issue(engine, LinkAction.REVOKE, ids)
    body, sig = token.split(".")
    claims = json.loads(unb64(body))
    for change in ({"s": ids[0] + 1}, {"p": 2}, {"e": claims["e"] + 86400}, {"a": "renew"}):
        forged = b64(json.dumps(claims | change, separators=(",", ":")).encode())
        with pytest.raises(BadLink):
            verify(engine, f"{forged}.{sig}", LinkAction.REVOKE)
        with pytest.raises(BadLink):
            verify(engine, f"{forged}.{sig}", LinkAction.RENEW)


def test_tampered_signature_is_rejected(engine: Engine, ids: tuple[int, int]) -> None:
    token = issue(engine, LinkAction.RENEW, ids)
    body, sig = token.split(".")
    raw = bytearray(unb64(sig))
    for i in (0, len(raw) // 2, len(raw) - 1):
        flipped = bytearray(raw)
        flipped[i] ^= 0x01
        with pytest.raises(BadLink, match="not valid"):
            verify(engine, f"{body}.{b64(bytes(flipped))}", LinkAction.RENEW)
    with pytest.raises(BadLink):
        verify(engine, f"{body}.{b64(bytes(raw[:-1]))}", LinkAction.RENEW)


def test_any_change_to_the_token_text_is_rejected(engine: Engine, ids: tuple[int, int]) -> None:
    """A token is accepted exactly as issued: changing any one character, or appending
    characters, must not yield a token that still verifies."""
    token = issue(engine, LinkAction.REVOKE, ids)
    accepted = []
    for i, ch in enumerate(token):
        for other in (ALPHABET[(ALPHABET.find(ch) + 1) % len(ALPHABET)], "A", "B"):
            if other == ch or ch == ".":
                continue
            candidate = token[:i] + other + token[i + 1 :]
            try:
                verify(engine, candidate, LinkAction.REVOKE)
                accepted.append(candidate)
            except BadLink:
                pass
    for suffix in ("!!", "==", "A", "%%"):
        try:
            verify(engine, token + suffix, LinkAction.REVOKE)
            accepted.append(token + suffix)
        except BadLink:
            pass
    assert accepted == []


def test_expired_token_is_rejected(engine: Engine, ids: tuple[int, int]) -> None:
    token = issue(engine, LinkAction.GRANT, ids, ttl=timedelta(hours=1))
    assert verify(engine, token, LinkAction.GRANT, NOW + timedelta(minutes=59))
    with pytest.raises(BadLink, match="expired"):
        verify(engine, token, LinkAction.GRANT, NOW + timedelta(hours=1))
    with pytest.raises(BadLink, match="expired"):
        verify(engine, token, LinkAction.GRANT, NOW + timedelta(days=400))
    # with no clock given, verify uses the real one
    with Session(engine) as s:
        stale = links.issue(
            s, LinkAction.GRANT, ids[0], ttl=timedelta(days=1), now=utcnow() - timedelta(days=2)
        )
        fresh = links.issue(s, LinkAction.GRANT, ids[0])
        assert links.verify(s, fresh, LinkAction.GRANT).subject_id == ids[0]
        with pytest.raises(BadLink, match="expired"):
            links.verify(s, stale, LinkAction.GRANT)
    with Session(engine) as s:
        stale = links.issue(s, LinkAction.GRANT, ids[0], ttl=timedelta(days=1), now=NOW)
        with pytest.raises(BadLink, match="expired"):
            links.verify(s, stale, LinkAction.GRANT, now=NOW + timedelta(days=1, seconds=1))


@pytest.mark.parametrize("issued", list(LinkAction))
def test_token_for_another_action_is_rejected(
    engine: Engine, ids: tuple[int, int], issued: LinkAction
) -> None:
    token = issue(engine, issued, ids)
    for other in LinkAction:
        if other is issued:
            continue
        with pytest.raises(BadLink, match="not valid for this action"):
            verify(engine, token, other)


@pytest.mark.parametrize("token", ["", "abc", "abc.", ".abc", "!!!.???", "a.b.c", "é.é"])
def test_malformed_tokens_are_rejected(engine: Engine, ids: tuple[int, int], token: str) -> None:
    with pytest.raises(BadLink):
        verify(engine, token, LinkAction.RENEW)
    assert links.peek_action(token) is None


def test_token_from_another_instance_key_is_rejected(
    engine: Engine, ids: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    token = issue(engine, LinkAction.RENEW, ids)  # signed with the generated instance key
    monkeypatch.setenv("CONSENTFLOW_SECRET_KEY", "another-instance")
    settings.get_settings.cache_clear()
    try:
        with pytest.raises(BadLink):
            verify(engine, token, LinkAction.RENEW)
        assert verify(engine, issue(engine, LinkAction.RENEW, ids), LinkAction.RENEW)
    finally:
        monkeypatch.delenv("CONSENTFLOW_SECRET_KEY")
        settings.get_settings.cache_clear()


def test_links_that_give_consent_are_bound_to_the_latest_choice(
    engine: Engine, ids: tuple[int, int]
) -> None:
    """Issue 14, defect 6: grant and renew links carry the sequence number of the person's latest
    choice for the purpose (requests and expiries are no choices); revoke and preference links
    carry none. A later no supersedes a bound link; a later yes does not."""
    from consentflow import lifecycle
    from consentflow.lifecycle import Actor

    def claims(token: str) -> dict[str, object]:
        return dict(json.loads(unb64(token.split(".")[0])))

    with db.session_scope(engine) as s:
        lifecycle.request(s, "alice-ext-77", "news", Actor())
    request_link = issue(engine, LinkAction.GRANT, ids)
    assert claims(request_link)["c"] == 0  # a request is not a choice
    with db.session_scope(engine) as s:
        granted = lifecycle.grant(s, "alice-ext-77", "news", Actor())
    renew = issue(engine, LinkAction.RENEW, ids)
    assert claims(renew)["c"] == granted.seq
    for action in (LinkAction.REVOKE, LinkAction.PREFERENCES):
        assert "c" not in claims(issue(engine, action, ids))

    def superseded(token: str, action: LinkAction) -> bool:
        with Session(engine) as s:
            return links.superseded(s, links.verify(s, token, action, now=NOW))

    assert not superseded(request_link, LinkAction.GRANT)  # the later choice said yes
    with db.session_scope(engine) as s:
        lifecycle.revoke(s, "alice-ext-77", "news", Actor())
    assert superseded(request_link, LinkAction.GRANT) and superseded(renew, LinkAction.RENEW)
    assert not superseded(issue(engine, LinkAction.GRANT, ids), LinkAction.GRANT)
    revoke = issue(engine, LinkAction.REVOKE, ids)
    assert not superseded(revoke, LinkAction.REVOKE)  # withdrawing is never stale
