"""Every value derived from the instance secret stays byte-identical across refactors.

Subject references, suppression hashes, link signatures and sealed webhook secrets are stored (or
handed out) and must keep matching: these values were computed before the key derivation was
gathered into ``keys.derive`` and pin it.
"""

from datetime import UTC, datetime, timedelta

import pytest

from consentflow import db, keys, links, mail, settings
from consentflow.delivery import secretbox

SECRET = b"pinned-secret-for-tests"


def test_subject_ref_and_address_hash_are_pinned():
    assert keys.subject_ref(SECRET, "cust-42") == "f2eb499120c83d933f504455f37ff2cc"
    assert mail.address_hash(SECRET, " Ana@Example.ORG ") == (
        "d8e37444466a52ee456a55d5f7a826e4974d2bf288cae5d6a16d3e8cb94c18df"
    )


@pytest.mark.parametrize(
    "action, key",
    [
        ("renew", "d3cc46351a2d17dc89f7858476d6d267c97c9150af2ee69af877dd8da55d10f0"),
        ("revoke", "eb9efc7a8e1b6b9f8188a975ba21755d29b41432707951b07a72ac7fd498856d"),
        ("grant", "e184462d7fc3ffa4aef246de9c01ae6b769741c76c004cf0ef6b478c456a3f1f"),
        ("preferences", "5061a9a8c3c7047c6f6bb2ab97f02370124f31b0f6a0901d0759ba80991e432a"),
    ],
)
def test_link_keys_are_pinned(action, key):
    assert links._key(SECRET, links.LinkAction(action)).hex() == key


def test_link_tokens_and_sealed_secrets_are_pinned(engine, monkeypatch):
    monkeypatch.setenv("CONSENTFLOW_SECRET_KEY", SECRET.decode())
    settings.get_settings.cache_clear()
    now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    with db.session_scope(engine) as s:
        token = links.issue(s, links.LinkAction.REVOKE, 7, 3, ttl=timedelta(days=1), now=now)
        assert token == (
            "eyJhIjoicmV2b2tlIiwiZSI6MTg5MzYzOTg0NSwicCI6MywicyI6N30"
            ".mvZdJBWFB_-eJApLPzwfNhh2smm2A6pQ0JGwSgoZ5-o"
        )
        assert links.verify(s, token, links.LinkAction.REVOKE, now=now).subject_id == 7
        # Sealed before the change: the derived Fernet key must still open it.
        sealed = (
            "enc:v1:gAAAAABrDXwGj7OnQlauOHij_xBsBTsJO1lezWQCh1rGNG6J6CaCgF1pv0J7KXNAYZd2zMytDA2fD1"
            "yuFn1_ktzM3uMSJxR2jg=="
        )
        assert secretbox.open_secret(s, sealed) == "whsec_abc"
    settings.get_settings.cache_clear()
