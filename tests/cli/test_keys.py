"""``consentflow keys list`` and ``keys rotate`` on SQLite and PostgreSQL: the output names keys by
fingerprint only; every refusal is one line on stderr with its exit code (1 refused, 2 a bad
configuration) and changes nothing (no key written, no value re-sealed, no audit entry)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import select

from consentflow import db, purposes, secretbox, settings, systems
from consentflow.models import AuditEntry, System

pytestmark = pytest.mark.usefixtures("allow_loopback")

K0 = "original-key-of-this-instance-0000"
K1 = "a-newer-key-prepended-by-the-operator"


@pytest.fixture
def instance(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> Iterator[Path]:
    """A key file holding ``K0`` and a system whose webhook secret it sealed."""
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "instance.key"
    path.write_text(K0 + "\n")
    path.chmod(0o600)
    use(monkeypatch, CONSENTFLOW_KEY_FILE=str(path))
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=30)
        systems.add(s, "crm", ["news"], webhook_url="http://127.0.0.1:9/hook")
    yield path
    settings.get_settings.cache_clear()


def use(monkeypatch: pytest.MonkeyPatch, **env: str | None) -> None:
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    settings.get_settings.cache_clear()


def state(engine: Engine, path: Path) -> tuple[str, str, int]:
    """What a refused command must leave as it was: the key file, the sealed secret, the audit."""
    with db.session_scope(engine, readonly=True) as s:
        sealed = s.exec(select(System.webhook_secret)).one()
        entries = len(s.exec(select(AuditEntry.seq)).all())
    return path.read_text(), sealed or "", entries


def one_line(result, code: int, *needles: str) -> None:
    assert result.code == code, (result.out, result.err)
    assert result.err.count("\n") == 1 and "Traceback" not in result.err
    for needle in needles:
        assert needle in result.err, result.err


def no_key_anywhere(engine: Engine, caplog, *outputs: str) -> None:
    with db.session_scope(engine, readonly=True) as s:
        audit = repr(s.exec(select(AuditEntry.detail)).all())
    for key in (K0, K1):
        for where in (audit, caplog.text, *outputs):
            assert key not in where


def test_list_and_rotate_print_fingerprints_only(cli, engine, instance, caplog):
    listed = cli("keys", "list")
    assert listed.code == 0, listed.err
    assert "signs and seals  (reference)" in listed.out and "the one key" in listed.out
    rotated = cli("keys", "rotate", "--agent", "ops", "--json")
    assert rotated.code == 0, rotated.err
    view = json.loads(rotated.out)
    assert view["generated"] and view["recorded"] and view["resealed"] == 1
    assert view["keys"][1] == view["reference"] and view["key_file"] == str(instance)
    after = json.loads(cli("keys", "list", "--json").out)
    assert [k["signs"] for k in after["keys"]] == [True, False]
    assert after["keys"][1]["reference"] and after["reference_pinned"]
    assert (after["sealed_current"], after["sealed_older"], after["rotation_pending"]) == (
        1,
        0,
        False,
    )
    text_rotation = cli("keys", "rotate")
    assert text_rotation.code == 0 and "new key" in text_rotation.out
    assert "reference key " + view["reference"] + " (unchanged)" in text_rotation.out
    no_key_anywhere(engine, caplog, listed.out, rotated.out, text_rotation.out)
    with db.session_scope(engine, readonly=True) as s:
        [first, _] = s.exec(select(AuditEntry).where(AuditEntry.action == "keys.rotated")).all()
    assert first.actor == "ops" and first.detail["keys"] == view["keys"]


def test_with_env_keys_the_operator_prepends_a_key_first(
    cli, engine, instance, monkeypatch, caplog
):
    use(monkeypatch, CONSENTFLOW_KEY_FILE=None, CONSENTFLOW_SECRET_KEY=K0)
    with db.session_scope(engine) as s:  # the secret, sealed under the environment's key
        s.execute(
            text('UPDATE "system" SET webhook_secret = :v'), {"v": secretbox.seal(s, "whsec_x")}
        )
    before = state(engine, instance)
    refused = cli("keys", "rotate")
    one_line(refused, 1, "prepend a new key", "CONSENTFLOW_REFERENCE_KEY")
    assert state(engine, instance) == before
    use(monkeypatch, CONSENTFLOW_SECRET_KEY=f"{K1},{K0}", CONSENTFLOW_REFERENCE_KEY=K0)
    assert json.loads(cli("keys", "list", "--json").out)["rotation_pending"]
    finished = cli("keys", "rotate")
    assert finished.code == 0 and "finished the rotation" in finished.out
    assert "re-sealed 1 secret(s)" in finished.out
    with db.session_scope(engine, readonly=True) as s:
        sealed = s.exec(select(System.webhook_secret)).one()
    assert secretbox.Box(K1.encode()).open(sealed) == "whsec_x"
    again = cli("keys", "rotate")
    one_line(again, 1, "already signs and seals everything")
    no_key_anywhere(engine, caplog, refused.err, finished.out, again.err)


def test_a_changed_reference_key_is_refused(cli, engine, instance, monkeypatch):
    use(monkeypatch, CONSENTFLOW_KEY_FILE=None, CONSENTFLOW_SECRET_KEY=f"{K1},{K0}")
    use(monkeypatch, CONSENTFLOW_REFERENCE_KEY=K0)
    assert cli("keys", "rotate").code == 0
    use(monkeypatch, CONSENTFLOW_SECRET_KEY=f"{'z' * 20},{K1},{K0}", CONSENTFLOW_REFERENCE_KEY=K1)
    before = state(engine, instance)
    one_line(cli("keys", "rotate"), 1, "is not the one the last rotation recorded")
    assert state(engine, instance) == before


def test_a_broken_audit_chain_refuses_rotation(cli, engine, instance):
    with db.session_scope(engine) as s:
        s.execute(text("UPDATE audit_entry SET actor = 'mallory' WHERE seq = 1"))
    before = state(engine, instance)
    one_line(cli("keys", "rotate"), 1, "refusing to rotate keys: audit verify fails")
    assert state(engine, instance) == before


def test_a_value_no_key_opens_refuses_rotation(cli, engine, instance):
    with db.session_scope(engine) as s:
        lost = secretbox.Box(b"a-key-that-was-removed-from-the-list").seal("whsec_lost")
        s.execute(text('UPDATE "system" SET previous_secret = :v'), {"v": lost})
    before = state(engine, instance)
    one_line(
        cli("keys", "rotate"), 1, "the previous secret of system 'crm' opens with no listed key"
    )
    assert state(engine, instance) == before
    assert "unreadable: the previous secret of system 'crm'" in cli("keys", "list").out


@pytest.mark.parametrize(
    "env, needle",
    [
        ({"CONSENTFLOW_SECRET_KEY": f"{K1},,{K0}"}, "CONSENTFLOW_SECRET_KEY: key 2 of 3 is empty"),
        ({"CONSENTFLOW_SECRET_KEY": f"{K1},{K1}"}, "key 2 of 2 repeats key 1"),
        ({"CONSENTFLOW_SECRET_KEY": f"{K1},{K0}"}, "CONSENTFLOW_REFERENCE_KEY is unset"),
        ({"CONSENTFLOW_REFERENCE_KEY": K0}, "set without CONSENTFLOW_SECRET_KEY"),
        (
            {
                "CONSENTFLOW_ENV": "production",
                "CONSENTFLOW_SECRET_KEY": f"{'k' * 32},short,key",
                "CONSENTFLOW_REFERENCE_KEY": "k" * 32,
            },
            "key 2 of 3 in CONSENTFLOW_SECRET_KEY has 5",
        ),
    ],
)
def test_a_bad_key_configuration_is_one_line(cli, engine, instance, monkeypatch, env, needle):
    use(monkeypatch, CONSENTFLOW_KEY_FILE=None, **env)
    before = state(engine, instance)
    for command in (("keys", "list"), ("keys", "rotate")):
        result = cli(*command)
        one_line(result, 2, "bad configuration", needle)
        assert K0 not in result.err and K1 not in result.err
    assert state(engine, instance) == before


def test_a_key_file_of_several_keys_without_a_reference_line_is_one_line(cli, engine, instance):
    instance.write_text(f"{K1}\n{K0}\n")
    before = state(engine, instance)
    one_line(cli("keys", "rotate"), 2, "no `reference:` line")
    assert state(engine, instance) == before
