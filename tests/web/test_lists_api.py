"""The cohort lists in the API: ``GET /api/v1/lists``, ``/lists/{cohort}`` and
``/lists/{cohort}/export``: every cohort, its filters, keyset paging while rows are inserted,
bad filters, scopes, email rules, the audit entry, streaming from the first byte, and that each
dashboard number equals the number of rows its list yields."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from consentflow import db, lifecycle, purposes, reports, subjects, views
from consentflow.delivery.health import endpoint_health
from consentflow.lifecycle import Actor
from consentflow.models import (
    ActorType,
    AuditEntry,
    Channel,
    Consent,
    ConsentRequest,
    Delivery,
    DeliveryState,
    Purpose,
    RequestKind,
    RequestStatus,
    Subject,
    utcnow,
)
from consentflow.reports import cohorts
from consentflow.reports.cohorts import Cohort
from consentflow.web import delivery_ops
from tests.support.web import Tokens, bearer, client, every_row, list_page, seed, served

API = "/api/v1/lists"
PEOPLE = [f"p{i:02d}" for i in range(12)]


def _grant_all(s: Session, people: list[str], purpose: str, channel: Channel) -> None:
    for ext in people:
        lifecycle.grant(s, ext, purpose, Actor(ActorType.SUBJECT, channel))


@pytest.fixture
def toks(engine: Engine) -> Tokens:
    """alice, bob and p00..p11: consents in every state, a material revision of news, open
    requests, a lapsed consent, withdrawals (so crm has undelivered deliveries) and a dead one."""
    made = seed(engine)  # crm: news (webhook); billing: invoices
    now = utcnow()
    with db.session_scope(engine) as s:
        for i, ext in enumerate(PEOPLE):
            subjects.add(s, ext, email=f"{ext}@example.com", locale="fr" if i % 3 == 0 else "en")
        _grant_all(s, ["alice", "bob", *PEOPLE[:8]], "news", Channel.WEB)
        _grant_all(s, PEOPLE[4:10], "invoices", Channel.EMAIL_LINK)  # 30 days: expiring
        for ext in PEOPLE[6:8]:
            lifecycle.revoke(s, ext, "news", Actor(ActorType.SUBJECT, Channel.EMAIL_LINK))
        lifecycle.refuse(s, PEOPLE[10], "news", Actor(ActorType.AGENT, Channel.SUPPORT))
    with db.session_scope(engine) as s:
        purposes.revise(s, "news", material=True, title="Weekly newsletter")
    with db.session_scope(engine) as s:
        _grant_all(s, [PEOPLE[11]], "news", Channel.API)  # on the new notice
        news, invoices = purposes.get(s, "news"), purposes.get(s, "invoices")
        by_ext = {sub.external_id: sub.id for sub in s.exec(select(Subject)).all()}
        for ext, age, kind in (
            ("p00", 3, RequestKind.RECONSENT),
            ("p01", 40, RequestKind.RECONSENT),
            ("p09", 100, RequestKind.COLLECTION),
        ):
            s.add(
                ConsentRequest(
                    subject_id=by_ext[ext],
                    purpose_id=(news if kind is RequestKind.RECONSENT else invoices).id,
                    purpose_version=2 if kind is RequestKind.RECONSENT else 1,
                    kind=kind.value,
                    status=RequestStatus.OPEN.value,
                    requested_at=now - timedelta(days=age),
                    deadline=now + timedelta(days=30 - age),
                )
            )
        # p05's invoices consent ended yesterday, before the sweep came: counts as expired.
        s.exec(
            update(Consent)
            .where(col(Consent.subject_id) == by_ext["p05"], col(Consent.purpose_id) == invoices.id)
            .values(valid_until=now - timedelta(days=1))
        )
        first = s.exec(select(Delivery).order_by(col(Delivery.id))).first()
        assert first is not None
        first.state = DeliveryState.DEAD.value
    return made


def entries(engine: Engine) -> list[AuditEntry]:
    with Session(engine) as s:
        return list(
            s.exec(
                select(AuditEntry)
                .where(AuditEntry.action == cohorts.EXPORTED)
                .order_by(col(AuditEntry.seq))
            )
        )


def sha(ids: list[str]) -> str:
    return hashlib.sha256("".join(f"{i}\n" for i in ids).encode()).hexdigest()


def test_every_cohort_lists_its_rows_in_its_shape(engine: Engine, toks: Tokens) -> None:
    with client() as c:
        index = c.get(API, headers=bearer(toks.support))
        assert index.status_code == 200
        assert [x["name"] for x in index.json()] == [x.value for x in Cohort]
        got = {x.value: every_row(c, x.value, toks.compliance) for x in Cohort}
    for name, rows in got.items():
        columns = list(cohorts.DEFINITIONS[Cohort(name)].columns)
        assert rows, name
        assert all(list(r) == columns for r in rows), name  # no email unless asked
    subjects_of = {k: sorted({r["subject"] for r in v}) for k, v in got.items()}
    assert subjects_of["not-reconfirmed"] == sorted(["alice", "bob", *PEOPLE[:6]])
    assert subjects_of["withdrawals"] == PEOPLE[6:8]
    assert subjects_of["requests"] == ["p00", "p01", "p09"]
    assert subjects_of["deliveries"] == PEOPLE[6:8]
    assert {r["state"] for r in got["deliveries"]} == {"dead", "pending"}
    expiring = got["expiring"]
    assert [r["subject"] for r in expiring] == [p for p in PEOPLE[4:10] if p != "p05"]
    assert [r["valid_until"] for r in expiring] == sorted(r["valid_until"] for r in expiring)


def test_filters_narrow_each_list(engine: Engine, toks: Tokens) -> None:
    with client() as c:
        tok = toks.admin

        def subjects_of(cohort: str, **params: Any) -> list[str]:
            return sorted(r["subject"] for r in every_row(c, cohort, tok, **params))

        assert subjects_of("consents", purpose="news", state="withdrawn") == PEOPLE[6:8]
        assert subjects_of("consents", state="refused") == [PEOPLE[10]]
        assert subjects_of("consents", state="expired") == ["p05"]  # lapsed, not yet swept
        assert "p05" not in subjects_of("consents", purpose="invoices", state="given")
        assert subjects_of("consents", channel="api") == [PEOPLE[11]]
        assert subjects_of("consents", purpose="news", version=2) == [PEOPLE[11]]
        assert subjects_of("consents", locale="fr", purpose="invoices") == ["p06", "p09"]
        assert subjects_of("consents", system="billing") == subjects_of(
            "consents", purpose="invoices"
        )
        assert subjects_of("not-reconfirmed", asked="yes") == ["p00", "p01"]
        assert "p00" not in subjects_of("not-reconfirmed", asked="no")
        assert subjects_of("requests", kind="collection") == ["p09"]
        week_ago = (utcnow() - timedelta(days=7)).isoformat()
        assert subjects_of("requests", since=week_ago) == ["p00"]
        assert subjects_of("requests", until=week_ago) == ["p01", "p09"]
        assert subjects_of("expiring", days=1) == []
        assert subjects_of("withdrawals", until="2000-01-01") == []
        assert subjects_of("withdrawals", channel="email_link") == PEOPLE[6:8]
        dead = every_row(c, "deliveries", tok, status="dead")
        assert [r["state"] for r in dead] == ["dead"]
        assert all(r["system"] == "crm" for r in every_row(c, "deliveries", tok, system="crm"))
        assert every_row(c, "deliveries", tok, system="billing") == []


def test_bad_filters_are_a_422_naming_the_field(engine: Engine, toks: Tokens) -> None:
    bad = [
        ("consents", {"state": "happy"}, "state"),
        ("consents", {"channel": "fax"}, "channel"),
        ("consents", {"purpose": "nope"}, "purpose: no such purpose 'nope'"),
        ("consents", {"system": "nope"}, "system: no such system 'nope'"),
        ("consents", {"days": "7"}, "days: the consents list does not take it"),
        ("consents", {"version": "0"}, "version"),
        ("consents", {"since": "last tuesday"}, "since"),
        ("consents", {"since": "2026-02-01", "until": "2026-01-01"}, "until: must be after"),
        ("consents", {"cursor": "bm9wZQ"}, "cursor: not a cursor of the consents list"),
        ("consents", {"limit": "1001"}, "limit"),
        ("consents", {"locale": "<b>"}, "locale"),
        ("expiring", {"days": "0"}, "days"),
        ("not-reconfirmed", {"asked": "maybe"}, "asked"),
        ("deliveries", {"status": "late"}, "status"),
        ("requests", {"kind": "other"}, "kind"),
        ("requests", {"due_since": "soon"}, "due_since"),
        ("requests", {"due_since": "2026-02-01", "due_until": "2026-01-01"}, "due_until: must"),
        ("changes", {"action": "delete"}, "action"),
        ("changes", {"due_until": "2026-01-01"}, "due_until: the changes list does not take"),
        ("withdrawals", {"action": "grant"}, "action: the withdrawals list does not take it"),
        ("nothing", {}, "cohort"),
    ]
    with client() as c:
        cursor = list_page(c, "expiring", toks.admin, limit=1)["next"]
        bad.append(("consents", {"cursor": cursor}, "cursor: not a cursor of the consents"))
        for cohort, params, field in bad:
            paged = "limit" in params or "cursor" in params  # an export has no pages
            for path in (f"{API}/{cohort}", *([] if paged else [f"{API}/{cohort}/export"])):
                r = c.get(path, params=params, headers=bearer(toks.admin))
                assert r.status_code == 422, (path, params, r.text)
                detail = r.json()["detail"]
                assert field in detail and "\n" not in detail, (path, params, detail)
    assert entries(engine) == []  # nothing was exported


def test_keyset_pages_list_each_row_once_while_rows_are_inserted(
    engine: Engine, toks: Tokens
) -> None:
    with Session(engine) as s:
        before = set(s.exec(select(col(Consent.id))).all())
    seen: list[str] = []
    with client() as c:
        cursor, n = None, 0
        while True:
            extra = {"cursor": cursor} if cursor else {}
            out = list_page(c, "consents", toks.admin, limit=2, **extra)
            seen += [f"{r['subject']}/{r['purpose']}" for r in out["rows"]]
            with db.session_scope(engine) as s:  # a new person, and an old one's new consent
                subjects.add(s, f"new{n}")
                lifecycle.grant(s, f"new{n}", "news", Actor())
                if n < 4:  # p00..p03 have no invoices consent yet
                    lifecycle.grant(s, PEOPLE[n], "invoices", Actor())
            n += 1
            cursor = out["next"]
            if cursor is None:
                break
    assert len(seen) == len(set(seen))  # no row twice
    with Session(engine) as s:
        keys = {
            f"{ext}/{key}"
            for cid, ext, key in s.exec(
                select(col(Consent.id), col(Subject.external_id), col(Purpose.key))
                .join(Subject, col(Subject.id) == col(Consent.subject_id))
                .join(Purpose, col(Purpose.id) == col(Consent.purpose_id))
            ).all()
            if cid in before
        }
    assert keys <= set(seen)  # none of the rows there at the start is missing
    assert n > 10  # many pages, each after inserts


def test_who_may_read_and_export(engine: Engine, toks: Tokens) -> None:
    with client() as c:
        for token in (toks.admin, toks.compliance, toks.support, toks.system):
            assert c.get(API, headers=bearer(token)).status_code == 200
            assert c.get(f"{API}/consents", headers=bearer(token)).status_code == 200
        for path in (API, f"{API}/consents", f"{API}/consents/export"):
            assert c.get(path).status_code == 401
        for token in (toks.admin, toks.compliance, toks.system):
            r = c.get(f"{API}/consents/export", headers=bearer(token))
            assert r.status_code == 200, r.text
        support = c.get(f"{API}/consents/export", headers=bearer(toks.support))
        assert support.status_code == 403 and "needs" in support.json()["detail"]
        # A system token sees its own purposes and deliveries only.
        crm = every_row(c, "consents", toks.system)
        assert {r["purpose"] for r in crm} == {"news"}
        billing = every_row(c, "consents", toks.other_system)
        assert {r["purpose"] for r in billing} == {"invoices"}
        assert every_row(c, "deliveries", toks.other_system) == []
        assert every_row(c, "withdrawals", toks.other_system) == []
        assert every_row(c, "deliveries", toks.system, system="crm")
        for path in (f"{API}/consents", f"{API}/consents/export"):
            other = c.get(path, params={"system": "crm"}, headers=bearer(toks.other_system))
            assert other.status_code == 403
            assert other.json()["detail"] == "this token speaks for system 'billing' only"
        exported = c.get(f"{API}/consents/export", headers=bearer(toks.other_system))
        assert {json.loads(x)["purpose"] for x in exported.text.splitlines()} == {"invoices"}
    assert len(entries(engine)) == 4


def test_email_addresses_only_when_asked_and_allowed(engine: Engine, toks: Tokens) -> None:
    with client() as c:
        for token in (toks.admin, toks.compliance):
            rows = list_page(c, "consents", token, include="email", purpose="news")["rows"]
            assert {r["subject"]: r["email"] for r in rows}["alice"] == "alice@example.com"
            assert ("email" in rows[0] and rows[0]["email"] is None) or "@" in rows[0]["email"]
            table = c.get(
                f"{API}/consents/export",
                params={"include": "email", "format": "csv"},
                headers=bearer(token),
            )
            assert table.text.splitlines()[0].endswith(",email")
            assert "alice@example.com" in table.text
        for token in (toks.support, toks.system):
            r = c.get(f"{API}/consents", params={"include": "email"}, headers=bearer(token))
            assert r.status_code == 403
            assert r.json()["detail"].startswith("include=email: a ")
        r = c.get(
            f"{API}/consents/export", params={"include": "email"}, headers=bearer(toks.system)
        )
        assert r.status_code == 403
        plain = c.get(f"{API}/consents/export", headers=bearer(toks.admin))
        assert "@" not in plain.text and '"email"' not in plain.text
        assert "@" not in c.get(f"{API}/consents", headers=bearer(toks.admin)).text
    flags = [e.detail["email"] for e in entries(engine)]
    assert flags == [True, True, False]
    assert not any("@" in json.dumps(e.detail) for e in entries(engine))


def test_an_export_is_every_row_in_each_format_and_audited(engine: Engine, toks: Tokens) -> None:
    params = {"purpose": "news", "state": "given"}
    with client() as c:
        rows = every_row(c, "consents", toks.compliance, **params)
        lines = c.get(f"{API}/consents/export", params=params, headers=bearer(toks.compliance))
        table = c.get(
            f"{API}/consents/export",
            params={**params, "format": "csv"},
            headers=bearer(toks.compliance),
        )
    assert lines.headers["content-type"] == "application/x-ndjson"
    assert table.headers["content-type"] == "text/csv; charset=utf-8"
    # The bulk writer writes the row model's own JSON form.
    assert [json.loads(x) for x in lines.text.splitlines()] == rows
    view = cohorts.DEFINITIONS[Cohort.CONSENTS].model
    assert lines.text.splitlines()[0] == view.model_validate(rows[0]).model_dump_json(
        exclude_unset=True
    )
    parsed = list(csv.DictReader(io.StringIO(table.text)))
    assert [r["subject"] for r in parsed] == [r["subject"] for r in rows]
    assert parsed[0]["event_id"] == rows[0]["event_id"]
    ids = [r["subject"] for r in rows]
    for entry, fmt in zip(entries(engine), ("jsonl", "csv"), strict=True):
        assert entry.actor == "api:carol"
        assert entry.purpose_key == "news"
        assert entry.detail["cohort"] == "consents"
        assert entry.detail["filters"] == params
        assert (entry.detail["count"], entry.detail["complete"]) == (len(ids), True)
        assert entry.detail["sha256"] == sha(ids)
        assert entry.detail["format"] == fmt


def test_every_cohort_exports_its_pages_rows_in_each_format(engine: Engine, toks: Tokens) -> None:
    """The bulk writers (driver values, no row model) write exactly the pages' rows: times ISO
    8601 with Z on both databases, ids as text, None as null or an empty cell."""
    auth = bearer(toks.compliance)
    with client() as c:
        for cohort in Cohort:
            rows = every_row(c, cohort.value, toks.compliance, limit=100, include="email")
            url = f"{API}/{cohort.value}/export"
            lines = c.get(url, params={"include": "email"}, headers=auth)
            table = c.get(url, params={"include": "email", "format": "csv"}, headers=auth)
            assert [json.loads(x) for x in lines.text.splitlines()] == rows, cohort
            header, *cells = list(csv.reader(io.StringIO(table.text)))
            assert header == [*cohorts.DEFINITIONS[cohort].columns, "email"], cohort
            text = [["" if v is None else str(v) for v in r.values()] for r in rows]
            assert cells == text, cohort
            assert any(r.get("email") for r in rows), cohort


def test_each_dashboard_number_is_the_number_of_rows_in_its_list(
    engine: Engine, toks: Tokens
) -> None:
    now = utcnow()
    with Session(engine) as s:
        states = reports.states(s, now)
        expiring = reports.expiring(s, now)
        pending = reports.pending_requests(s, now)
        cohort_table, _ = reports.reconsent(s, now)
        trend, _chart = reports.trend(s, now)
        health = endpoint_health(s, now=now)
    checked = 0
    with client() as c:

        def count(cohort: str, **params: Any) -> int:
            return len(every_row(c, cohort, toks.admin, limit=4, **params))

        for row in states.rows:
            key = None if row[0] == reports.ALL else row[0]
            for state in reports.STATES:
                n = row[states.columns.index(state)]
                assert count("consents", state=state, **({"purpose": key} if key else {})) == n
                checked += 1
        for row in expiring.rows:
            key = {} if row[0] == reports.ALL else {"purpose": row[0]}
            assert count("expiring", **key) == row[expiring.columns.index("total")]
            assert count("expiring", days=7, **key) == row[expiring.columns.index("within 7 days")]
            checked += 2
        for row in pending.rows:
            if row[0] == reports.ALL:
                assert count("requests") == row[-1]
            else:
                assert count("requests", purpose=row[0], kind=row[1]) == row[-1]
            checked += 1
        for row in cohort_table.rows:
            n = row[cohort_table.columns.index("not yet re-confirmed")]
            assert count("not-reconfirmed", purpose=row[0]) == n
            checked += 1
        today = trend.rows[-1]
        day = today[0]
        since, until = f"{day}T00:00:00Z", (now + timedelta(days=1)).date().isoformat()
        assert count("withdrawals", since=since, until=until) == today[2] == 2
        for h in health:
            assert count("deliveries", system=h.system, status="undelivered") == h.pending
            assert count("deliveries", system=h.system, status="dead") == h.dead == 1
            checked += 2
    assert checked > 20


def test_every_linked_dashboard_number_leads_to_that_many_rows(
    engine: Engine, toks: Tokens
) -> None:
    """Each link on the dashboard (every table, every measure of the trends, the tiles) is a
    list whose rows number exactly what the cell says."""
    now = utcnow()
    links: list[tuple[str, int]] = []
    with Session(engine) as s:
        for measure in reports.MEASURES:
            board = reports.build(s, now, health=delivery_ops.health, measure=measure)
            for t in board.tables.values():
                links += [(href, t.rows[r][c]) for (r, c), href in t.links.items()]
            links += [(t.href, t.value) for t in board.tiles if t.href.startswith("/lists/")]
    hrefs = {href for href, _ in links}
    assert {urlsplit(h).path for h in hrefs} >= {
        f"/lists/{c.value}" for c in Cohort if c is not Cohort.CHANGES
    } | {"/lists/changes"}
    with client() as c:
        for href, number in sorted(set(links)):
            url = urlsplit(href)
            params = dict(parse_qsl(url.query))
            cohort = url.path.removeprefix("/lists/")
            assert len(every_row(c, cohort, toks.admin, limit=50, **params)) == number, href
    assert len(hrefs) > 30


class PageHold:
    """Around ``views.cohort_jsonl`` (an export's rows written, a partition of the server-side
    cursor at a time): counts the partitions read, and holds the second until ``release`` is
    set (so a partition boundary is pending while the test looks)."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.read = 0
        self.release = threading.Event()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.read == 1:
            assert self.release.wait(30), "the test never released the second page"
        out = self.real(*args, **kwargs)
        self.read += 1
        return out


def test_the_first_row_arrives_before_the_last_page_is_read(
    engine: Engine, toks: Tokens, monkeypatch: pytest.MonkeyPatch
) -> None:
    hold = PageHold(views.cohort_jsonl)
    monkeypatch.setattr(cohorts, "EXPORT_PAGE", 2)
    monkeypatch.setattr(views, "cohort_jsonl", hold)
    with Session(engine) as s:
        total = len(s.exec(select(Consent.id)).all())
    with (
        served(monkeypatch) as base,
        httpx.stream(
            "GET",
            f"{base}{API}/consents/export",
            headers=bearer(toks.compliance),
            timeout=10,  # a server that read every page before sending never answers in time
        ) as r,
    ):
        lines = r.iter_lines()
        first = json.loads(next(lines))
        assert hold.read == 1  # the second partition is held: not read yet
        assert entries(engine) == []  # and the export has not ended
        hold.release.set()
        rest = [json.loads(line) for line in lines]
    assert first["subject"] == "alice"
    assert len(rest) + 1 == total
    assert hold.read == (total + 1) // 2
    deadline = threading.Event()
    for _ in range(100):
        if entries(engine):
            break
        deadline.wait(0.1)
    (entry,) = entries(engine)
    assert (entry.detail["count"], entry.detail["complete"]) == (total, True)
