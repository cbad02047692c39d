"""`consentflow demo` as a newcomer meets the people's side: the emails it sent, kept whole as
``.eml`` files that parse, in the subjects' languages, and the one preference link it prints,
which opens the preference page on the demo's own database without signing in.

The demo runs once for the module, in its own process, with a shell's environment (no
consentflow or Prefect settings, a home of its own); its flows and webhooks are checked by
tests/flows/test_lifecycle_flows.py::test_demo_runs_on_a_fresh_machine."""

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

from consentflow import db, settings
from consentflow.models import AuditEntry, ConsentEvent


@dataclass(frozen=True)
class Demo:
    directory: Path
    out: str


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    root = tmp_path_factory.mktemp("demo")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CONSENTFLOW_", "PREFECT_")) and k != "DO_NOT_TRACK"
    }
    (root / "home").mkdir()
    env["HOME"] = str(root / "home")
    result = subprocess.run(
        [sys.executable, "-m", "consentflow.cli", "demo", "--directory", str(root / "d")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return Demo(root / "d", result.stdout)


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
    # The compliance token stays the last thing printed (the flows test reads it from there).
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
