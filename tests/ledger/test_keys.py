"""Every value derived from the instance secret stays byte-identical across refactors, and the
secret lives outside the database.

Subject references, suppression hashes, link signatures and sealed webhook secrets are stored (or
handed out) and must keep matching: these values were computed before the key derivation was
gathered into ``keys.derive`` and pin it, whether the key comes from ``CONSENTFLOW_SECRET_KEY``
or from the key file. The key file: generated at upgrade with mode 0600, never regenerated over
keyed data, refused when others may read it; production mode needs an explicit key.
"""

import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import inspect
from sqlalchemy.engine import Engine

from consentflow import db, keys, links, mail, settings, subjects
from consentflow.delivery import secretbox
from consentflow.errors import InvalidInput

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


# ---------------------------------------------------------------------------- the key file


def _fresh_sqlite(tmp_path: Path, name: str = "ledger.db") -> Engine:
    return db.make_engine(f"sqlite:///{tmp_path / name}")


@pytest.fixture
def no_secret_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ("CONSENTFLOW_SECRET_KEY", "CONSENTFLOW_KEY_FILE", "CONSENTFLOW_ENV"):
        monkeypatch.delenv(var, raising=False)
    settings.get_settings.cache_clear()
    yield
    settings.get_settings.cache_clear()


def test_upgrade_generates_an_owner_only_key_file_beside_sqlite(tmp_path, no_secret_key):
    engine = _fresh_sqlite(tmp_path)
    db.upgrade(engine)
    path = tmp_path / "ledger.db.key"
    assert keys.key_file_path(engine.url) == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with db.session_scope(engine) as s:
        assert keys.instance_secret(s) == path.read_text().strip().encode()
        assert "instance_key" not in inspect(s.connection()).get_table_names()
    engine.dispose()


def test_postgresql_key_files_live_in_the_data_directory(monkeypatch, tmp_path, no_secret_key):
    monkeypatch.setenv("CONSENTFLOW_DATA_DIR", str(tmp_path / "data"))
    settings.get_settings.cache_clear()
    url = "postgresql://app@db.internal:5433/ledger"
    assert keys.key_file_path(url) == tmp_path / "data" / "postgresql-db.internal-5433-ledger.key"
    monkeypatch.setenv("CONSENTFLOW_KEY_FILE", str(tmp_path / "chosen.key"))
    settings.get_settings.cache_clear()
    assert keys.key_file_path(url) == tmp_path / "chosen.key"


def test_a_key_file_holding_the_pinned_secret_gives_the_pinned_values(
    engine, monkeypatch, tmp_path, no_secret_key
):
    """The file's text is the key's bytes, exactly as the database kept it before."""
    path = tmp_path / "pinned.key"
    path.write_text(SECRET.decode() + "\n")
    path.chmod(0o600)
    monkeypatch.setenv("CONSENTFLOW_KEY_FILE", str(path))
    settings.get_settings.cache_clear()
    now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    with db.session_scope(engine) as s:
        assert keys.instance_secret(s) == SECRET
        token = links.issue(s, links.LinkAction.REVOKE, 7, 3, ttl=timedelta(days=1), now=now)
    assert token.endswith(".mvZdJBWFB_-eJApLPzwfNhh2smm2A6pQ0JGwSgoZ5-o")


def test_a_lost_key_file_is_refused_once_keyed_data_exists(tmp_path, no_secret_key):
    engine = _fresh_sqlite(tmp_path)
    db.upgrade(engine)
    with db.session_scope(engine) as s:
        subjects.add(s, "cust-1")
    path = tmp_path / "ledger.db.key"
    kept = path.read_bytes()
    path.unlink()
    with (
        pytest.raises(InvalidInput, match=r"no key file at .*restore the key file"),
        db.session_scope(engine) as s,
    ):
        keys.instance_secret(s)
    with pytest.raises(InvalidInput, match="no key file"):
        db.upgrade(engine)  # not even the upgrade makes a new key then
    assert not path.exists()
    path.write_bytes(kept)
    path.chmod(0o644)
    with (
        pytest.raises(InvalidInput, match=r"readable by others .*chmod 600"),
        db.session_scope(engine) as s,
    ):
        keys.instance_secret(s)
    path.chmod(0o600)
    with db.session_scope(engine) as s:
        assert keys.instance_secret(s) == kept.strip()
    engine.dispose()


def test_a_key_made_on_first_use_is_the_one_every_unit_of_work_reads(tmp_path, no_secret_key):
    engine = _fresh_sqlite(tmp_path)
    db.upgrade(engine)
    (tmp_path / "ledger.db.key").unlink()
    with db.session_scope(engine) as first, db.session_scope(engine, readonly=True) as second:
        assert keys.instance_secret(first) == keys.instance_secret(second)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    engine.dispose()


@pytest.mark.parametrize("key", [None, "short"])
def test_production_mode_refuses_to_start_without_a_real_key(cli, monkeypatch, key):
    monkeypatch.setenv("CONSENTFLOW_ENV", "production")
    if key:
        monkeypatch.setenv("CONSENTFLOW_SECRET_KEY", key)
    else:
        monkeypatch.delenv("CONSENTFLOW_SECRET_KEY", raising=False)
    settings.get_settings.cache_clear()
    try:
        result = cli("db", "upgrade")
    finally:
        settings.get_settings.cache_clear()
    assert result.code == 2
    assert result.err.count("\n") == 1 and "needs CONSENTFLOW_SECRET_KEY" in result.err
    monkeypatch.setenv("CONSENTFLOW_SECRET_KEY", "k" * 32)
    settings.get_settings.cache_clear()
    try:
        assert cli("db", "upgrade").code == 0
    finally:
        settings.get_settings.cache_clear()


# ------------------------------------------------------------------------- several keys


def test_pinned_values_hold_when_the_pinned_key_becomes_the_old_one(engine, monkeypatch):
    """After a rotation the pinned key is the reference key and an old signing key: every value
    made with it (references, links, sealed secrets) stays valid; the new key signs."""
    monkeypatch.setenv("CONSENTFLOW_SECRET_KEY", f"a-newer-key-of-this-instance, {SECRET.decode()}")
    monkeypatch.setenv("CONSENTFLOW_REFERENCE_KEY", SECRET.decode())
    settings.get_settings.cache_clear()
    now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    pinned = (
        "eyJhIjoicmV2b2tlIiwiZSI6MTg5MzYzOTg0NSwicCI6MywicyI6N30"
        ".mvZdJBWFB_-eJApLPzwfNhh2smm2A6pQ0JGwSgoZ5-o"
    )
    with db.session_scope(engine) as s:
        assert keys.signing_keys(s) == [b"a-newer-key-of-this-instance", SECRET]
        assert keys.reference_key(s) == SECRET
        assert subjects.add(s, "cust-42").subject_ref == "f2eb499120c83d933f504455f37ff2cc"
        assert links.verify(s, pinned, links.LinkAction.REVOKE, now=now).subject_id == 7
        fresh = links.issue(s, links.LinkAction.REVOKE, 7, 3, ttl=timedelta(days=1), now=now)
        assert fresh != pinned and links.verify(s, fresh, links.LinkAction.REVOKE, now=now)
        sealed = (
            "enc:v1:gAAAAABrDXwGj7OnQlauOHij_xBsBTsJO1lezWQCh1rGNG6J6CaCgF1pv0J7KXNAYZd2zMytDA2fD1"
            "yuFn1_ktzM3uMSJxR2jg=="
        )
        assert secretbox.open_secret(s, sealed) == "whsec_abc"
        resealed = secretbox.seal(s, "whsec_abc")  # sealed under the newest key
        assert not secretbox.Box(SECRET).current(resealed)
        assert secretbox.Box(b"a-newer-key-of-this-instance").open(resealed) == "whsec_abc"
    settings.get_settings.cache_clear()


def _key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str) -> Path:
    path = tmp_path / "several.key"
    path.write_text(content)
    path.chmod(0o600)
    monkeypatch.setenv("CONSENTFLOW_KEY_FILE", str(path))
    settings.get_settings.cache_clear()
    return path


def test_a_key_file_of_several_keys_pins_its_reference_line(
    engine, monkeypatch, tmp_path, no_secret_key
):
    newer = "n" * 43
    path = _key_file(
        tmp_path,
        monkeypatch,
        f"# a comment\n\nreference: {SECRET.decode()}\n{newer}\n{SECRET.decode()}\n",
    )
    with db.session_scope(engine) as s:
        found = keys.load(s)
        assert found.signing == (newer.encode(), SECRET) and found.reference == SECRET
        assert found.pinned and found.path == path and SECRET.decode() not in repr(found)
    keys.write_key_file(path, [b"m" * 43, newer.encode()], SECRET)  # SECRET retired from signing
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    with db.session_scope(engine) as s:
        assert keys.signing_keys(s) == [b"m" * 43, newer.encode()]
        assert keys.reference_key(s) == SECRET  # retiring the oldest key never moves it


@pytest.mark.parametrize(
    "content, message",
    [
        (f"{'n' * 20}\n{'o' * 20}\n", "lists 2 keys but no `reference:` line"),
        (f"reference: {'o' * 20}\nshort\n", "line 2 of the key file .* is not a key"),
        (f"reference: {'o' * 20}\n{'n' * 20}\n{'n' * 20}\n", "line 3 .* repeats a key"),
        (f"reference: {'o' * 20}\nreference: {'p' * 20}\n{'n' * 20}\n", "2 reference lines"),
    ],
)
def test_a_malformed_key_file_is_refused_in_one_line(
    engine, monkeypatch, tmp_path, no_secret_key, content, message
):
    _key_file(tmp_path, monkeypatch, content)
    with pytest.raises(InvalidInput, match=message) as caught, db.session_scope(engine) as s:
        keys.load(s)
    assert "\n" not in str(caught.value) and "o" * 20 not in str(caught.value)


@pytest.mark.parametrize(
    "value, message",
    [
        ("a-key-of-some-length,,another-key-here", "key 2 of 3 is empty"),
        ("a-key-of-some-length,", "key 2 of 2 is empty"),
        ("a-key-of-some-length, a-key-of-some-length", "key 2 of 2 repeats key 1"),
    ],
)
def test_a_malformed_key_list_is_one_line(value, message):
    with pytest.raises(ValueError, match=message) as caught:
        settings.split_keys(value)
    assert "a-key-of-some-length" not in str(caught.value)


def test_one_key_is_taken_exactly_as_given_and_a_list_is_trimmed():
    assert settings.split_keys(" one key, as it always was ") == ("one key", "as it always was")
    assert settings.split_keys(" a single key ") == (" a single key ",)


def test_a_start_up_error_never_prints_a_key(monkeypatch):
    """What a web app or worker would show in its traceback on a bad key list."""
    monkeypatch.setenv("CONSENTFLOW_SECRET_KEY", "a-key-of-some-length,,another-key-here")
    with pytest.raises(ValidationError) as caught:
        settings.Settings()
    assert "key 2 of 3 is empty" in str(caught.value)
    assert "a-key-of-some-length" not in str(caught.value)
    monkeypatch.setenv("CONSENTFLOW_SECRET_KEY", "a-short-key-here")
    monkeypatch.setenv("CONSENTFLOW_ENV", "production")
    with pytest.raises(ValidationError) as caught:
        settings.Settings()
    assert "a-short" not in str(caught.value)
