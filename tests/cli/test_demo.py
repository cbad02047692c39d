"""`consentflow demo` as a new user runs it, and what it shows them: the flows it ran, the
webhooks and their health, the emails it sent, kept whole as ``.eml`` files that parse, in the
subjects' languages, and the one preference link it prints, which opens the preference page on
the demo's own database without signing in.

The demo runs once for the module (~1 minute: an embedded Prefect server on a new database), in
its own process, with a new user's shell environment (``tests.support.cli.fresh_machine``: no
consentflow or Prefect settings, a home of its own whose default Prefect profile points at a
server that is not there); every test reads that one run's outcome."""

from __future__ import annotations

import email
import email.policy
import html
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlmodel import func, select

from consentflow import db, settings, tokens
from consentflow.models import AuditEntry, ConsentEvent
from tests.support.cli import fresh_machine, left_behind


@dataclass(frozen=True)
class Demo:
    root: Path  # the working directory it ran in
    directory: Path  # its --directory
    out: str
    err: str
    left: list[str]  # what it left in its Prefect home and its temporary directory


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    root = tmp_path_factory.mktemp("demo")
    result = subprocess.run(
        [sys.executable, "-m", "consentflow.cli", "demo", "--directory", str(root / "d")],
        cwd=root,
        env=fresh_machine(root),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return Demo(root, root / "d", result.stdout, result.stderr, left_behind(root))


def test_demo_runs_on_a_fresh_machine(demo: Demo) -> None:
    """No configuration, no server (the default profile pointing at one is ignored), nothing on
    stderr, nothing left in its Prefect home or temporary directory."""
    assert demo.err == ""
    out = demo.out
    for flow in ("expiry-sweep", "renewal-reminders", "collection-followups", "reconsent"):
        assert f"\n{flow}: " in out
    assert "audit trail intact" in out and "expiry-sweep again: 0 expired" in out
    path = demo.directory / "consentflow-demo.db"
    assert path.exists() and not (demo.root / "consentflow.db").exists()
    assert demo.left == []

    # Propagation: 8 expiries, 3 withdrawals and 5 invalidations reach crm; ads (profiling
    # only) answers 503, so its 5 are retried later, and the health table says so.
    propagate = out.split("\npropagate: ", 1)[1].split("\n\n", 1)[0]
    assert "crm          delivered               16" in propagate
    assert "ads          retried                  5" in propagate
    assert "webhooks received on 127.0.0.1:" in out and ": crm 16 (answered 200), ads 5 " in out
    assert "  signature verified with standardwebhooks: msg_" in out  # a test extra: installed
    health = out.split("delivery health per endpoint:\n", 1)[1].split("\n\n", 1)[0]
    ads, crm = health.splitlines()
    assert ads.split()[:2] == ["ads", "NOT"] and "pending 5 (retrying 5)" in ads
    assert "failures in 24 h 5" in ads
    assert crm.split()[:2] == ["crm", "ok"] and "delivered 16, pending 0" in crm

    # The emails: the default public URL is http, so no one-click header, and a note says why.
    assert "0 with RFC 8058 one-click" in out
    assert "note: one-click unsubscribe left out: CONSENTFLOW_PUBLIC_URL (http://" in out

    # The way into the web app: a compliance token for this database, and its path.
    assert f"CONSENTFLOW_DATABASE_URL=sqlite:///{path} consentflow serve" in out
    token = out.rsplit("for the demo database only: ", 1)[1].strip()
    engine = db.make_engine(f"sqlite:///{path}")
    with db.session_scope(engine) as s:
        info = tokens.verify(s, token)
    engine.dispose()
    assert info is not None and info.scope.value == "compliance"


def _parse(path: Path) -> EmailMessage:
    """A kept message, parsed with ``email.policy.strict`` (any defect raises)."""
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.strict)
    assert isinstance(message, EmailMessage)
    return message


def test_the_emails_sent_are_kept_whole_and_parse(demo: Demo) -> None:
    kept = sorted((demo.directory / "emails").glob("*.eml"))
    found = re.search(r"emails received by the sink: (\d+) ", demo.out)
    assert found is not None
    received = int(found.group(1))
    assert received > 0 and len(kept) == received
    where = f"{demo.directory / 'emails'}{os.sep}"
    assert f"  kept whole in {where} ({received} .eml files;" in demo.out
    languages = set()
    message_ids = set()
    for path in kept:
        message = _parse(path)
        assert path.read_bytes().count(b"\r\n") > 10  # as received: CRLF line ends
        for header in ("From", "To", "Subject", "Date", "Message-ID"):
            assert message[header], (path.name, header)
        assert str(message["Date"]).endswith("+0000")
        assert path.name.endswith(f"-{message['To'].addresses[0].username}.eml")
        assert message.get_content_type() == "multipart/alternative"
        text = message.get_body(("plain",))
        html = message.get_body(("html",))
        assert text is not None and html is not None
        assert "/l/" in text.get_content() and "<html" in html.get_content()
        languages.add(str(message["Content-Language"]))
        message_ids.add(str(message["Message-ID"]))
    assert len(message_ids) == len(kept)  # each message once
    # The seeded subjects speak English, French and German (or have no language: English).
    assert {"en", "fr", "de"} <= languages


def _link(out: str) -> str:
    (line,) = [x.strip() for x in out.splitlines() if "/l/" in x]
    assert line.startswith("http://127.0.0.1:8000/l/") and " " not in line
    return line


@pytest.fixture
def demo_app(demo: Demo, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The web app as `consentflow serve` runs it on the demo's database."""
    monkeypatch.setenv(
        "CONSENTFLOW_DATABASE_URL", f"sqlite:///{demo.directory / 'consentflow-demo.db'}"
    )
    settings.get_settings.cache_clear()
    db._cached_engine.cache_clear()
    from consentflow.web.app import create_app

    try:
        yield TestClient(create_app(), follow_redirects=False)
    finally:
        db.get_engine().dispose()
        settings.get_settings.cache_clear()
        db._cached_engine.cache_clear()


def _recorded() -> tuple[int, int]:
    with db.session_scope(readonly=True) as s:
        return (
            s.exec(select(func.count()).select_from(AuditEntry)).one(),
            s.exec(select(func.count()).select_from(ConsentEvent)).one(),
        )


def test_the_printed_link_opens_the_preference_page(demo: Demo, demo_app: TestClient) -> None:
    url = _link(demo.out)
    serve = "CONSENTFLOW_DATABASE_URL=sqlite:///"
    assert f"{serve}{demo.directory / 'consentflow-demo.db'} consentflow serve" in demo.out
    # The compliance token stays the last thing printed (the first test reads it from there).
    assert demo.out.rstrip().splitlines()[-1].startswith("  for the demo database only: cf_")
    before = _recorded()
    page = demo_app.get(urlsplit(url).path)
    assert page.status_code == 200, page.text[:500]
    assert page.headers["content-type"].startswith("text/html")
    # demo-022 speaks French: the page is in French, with the purposes' French titles.
    text = html.unescape(page.text)
    assert '<html lang="fr"' in text
    assert "Statistiques d'utilisation, partagées avec notre sous-traitant" in text
    assert "Notre lettre d'information mensuelle" in text
    assert "Our monthly newsletter" not in text and "Product analytics" not in text
    assert _recorded() == before  # opening it changes nothing
    # A hand-edited link opens nothing.
    broken = demo_app.get(urlsplit(url).path[:-3] + "xyz")
    assert broken.status_code in (400, 403, 404, 410) and "Statistiques" not in broken.text
    assert _recorded() == before
