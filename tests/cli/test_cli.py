"""The command line: the README walk-through, --json everywhere, exit codes, one-line errors."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, text
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session

from consentflow import db, settings
from consentflow.models import metadata

NOSCHEMA = "consentflow: the database has no consentflow schema: run `consentflow db upgrade`"


def head_revision() -> str:
    """The newest migration, which ``db upgrade`` reports."""
    from alembic.script import ScriptDirectory

    return str(ScriptDirectory(str(db.MIGRATIONS_DIR)).get_current_head())


def counts(engine: Engine) -> dict[str, int]:
    with Session(engine) as s:
        return {
            t.name: s.execute(sa_select(func.count()).select_from(t)).scalar_one()
            for t in metadata.sorted_tables
        }


def ok(r: Any) -> str:
    assert r.code == 0, (r.code, r.err)
    assert "Traceback" not in r.err
    return str(r.out)


def js(r: Any) -> Any:
    return json.loads(ok(r))


def one_line_error(r: Any, code: int) -> str:
    assert r.code == code, (r.code, r.out, r.err)
    assert "Traceback" not in r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    assert lines[0].startswith("consentflow: "), r.err
    return str(lines[0])


# ------------------------------------------------------------------------ the walk-through


def test_readme_walkthrough_text(cli: Any, engine: Engine) -> None:
    assert ok(cli("db", "upgrade")).strip() == f"database at revision {head_revision()}"
    assert "purpose newsletter v1 added" in ok(
        cli(
            "purpose",
            "add",
            "newsletter",
            "--title",
            "Monthly newsletter",
            "--validity-days",
            "365",
        )
    )
    assert "subject alice added" in ok(cli("subject", "add", "alice", "--email", "alice@x.org"))
    out = ok(
        cli(
            "system",
            "add",
            "crm",
            "--purposes",
            "newsletter",
            "--webhook-url",
            "https://crm.example.com/hooks/consent",
        )
    )
    assert "system crm added" in out
    assert "webhook secret (shown once, keep it safe): whsec_" in out
    out = ok(
        cli("consent", "grant", "alice", "newsletter", "--actor", "subject", "--channel", "web")
    )
    assert out.startswith("alice / newsletter: absent -> given (seq 1, valid until ")
    r = cli("check", "alice", "newsletter", "--system", "crm")
    assert r.code == 0 and r.out.startswith("allowed: given (valid until ")
    out = ok(
        cli(
            "consent",
            "revoke",
            "alice",
            "newsletter",
            "--actor",
            "subject",
            "--channel",
            "email_link",
        )
    )
    assert out.strip() == "alice / newsletter: given -> withdrawn (seq 2)"
    r = cli("check", "alice", "newsletter", "--system", "crm")
    assert r.code == 1 and r.out.strip() == "not allowed: withdrawn" and r.err == ""
    out = ok(cli("consent", "show", "alice"))
    assert out.split()[:3] == ["newsletter", "withdrawn", "v1"]
    out = ok(cli("consent", "show", "alice", "--at", "2026-01-01T00:00:00Z"))
    assert out.strip() == "alice: no consents as of 2026-01-01 00:00:00Z"
    lines = ok(cli("consent", "history", "alice")).strip().splitlines()
    assert len(lines) == 2
    assert lines[0].split()[0] == "1" and "grant" in lines[0] and "by subject via web" in lines[0]
    assert "revoke" in lines[1] and "by subject via email_link" in lines[1]
    out = ok(cli("audit", "verify"))
    assert out.startswith("audit trail intact: 5 entries, head 5:")
    exported = [
        json.loads(x) for x in ok(cli("audit", "export", "--subject", "alice")).split("\n")[:-1]
    ]
    assert [x["action"] for x in exported] == [
        "subject.created",
        "consent.grant",
        "consent.revoke",
    ]
    assert "alice@x.org" not in json.dumps(exported)
    out = ok(cli("purpose", "revise", "newsletter", "--material", "--title", "Weekly newsletter"))
    assert out.strip() == "purpose newsletter v2 (material)"
    assert "v2" in ok(cli("purpose", "list")) and "material" in ok(cli("purpose", "list"))
    assert len(ok(cli("purpose", "list", "--versions")).strip().splitlines()) == 2
    out = ok(cli("system", "list"))
    assert out.split() == ["crm", "active", "newsletter", "https://crm.example.com/hooks/consent"]
    assert "whsec_" not in out
    assert counts(engine)["delivery"] == 1


def test_readme_walkthrough_json(cli: Any, engine: Engine) -> None:
    v = js(
        cli(
            "purpose",
            "add",
            "newsletter",
            "--title",
            "Monthly newsletter",
            "--validity-days",
            "365",
            "--data-categories",
            "email, name",
            "--json",
        )
    )
    assert (v["key"], v["version"], v["validity_days"], v["material"]) == (
        "newsletter",
        1,
        365,
        False,
    )
    assert v["data_categories"] == ["email", "name"] and v["lawful_basis"] == "consent"
    subj = js(cli("subject", "add", "alice", "--email", "alice@x.org", "--locale", "fr", "--json"))
    assert subj["external_id"] == "alice" and subj["locale"] == "fr"
    assert len(subj["subject_ref"]) == 32 and "alice@x.org" not in json.dumps(subj)
    sysd = js(
        cli(
            "system",
            "add",
            "crm",
            "--purposes",
            "newsletter",
            "--webhook-url",
            "https://crm.example.com/h",
            "--json",
        )
    )
    assert sysd["name"] == "crm" and sysd["webhook_secret"].startswith("whsec_")
    asked = js(cli("consent", "request", "alice", "newsletter", "--json"))
    assert (asked["action"], asked["state"], asked["seq"]) == ("request", "requested", 1)
    g = js(
        cli(
            "consent",
            "grant",
            "alice",
            "newsletter",
            "--actor",
            "agent",
            "--agent",
            "sam",
            "--reason",
            "phone",
            "--json",
        )
    )
    assert (g["action"], g["previous_state"], g["state"], g["seq"]) == (
        "grant",
        "requested",
        "given",
        2,
    )
    given_at = datetime.fromisoformat(g["occurred_at"])
    assert datetime.fromisoformat(g["valid_until"]) == given_at + timedelta(days=365)
    r = cli("check", "alice", "newsletter", "--system", "crm", "--json")
    assert r.code == 0
    d = json.loads(r.out)
    assert (d["allowed"], d["reason"], d["event_id"]) == (True, "given", g["event_id"])
    assert d["valid_until"] == g["valid_until"]
    renewed = js(cli("consent", "renew", "alice", "newsletter", "--json"))
    assert renewed["state"] == "given" and renewed["seq"] == 3
    revoked = js(cli("consent", "revoke", "alice", "newsletter", "--json"))
    assert (revoked["state"], revoked["deliveries"]) == ("withdrawn", 1)
    refused = js(cli("consent", "refuse", "alice", "newsletter", "--json"))
    assert refused["previous_state"] == "withdrawn" and refused["state"] == "refused"
    r = cli("check", "alice", "newsletter", "--system", "crm", "--json")
    assert r.code == 1 and json.loads(r.out)["reason"] == "refused"
    shown = js(cli("consent", "show", "alice", "--json"))
    assert shown["as_of"] is None
    assert [(c["purpose"], c["state"], c["seq"]) for c in shown["consents"]] == [
        ("newsletter", "refused", 5)
    ]
    then = js(cli("consent", "show", "alice", "--at", g["recorded_at"], "--json"))
    assert then["as_of"] == g["recorded_at"]
    assert [(c["state"], c["event_id"]) for c in then["consents"]] == [("given", g["event_id"])]
    hist = js(cli("consent", "history", "alice", "--json"))
    assert [(h["seq"], h["action"], h["state"]) for h in hist] == [
        (1, "request", "requested"),
        (2, "grant", "given"),
        (3, "renew", "given"),
        (4, "revoke", "withdrawn"),
        (5, "refuse", "refused"),
    ]
    assert (hist[1]["actor_type"], hist[1]["actor"], hist[1]["reason"]) == ("agent", "sam", "phone")
    assert (hist[1]["channel"], hist[0]["channel"]) == ("support", "support")
    verified = js(cli("audit", "verify", "--json"))
    assert verified["ok"] is True and verified["entries"] == 8
    revised = js(cli("purpose", "revise", "newsletter", "--validity-days", "30", "--json"))
    assert (revised["version"], revised["validity_days"], revised["material"]) == (2, 30, False)
    assert [p["version"] for p in js(cli("purpose", "list", "--json"))] == [2]
    assert [p["version"] for p in js(cli("purpose", "list", "--versions", "--json"))] == [1, 2]
    assert js(cli("system", "list", "--json")) == [
        {
            "name": "crm",
            "display_name": "crm",
            "purposes": ["newsletter"],
            "webhook_url": "https://crm.example.com/h",
            "status": "active",
        }
    ]


def test_a_subject_without_a_locale_stores_none(cli: Any, engine: Engine) -> None:
    """No --locale: none is stored (pages follow the browser's Accept-Language), not "en"; a
    well-formed tag without a catalog is kept (rendered in English, never an error)."""
    assert js(cli("subject", "add", "dana", "--json"))["locale"] is None
    assert js(cli("subject", "add", "eve", "--locale", " pt-BR ", "--json"))["locale"] == "pt-BR"
    assert js(cli("subject", "add", "finn", "--locale", "", "--json"))["locale"] is None
    from consentflow.models import Subject

    with Session(engine) as s:
        stored = {e: loc for e, loc in s.execute(sa_select(Subject.external_id, Subject.locale))}
    assert stored == {"dana": None, "eve": "pt-BR", "finn": None}


def test_agent_defaults_to_the_os_user(cli: Any, engine: Engine) -> None:
    import getpass

    ok(cli("purpose", "add", "news", "--title", "News", "--validity-days", "30"))
    ok(cli("subject", "add", "alice"))
    ok(cli("consent", "grant", "alice", "news"))
    (event,) = js(cli("consent", "history", "alice", "--json"))
    assert (event["actor_type"], event["channel"], event["actor"]) == (
        "agent",
        "support",
        getpass.getuser(),
    )


def test_import_json(cli: Any, engine: Engine, tmp_path: Path) -> None:
    ok(cli("purpose", "add", "news", "--title", "News", "--validity-days", "30"))
    path = tmp_path / "in.csv"
    path.write_text(
        "external_id,email,locale,purpose,state,given_at,valid_until\n"
        "alice,alice@example.com,en,news,given,2026-01-01,\n"
    )
    report = js(cli("subject", "import", str(path), "--json"))
    assert (report["rows"], report["subjects_created"], report["consents_created"]) == (1, 1, 1)
    assert report["bad_rows"] == [] and len(report["import_id"]) == 32


# ----------------------------------------------------------------------------- exit codes


@pytest.fixture
def populated(cli: Any, engine: Engine) -> Engine:
    ok(cli("purpose", "add", "newsletter", "--title", "Newsletter", "--validity-days", "365"))
    ok(cli("subject", "add", "alice", "--email", "alice@example.com"))
    ok(cli("subject", "add", "bob"))
    ok(cli("system", "add", "crm", "--purposes", "newsletter", "--webhook-url", "https://c.io/h"))
    ok(cli("consent", "grant", "alice", "newsletter"))
    return engine


ERRORS: list[tuple[tuple[str, ...], int, str]] = [
    (("consent", "grant", "nobody", "newsletter"), 2, "unknown subject 'nobody'"),
    (("consent", "revoke", "nobody", "newsletter"), 2, "unknown subject 'nobody'"),
    (("consent", "grant", "bob", "nothing"), 2, "unknown purpose 'nothing'"),
    (("consent", "show", "nobody"), 2, "unknown subject 'nobody'"),
    (("consent", "history", "nobody"), 2, "unknown subject 'nobody'"),
    (("consent", "show", "alice", "--at", "last tuesday"), 2, "bad --at 'last tuesday'"),
    (("subject", "add", "carol", "--email", "not-an-email"), 2, "bad email address"),
    (("subject", "add", "carol", "--locale", "??"), 2, "bad locale"),
    (("subject", "add", "carol", "--locale", "en-" + "-".join(["abcdefgh"] * 4)), 2, "bad locale"),
    (("subject", "add", "  "), 2, "external id"),
    (("consent", "grant", "bob", "newsletter", "--actor", "robot"), 2, "bad --actor 'robot'"),
    (("consent", "grant", "bob", "newsletter", "--channel", "fax"), 2, "--channel 'fax'"),
    (("check", "alice", "newsletter", "--system", "nosuch"), 2, "unknown system 'nosuch'"),
    (("purpose", "add", "Bad Key", "--title", "X", "--validity-days", "3"), 2, "bad purpose key"),
    (("purpose", "add", "p2", "--title", "X", "--validity-days", "0"), 2, "validity days"),
    (("purpose", "add", "p2", "--title", " ", "--validity-days", "3"), 2, "title"),
    (
        ("purpose", "add", "p2", "--title", "X", "--validity-days", "3", "--lawful-basis", "whim"),
        2,
        "unknown lawful basis 'whim'",
    ),
    (("purpose", "revise", "newsletter"), 2, "nothing to revise"),
    (("purpose", "revise", "newsletter", "--title", "Newsletter"), 2, "nothing to revise"),
    (("purpose", "revise", "nothing", "--title", "X"), 2, "unknown purpose 'nothing'"),
    (("system", "add", "erp", "--purposes", "nothing"), 2, "unknown purpose 'nothing'"),
    (("system", "add", "erp", "--purposes", ","), 2, "at least one purpose"),
    (("purpose", "revise", "newsletter", "--locale", "fr"), 2, "give a title or a description"),
    (("purpose", "revise", "newsletter", "--locale", "en", "--title", "N"), 2, "default language"),
    (("purpose", "revise", "newsletter", "--locale", "f r", "--title", "N"), 2, "bad locale"),
    (("purpose", "add", "p2", "--title", "X"), 2, "needs --title and --validity-days"),
    (("purpose", "add", "p2", "--validity-days", "3"), 2, "needs --title and --validity-days"),
    (("purpose", "add", "nothing", "--locale", "fr", "--title", "X"), 2, "default language first"),
    (("purpose", "add", "newsletter", "--locale", "fr"), 2, "give a title or a description"),
    (
        ("purpose", "add", "newsletter", "--locale", "fr", "--title", "X", "--validity-days", "3"),
        2,
        "give only --title and --description",
    ),
    (("system", "add", "erp", "--purposes", "newsletter", "--display-name", " \x01"), 2, "display"),
    (
        ("system", "add", "erp", "--purposes", "newsletter", "--webhook-url", "ftp://x"),
        2,
        "bad webhook URL",
    ),
    (("audit", "verify", "--expect", "nonsense"), 2, "bad --expect"),
    (("audit", "export", "--since", "soon"), 2, "bad --since 'soon'"),
    (("consent", "revoke", "bob", "newsletter"), 1, "cannot revoke consent of 'bob'"),
    (("consent", "renew", "bob", "newsletter"), 1, "cannot renew consent of 'bob'"),
    (("consent", "grant", "alice", "newsletter"), 1, "consent is given"),
    (("consent", "request", "alice", "newsletter"), 1, "cannot request"),
    (("consent", "refuse", "alice", "newsletter"), 1, "cannot refuse"),
    (("purpose", "add", "newsletter", "--title", "X", "--validity-days", "3"), 1, "exists"),
    (("subject", "add", "alice"), 1, "subject 'alice' exists already"),
    (("system", "add", "crm", "--purposes", "newsletter"), 1, "system 'crm' exists already"),
]


def test_errors_are_one_line_and_change_nothing(cli: Any, populated: Engine) -> None:
    """Every case, with and without --json: the exit code, one line on stderr starting with
    'consentflow:' and naming the problem, nothing on stdout, and no row changed anywhere."""
    problems = []
    for args, code, phrase in ERRORS:
        variants = [args] if args[:2] == ("audit", "export") else [args, (*args, "--json")]
        for argv in variants:
            before = counts(populated)
            r = cli(*argv)
            lines = r.err.strip().splitlines()
            fine = (
                r.code == code
                and len(lines) == 1
                and lines[0].startswith("consentflow: ")
                and phrase in lines[0]
                and "Traceback" not in r.err
                and r.out == ""
                and counts(populated) == before
            )
            if not fine:
                problems.append((" ".join(argv), r.code, r.out, r.err))
    assert problems == []


def test_check_not_allowed_exits_1_without_an_error(cli: Any, populated: Engine) -> None:
    before = counts(populated)
    for args, reason in [
        (("check", "bob", "newsletter", "--system", "crm"), "no_consent"),
        (("check", "nobody", "newsletter"), "unknown_subject"),
        (("check", "alice", "nothing"), "unknown_purpose"),
    ]:
        r = cli(*args)
        assert (r.code, r.err, r.out.strip()) == (1, "", f"not allowed: {reason}")
        r = cli(*args, "--json")
        assert r.code == 1 and json.loads(r.out)["reason"] == reason
    assert counts(populated) == before


def test_usage_errors_from_the_parser_are_one_line(cli: Any, populated: Engine) -> None:
    """Malformed options (a non-number, a missing argument, an unknown option) are mistakes like
    any other: exit 2 and one line starting with 'consentflow:', not a multi-line usage box."""
    cases = [
        ("purpose", "add", "p2", "--title", "X", "--validity-days", "abc"),
        ("consent", "grant", "alice"),
        ("consent", "grant", "bob", "newsletter", "--bogus"),
    ]
    problems = []
    for args in cases:
        r = cli(*args)
        lines = r.err.strip().splitlines()
        if r.code != 2 or len(lines) != 1 or not lines[0].startswith("consentflow: "):
            problems.append((" ".join(args), r.code, r.err))
        assert "Traceback" not in r.err
    assert problems == []


# ---------------------------------------------------------------------- a database with no schema


@pytest.fixture
def empty_url(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A database of the same kind with no schema at all, set as CONSENTFLOW_DATABASE_URL."""
    admin = None
    if database_url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'empty.db'}"
    else:
        name = f"consentflow_empty_{uuid.uuid4().hex[:10]}"
        admin = create_engine(db.normalise_url(database_url), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(db.normalise_url(database_url)).set(database=name)
        url = url.render_as_string(hide_password=False)
    monkeypatch.setenv("CONSENTFLOW_DATABASE_URL", url)
    settings.get_settings.cache_clear()
    db._cached_engine.cache_clear()
    yield url
    db.get_engine(url).dispose()
    db._cached_engine.cache_clear()
    settings.get_settings.cache_clear()
    if admin is not None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


NO_SCHEMA_COMMANDS = [
    ("consent", "show", "alice"),
    ("consent", "grant", "alice", "news"),
    ("subject", "add", "alice"),
    ("purpose", "list"),
    ("check", "alice", "news"),
    ("audit", "verify"),
    ("audit", "export"),
]


def test_no_schema_says_run_db_upgrade(cli: Any, empty_url: str, tmp_path: Path) -> None:
    csv = tmp_path / "in.csv"
    csv.write_text("external_id\nalice\n")
    for args in [*NO_SCHEMA_COMMANDS, ("subject", "import", str(csv))]:
        r = cli(*args)
        assert r.code != 0, args
        assert r.err.strip() == NOSCHEMA, (args, r.err)
        assert "Traceback" not in r.err and r.out == ""
    assert ok(cli("db", "upgrade")).strip() == f"database at revision {head_revision()}"
    assert ok(cli("db", "upgrade")).strip() == f"database at revision {head_revision()}"
    assert js(cli("purpose", "list", "--json")) == []


def test_no_schema_is_a_usage_error_exit_2(cli: Any, empty_url: str) -> None:
    """The missing schema is the caller's setup mistake, not a refused change: it must exit 2,
    as ``consentflow.cli.main`` already does for the very same message."""
    codes = {" ".join(args): cli(*args).code for args in NO_SCHEMA_COMMANDS}
    assert codes == {name: 2 for name in codes}


def test_registrations_from_the_cli_record_who_made_them(cli: Any, database_url: str) -> None:
    import getpass

    from sqlmodel import Session, select

    from consentflow import db
    from consentflow.models import AuditEntry

    assert cli("purpose", "add", "news", "--title", "News", "--validity-days", "30").code == 0
    assert cli("purpose", "revise", "news", "--title", "News!").code == 0
    assert cli("subject", "add", "alice").code == 0
    with Session(db.get_engine(database_url)) as s:
        rows = s.exec(select(AuditEntry).order_by(AuditEntry.seq)).all()
    assert [(e.action, e.actor_type, e.actor, e.channel) for e in rows] == [
        (action, "agent", getpass.getuser(), "support")
        for action in ("purpose.created", "purpose.revised", "subject.created")
    ]


def test_db_upgrade_speaks_json(cli: Any) -> None:
    r = cli("db", "upgrade", "--json")
    assert r.code == 0 and json.loads(r.out) == {"revision": head_revision()}


def test_purpose_translations_and_system_display_names(cli: Any, engine: Engine) -> None:
    ok(cli("purpose", "add", "news", "--title", "News", "--validity-days", "30"))
    fr = js(
        cli(
            "purpose", "revise", "news", "--locale", "fr-CA",
            "--title", "Nouvelles", "--description", "Chaque mois.", "--json",
        )
    )  # fmt: skip
    assert (fr["version"], fr["material"], fr["title"], fr["description"]) == (2, False, "News", "")
    assert fr["texts"] == {"fr-ca": {"title": "Nouvelles", "description": "Chaque mois."}}
    de = js(cli("purpose", "revise", "news", "--locale", "de", "--title", "Neues", "--json"))
    assert de["texts"] == {**fr["texts"], "de": {"title": "Neues"}}
    # `purpose add --locale` adds a language's text the same way (an editorial version)
    es = js(cli("purpose", "add", "news", "--locale", "es", "--title", "Noticias", "--json"))
    assert (es["version"], es["material"], es["title"]) == (4, False, "News")
    assert es["texts"] == {**de["texts"], "es": {"title": "Noticias"}}
    listed = js(cli("purpose", "list", "--versions", "--json"))
    assert [v["texts"] for v in listed] == [{}, fr["texts"], de["texts"], es["texts"]]
    ok(cli("system", "add", "crm", "--purposes", "news", "--display-name", " Our CRM "))
    ok(cli("system", "add", "erp", "--purposes", "news"))
    systems = js(cli("system", "list", "--json"))
    assert [(x["name"], x["display_name"]) for x in systems] == [
        ("crm", "Our CRM"),
        ("erp", "erp"),
    ]


# ------------------------------------------------------ robustness: issue 14, defect 10


def one_line_exit_2(r: Any, phrase: str) -> None:
    assert r.code == 2 and r.out == "" and "Traceback" not in r.err, (r.code, r.err)
    assert len(r.err.strip().splitlines()) == 1 and r.err.startswith("consentflow: "), r.err
    assert phrase in r.err, r.err


def test_bad_input_is_one_line_exit_2_and_writes_nothing(cli: Any, engine: Engine) -> None:
    """Each of these was a traceback (or ``database error``, exit 1) before."""
    ok(cli("purpose", "add", "news", "--title", "News", "--validity-days", "30"))
    ok(cli("subject", "add", "alice"))
    ok(cli("system", "add", "crm", "--purposes", "news"))
    before = counts(engine)
    cases = [
        (("consent", "grant", "alice", "news", "--reason", "r" * 501), "at most 500 characters"),
        (("consent", "grant", "alice", "news", "--reason", "a\x00b"), "printable text"),
        (("consent", "revoke", "alice", "news", "--agent", "a" * 201), "at most 200 characters"),
        (("link", "alice", "--agent", "a" * 201), "at most 200 characters"),
        (("system", "pause", "crm", "--reason", "r" * 501), "at most 500 characters"),
        (("system", "pause", "crm", "--reason", "line\nbreak"), "printable text"),
        (("system", "rotate-secret", "crm", "--grace-hours", "nan"), "--grace-hours must be"),
        (("system", "rotate-secret", "crm", "--grace-hours", "1e30"), "--grace-hours must be"),
        (
            ("system", "add", "erp", "--purposes", "news", "--webhook-url", "https://[::1"),
            "bad webhook URL",
        ),
        (
            ("system", "add", "erp", "--purposes", "news", "--webhook-url", "https://h:x/"),
            "the port is not a number",
        ),
        (
            ("system", "add", "erp", "--purposes", "news", "--webhook-url", "https://a.example/ b"),
            "must not contain spaces",
        ),
        (
            (
                "system",
                "add",
                "erp",
                "--purposes",
                "news",
                "--webhook-url",
                "https://a.example/" + "p" * 2000,
            ),
            "at most 2000 characters",
        ),
        (
            ("system", "add", "erp", "--purposes", "news", "--display-name", "d" * 201),
            "at most 200",
        ),
        (("deliveries", "replay", "9" * 23), "Invalid value for 'ID'"),
        (("deliveries", "feed", "crm", "--cursor", "9" * 30), "Invalid value for '--cursor'"),
        (("subject", "import", "/proc/self/mem"), "cannot read /proc/self/mem"),
        # a non-UTF-8 argument reaches Python as lone surrogates (surrogateescape)
        (("subject", "add", "caf\udce9"), "argument 3 is not valid UTF-8 (byte 0xe9)"),
        (("consent", "grant", "alice", "news", "--reason", "\udcff"), "not valid UTF-8"),
    ]
    for args, phrase in cases:
        one_line_exit_2(cli(*args), phrase)
    assert counts(engine) == before


@pytest.mark.parametrize("wrong", ["database", "user"])
def test_a_wrong_database_name_or_user_cannot_connect(
    cli: Any, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, wrong: str
) -> None:
    """Not "no consentflow schema: run db upgrade", which sent people to create a new one."""
    url = make_url(db.normalise_url(database_url))
    if url.get_backend_name() == "sqlite":  # SQLite's own way to be wrong: a missing directory
        bad = f"sqlite:///{tmp_path / 'no-such-dir' / wrong / 'c.db'}"
    elif wrong == "database":
        bad = url.set(database=f"nosuch_{uuid.uuid4().hex[:8]}").render_as_string(False)
    else:
        bad = url.set(username=f"nosuch_{uuid.uuid4().hex[:8]}").render_as_string(False)
    monkeypatch.setenv("CONSENTFLOW_DATABASE_URL", bad)
    settings.get_settings.cache_clear()
    db._cached_engine.cache_clear()
    csv = tmp_path / "in.csv"
    csv.write_text("external_id\nalice\n")
    try:
        for args in [*NO_SCHEMA_COMMANDS, ("subject", "import", str(csv)), ("db", "upgrade")]:
            one_line_exit_2(cli(*args), "consentflow: cannot connect to the database: ")
    finally:
        db._cached_engine.cache_clear()
        settings.get_settings.cache_clear()


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_value_the_database_refuses_is_exit_2_not_a_database_error(
    pg_url: str, cli: Any, database_url: str, engine: Engine
) -> None:
    """PostgreSQL enforces every column's length (SQLite stores anything): the services hold
    every value to its column first, so a purpose title over the limit is the request's
    mistake, exit 2 with the limit named, on both databases alike (a value that still got past
    them would be "the database refused a value", exit 2 too, never a database error)."""
    before = counts(engine)
    r = cli("purpose", "add", "news", "--title", "t" * 201, "--validity-days", "30")
    one_line_exit_2(r, "the title must be at most 200 characters")
    assert counts(engine) == before
